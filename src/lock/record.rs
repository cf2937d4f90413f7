//! The lock record: the JSON value of one generation, and what the generations mean.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::TTL;
use crate::names;

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
    /// When the lock is stale unless renewed (the holder's clock: shown, and with
    /// `renewed_at` it gives the lease; takers judge by SSM's time, see [`judge`]).
    pub expires_at: Timestamp,
    /// When this generation was written (the holder's clock); `expires_at - renewed_at` is
    /// the lease. Absent in values written before fencing: `acquired_at` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<Timestamp>,
    /// Boot id and pid namespace of the holder: a pid is only checked within the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
    /// Start time of the holder's process (clock ticks after boot): a reused pid is not it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
}

impl LockValue {
    /// A `held` value for `me`, expiring `ttl` from `now`.
    pub fn held(
        me: &Identity,
        command: &str,
        acquired_at: Timestamp,
        now: Timestamp,
        ttl: Duration,
    ) -> Self {
        LockValue {
            state: LockState::Held,
            owner: me.owner.clone(),
            host: me.host.clone(),
            pid: me.pid,
            command: command.to_owned(),
            acquired_at,
            expires_at: add(now, ttl),
            renewed_at: Some(now),
            pid_scope: me.pid_scope.clone(),
            pid_started: me.pid_started,
        }
    }

    /// A `released` value written by `me`.
    pub fn released(me: &Identity, command: &str, now: Timestamp) -> Self {
        LockValue {
            state: LockState::Released,
            expires_at: now,
            ..Self::held(me, command, now, now, Duration::ZERO)
        }
    }

    /// The stand-in for a value that does not parse (written by hand): held by an unknown
    /// holder until its write time plus the TTL.
    pub(super) fn unreadable(written: Timestamp) -> Self {
        LockValue {
            state: LockState::Held,
            owner: "unknown (unreadable lock value)".to_owned(),
            host: "unknown".to_owned(),
            pid: 0,
            command: "unknown".to_owned(),
            acquired_at: written,
            expires_at: add(written, TTL),
            renewed_at: Some(written),
            pid_scope: None,
            pid_started: None,
        }
    }

    /// Parses a stored value.
    pub fn parse(text: &str) -> Result<LockValue, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// How long the holder claimed the lock for when it wrote this value: `expires_at`
    /// minus `renewed_at` (or `acquired_at`), both on the holder's clock, so its offset
    /// cancels out; never negative.
    pub fn lease(&self) -> Duration {
        let from = self.renewed_at.unwrap_or(self.acquired_at);
        Duration::try_from(self.expires_at.duration_since(from)).unwrap_or(Duration::ZERO)
    }

    /// When this value stops holding the lock: the time SSM recorded its write (`written`,
    /// `LastModifiedDate`) plus the lease; `expires_at` when SSM's time is unknown.
    pub fn expiry(&self, written: Option<Timestamp>) -> Timestamp {
        written.map_or(self.expires_at, |w| add(w, self.lease()))
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
    /// When SSM recorded the write (`LastModifiedDate`), if it said.
    pub written: Option<Timestamp>,
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

/// Judges the newest generation at `now` (this machine's clock), as seen by `me`.
///
/// Expiry is SSM's time, not the holder's: the generation's `LastModifiedDate` ("Date the
/// parameter was last changed or updated and the parameter version was created", SSM API
/// Reference, `Parameter` data type, as GetParametersByPath returns it) plus the lease the
/// holder wrote ([`LockValue::expiry`]). A holder whose clock is wrong cannot make its lock
/// look expired early; only this machine's clock running ahead of SSM's can, and the
/// holder stops a safety margin before that point (`super::safety_margin`).
pub fn judge(
    newest: Option<&Generation>,
    me: &Identity,
    now: Timestamp,
    running: impl Fn(u32, Option<u64>) -> bool,
) -> Verdict {
    let Some(g) = newest else {
        return Verdict::Free;
    };
    let v = &g.value;
    if v.state == LockState::Released {
        return Verdict::Free;
    }
    let expiry = v.expiry(g.written);
    if expiry <= now {
        return Verdict::Stale(format!("expired at {expiry}"));
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
