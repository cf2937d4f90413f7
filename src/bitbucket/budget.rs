//! Bitbucket's hourly request budget (1,000 requests per rolling hour for authenticated
//! calls), counted by this process and corrected by what Bitbucket says.
//!
//! A request goes at once while the budget has room, so a burst that fits is never slowed;
//! only a request beyond the budget waits, until the oldest request of the hour leaves the
//! window. A 429 pauses every request of the client, not just the one that got it.
//! `X-RateLimit-Limit` replaces the assumed limit; `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset`, where sent, cap what is left; `X-RateLimit-NearLimit` is logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

/// Requests per hour Bitbucket allows an authenticated client on the runner endpoints.
pub const DEFAULT_HOURLY_BUDGET: u32 = 1000;
const WINDOW: Duration = Duration::from_secs(3600);
/// Waits one request may go through before it gives up (each wait is bounded too).
const MAX_WAITS: u32 = 8;

/// The budget shared by every request of one client.
#[derive(Debug)]
pub(super) struct RateBudget {
    inner: Mutex<Window>,
    /// Longest single wait; a longer one fails at once with a clear error.
    max_wait: Duration,
    waits: AtomicU64,
    near_limit_logged: AtomicBool,
}

/// Why a request may not go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OverBudget {
    /// How long until it may.
    pub wait: Duration,
    /// The hourly limit in force.
    pub limit: u32,
    /// Requests this client sent in the last hour.
    pub sent: usize,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bitbucket's hourly request budget is used up ({} of {} requests in the last hour); the next request may go in {} s",
            self.sent,
            self.limit,
            self.wait.as_secs().max(1)
        )
    }
}

#[derive(Debug)]
struct Window {
    limit: u32,
    sent: VecDeque<Instant>,
    /// After a 429: nothing goes before this.
    not_before: Option<Instant>,
    /// `X-RateLimit-Remaining`, counted down as requests go.
    remaining: Option<u32>,
    /// `X-RateLimit-Reset`.
    reset_at: Option<Instant>,
}

impl Window {
    /// Takes a slot at `now`, or says how long to wait for one.
    fn reserve(&mut self, now: Instant) -> Result<(), OverBudget> {
        while self.sent.front().is_some_and(|t| *t + WINDOW <= now) {
            self.sent.pop_front();
        }
        if self.reset_at.is_some_and(|r| r <= now) {
            self.remaining = None;
            self.reset_at = None;
        }
        let mut wait = self
            .not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        if self.sent.len() >= self.limit as usize {
            if let Some(oldest) = self.sent.front() {
                wait = wait.max((*oldest + WINDOW).saturating_duration_since(now));
            }
        }
        if self.remaining == Some(0) {
            if let Some(reset) = self.reset_at {
                wait = wait.max(reset.saturating_duration_since(now));
            }
        }
        if wait.is_zero() {
            self.sent.push_back(now);
            self.remaining = self.remaining.map(|r| r.saturating_sub(1));
            Ok(())
        } else {
            Err(OverBudget {
                wait,
                limit: self.limit,
                sent: self.sent.len(),
            })
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl RateBudget {
    pub(super) fn new(per_hour: u32, max_wait: Duration) -> Self {
        RateBudget {
            inner: Mutex::new(Window {
                limit: per_hour.max(1),
                sent: VecDeque::new(),
                not_before: None,
                remaining: None,
                reset_at: None,
            }),
            max_wait,
            waits: AtomicU64::new(0),
            near_limit_logged: AtomicBool::new(false),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until a request may go, and counts it.
    pub(super) async fn acquire(&self) -> Result<(), OverBudget> {
        let mut waited = 0;
        loop {
            let over = match self.window().reserve(Instant::now()) {
                Ok(()) => return Ok(()),
                Err(over) => over,
            };
            if over.wait > self.max_wait || waited >= MAX_WAITS {
                return Err(over);
            }
            waited += 1;
            self.waits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                wait_ms = over.wait.as_millis() as u64,
                sent = over.sent,
                limit = over.limit,
                "Bitbucket rate budget: waiting"
            );
            tokio::time::sleep(over.wait).await;
        }
    }

    /// After a 429: no request of this client goes for `wait`.
    pub(super) fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut w = self.window();
        w.not_before = Some(w.not_before.map_or(until, |t| t.max(until)));
    }

    /// Takes in the rate-limit headers of a response.
    pub(super) fn observe(&self, headers: &HeaderMap) {
        let limit = header_u64(headers, "x-ratelimit-limit")
            .filter(|l| *l > 0)
            .map(|l| l.min(u64::from(u32::MAX)) as u32);
        let remaining =
            header_u64(headers, "x-ratelimit-remaining").map(|r| r.min(u64::from(u32::MAX)) as u32);
        let reset = header_u64(headers, "x-ratelimit-reset").map(|v| {
            // Epoch seconds (as most APIs send it) or seconds from now.
            let now_epoch = jiff::Timestamp::now().as_second().max(0) as u64;
            let secs = if v > 1_000_000_000 {
                v.saturating_sub(now_epoch)
            } else {
                v
            };
            Instant::now() + Duration::from_secs(secs.min(WINDOW.as_secs()))
        });
        let near = headers
            .get("x-ratelimit-nearlimit")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if limit.is_some() || remaining.is_some() || reset.is_some() {
            let mut w = self.window();
            if let Some(l) = limit {
                w.limit = l;
            }
            if remaining.is_some() {
                w.remaining = remaining;
            }
            if reset.is_some() {
                w.reset_at = reset;
            }
        }
        if near && !self.near_limit_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = ?limit,
                "Bitbucket reports the hourly rate limit is nearly used up; further requests may be refused (429) and retried"
            );
        }
    }

    /// Times a request had to wait for the budget.
    pub(super) fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// The hourly limit in force.
    #[cfg(test)]
    pub(super) fn limit(&self) -> u32 {
        self.window().limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(limit: u32) -> Window {
        Window {
            limit,
            sent: VecDeque::new(),
            not_before: None,
            remaining: None,
            reset_at: None,
        }
    }

    #[test]
    fn a_burst_within_the_budget_goes_at_once() {
        let mut w = window(1000);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(w.reserve(now), Ok(()));
        }
        let over = w.reserve(now).unwrap_err();
        assert_eq!((over.limit, over.sent, over.wait), (1000, 1000, WINDOW));
    }

    #[test]
    fn slots_come_back_as_the_hour_rolls() {
        let mut w = window(2);
        let t0 = Instant::now();
        w.reserve(t0).unwrap();
        w.reserve(t0 + Duration::from_secs(600)).unwrap();
        let over = w.reserve(t0 + Duration::from_secs(1200)).unwrap_err();
        assert_eq!(over.wait, Duration::from_secs(2400));
        assert_eq!(w.reserve(t0 + WINDOW), Ok(()));
    }

    #[test]
    fn a_pause_and_an_empty_remainder_hold_requests() {
        let mut w = window(1000);
        let t0 = Instant::now();
        w.not_before = Some(t0 + Duration::from_secs(5));
        assert_eq!(w.reserve(t0).unwrap_err().wait, Duration::from_secs(5));
        assert_eq!(w.reserve(t0 + Duration::from_secs(5)), Ok(()));

        w.remaining = Some(1);
        w.reset_at = Some(t0 + Duration::from_secs(60));
        assert_eq!(w.reserve(t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            w.reserve(t0 + Duration::from_secs(10)).unwrap_err().wait,
            Duration::from_secs(50)
        );
        // After the reset the server's count no longer applies.
        assert_eq!(w.reserve(t0 + Duration::from_secs(60)), Ok(()));
        assert_eq!(w.remaining, None);
    }

    #[test]
    fn headers_set_the_limit_and_the_remainder() {
        let b = RateBudget::new(DEFAULT_HOURLY_BUDGET, Duration::from_secs(1));
        let mut h = HeaderMap::new();
        h.insert("X-RateLimit-Limit", "5".parse().unwrap());
        h.insert("X-RateLimit-NearLimit", "true".parse().unwrap());
        b.observe(&h);
        assert_eq!(b.limit(), 5);
        h.insert("X-RateLimit-Remaining", "0".parse().unwrap());
        h.insert("X-RateLimit-Reset", "30".parse().unwrap());
        b.observe(&h);
        let over = b.window().reserve(Instant::now()).unwrap_err();
        assert!(over.wait > Duration::from_secs(25), "{over:?}");
        assert!(over.to_string().contains("of 5 requests"), "{over}");
        // Nonsense values change nothing.
        let mut bad = HeaderMap::new();
        bad.insert("X-RateLimit-Limit", "0".parse().unwrap());
        bad.insert("X-RateLimit-Remaining", "lots".parse().unwrap());
        b.observe(&bad);
        assert_eq!(b.limit(), 5);
    }
}
