//! Taking, keeping and giving back the lock; giving back the lock.

use std::time::Duration;

use jiff::Timestamp;

use super::identity::{pid_running, Identity};
use super::record::{judge, next_generation, prunable, LockValue, Verdict};
use super::store::{list, put};
use super::{LockError, RENEW_EVERY};
use crate::aws::{ssm, AwsError};

/// First and longest pause between looks at a held lock.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Looks at the lock before giving up, whatever the timeout (keeps the loop bounded).
const MAX_ATTEMPTS: u32 = 10_000;
/// Renewals of one hold (RENEW_EVERY each: about a week).
const MAX_RENEWALS: u32 = 2_016;

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
    let mut wait = Wait {
        deadline: tokio::time::Instant::now() + timeout,
        delay: FIRST_DELAY,
        last_reported: None,
    };
    for _ in 0..MAX_ATTEMPTS {
        let generations = list(ssm, fleet).await?;
        let newest = generations.last();
        let now = Timestamp::now();
        match (
            judge(newest.map(|g| &g.value), &me, now, pid_running),
            newest,
        ) {
            (Verdict::Held, Some(newest)) => {
                wait.on_held(fleet, &newest.value, timeout_text, &mut on_event)
                    .await?;
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
                if take(ssm, fleet, generation, &value).await? {
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
    }
    Err(LockError::Contended {
        fleet: fleet.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Waiting for a live holder: the deadline, the next pause, the holder last reported.
struct Wait {
    deadline: tokio::time::Instant,
    delay: Duration,
    last_reported: Option<LockValue>,
}

impl Wait {
    /// `Timeout` once the deadline has passed; else reports a new holder (once) and pauses.
    async fn on_held(
        &mut self,
        fleet: &str,
        holder: &LockValue,
        timeout_text: &str,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<(), LockError> {
        if tokio::time::Instant::now() >= self.deadline {
            return Err(LockError::Timeout {
                fleet: fleet.to_owned(),
                holder: holder.to_string(),
                waited: timeout_text.to_owned(),
            });
        }
        if self.last_reported.as_ref() != Some(holder) {
            on_event(&Event::Waiting(holder.clone()));
            self.last_reported = Some(holder.clone());
        }
        pause(&mut self.delay, self.deadline).await;
        Ok(())
    }
}

/// Writes `value` as generation `generation` and checks it is still the newest (then prunes
/// the old generations): whether the lock is ours now; `false` means look again.
async fn take(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    generation: u64,
    value: &LockValue,
) -> Result<bool, AwsError> {
    if !put(ssm, fleet, generation, value).await? {
        // Lost the race for this generation: look again (the winner now holds it).
        tracing::debug!(fleet, generation, "lost the race for the fleet lock");
        return Ok(false);
    }
    // A writer that listed long ago could only succeed on a pruned (older) name;
    // the lock is ours only if our generation is still the newest.
    let after = list(ssm, fleet).await?;
    if after.last().map(|g| g.generation) != Some(generation) {
        tracing::debug!(fleet, generation, "a newer lock generation exists");
        return Ok(false);
    }
    let old = prunable(&after, generation);
    if !old.is_empty() {
        if let Err(e) = ssm::delete(ssm, &old).await {
            tracing::warn!(fleet, error = %e, "could not prune old lock generations");
        }
    }
    tracing::info!(fleet, generation, "fleet lock taken");
    Ok(true)
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
