//! Who holds the lock: this process's identity, and whether a holder's process still runs.

/// This process, as a lock holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The pipeline, or user@host.
    pub owner: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Boot id and pid namespace, when readable.
    pub pid_scope: Option<String>,
    /// Start time of this process (clock ticks after boot), when readable.
    pub pid_started: Option<u64>,
}

impl Identity {
    /// This process, from the environment and `/proc`.
    pub fn current() -> Identity {
        let host = read_trimmed("/proc/sys/kernel/hostname")
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unknown-host".to_owned());
        Identity {
            owner: owner(|k| std::env::var(k).ok(), &host),
            host,
            pid: std::process::id(),
            pid_scope: pid_scope(),
            pid_started: read_stat(std::process::id()).and_then(|s| process_started(&s)),
        }
    }
}

/// Who holds the lock: the Bitbucket pipeline when running in one, else `user@host`.
pub fn owner(env: impl Fn(&str) -> Option<String>, host: &str) -> String {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    match (
        get("BITBUCKET_PIPELINE_UUID"),
        get("BITBUCKET_BUILD_NUMBER"),
    ) {
        (Some(uuid), Some(n)) => format!("pipeline {} (build #{n})", uuid.trim()),
        (Some(uuid), None) => format!("pipeline {}", uuid.trim()),
        (None, Some(n)) => format!("pipeline build #{n}"),
        (None, None) => {
            let user = get("USER")
                .or_else(|| get("LOGNAME"))
                .unwrap_or_else(|| "unknown".to_owned());
            format!("{user}@{host}")
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `{boot id}/{pid namespace}`: two processes see each other's pids only when both match.
fn pid_scope() -> Option<String> {
    let boot = read_trimmed("/proc/sys/kernel/random/boot_id")?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{boot}/{}", ns.display()))
}

fn read_stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Whether `pid` is a running (not zombie) process of this pid namespace, and the same
/// process (its start time matches `started`, when known). Without `/proc`: assumed running.
pub fn pid_running(pid: u32, started: Option<u64>) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return true;
    }
    let Some(stat) = read_stat(pid) else {
        return false;
    };
    if matches!(process_state(&stat), Some('Z' | 'X')) {
        return false;
    }
    match (started, process_started(&stat)) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    }
}

/// The fields of a `/proc/{pid}/stat` line after the parenthesised command (field 3 on).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

/// The state letter (field 3).
pub(super) fn process_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

/// The start time in clock ticks after boot (field 22).
pub(super) fn process_started(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(22 - 3)?.parse().ok()
}
