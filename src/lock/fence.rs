//! The holder's deadline, as the code that writes under the lock sees it.
//!
//! Clocks: the deadline is monotonic (`tokio::time::Instant`, i.e. `CLOCK_MONOTONIC`,
//! which keeps running while the process is stopped) and conservative: it counts from the
//! instant the holder *sent* its last successful write of the lock, which is before SSM
//! recorded that write's `LastModifiedDate`, and ends a safety margin before the TTL. A
//! taker judges the same lease from SSM's `LastModifiedDate` plus the lease, on its own
//! clock (`record::judge`): the two meet only if the taker's clock ran ahead of SSM's by
//! more than the margin. Neither side trusts the holder's wall clock.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::time::Instant;

/// Why the work under the lock must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// No renewal succeeded in time: past the deadline another run may take the lock over.
    #[error("the fleet lock of {fleet} could not be renewed since {since} ({cause}); its deadline passed and another run may take it over, so this one stopped writing")]
    Expired {
        /// Fleet name.
        fleet: String,
        /// When the lock was last taken or renewed (this machine's clock, for the reader).
        since: String,
        /// The last renewal error, or why none ran.
        cause: String,
    },
    /// A renewal found the lock taken over.
    #[error("the fleet lock of {fleet} was taken over by {holder}, so this run stopped writing")]
    Lost {
        /// Fleet name.
        fleet: String,
        /// Who holds it now.
        holder: String,
    },
}

/// A cheap clonable handle on a held lock's validity: [`Fence::check`] before each write.
#[derive(Debug, Clone)]
pub struct Fence(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    fleet: String,
    valid_until: Instant,
    renewed: Timestamp,
    cause: Option<String>,
    lost_to: Option<String>,
}

impl Fence {
    /// A fence valid until `valid_until` for a lock of `fleet` taken at `renewed`.
    pub(super) fn new(fleet: &str, valid_until: Instant, renewed: Timestamp) -> Fence {
        Fence(Arc::new(Mutex::new(State {
            fleet: fleet.to_owned(),
            valid_until,
            renewed,
            cause: None,
            lost_to: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` while the lock is ours and its deadline has not passed: writing may go on.
    pub fn check(&self) -> Result<(), Fenced> {
        let s = self.state();
        if let Some(holder) = &s.lost_to {
            return Err(Fenced::Lost {
                fleet: s.fleet.clone(),
                holder: holder.clone(),
            });
        }
        if Instant::now() >= s.valid_until {
            return Err(Fenced::Expired {
                fleet: s.fleet.clone(),
                since: s
                    .renewed
                    .round(jiff::Unit::Second)
                    .unwrap_or(s.renewed)
                    .to_string(),
                cause: s.cause.clone().unwrap_or_else(|| {
                    "no renewal ran in time: was the process suspended?".to_owned()
                }),
            });
        }
        Ok(())
    }

    /// The deadline: no write may start from then on.
    pub fn valid_until(&self) -> Instant {
        self.state().valid_until
    }

    /// A write of the lock sent at wall-clock time `at` succeeded: valid until `valid_until`.
    pub(super) fn renewed(&self, valid_until: Instant, at: Timestamp) {
        let mut s = self.state();
        s.valid_until = s.valid_until.max(valid_until);
        s.renewed = at;
        s.cause = None;
    }

    /// A renewal failed with `cause` (kept for the error; the deadline stays).
    pub(super) fn failed(&self, cause: String) {
        self.state().cause = Some(cause);
    }

    /// The lock was taken over by `holder`: no write from now on.
    pub(super) fn lost(&self, holder: String) {
        self.state().lost_to = Some(holder);
    }
}
