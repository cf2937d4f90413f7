//! The fleet lock: one writer (apply, destroy, autoscale) at a time per fleet.
//!
//! The lock is a series of SSM String parameters `/bbfleet/{fleet}/lock/{generation}`,
//! each written once with `Overwrite=false`; only the newest generation counts. Taking,
//! renewing and releasing the lock all write the next generation, so two writers racing
//! for the same name cannot both win (SSM answers `ParameterAlreadyExists` to the loser),
//! and names are never deleted and written again (old generations are pruned, numbers only
//! grow). A holder that crashed is recognised as stale: its expiry has passed, or it ran on
//! this machine (same boot, same pid namespace) and its process is gone.

//!
//! Here: the constants and the error. `record` is the value of one generation and what
//! the generations mean, `identity` who this process is and whether a holder still runs,
//! `store` the SSM reads and writes, `hold` taking, keeping and releasing the lock.

use std::time::Duration;

use crate::aws::AwsError;

mod hold;
mod identity;
mod record;
mod store;
mod unlock;

pub use hold::{acquire, Event, HeldLock};
pub use identity::{owner, pid_running, Identity};
pub use record::{
    judge, next_generation, parse_generation, prunable, Generation, LockState, LockValue, Verdict,
};
pub use store::list;
pub use unlock::{force_release, holder};

/// How long a lock lives without renewal: a crashed holder on another machine blocks
/// others at most this long.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// How often a holder renews (a third of the TTL: two renewals may fail in a row).
pub const RENEW_EVERY: Duration = Duration::from_secs(5 * 60);
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
