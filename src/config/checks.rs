//! Checks and parsers of single values: region names, AWS ids, IAM names, KMS keys, URLs.

use super::{AmiRef, Arch, Os};

pub(super) fn is_fleet_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 24
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// Region name prefixes, one per AWS partition: the `regionRegex` of each partition in the
/// AWS SDKs' endpoint partition data (`partitions.json`, compiled into aws-sdk-ec2 as
/// `src/endpoint_lib.rs`): `^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$` for `aws`, `^cn\-...` for
/// `aws-cn`, `^us\-gov\-...`, `^us\-iso\-...`, `^us\-isob\-...`, `^eu\-isoe\-...`, `^us\-isof\-...` and
/// `^eusc\-(de)\-...`. Longest first, so `us-gov-west-1` is read as `us-gov` + `west` + `1`.
pub(super) const REGION_PREFIXES: [&str; 16] = [
    "eusc-de", "us-isob", "us-isof", "eu-isoe", "us-gov", "us-iso", "us", "eu", "ap", "sa", "ca",
    "me", "af", "il", "mx", "cn",
];
/// Longest direction word of a region name bbfleet accepts (`northwest` has 9 letters).
pub(super) const REGION_WORD_MAX: usize = 16;
/// The longest region name [`check_region`] accepts: the worst case for anything a region
/// is rendered into (the userdata size check uses it when the region is not known offline).
pub const LONGEST_REGION: &str = "eusc-de-abcdefghijklmnop-99";

/// Whether `s` is an AWS region name: a partition prefix, a lowercase word and a number of
/// one or two digits (`us-east-1`, `us-gov-west-1`, `cn-northwest-1`, `eu-isoe-west-1`).
/// Stricter than the SDKs' `\w+` and `\d+` (no capitals, underscores or long numbers), so a
/// region is always a short, plain word when it is rendered into an ARN or a root script.
pub fn is_region(s: &str) -> bool {
    REGION_PREFIXES.iter().any(|prefix| {
        s.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(word, number)| {
                (1..=REGION_WORD_MAX).contains(&word.len())
                    && word.bytes().all(|b| b.is_ascii_lowercase())
                    && (1..=2).contains(&number.len())
                    && number.bytes().all(|b| b.is_ascii_digit())
                    && !number.starts_with('0')
            })
    })
}

/// `Ok` for an AWS region name, else what is wrong, for an error that names where the
/// value came from (`region`, `AWS_REGION`, ...).
pub fn check_region(region: &str) -> Result<(), String> {
    if is_region(region) {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not an AWS region name (e.g. eu-west-1, us-gov-west-1, cn-northwest-1)"
        ))
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

pub(super) fn is_slug_or_uuid(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        return is_uuid(inner);
    }
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(super) fn is_instance_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((fam, size)) => {
            fam.starts_with(|c: char| c.is_ascii_lowercase())
                && fam
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !size.is_empty()
                && size
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => false,
    }
}

pub(super) fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_iam_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

fn iam_arn_of(s: &str, kind: &str) -> Option<String> {
    let rest = s.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix("iam::")?;
    let (account, name) = rest.split_once(':')?;
    let name = name.strip_prefix(kind)?.strip_prefix('/')?;
    (partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && is_iam_name(name))
    .then(|| name.to_owned())
}

pub(super) fn is_role_arn(s: &str) -> bool {
    iam_arn_of(s, "role").is_some()
}

pub(super) fn is_instance_profile(s: &str) -> bool {
    iam_arn_of(s, "instance-profile").is_some()
        || (!s.starts_with("arn:") && !s.contains('/') && is_iam_name(s))
}

pub(super) fn parse_ami(s: &str) -> Option<AmiRef> {
    if is_aws_id(s, "ami-") {
        return Some(AmiRef::Id(s.to_owned()));
    }
    let path = s
        .strip_prefix("resolve:ssm:")
        .or_else(|| s.strip_prefix("ssm:"))?;
    (path.starts_with('/')
        && path.len() > 1
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b)))
    .then(|| AmiRef::Ssm(path.to_owned()))
}

pub(super) fn default_ami_parameter(os: Os, arch: Arch) -> String {
    match (os, arch) {
        (Os::Al2023, Arch::X86_64) => {
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".to_owned()
        }
        (Os::Al2023, Arch::Arm64) => {
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64".to_owned()
        }
        (Os::Ubuntu, Arch::X86_64) => {
            "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
                .to_owned()
        }
        (Os::Ubuntu, Arch::Arm64) => {
            "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
                .to_owned()
        }
    }
}

pub(super) fn check_kms_key(key: &str) -> Result<(), String> {
    if let Some(name) = key.strip_prefix("alias/") {
        if name.starts_with("aws/") {
            return Err(format!("{key:?} is an AWS managed key; bbfleet needs a customer managed key (e.g. alias/bbfleet-ci)"));
        }
        if name.is_empty()
            || key.len() > 256
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
        {
            return Err(format!(
                "{key:?} is not a valid alias: alias/ followed by letters, digits, '/', '_' or '-'"
            ));
        }
        return Ok(());
    }
    if is_uuid(key)
        || key
            .strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Ok(());
    }
    if key.starts_with("arn:aws")
        && key.contains(":kms:")
        && (key.contains(":key/") || key.contains(":alias/"))
    {
        if key.contains(":alias/aws/") {
            return Err(format!(
                "{key:?} is an AWS managed key; bbfleet needs a customer managed key"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "{key:?} is not a KMS key id, key ARN, alias (alias/NAME) or alias ARN"
    ))
}

/// A Bitbucket-facing URL: https, or http only to a loopback host (credentials travel on it).
pub fn check_api_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Said without the URL: what is in it is a credential, and messages are logged.
        return Err("the URL holds a user name or password (user:pass@); give credentials in the BITBUCKET_* variables only".to_owned());
    }
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("{url:?}: credentials are sent to this URL, so it must be https (http only to a loopback host)")),
    }
}

/// The architecture of an instance family.
pub(super) fn arch_of_family(family: &str) -> Arch {
    // Graviton families carry a `g` right after the generation digit: m6g, c7gn, t4g, im4gn, a1.
    let digits_end = family
        .char_indices()
        .skip_while(|(_, c)| c.is_ascii_lowercase())
        .find(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| i);
    let arm = family == "a1"
        || (!family.contains('-')
            && digits_end.is_some_and(|i| {
                family[i..].starts_with('g') && family[..i].ends_with(|c: char| c.is_ascii_digit())
            }));
    if arm {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}
