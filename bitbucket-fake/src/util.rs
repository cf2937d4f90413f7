//! Small helpers: UUIDs, timestamps, decoding, label checks.

use percent_encoding::percent_decode_str;

use crate::{FakeConfig, RepoSpec, WorkspaceSpec};

/// Labels that do not count against the custom-label limit.
pub(crate) const BUILTIN_LABELS: [&str; 6] = [
    "self.hosted",
    "linux",
    "linux.arm64",
    "linux.shell",
    "windows",
    "macos",
];

/// Now, UTC, microseconds, `Z`.
pub(crate) fn now() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

fn format_uuid(b: &[u8; 16]) -> String {
    let mut hex = String::with_capacity(32);
    for byte in b {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn set_version(b: &mut [u8; 16], version: u8) {
    b[6] = (b[6] & 0x0f) | (version << 4);
    b[8] = (b[8] & 0x3f) | 0x80;
}

/// A fresh random braced UUID whose version nibble is `version`.
pub(crate) fn random_uuid(version: u8) -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    set_version(&mut b, version);
    format_uuid(&b)
}

/// A braced v4-style UUID derived deterministically from `seed`.
pub fn stable_uuid(seed: &str) -> String {
    fn fnv(seed: &str, basis: u64) -> u64 {
        let mut h = basis;
        for byte in seed.bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let a = fnv(seed, 0xcbf2_9ce4_8422_2325);
    let b = fnv(seed, 0x6c62_272e_07bb_0142);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    set_version(&mut bytes, 4);
    format_uuid(&bytes)
}

fn is_uuid_body(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `{uuid}` (braces required), lowercased.
pub(crate) fn braced_uuid(s: &str) -> Option<String> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    is_uuid_body(inner).then(|| format!("{{{}}}", inner.to_ascii_lowercase()))
}

/// A UUID with or without braces, normalized to lowercase with braces.
pub(crate) fn lenient_uuid(s: &str) -> Option<String> {
    let s = s.trim();
    braced_uuid(s).or_else(|| is_uuid_body(s).then(|| format!("{{{}}}", s.to_ascii_lowercase())))
}

/// `n` random ASCII letters and digits.
pub(crate) fn alnum(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

/// Percent-decodes one path segment; `None` if it is not UTF-8.
pub(crate) fn decode_segment(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Parses `a=b&c=d` (query string or form body); `+` means space.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Normalizes UUIDs in the configuration (lowercase, braces).
pub(crate) fn normalize_config(mut cfg: FakeConfig) -> FakeConfig {
    let norm = |u: &str| lenient_uuid(u).unwrap_or_else(|| u.to_owned());
    for ws in &mut cfg.workspaces {
        ws.uuid = norm(&ws.uuid);
        for repo in &mut ws.repositories {
            repo.uuid = norm(&repo.uuid);
        }
    }
    cfg
}

/// Finds a workspace by slug or braced UUID.
pub(crate) fn find_workspace<'a>(cfg: &'a FakeConfig, ident: &str) -> Option<&'a WorkspaceSpec> {
    if ident.starts_with('{') {
        let uuid = braced_uuid(ident)?;
        cfg.workspaces.iter().find(|w| w.uuid == uuid)
    } else {
        cfg.workspaces
            .iter()
            .find(|w| w.slug.eq_ignore_ascii_case(ident))
    }
}

/// Finds a repository of `ws` by slug or braced UUID.
pub(crate) fn find_repo<'a>(ws: &'a WorkspaceSpec, ident: &str) -> Option<&'a RepoSpec> {
    if ident.starts_with('{') {
        let uuid = braced_uuid(ident)?;
        ws.repositories.iter().find(|r| r.uuid == uuid)
    } else {
        ws.repositories
            .iter()
            .find(|r| r.slug.eq_ignore_ascii_case(ident))
    }
}

/// Where runners live: a workspace, or one repository of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) ws_uuid: String,
    pub(crate) repo_uuid: Option<String>,
}

impl Scope {
    pub(crate) fn noun(&self) -> &'static str {
        if self.repo_uuid.is_some() {
            "repository"
        } else {
            "workspace"
        }
    }
}

pub(crate) fn resolve_scope(cfg: &FakeConfig, ws: &str, repo: Option<&str>) -> Option<Scope> {
    let ws = find_workspace(cfg, ws)?;
    let repo_uuid = match repo {
        Some(r) => Some(find_repo(ws, r)?.uuid.clone()),
        None => None,
    };
    Some(Scope {
        ws_uuid: ws.uuid.clone(),
        repo_uuid,
    })
}

/// A label check compiled from a pattern of the form `^[class]+$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelPattern {
    ranges: Vec<(char, char)>,
    allow_empty: bool,
    source: String,
}

impl Default for LabelPattern {
    fn default() -> Self {
        LabelPattern {
            ranges: vec![('a', 'z'), ('0', '9'), ('.', '.')],
            allow_empty: false,
            source: "^[a-z0-9.]+$".to_owned(),
        }
    }
}

impl LabelPattern {
    /// Parses `^[...]+$` (or `*`); supports ranges, literals and `\` escapes
    /// including `\d` and `\w`. `None` for anything else.
    pub(crate) fn parse(pattern: &str) -> Option<LabelPattern> {
        let p = pattern.strip_prefix('^').unwrap_or(pattern);
        let p = p.strip_suffix('$').unwrap_or(p);
        let (p, allow_empty) = if let Some(p) = p.strip_suffix('+') {
            (p, false)
        } else {
            (p.strip_suffix('*')?, true)
        };
        let class = p.strip_prefix('[')?.strip_suffix(']')?;
        if class.is_empty() || class.starts_with('^') {
            return None;
        }
        let chars: Vec<char> = class.chars().collect();
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = if chars[i] == '\\' {
                i += 1;
                match chars.get(i)? {
                    'd' => {
                        ranges.push(('0', '9'));
                        i += 1;
                        continue;
                    }
                    'w' => {
                        ranges.extend([('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')]);
                        i += 1;
                        continue;
                    }
                    other => *other,
                }
            } else {
                chars[i]
            };
            if chars.get(i + 1) == Some(&'-') && i + 2 < chars.len() {
                let hi = chars[i + 2];
                if hi < c {
                    return None;
                }
                ranges.push((c, hi));
                i += 3;
            } else {
                ranges.push((c, c));
                i += 1;
            }
        }
        Some(LabelPattern {
            ranges,
            allow_empty,
            source: pattern.to_owned(),
        })
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        (self.allow_empty || !s.is_empty())
            && s.chars()
                .all(|c| self.ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)))
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = random_uuid(5);
        assert!(braced_uuid(&u).is_some());
        assert_eq!(&u[15..16], "5");
        assert!(matches!(&u[20..21], "8" | "9" | "a" | "b"));
        assert_eq!(stable_uuid("x"), stable_uuid("x"));
        assert_ne!(stable_uuid("x"), stable_uuid("y"));
        assert_eq!(&stable_uuid("x")[15..16], "4");
        assert_eq!(
            lenient_uuid("11111111-2222-4333-8444-55555555555A").as_deref(),
            Some("{11111111-2222-4333-8444-55555555555a}")
        );
        assert!(braced_uuid("11111111-2222-4333-8444-555555555555").is_none());
        assert!(braced_uuid("{zz111111-2222-4333-8444-555555555555}").is_none());
    }

    #[test]
    fn timestamps_have_micros() {
        let t = now();
        assert!(t.ends_with('Z'), "{t}");
        let frac = t.split('.').nth(1).unwrap_or_default();
        assert_eq!(frac.len(), 7, "{t}");
    }

    #[test]
    fn label_patterns() {
        let p = LabelPattern::parse("^[a-z0-9.]+$").unwrap();
        assert!(p.matches("linux.arm64"));
        assert!(!p.matches("Linux"));
        assert!(!p.matches("a-b"));
        assert!(!p.matches(""));
        let p = LabelPattern::parse("^[a-z0-9._\\-]+$").unwrap();
        assert!(p.matches("a-b_c"));
        assert!(LabelPattern::parse("(a|b)").is_none());
        assert!(LabelPattern::parse("^[^a]+$").is_none());
    }

    #[test]
    fn queries() {
        let q = parse_query("page=2&pagelen=10&x=a%20b+c&flag");
        assert_eq!(query_value(&q, "page"), Some("2"));
        assert_eq!(query_value(&q, "x"), Some("a b c"));
        assert_eq!(query_value(&q, "flag"), Some(""));
        assert_eq!(decode_segment("%7Babc%7D").as_deref(), Some("{abc}"));
    }
}
