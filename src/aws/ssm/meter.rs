//! The pace of the metered Parameter Store calls ([`Meter`]).

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

/// Calls per second the [`Meter`] never goes below (Parameter Store's standard throughput
/// is 40; another client may share the account's quota).
const MIN_RATE: f64 = 2.0;
/// What a throttling answer leaves of the pace (multiplicative decrease). Gentle, because
/// the decrease starts from what the quota admitted in the last second, not from the pace:
/// 70 % (tried first) left a 100-runner apply at 40/s at 1.96x its bound; 90 % keeps the
/// pace near the quota, whose burst absorbs the overshoot.
const DECREASE: f64 = 0.9;
/// Calls per second added to the pace by each successful call (additive increase: at a
/// pace of 36 calls/s, 9 calls/s more each second, so the pace is back at 40/s within about
/// half a second).
const INCREASE: f64 = 0.25;
/// Attempts of one metered call, throttled ones included.
const METERED_ATTEMPTS: u32 = 20;
/// Attempts of one metered call that failed on the way (5xx, timeout, no connection), the
/// first included: what the SDK's standard retries allow the other calls.
const TRANSIENT_ATTEMPTS: u32 = crate::aws::AWS_MAX_ATTEMPTS;

/// Error codes AWS throttles with (the SDK's retry classifier's throttling codes).
const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// A client-side pace for the Parameter Store calls AWS meters. GetParameter(s),
/// GetParametersByPath and PutParameter share one throughput quota per account and Region,
/// 40 transactions per second at the standard setting (up to 10,000 with higher throughput),
/// and AWS answers `ThrottlingException` above it ("Changing Parameter Store
/// throughput"). The quota is not readable, so the meter learns it: unlimited until AWS
/// first throttles; then each throttle (at most one per round of calls: one sent after the
/// last decrease) sets the pace to 90 % of the calls that succeeded in the last second, and
/// each success adds [`INCREASE`] (AIMD: the pace saws between 90 % and a little over the
/// quota, whose burst absorbs the overshoot). A throttled
/// call waits for its next slot and is sent again. Calls through the meter run with the
/// SDK's retries off ([`Meter::send`]): the SDK's back-off is per call (each of 32 calls
/// waits on its own and retries into the same full quota), while the meter spaces them.
#[derive(Debug, Default)]
pub struct Meter {
    pace: std::sync::Mutex<Pace>,
}

/// The meter's state (times are `tokio::time::Instant`s, so tests may pause the clock).
#[derive(Debug, Default)]
struct Pace {
    /// Calls per second; `None` until AWS first throttles.
    rate: Option<f64>,
    /// When the next call may go.
    next: Option<Instant>,
    /// When each call that succeeded in the last second was sent.
    recent: std::collections::VecDeque<Instant>,
    /// When the pace was last lowered.
    lowered: Option<Instant>,
    /// Throttling answers so far.
    throttles: u32,
}

impl Pace {
    /// When a call may go: now while unlimited, else the next free slot (booked).
    fn slot(&mut self, now: Instant) -> Instant {
        let Some(rate) = self.rate else { return now };
        let slot = self.next.map_or(now, |n| n.max(now));
        self.next = Some(slot + std::time::Duration::from_secs_f64(1.0 / rate));
        slot
    }

    /// Forgets the successes sent more than a second before `now`.
    fn prune(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t).as_secs_f64() > 1.0)
        {
            self.recent.pop_front();
        }
    }

    fn succeeded(&mut self, sent: Instant, now: Instant) {
        self.recent.push_back(sent);
        self.prune(now);
        if let Some(rate) = &mut self.rate {
            *rate = (*rate + INCREASE).min(10_000.0);
        }
    }

    /// A call sent at `sent` was throttled at `now`.
    fn throttled(&mut self, sent: Instant, now: Instant) {
        self.throttles += 1;
        if self.lowered.is_some_and(|l| sent < l) {
            return; // Sent before the last decrease: that one already answered it.
        }
        // What the quota admitted in the last second, not the pace: the pace may have run
        // ahead of it for a while on the quota's burst, and throttles of the calls that
        // drained it would otherwise take the pace down one after the other.
        self.prune(now);
        let rate = self.recent.len() as f64 * DECREASE;
        self.rate = Some(rate.max(MIN_RATE));
        self.lowered = Some(now);
        // The slots booked so far stay: the throttled call books the next one (it would
        // otherwise go again at once and, with AWS next door, spend its attempts in a
        // few milliseconds).
        tracing::info!(
            calls_per_second = format!("{:.1}", rate.max(MIN_RATE)),
            "Parameter Store throttled; pacing its metered calls"
        );
    }
}

impl Meter {
    /// The process's meter: the quota is one per account and Region, and a run talks to
    /// one Region, so every fan-out of the run shares what the meter learnt.
    pub fn shared() -> &'static Meter {
        static SHARED: std::sync::OnceLock<Meter> = std::sync::OnceLock::new();
        SHARED.get_or_init(Meter::default)
    }

    /// Throttling answers the meter has seen.
    pub fn throttles(&self) -> u32 {
        self.lock().throttles
    }

    /// The pace in calls per second (`None`: not throttled yet, unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one metered request (`send` builds and sends it, with the SDK's retries off:
    /// see [`no_retries`]) at the meter's pace: again when throttled (at most
    /// [`METERED_ATTEMPTS`] in all), and after a transient failure (5xx, timeout, no
    /// connection) with an exponential back-off, as the SDK would.
    pub async fn send<T, E, F, Fut>(
        &self,
        operation: &'static str,
        send: F,
    ) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata,
    {
        let mut transient = 1;
        for attempt in 1.. {
            let slot = self.lock().slot(Instant::now());
            tokio::time::sleep_until(slot).await;
            let sent = Instant::now();
            let result = send().await;
            let now = Instant::now();
            match &result {
                Ok(_) => self.lock().succeeded(sent, now),
                Err(e) if is_throttling(e) && attempt < METERED_ATTEMPTS => {
                    self.lock().throttled(sent, now);
                    retrying(operation, attempt + 1, METERED_ATTEMPTS, e);
                    continue;
                }
                Err(e) if is_transient(e) && transient < TRANSIENT_ATTEMPTS => {
                    retrying(operation, attempt + 1, METERED_ATTEMPTS, e);
                    tokio::time::sleep(std::time::Duration::from_millis(100 << transient)).await;
                    transient += 1;
                    continue;
                }
                Err(_) => {}
            }
            return result;
        }
        unreachable!("the attempts loop returns")
    }
}

/// The per-call config of a request sent through a [`Meter`]: one attempt (the meter
/// retries).
pub fn no_retries() -> aws_sdk_ssm::config::Builder {
    aws_sdk_ssm::config::Builder::default()
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
}

/// The debug line of a retry, as the call counter logs the SDK's own (`-vv` shows how
/// often AWS pushed back); AWS's code and message, never the request.
fn retrying<E: ProvideErrorMetadata>(
    operation: &str,
    attempt: u32,
    max_attempts: u32,
    e: &SdkError<E, HttpResponse>,
) {
    let cause = match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("unknown"),
            s.message().unwrap_or_default()
        ),
        None => "no answer from the endpoint".to_owned(),
    };
    tracing::debug!(
        service = "ssm",
        operation,
        attempt,
        max_attempts,
        cause,
        "AWS call failed; the SDK retries it"
    );
}

fn is_throttling<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| THROTTLING_CODES.contains(&c))
}

fn is_transient<E>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s.raw().status().is_server_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Pace, DECREASE, INCREASE, MIN_RATE};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn the_pace_is_70_percent_of_the_last_seconds_successes_then_backs_off_once_per_round() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.slot(t0), t0, "unlimited before the first throttle");
        for i in 0..50 {
            pace.succeeded(t0 + Duration::from_millis(i), t0 + Duration::from_millis(i));
        }
        let sent = t0 + Duration::from_millis(60);
        pace.throttled(sent, t0 + Duration::from_millis(150));
        let lowered = 50.0 * DECREASE;
        assert_eq!(pace.rate, Some(lowered));
        // Another call sent before the decrease is answered: no second decrease.
        pace.throttled(sent, t0 + Duration::from_millis(160));
        assert_eq!((pace.rate, pace.throttles), (Some(lowered), 2));
        // Slots are 1/rate s apart.
        let now = t0 + Duration::from_millis(200);
        assert_eq!(pace.slot(now), now);
        assert_eq!(pace.slot(now), now + Duration::from_secs_f64(1.0 / lowered));
        pace.succeeded(now, now);
        assert!((pace.rate.unwrap() - (lowered + INCREASE)).abs() < 1e-9);
        // A call sent after the decrease lowers it to DECREASE of the last second's
        // successes (51 by now), however often; with none, to the floor.
        for _ in 0..5 {
            let later = pace.lowered.unwrap() + Duration::from_millis(1);
            pace.throttled(later, later);
            assert!((pace.rate.unwrap() - 51.0 * DECREASE).abs() < 1e-9);
        }
        let much_later = now + Duration::from_secs(2);
        pace.throttled(much_later, much_later);
        assert_eq!(pace.rate, Some(MIN_RATE));
    }
}
