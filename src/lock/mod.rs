//! The fleet lock: one writer (apply, destroy, autoscale) at a time per fleet.
//!
//! The lock is a series of SSM String parameters `/bbfleet/{fleet}/lock/{generation}`,
//! each written once with `Overwrite=false`; only the newest generation counts. Taking,
//! renewing and releasing the lock all write the next generation, so two writers racing
//! for the same name cannot both win (SSM answers `ParameterAlreadyExists` to the loser),
//! and numbers only grow while generations exist (old ones are pruned; a taker holds the
//! lock only if its generation is the newest and the one it judged is still there, so a
//! re-created name never wins). `destroy` deletes them all once done. A holder that crashed is recognised as stale: its expiry has passed, or it ran on
//! this machine (same boot, same pid namespace) and its process is gone.

//!
//! Fenced: a holder stops writing by itself before anyone may take the lock over. It keeps
//! a monotonic deadline (the instant it sent its last successful write of the lock, plus
//! the TTL, minus [`safety_margin`]); the executor checks it before every batch of writes
//! ([`Fence`]), and the work is dropped at the deadline. A taker judges expiry by the time
//! SSM recorded the newest generation plus the holder's lease (`record::judge`).
//!
//! Here: the constants and the error. `record` is the value of one generation and what
//! the generations mean, `identity` who this process is and whether a holder still runs,
//! `store` the SSM reads and writes, `hold` taking, keeping and releasing the lock,
//! `fence` the holder's deadline as the writers see it.

use std::time::Duration;

use crate::aws::AwsError;

mod fence;
mod hold;
mod identity;
mod record;
mod store;
mod unlock;

pub use fence::{Fence, Fenced};
pub use hold::{acquire, acquire_for, Event, HeldLock};
pub use identity::{owner, pid_running, Identity};
pub use record::{
    judge, next_generation, parse_generation, prunable, Generation, LockState, LockValue, Verdict,
};
pub use store::list;
pub use unlock::{force_release, holder};

/// How long a lock lives without renewal: a crashed holder on another machine blocks
/// others at most this long.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// How often a holder renews (a third of the TTL).
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
/// How soon a failed renewal is tried again (not at the next heartbeat: the deadline is
/// near). Bounded: retries stop at the deadline.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// The smallest safety margin, whatever the TTL.
const MIN_MARGIN: Duration = Duration::from_secs(3);
/// Environment variable: the TTL in whole seconds (3 to 86400), for tests that must wait
/// past it; the default is [`TTL`]. Takers need not know it: a holder's lease is in its value.
pub const TTL_ENV: &str = "BBFLEET_LOCK_TTL";

/// The TTL this process holds the lock with: [`TTL`], or [`TTL_ENV`] when set and valid.
pub fn ttl() -> Duration {
    std::env::var(TTL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (3..=86_400).contains(s))
        .map_or(TTL, Duration::from_secs)
}

/// How long before the lock may be taken over a holder stops writing: 20 % of the TTL, at
/// least [`MIN_MARGIN`], at most half the TTL (3 min of the default 15). It covers what
/// separates the holder's deadline from a taker's judgement: the taker's clock running
/// ahead of SSM's, SSM's `LastModifiedDate` being read in whole seconds (up to 1 s early),
/// and a batch that started just before the deadline finishing its started calls.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(MIN_MARGIN).min(ttl / 2)
}

/// The holder's deadline after a write of the lock sent at `sent`: the TTL minus the
/// [`safety_margin`] later.
fn deadline(sent: tokio::time::Instant, ttl: Duration) -> tokio::time::Instant {
    sent + ttl - safety_margin(ttl)
}
/// `--lock-timeout` default.
pub const DEFAULT_TIMEOUT: &str = "5m";

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
    /// The lock could not be renewed before its deadline, or was taken over: the work was
    /// stopped there.
    #[error("{0}; run again")]
    Fenced(#[from] Fenced),
    /// Too many lost races in a row (bounded loop).
    #[error("could not take the fleet lock of {fleet} after {attempts} attempts")]
    Contended {
        /// Fleet name.
        fleet: String,
        /// Attempts made.
        attempts: u32,
    },
}

#[cfg(test)]
mod tests;
