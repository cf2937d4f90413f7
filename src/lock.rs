//! The fleet lock: one writer (apply, destroy, autoscale) at a time per fleet.
//!
//! The lock is a series of SSM String parameters `/bbfleet/{fleet}/lock/{generation}`,
//! each written once with `Overwrite=false`; only the newest generation counts. Taking,
//! renewing and releasing the lock all write the next generation, so two writers racing
//! for the same name cannot both win (SSM answers `ParameterAlreadyExists` to the loser),
//! and names are never deleted and written again (old generations are pruned, numbers only
//! grow). A holder that crashed is recognised as stale: its expiry has passed, or it ran on
//! this machine (same boot, same pid namespace) and its process is gone.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::aws::{ssm, AwsError};
use crate::names;

/// How long a lock lives without renewal: a crashed holder on another machine blocks
/// others at most this long.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// How often a holder renews (a third of the TTL: two renewals may fail in a row).
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// `--lock-timeout` default.
pub const DEFAULT_TIMEOUT: &str = "5m";

/// First and longest pause between looks at a held lock.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Looks at the lock before giving up, whatever the timeout (keeps the loop bounded).
const MAX_ATTEMPTS: u32 = 10_000;
/// Renewals of one hold (RENEW_EVERY each: about a week).
const MAX_RENEWALS: u32 = 2_016;

/// The lock could not be taken, kept or released.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// An SSM call failed.
    #[error("fleet lock: {0}")]
    Aws(#[from] AwsError),
    /// Someone else holds it and kept it past `--lock-timeout`.
    #[error("the fleet lock of {fleet} is held by {holder}; gave up after waiting {waited} (--lock-timeout); nothing was changed. If that run is gone, `bbfleet unlock --force` releases the lock")]
    Timeout {
        /// Fleet name.
        fleet: String,
        /// Who holds it (owner, host, command, since, expiry).
        holder: String,
        /// The timeout, as given.
        waited: String,
    },
    /// Another run took the lock over while this one held it (this one was thought dead).
    #[error("lost the fleet lock of {fleet} to {holder} while working; stopped so two runs do not change the fleet at once; run again")]
    Lost {
        /// Fleet name.
        fleet: String,
        /// Who holds it now.
        holder: String,
    },
    /// Too many lost races in a row (bounded loop).
    #[error("could not take the fleet lock of {fleet} after {attempts} attempts")]
    Contended {
        /// Fleet name.
        fleet: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// Whether a generation takes or gives back the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockState {
    /// Taken (or renewed).
    Held,
    /// Given back.
    Released,
}

/// The JSON value of one generation. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockValue {
    /// Held or released.
    pub state: LockState,
    /// Who: the Bitbucket pipeline, or user@host.
    pub owner: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// `apply`, `destroy`, `autoscale`, `unlock`.
    pub command: String,
    /// When the holder took the lock (kept across renewals).
    pub acquired_at: Timestamp,
    /// When the lock is stale unless renewed.
    pub expires_at: Timestamp,
    /// Boot id and pid namespace of the holder: a pid is only checked within the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
    /// Start time of the holder's process (clock ticks after boot): a reused pid is not it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
}

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
fn process_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

/// The start time in clock ticks after boot (field 22).
fn process_started(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(22 - 3)?.parse().ok()
}

impl LockValue {
    /// A `held` value for `me`, expiring `ttl` from `now`.
    pub fn held(me: &Identity, command: &str, acquired_at: Timestamp, now: Timestamp) -> Self {
        LockValue {
            state: LockState::Held,
            owner: me.owner.clone(),
            host: me.host.clone(),
            pid: me.pid,
            command: command.to_owned(),
            acquired_at,
            expires_at: add(now, TTL),
            pid_scope: me.pid_scope.clone(),
            pid_started: me.pid_started,
        }
    }

    /// A `released` value written by `me`.
    pub fn released(me: &Identity, command: &str, now: Timestamp) -> Self {
        LockValue {
            state: LockState::Released,
            expires_at: now,
            ..Self::held(me, command, now, now)
        }
    }

    /// Parses a stored value.
    pub fn parse(text: &str) -> Result<LockValue, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Whether this value was written by `me` (same owner, host and process).
    pub fn is_mine(&self, me: &Identity) -> bool {
        self.owner == me.owner && self.host == me.host && self.pid == me.pid
    }
}

impl std::fmt::Display for LockValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on host {} (pid {}, `bbfleet {}`, since {}, expires {})",
            self.owner,
            self.host,
            self.pid,
            self.command,
            self.acquired_at
                .round(jiff::Unit::Second)
                .unwrap_or(self.acquired_at),
            self.expires_at
                .round(jiff::Unit::Second)
                .unwrap_or(self.expires_at),
        )
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// One stored generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generation number (the last path segment).
    pub generation: u64,
    /// Full parameter name.
    pub name: String,
    /// The value; an unreadable one counts as held until its write time plus the TTL.
    pub value: LockValue,
}

/// What the newest generation means for someone who wants the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody holds it: no generation yet, or the newest is `released`.
    Free,
    /// Held, but the holder is gone (the reason says why): take it over.
    Stale(String),
    /// Held by a live holder.
    Held,
}

/// Judges the newest generation's value at `now`, as seen by `me`.
pub fn judge(
    newest: Option<&LockValue>,
    me: &Identity,
    now: Timestamp,
    running: impl Fn(u32, Option<u64>) -> bool,
) -> Verdict {
    let Some(v) = newest else {
        return Verdict::Free;
    };
    if v.state == LockState::Released {
        return Verdict::Free;
    }
    if v.expires_at <= now {
        return Verdict::Stale(format!("expired at {}", v.expires_at));
    }
    let same_machine = v.host == me.host && v.pid_scope.is_some() && v.pid_scope == me.pid_scope;
    if same_machine && v.pid != me.pid && !running(v.pid, v.pid_started) {
        return Verdict::Stale(format!("process {} on this host is gone", v.pid));
    }
    Verdict::Held
}

/// The generation a new write takes: one above the newest, 1 when there is none.
pub fn next_generation(generations: &[Generation]) -> u64 {
    generations
        .iter()
        .map(|g| g.generation)
        .max()
        .map_or(1, |g| g.saturating_add(1))
}

/// Names of generations older than the one before `newest` (kept: `newest` and its predecessor).
pub fn prunable(generations: &[Generation], newest: u64) -> Vec<String> {
    generations
        .iter()
        .filter(|g| g.generation.saturating_add(1) < newest)
        .map(|g| g.name.clone())
        .collect()
}

/// The generation number of a lock parameter name, if it is one.
pub fn parse_generation(fleet: &str, name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix(&names::lock_path(fleet))?
        .strip_prefix('/')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The fleet's lock generations, oldest first (one GetParametersByPath call per page).
pub async fn list(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Vec<Generation>, AwsError> {
    let mut out = Vec::new();
    for p in ssm::list_path(ssm, &names::lock_path(fleet), false).await? {
        let Some(generation) = parse_generation(fleet, &p.name) else {
            continue;
        };
        let value = LockValue::parse(&p.value).unwrap_or_else(|e| {
            // Someone wrote this by hand: treat it as held until its write time + TTL,
            // so a mistake blocks for a while but not for ever.
            tracing::warn!(parameter = %p.name, error = %e, "unreadable fleet lock value");
            let written = p.last_modified.unwrap_or(Timestamp::UNIX_EPOCH);
            LockValue {
                state: LockState::Held,
                owner: "unknown (unreadable lock value)".to_owned(),
                host: "unknown".to_owned(),
                pid: 0,
                command: "unknown".to_owned(),
                acquired_at: written,
                expires_at: add(written, TTL),
                pid_scope: None,
                pid_started: None,
            }
        });
        out.push(Generation {
            generation,
            name: p.name,
            value,
        });
    }
    out.sort_by_key(|g| g.generation);
    Ok(out)
}

/// Writes one generation with `Overwrite=false`: `Ok(false)` when the name exists (lost race).
async fn put(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    generation: u64,
    value: &LockValue,
) -> Result<bool, AwsError> {
    let name = names::lock_parameter(fleet, generation);
    let text =
        serde_json::to_string(value).map_err(|e| AwsError::Invalid(format!("{name}: {e}")))?;
    let description = format!("bbfleet {fleet}: fleet lock, generation {generation}");
    ssm::create_string(ssm, fleet, &name, Some(description), &text).await
}

/// What happened while taking the lock, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Waiting for a live holder (reported once per holder).
    Waiting(LockValue),
    /// Taking over a stale holder's lock.
    TakingOver {
        /// The stale holder.
        holder: LockValue,
        /// Why it is stale.
        reason: String,
    },
}

/// A held lock. Release it with [`HeldLock::release`]; dropping it leaves the lock to expire.
#[derive(Debug)]
pub struct HeldLock {
    ssm: aws_sdk_ssm::Client,
    fleet: String,
    me: Identity,
    command: String,
    acquired_at: Timestamp,
    generation: u64,
}

/// Takes the fleet lock for `command`, waiting up to `timeout` for a live holder;
/// `on_event` hears about waits and takeovers.
pub async fn acquire(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    command: &str,
    timeout: Duration,
    timeout_text: &str,
    mut on_event: impl FnMut(&Event),
) -> Result<HeldLock, LockError> {
    let me = Identity::current();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = FIRST_DELAY;
    let mut last_reported: Option<LockValue> = None;
    for _ in 0..MAX_ATTEMPTS {
        let generations = list(ssm, fleet).await?;
        let newest = generations.last();
        let now = Timestamp::now();
        match (
            judge(newest.map(|g| &g.value), &me, now, pid_running),
            newest,
        ) {
            (Verdict::Held, Some(newest)) => {
                let holder = newest.value.clone();
                if tokio::time::Instant::now() >= deadline {
                    return Err(LockError::Timeout {
                        fleet: fleet.to_owned(),
                        holder: holder.to_string(),
                        waited: timeout_text.to_owned(),
                    });
                }
                if last_reported.as_ref() != Some(&holder) {
                    on_event(&Event::Waiting(holder.clone()));
                    last_reported = Some(holder);
                }
                pause(&mut delay, deadline).await;
            }
            (verdict, _) => {
                if let (Verdict::Stale(reason), Some(g)) = (&verdict, newest) {
                    on_event(&Event::TakingOver {
                        holder: g.value.clone(),
                        reason: reason.clone(),
                    });
                }
                let generation = next_generation(&generations);
                let value = LockValue::held(&me, command, now, now);
                if !put(ssm, fleet, generation, &value).await? {
                    // Lost the race for this generation: look again (the winner now holds it).
                    tracing::debug!(fleet, generation, "lost the race for the fleet lock");
                    continue;
                }
                // A writer that listed long ago could only succeed on a pruned (older) name;
                // the lock is ours only if our generation is still the newest.
                let after = list(ssm, fleet).await?;
                if after.last().map(|g| g.generation) != Some(generation) {
                    tracing::debug!(fleet, generation, "a newer lock generation exists");
                    continue;
                }
                let old = prunable(&after, generation);
                if !old.is_empty() {
                    if let Err(e) = ssm::delete(ssm, &old).await {
                        tracing::warn!(fleet, error = %e, "could not prune old lock generations");
                    }
                }
                tracing::info!(fleet, generation, "fleet lock taken");
                return Ok(HeldLock {
                    ssm: ssm.clone(),
                    fleet: fleet.to_owned(),
                    me,
                    command: command.to_owned(),
                    acquired_at: now,
                    generation,
                });
            }
        }
    }
    Err(LockError::Contended {
        fleet: fleet.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Sleeps a jittered, growing delay, never past `deadline`.
async fn pause(delay: &mut Duration, deadline: tokio::time::Instant) {
    let jittered = delay.mul_f64(0.5 + fastrand::f64());
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    tokio::time::sleep(jittered.min(left)).await;
    *delay = (*delay * 2).min(MAX_DELAY);
}

impl HeldLock {
    /// Writes the next generation as held by us: `Lost` when someone took the lock over.
    pub async fn renew(&mut self) -> Result<(), LockError> {
        let next = self.generation.saturating_add(1);
        let value = LockValue::held(&self.me, &self.command, self.acquired_at, Timestamp::now());
        if put(&self.ssm, &self.fleet, next, &value).await? {
            self.generation = next;
            tracing::debug!(fleet = %self.fleet, generation = next, "fleet lock renewed");
            return Ok(());
        }
        Err(self.lost().await)
    }

    async fn lost(&self) -> LockError {
        let holder = match list(&self.ssm, &self.fleet).await {
            Ok(g) => g
                .last()
                .map_or_else(|| "nobody".to_owned(), |g| g.value.to_string()),
            Err(e) => format!("someone (cannot read the lock: {e})"),
        };
        LockError::Lost {
            fleet: self.fleet.clone(),
            holder,
        }
    }

    /// Runs `work` while renewing the lock every [`RENEW_EVERY`]; stops `work` (drops it,
    /// like a crash, which the next apply converges from) if the lock was taken over.
    pub async fn guard<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, LockError> {
        self.guard_every(RENEW_EVERY, work).await
    }

    /// [`HeldLock::guard`] with another renewal interval (tests use a short one).
    pub async fn guard_every<T>(
        &mut self,
        every: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, LockError> {
        let mut work = std::pin::pin!(work);
        for _ in 0..MAX_RENEWALS {
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = tokio::time::sleep(every) => {
                    match self.renew().await {
                        Ok(()) => {}
                        Err(e @ LockError::Lost { .. }) => return Err(e),
                        // A failed renewal is retried at the next one; the TTL allows two misses.
                        Err(e) => tracing::warn!(fleet = %self.fleet, error = %e, "could not renew the fleet lock"),
                    }
                }
            }
        }
        Ok(work.await)
    }

    /// Gives the lock back (writes the next generation as `released`).
    pub async fn release(self) -> Result<(), LockError> {
        let next = self.generation.saturating_add(1);
        let value = LockValue::released(&self.me, &self.command, Timestamp::now());
        if put(&self.ssm, &self.fleet, next, &value).await? {
            tracing::info!(fleet = %self.fleet, generation = next, "fleet lock released");
            return Ok(());
        }
        Err(self.lost().await)
    }
}

/// Who holds the lock now, if anyone (for `status` and `unlock`).
pub async fn holder(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Option<LockValue>, AwsError> {
    Ok(list(ssm, fleet)
        .await?
        .pop()
        .map(|g| g.value)
        .filter(|v| v.state == LockState::Held))
}

/// Releases the lock whoever holds it (`unlock --force`); returns the holder it released,
/// `None` when it was not held.
pub async fn force_release(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
) -> Result<Option<LockValue>, LockError> {
    let me = Identity::current();
    for _ in 0..10 {
        let generations = list(ssm, fleet).await?;
        let Some(newest) = generations.last() else {
            return Ok(None);
        };
        if newest.value.state == LockState::Released {
            return Ok(None);
        }
        let value = LockValue::released(&me, "unlock", Timestamp::now());
        if put(ssm, fleet, next_generation(&generations), &value).await? {
            return Ok(Some(newest.value.clone()));
        }
    }
    Err(LockError::Contended {
        fleet: fleet.to_owned(),
        attempts: 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            owner: "dev@laptop".to_owned(),
            host: "laptop".to_owned(),
            pid: 100,
            pid_scope: Some("boot/pid:[1]".to_owned()),
            pid_started: Some(5),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn other(host: &str, pid: u32, scope: Option<&str>, expires: &str) -> LockValue {
        LockValue {
            state: LockState::Held,
            owner: format!("ops@{host}"),
            host: host.to_owned(),
            pid,
            command: "apply".to_owned(),
            acquired_at: at("2026-01-01T10:00:00Z"),
            expires_at: at(expires),
            pid_scope: scope.map(str::to_owned),
            pid_started: None,
        }
    }

    #[test]
    fn staleness() {
        let now = at("2026-01-01T10:05:00Z");
        let alive = |_, _| true;
        let dead = |_, _| false;
        assert_eq!(judge(None, &me(), now, alive), Verdict::Free);
        let mut released = other("laptop", 7, None, "2026-01-01T11:00:00Z");
        released.state = LockState::Released;
        assert_eq!(judge(Some(&released), &me(), now, alive), Verdict::Free);
        // Live holder elsewhere, not expired: held even though "its pid" is not here.
        let remote = other("ci-box", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
        assert_eq!(judge(Some(&remote), &me(), now, dead), Verdict::Held);
        // Expired: stale wherever it is.
        let expired = other("ci-box", 7, None, "2026-01-01T10:04:59Z");
        assert!(matches!(
            judge(Some(&expired), &me(), now, alive),
            Verdict::Stale(r) if r.contains("expired")
        ));
        // Same machine: a dead pid is stale at once, a live one holds.
        let local = other("laptop", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
        assert!(matches!(
            judge(Some(&local), &me(), now, dead),
            Verdict::Stale(r) if r.contains("process 7")
        ));
        assert_eq!(judge(Some(&local), &me(), now, alive), Verdict::Held);
        // Same host name but another pid namespace (a container) or unknown scope: no pid check.
        let container = other("laptop", 7, Some("boot/pid:[2]"), "2026-01-01T10:20:00Z");
        assert_eq!(judge(Some(&container), &me(), now, dead), Verdict::Held);
        let unknown = other("laptop", 7, None, "2026-01-01T10:20:00Z");
        assert_eq!(judge(Some(&unknown), &me(), now, dead), Verdict::Held);
    }

    #[test]
    fn values_round_trip_and_parse_the_documented_shape() {
        let v = LockValue::held(
            &me(),
            "apply",
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:00:00Z"),
        );
        assert_eq!(v.expires_at, at("2026-01-01T10:15:00Z"));
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(LockValue::parse(&text).unwrap(), v);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["state"], "held");
        assert_eq!(doc["acquired_at"], "2026-01-01T10:00:00Z");
        let hand = r#"{"state":"released","owner":"x","host":"h","pid":1,"command":"apply","acquired_at":"2026-01-01T10:00:00Z","expires_at":"2026-01-01T10:15:00+00:00"}"#;
        let parsed = LockValue::parse(hand).unwrap();
        assert_eq!(parsed.state, LockState::Released);
        assert_eq!(parsed.pid_scope, None);
        assert!(LockValue::parse(r#"{"state":"taken"}"#).is_err());
        assert!(LockValue::parse("not json").is_err());
        let shown = v.to_string();
        for part in [
            "dev@laptop",
            "laptop",
            "pid 100",
            "bbfleet apply",
            "since 2026-01-01T10:00:00Z",
            "expires 2026-01-01T10:15:00Z",
        ] {
            assert!(shown.contains(part), "{part} in {shown}");
        }
    }

    #[test]
    fn generations_only_grow_and_prune_keeps_two() {
        let g = |n: u64| Generation {
            generation: n,
            name: names::lock_parameter("ci", n),
            value: other("h", 1, None, "2026-01-01T10:00:00Z"),
        };
        assert_eq!(next_generation(&[]), 1);
        assert_eq!(next_generation(&[g(3), g(9), g(4)]), 10);
        assert_eq!(
            prunable(&[g(3), g(4), g(5), g(6)], 6),
            vec![
                names::lock_parameter("ci", 3),
                names::lock_parameter("ci", 4)
            ]
        );
        assert!(prunable(&[g(1)], 1).is_empty());
        assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/12"), Some(12));
        assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/x"), None);
        assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/"), None);
        assert_eq!(parse_generation("ci", "/bbfleet/ci2/lock/1"), None);
        assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/1/2"), None);
    }

    #[test]
    fn owner_is_the_pipeline_or_user_at_host() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            owner(
                env(&[
                    ("BITBUCKET_PIPELINE_UUID", "{abc}"),
                    ("BITBUCKET_BUILD_NUMBER", "42"),
                    ("USER", "x")
                ]),
                "h"
            ),
            "pipeline {abc} (build #42)"
        );
        assert_eq!(owner(env(&[("USER", "ana")]), "box"), "ana@box");
        assert_eq!(owner(env(&[]), "box"), "unknown@box");
    }

    #[test]
    fn process_state_reads_past_the_command_name() {
        assert_eq!(process_state("12 (bbfleet) S 1 2"), Some('S'));
        assert_eq!(process_state("12 (a) (b)) Z 1 2"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
        let stat = "7 (x y) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50";
        assert_eq!(process_started(stat), Some(98765));
        let me = Identity::current();
        assert!(pid_running(me.pid, None));
        if me.pid_started.is_some() {
            assert!(pid_running(me.pid, me.pid_started));
            // Same pid, another start time: the pid was reused, the holder is gone.
            assert!(!pid_running(me.pid, me.pid_started.map(|t| t + 1)));
        }
    }
}
