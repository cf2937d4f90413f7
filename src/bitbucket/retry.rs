//! The one retry loop every Bitbucket request goes through, API calls and OAuth token
//! requests alike.
//!
//! An attempt (see [`Step`]) says what became of it; [`Bitbucket::retried`] counts the
//! attempts, waits between them, and keeps a request that may have taken effect
//! ([`Replay::Unsafe`]) from being sent blindly again.

use std::future::Future;
use std::time::Duration;

use super::{Bitbucket, BitbucketError, RetryPolicy};

/// Whether a request may be sent again when it may have reached Bitbucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// GET, PUT, DELETE: the same request twice has the effect of one (RFC 9110, 9.2.2
    /// "Idempotent Methods").
    Safe,
    /// POST: RFC 9110 9.2.2 says a client should not retry a non-idempotent request
    /// automatically unless it can detect that the original request was never applied.
    Unsafe,
}

/// Why [`Bitbucket::retried`] returned without an answer.
pub(super) enum Failure {
    /// A definite failure.
    Failed(BitbucketError),
    /// A `Replay::Unsafe` request may have taken effect without its answer arriving;
    /// `attempts` attempts are used and the back-off before the next one is done.
    Unanswered {
        /// Attempts used, the first included.
        attempts: u32,
        /// What was lost: the status or the transport error.
        lost: String,
    },
}

impl From<BitbucketError> for Failure {
    fn from(e: BitbucketError) -> Self {
        Failure::Failed(e)
    }
}

impl Failure {
    /// The failure as an error of `call`; an unanswered request counts as exhausted
    /// (only `Replay::Unsafe` requests end unanswered, and their caller handles that).
    pub(super) fn into_error(self, call: String) -> BitbucketError {
        match self {
            Failure::Failed(e) => e,
            Failure::Unanswered { attempts, lost } => BitbucketError::Exhausted {
                call,
                attempts,
                last: lost,
            },
        }
    }
}

/// What one attempt came to.
pub(super) enum Step<T> {
    /// The answer, or a failure that another attempt would not mend.
    Done(Result<T, BitbucketError>),
    /// A failure worth another attempt, after `wait`.
    Retry {
        /// How long before the next attempt, and how it is waited for.
        wait: Wait,
        /// The failure, quoted if no attempt is left.
        lost: String,
        /// The request may have reached Bitbucket and taken effect (a 5xx, a timeout, a
        /// connection lost after sending), as opposed to a 429 or a refused connection.
        reached: bool,
    },
    /// Try again at once without using up an attempt (a renewed OAuth token).
    Again,
}

/// How a retry waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// This request sleeps, also after its last attempt.
    Sleep(Duration),
    /// This request sleeps if another attempt follows.
    BeforeNext(Duration),
    /// Every request of the client waits (a 429): the budget holds the next one back.
    PauseClient(Duration),
}

impl RetryPolicy {
    /// Full-jitter exponential back-off before retry number `attempt` (1-based).
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(fastrand::f64().max(0.1))
    }

    /// The pause after a 429 at `attempt`: Bitbucket's `Retry-After`, or the back-off;
    /// a `Retry-After` beyond `max_retry_after` is the failure to report instead.
    pub(super) fn rate_limit_wait(
        &self,
        retry_after: Option<Duration>,
        attempt: u32,
    ) -> Result<Duration, String> {
        match retry_after {
            Some(d) if d > self.max_retry_after => Err(format!(
                "rate limited; Bitbucket asks to wait {} s",
                d.as_secs()
            )),
            Some(d) => Ok(d),
            None => Ok(self.backoff(attempt)),
        }
    }

    /// The wait after a 5xx at `attempt`: `Retry-After` or the back-off, at most
    /// `max_retry_after`.
    pub(super) fn server_error_wait(
        &self,
        retry_after: Option<Duration>,
        attempt: u32,
    ) -> Duration {
        retry_after
            .unwrap_or_else(|| self.backoff(attempt))
            .min(self.max_retry_after)
    }
}

impl Bitbucket {
    /// Makes attempts (numbered from `used + 1`) until one is `Done` or
    /// `RetryPolicy::max_attempts` are used, `used` of them already spent; `call` names
    /// the request in `BitbucketError::Exhausted`. With `Replay::Unsafe`, a failure that
    /// may have reached Bitbucket is not retried but returned as `Failure::Unanswered`,
    /// after its wait.
    pub(super) async fn retried<T, F, Fut>(
        &self,
        call: &str,
        used: u32,
        replay: Replay,
        mut attempt_once: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Step<T>>,
    {
        let mut last = "no attempt left".to_owned();
        let mut attempt = used;
        while attempt < self.retry.max_attempts {
            attempt += 1;
            match attempt_once(attempt).await {
                Step::Done(result) => return result.map_err(Failure::Failed),
                Step::Again => attempt -= 1,
                Step::Retry {
                    wait,
                    lost,
                    reached,
                } => {
                    self.wait(wait, attempt < self.retry.max_attempts).await;
                    if replay == Replay::Unsafe && reached {
                        return Err(Failure::Unanswered {
                            attempts: attempt,
                            lost,
                        });
                    }
                    last = lost;
                }
            }
        }
        Err(BitbucketError::Exhausted {
            call: call.to_owned(),
            attempts: attempt,
            last,
        }
        .into())
    }

    /// Waits as `wait` says; `more` tells whether another attempt follows.
    async fn wait(&self, wait: Wait, more: bool) {
        match wait {
            Wait::Sleep(d) => tokio::time::sleep(d).await,
            Wait::BeforeNext(d) if more => tokio::time::sleep(d).await,
            Wait::BeforeNext(_) => {}
            // Every request of this client waits (in `acquire`), not just this one.
            Wait::PauseClient(d) => self.budget.pause(d),
        }
    }
}
