//! Taking, keeping and giving back the lock; giving back the lock.

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::fence::Fence;
use super::identity::{pid_running, Identity};
use super::record::{judge, next_generation, prunable, LockValue, Verdict};
use super::store::{list, put};
use super::{deadline, ttl, LockError, RETRY_EVERY};
use crate::aws::{ssm, AwsError};

/// First and longest pause between looks at a held lock.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Looks at the lock before giving up, whatever the timeout (keeps the loop bounded).
const MAX_ATTEMPTS: u32 = 10_000;
/// Renewals and retries of one hold (a week of renewals at the default TTL is 2016).
const MAX_RENEWALS: u32 = 100_000;

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
    ttl: Duration,
    fence: Fence,
}

/// Takes the fleet lock for `command`, waiting up to `timeout` for a live holder;
/// `on_event` hears about waits and takeovers. Held for [`ttl()`] per renewal.
pub async fn acquire(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    command: &str,
    timeout: Duration,
    timeout_text: &str,
    on_event: impl FnMut(&Event),
) -> Result<HeldLock, LockError> {
    let how = (timeout, timeout_text, ttl());
    acquire_for(ssm, fleet, command, how, on_event).await
}

/// [`acquire`] with another TTL: `how` is (timeout, the timeout as given, TTL).
pub async fn acquire_for(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    command: &str,
    how: (Duration, &str, Duration),
    mut on_event: impl FnMut(&Event),
) -> Result<HeldLock, LockError> {
    let (timeout, timeout_text, ttl) = how;
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
        match (judge(newest, &me, now, pid_running), newest) {
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
                let value = LockValue::held(&me, command, now, now, ttl);
                let sent = Instant::now();
                let judged = newest.map(|g| g.generation);
                if take(ssm, fleet, (generation, judged), &value).await? {
                    return Ok(HeldLock {
                        ssm: ssm.clone(),
                        fleet: fleet.to_owned(),
                        me,
                        command: command.to_owned(),
                        acquired_at: now,
                        generation,
                        ttl,
                        fence: Fence::new(fleet, deadline(sent, ttl), now),
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

/// Writes `value` as generation `generation` over the `judged` one (the newest seen, if
/// any) and checks it is still the newest (then prunes the old generations): whether the
/// lock is ours now; `false` means look again.
async fn take(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    (generation, judged): (u64, Option<u64>),
    value: &LockValue,
) -> Result<bool, AwsError> {
    if !put(ssm, fleet, generation, value).await? {
        // Lost the race for this generation: look again (the winner now holds it).
        tracing::debug!(fleet, generation, "lost the race for the fleet lock");
        return Ok(false);
    }
    // A writer that listed long ago could only succeed on a pruned (older) name, or, after
    // a destroy deleted every generation, on one above a newer series; the lock is ours
    // only if our generation is the newest and the one we judged is still there. Else our
    // write is withdrawn (only we created that name) so it never stands in anyone's way.
    let after = list(ssm, fleet).await?;
    let newest = after.last().map(|g| g.generation) == Some(generation);
    let judged_kept = judged.is_none_or(|j| after.iter().any(|g| g.generation == j));
    if !newest || !judged_kept {
        tracing::debug!(fleet, generation, "a newer lock generation exists");
        let mine = crate::names::lock_parameter(fleet, generation);
        if let Err(e) = ssm::delete(ssm, &[mine]).await {
            tracing::warn!(fleet, error = %e, "could not withdraw a lock generation that lost");
        }
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
    /// The handle writers check before each batch (valid until the deadline, while ours).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Writes the next generation as held by us: `Lost` when someone took the lock over.
    /// On success the deadline moves to the instant this write was sent plus the TTL minus
    /// the safety margin.
    pub async fn renew(&mut self) -> Result<(), LockError> {
        let next = self.generation.saturating_add(1);
        let now = Timestamp::now();
        let value = LockValue::held(&self.me, &self.command, self.acquired_at, now, self.ttl);
        let sent = Instant::now();
        if put(&self.ssm, &self.fleet, next, &value).await? {
            self.generation = next;
            self.fence.renewed(deadline(sent, self.ttl), now);
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
        self.fence.lost(holder.clone());
        LockError::Lost {
            fleet: self.fleet.clone(),
            holder,
        }
    }

    /// Runs `work` while renewing the lock every third of its TTL; stops `work` (drops it,
    /// like a crash, which the next apply converges from) if the lock was taken over or
    /// its deadline passed without a successful renewal.
    pub async fn guard<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, LockError> {
        self.guard_every(self.ttl / 3, work).await
    }

    /// [`HeldLock::guard`] with another renewal interval (tests use a short one).
    pub async fn guard_every<T>(
        &mut self,
        every: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, LockError> {
        // The keeper first: once the deadline has passed (after a suspension too) the work
        // is not polled again, so it cannot start a write.
        tokio::select! {
            biased;
            stopped = self.keep(every) => Err(stopped),
            out = work => Ok(out),
        }
    }

    /// Renews every `every`, a failed renewal again after [`RETRY_EVERY`] (each failure
    /// logged with its cause), until the lock is lost or its deadline passes.
    async fn keep(&mut self, every: Duration) -> LockError {
        let mut next = Instant::now() + every;
        for _ in 0..MAX_RENEWALS {
            let deadline = self.fence.valid_until();
            tokio::time::sleep_until(next.min(deadline)).await;
            if Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline, self.renew()).await {
                Ok(Ok(())) => next = Instant::now() + every,
                Ok(Err(e @ LockError::Lost { .. })) => return e,
                Ok(Err(e)) => {
                    tracing::warn!(fleet = %self.fleet, error = %e, retry_in = ?RETRY_EVERY, "could not renew the fleet lock");
                    self.fence.failed(e.to_string());
                    next = Instant::now() + RETRY_EVERY;
                }
                Err(_) => self
                    .fence
                    .failed("a renewal was still unanswered at the deadline".to_owned()),
            }
        }
        tokio::time::sleep_until(self.fence.valid_until()).await;
        match self.fence.check() {
            Err(fenced) => fenced.into(),
            Ok(()) => unreachable_fence(&self.fleet),
        }
    }

    /// Gives the lock back (writes the next generation as `released`).
    pub async fn release(self) -> Result<(), LockError> {
        self.release_generation().await.map(|_| ())
    }

    /// Gives the lock back, then deletes every generation up to the released one: for
    /// `destroy`, once its work is done, so nothing of the fleet is left. A generation
    /// written after ours (a new holder) is kept; the next taker then starts a new series.
    pub async fn release_and_clear(self) -> Result<(), LockError> {
        let (ssm, fleet) = (self.ssm.clone(), self.fleet.clone());
        let released = self.release_generation().await?;
        let old: Vec<String> = list(&ssm, &fleet)
            .await?
            .into_iter()
            .filter(|g| g.generation <= released)
            .map(|g| g.name)
            .collect();
        ssm::delete(&ssm, &old).await?;
        tracing::info!(fleet = %fleet, deleted = old.len(), "fleet lock generations deleted");
        Ok(())
    }

    async fn release_generation(self) -> Result<u64, LockError> {
        let next = self.generation.saturating_add(1);
        let value = LockValue::released(&self.me, &self.command, Timestamp::now());
        if put(&self.ssm, &self.fleet, next, &value).await? {
            tracing::info!(fleet = %self.fleet, generation = next, "fleet lock released");
            return Ok(next);
        }
        Err(self.lost().await)
    }
}

/// After waiting for the deadline the fence cannot pass: the `Expired` error regardless.
fn unreachable_fence(fleet: &str) -> LockError {
    super::Fenced::Expired {
        fleet: fleet.to_owned(),
        since: "its last renewal".to_owned(),
        cause: "renewals stopped after too many".to_owned(),
    }
    .into()
}
