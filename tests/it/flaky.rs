//! Flaky APIs: Bitbucket answering 20 % 429 and 10 % 500 with latency, and AWS throttling
//! every few requests (injected by the recording proxy with each service's own error), do
//! not stop an apply from empty from converging. Every fault is retried, logged at debug
//! level, and the retries are bounded. A hard failure reports what was done and what
//! was not, and the next apply converges.

use std::time::Duration;

use bitbucket_fake::{FakeConfig, Fault};
use testkit::harness::{Harness, Run};
use testkit::world::{bbfleet, convergence_problems};

use crate::KIT;

/// Attempts per call, the first included: Bitbucket's `RetryPolicy` and the AWS SDK's.
const MAX_ATTEMPTS: u64 = bbfleet::aws::AWS_MAX_ATTEMPTS as u64;
/// Every n-th AWS request is answered with a throttling error.
const THROTTLE_EVERY: u64 = 4;
/// Generous bound for one apply through the faults (typically 3-6 s; the worst jittered
/// Bitbucket back-off chain of one call is 15.5 s).
const MAX_APPLY_TIME: Duration = Duration::from_secs(60);
/// Debug line of an AWS retry (src/aws/mod.rs).
const AWS_RETRY: &str = "AWS call failed; the SDK retries it";
/// Debug lines of Bitbucket retries (src/bitbucket/mod.rs).
const BITBUCKET_429: &str = "rate limited; every request backs off";
const BITBUCKET_5XX: &str = "server error; retrying";

/// `text` without ANSI colour sequences (the log is coloured even into a pipe).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `attempt=N` values of the log lines containing `message`.
fn attempts(stderr: &str, message: &str) -> Vec<u64> {
    strip_ansi(stderr)
        .lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("attempt="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no attempt number in {l:?}"))
        })
        .collect()
}

/// AWS write operations that reached moto, sorted.
fn forwarded_writes(h: &Harness) -> Vec<String> {
    let mut ops: Vec<String> = h
        .recorder
        .calls()
        .into_iter()
        .filter(|c| c.is_write() && !c.throttled)
        .map(|c| c.operation)
        .collect();
    ops.sort();
    ops
}

/// An apply from empty to capacity 5 through faults at both ends; `retry_after` is what
/// the fake's 429 answers carry.
async fn apply_through_faults(fleet: &str, retry_after: Option<u64>) {
    const CAPACITY: usize = 5;
    // What a fault-free apply of the same shape writes at AWS (derived, not hard-coded: a
    // change in bbfleet's writes needs no edit here).
    let calm = Harness::new(KIT, &format!("{fleet}-calm")).await;
    let calm_cfg = calm.write_config(&calm.config(CAPACITY as u32, None));
    calm.apply(calm_cfg.to_str().unwrap(), &[]).await;
    let expected_writes = forwarded_writes(&calm);

    let h = Harness::with_fake(
        KIT,
        fleet,
        FakeConfig {
            latency: Duration::from_millis(20),
            ..FakeConfig::default()
        },
    )
    .await;
    let path = h.write_config(&h.config(CAPACITY as u32, None));
    let cfg = path.to_str().unwrap();
    // An apply from empty sends few Bitbucket requests (7 at capacity 5): one scripted
    // fault of each kind makes sure both are met, the random ones do the rest.
    h.fake.inject(Fault::RateLimit {
        retry_after,
        count: 1,
        path_contains: None,
    });
    h.fake.inject(Fault::ServerError {
        status: 500,
        count: 1,
        path_contains: None,
    });
    h.fake.set_random_faults(0.2, 0.1, retry_after);
    h.recorder.throttle_every(THROTTLE_EVERY);
    let started = std::time::Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    // The fake's faults are random (20 % + 10 %): one call meets MAX_ATTEMPTS faults in a
    // row with probability 0.28^6 (under 1 % per apply). That apply must then fail
    // plainly, bounded, and the next one converge; two in a row is a bug.
    let mut last_run = Duration::ZERO;
    for _ in 0..2 {
        let run_started = std::time::Instant::now();
        let run = bbfleet(
            &h,
            &["-vv", "--config", cfg, "apply", "--auto-approve"],
            &[],
        )
        .await;
        last_run = run_started.elapsed();
        let code = run.code;
        if code != 0 {
            assert!(
                code == 1
                    && run
                        .stderr
                        .contains(&format!("still failed after {MAX_ATTEMPTS} attempts")),
                "an apply through faults failed for another reason than exhausted retries:\n{}",
                run.stderr
            );
        }
        runs.push(run);
        if code == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    // FLAKY_DEBUG=1 shows the retries with their timestamps (where an apply spends its time).
    if std::env::var_os("FLAKY_DEBUG").is_some() {
        for r in &runs {
            for l in strip_ansi(&r.stderr).lines() {
                if l.contains("retr")
                    || l.contains("rate limited")
                    || l.contains("error")
                    || l.contains("done")
                {
                    eprintln!("{l}");
                }
            }
        }
        eprintln!("elapsed {elapsed:?}");
    }
    assert_eq!(
        runs.last().map(|r| r.code),
        Some(0),
        "two applies in a row failed through faults"
    );
    // Back-off is per call: a few throttles must not slow the whole run down (the SDK's
    // adaptive mode did, to 0.5 requests/s per service: 94 s here instead of ~5 s).
    assert!(
        last_run < MAX_APPLY_TIME,
        "an apply through faults took {last_run:?}"
    );
    h.fake.clear_faults();
    h.recorder.throttle_every(0);
    let stderr: String = runs.iter().map(|r| strip_ansi(&r.stderr)).collect();

    // Bitbucket: every injected fault was seen, logged at debug level, and retried at most
    // MAX_ATTEMPTS - 1 times per call; no fault hit a write twice into a duplicate.
    let requests = h.fake.requests();
    let rate_limited = requests.iter().filter(|r| r.status == 429).count();
    let server_errors = requests.iter().filter(|r| r.status == 500).count();
    let unexpected: Vec<_> = requests
        .iter()
        .filter(|r| ![200, 201, 204, 429, 500].contains(&r.status))
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    assert!(
        rate_limited + server_errors > 0,
        "no fault was injected in {} requests",
        requests.len()
    );
    let logged_429 = attempts(&stderr, BITBUCKET_429);
    let logged_5xx = attempts(&stderr, BITBUCKET_5XX);
    assert_eq!(logged_429.len(), rate_limited, "429s logged at debug level");
    assert_eq!(
        logged_5xx.len(),
        server_errors,
        "500s logged at debug level"
    );
    assert!(
        logged_429
            .iter()
            .chain(&logged_5xx)
            .all(|a| (1..=MAX_ATTEMPTS).contains(a)),
        "a Bitbucket call went past {MAX_ATTEMPTS} attempts"
    );
    let created = requests
        .iter()
        .filter(|r| r.method == "POST" && (200..300).contains(&r.status))
        .count();
    assert_eq!(
        created, CAPACITY,
        "runners registered (a retried POST must not register twice)"
    );

    // AWS: the SDK retried every throttled request exactly once more (never gave up), each
    // retry is on a debug line, and what reached moto is what a calm apply writes.
    let calls = h.recorder.calls();
    let throttled = calls.iter().filter(|c| c.throttled).count();
    assert!(throttled > 0, "no AWS request was throttled");
    let logged_aws = attempts(&stderr, AWS_RETRY);
    assert_eq!(
        logged_aws.len(),
        throttled,
        "AWS retries logged at debug level ({} requests, {throttled} throttled)",
        calls.len()
    );
    assert!(
        logged_aws.iter().all(|a| (2..=MAX_ATTEMPTS).contains(a)),
        "AWS retry attempts out of bounds: {logged_aws:?}"
    );
    assert!(
        stderr.contains("ThrottlingException") && stderr.contains("RequestLimitExceeded"),
        "the retry lines name the throttling codes of SSM/KMS and EC2"
    );
    assert_eq!(
        forwarded_writes(&h),
        expected_writes,
        "AWS writes that reached moto (no lost or doubled write)"
    );

    let problems = convergence_problems(&h, cfg, CAPACITY).await;
    assert!(
        problems.is_empty(),
        "after applies through faults: {problems:#?}"
    );
    // Debug logs of retries and failures carry no secret.
    let transcript = h.transcript.lock().unwrap().clone();
    for secret in h.fake.issued_secrets() {
        assert!(!transcript.contains(&secret), "a runner secret was printed");
    }
    eprintln!(
        "{fleet}: {} apply run(s) in {:.1} s; Bitbucket {} requests, {rate_limited} x 429, {server_errors} x 500; AWS {} requests, {throttled} throttled",
        runs.len(),
        elapsed.as_secs_f64(),
        requests.len(),
        calls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converges_through_rate_limits_with_retry_after_and_throttling() {
    apply_through_faults("flaky-ra", Some(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converges_through_rate_limits_without_retry_after_and_throttling() {
    // Bitbucket often sends 429 without Retry-After: bbfleet backs off exponentially.
    apply_through_faults("flaky-nora", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_failure_reports_what_was_done_and_the_next_apply_converges() {
    let h = Harness::new(KIT, "flaky-hard").await;
    let path = h.write_config(&h.config(3, None));
    let cfg = path.to_str().unwrap();
    // From the moment the key is created (observation and planning are over), Bitbucket
    // answers 500 to every request on the runners path: each registration fails for good.
    let fake = h.fake.clone();
    h.recorder.on_operation("kms:CreateKey", move || {
        fake.inject(Fault::ServerError {
            status: 500,
            count: 10_000,
            path_contains: Some("pipelines-config/runners".to_owned()),
        })
    });
    let failed = bbfleet(&h, &["--config", cfg, "apply", "--auto-approve"], &[]).await;
    failed.expect_code(1);
    let err = &failed.stderr;
    assert!(
        err.contains(&format!("error: runner bbfleet-{}-", h.fleet)) && err.contains(" failed: "),
        "the failed action is named:\n{err}"
    );
    assert!(
        err.contains(&format!("still failed after {MAX_ATTEMPTS} attempts")),
        "retries were bounded:\n{err}"
    );
    let (done, total) = err
        .lines()
        .find_map(|l| {
            let (head, _) = l.split_once(" actions were done")?;
            let mut words = head.split_whitespace();
            let done: usize = words.next()?.parse().ok()?;
            let total: usize = words.nth(1)?.parse().ok()?;
            Some((done, total))
        })
        .unwrap_or_else(|| panic!("no \"N of M actions were done\" in:\n{err}"));
    assert!(
        done >= 1 && done < total,
        "{done} of {total} actions done (the key, not the runners)"
    );
    assert!(
        err.contains("done: kms key alias/bbfleet-flaky-hard"),
        "what was done is listed:\n{err}"
    );
    assert!(
        err.contains("the rest were not started"),
        "what was not done is said:\n{err}"
    );
    assert!(
        h.fake.runners("acme", None).is_empty(),
        "no runner was registered"
    );
    // After a 500 Bitbucket may have registered the runner (its secret lost with the
    // answer): a registration is sent again only once a listing showed what exists. The
    // listing never succeeds here, so each of the 3 registrations is sent once, and the
    // listings' retries are bounded.
    let requests = h.fake.requests();
    let posts = requests.iter().filter(|r| r.method == "POST").count() as u64;
    assert!(
        (1..=3).contains(&posts),
        "{posts} POSTs: a registration whose answer was lost was sent again blindly"
    );
    let failed_lists = requests
        .iter()
        .filter(|r| r.method == "GET" && r.status == 500)
        .count() as u64;
    assert!(
        (MAX_ATTEMPTS..=3 * MAX_ATTEMPTS).contains(&failed_lists),
        "{failed_lists} failed listings: each tried {MAX_ATTEMPTS} times at most"
    );
    assert!(
        err.contains("may have succeeded") && err.contains("so it was not registered again"),
        "the error says why the registration was not sent again:\n{err}"
    );

    h.fake.clear_faults();
    let again = bbfleet(&h, &["--config", cfg, "apply", "--auto-approve"], &[]).await;
    again.expect_code(0);
    let problems = convergence_problems(&h, cfg, 3).await;
    assert!(
        problems.is_empty(),
        "after the failure and a new apply: {problems:#?}"
    );
}
