//! The fleet lock is fenced: a holder whose renewals fail (AWS throttling, injected by the
//! recording proxy) stops writing at its deadline, and a holder suspended past its TTL
//! (SIGSTOP) and taken over writes nothing when it resumes and exits naming the lock.
//! Against the real moto server through the recording proxy; short TTLs via
//! `BBFLEET_LOCK_TTL` (or `lock::acquire_for`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bbfleet::lock::{self, Fenced, LockError};
use testkit::harness::Harness;
use testkit::recorder::AwsCall;
use tokio::time::Instant;

use crate::KIT;

/// The TTL of the throttled holder: its deadline is 9 s after taking the lock.
const TTL: Duration = Duration::from_secs(12);

/// The lock parameter a recorded SSM call names, if it is one of the fleet's.
fn lock_name(call: &AwsCall, fleet: &str) -> bool {
    call.body.contains(&format!("/bbfleet/{fleet}/lock/"))
}

/// An SSM client of the harness's account that goes through the recording proxy and does
/// not retry by itself.
fn proxied_ssm(h: &Harness) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::config::Builder::from(&h.sdk)
        .endpoint_url(&h.recorder.endpoint)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_throttled_past_the_ttl_stop_writes_at_the_deadline() {
    let h = Harness::new(KIT, "lockthrottle").await;
    // Without the SDK's own retries, so each renewal attempt of bbfleet is one request.
    let ssm = proxied_ssm(&h);
    let probe = ssm.clone();
    let how = (Duration::ZERO, "0s", TTL);
    let mut held = lock::acquire_for(&ssm, "lockthrottle", "apply", how, |_| {})
        .await
        .unwrap();
    let fence = held.fence();
    // The deadline on both clocks: the work must not write after it.
    let left = fence.valid_until() - Instant::now();
    let deadline = fence.valid_until();
    let deadline_wall = SystemTime::now() + left;
    assert!(
        left <= TTL - lock::safety_margin(TTL) && left > TTL / 2,
        "deadline {left:?} after taking the lock"
    );
    // From now on AWS throttles every request: every renewal fails.
    h.recorder.clear();
    h.recorder.throttle_every(1);
    let started = Instant::now();
    // The work: a "batch" every 250 ms, each checking the fence, then writing one parameter
    // (for at most twice the TTL).
    let work = async {
        for i in 0..(TTL.as_millis() / 125) {
            fence.check()?;
            let _ = probe
                .put_parameter()
                .name(format!("/bbfleet/lockthrottle-probe/{i}"))
                .value("x")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok::<(), Fenced>(())
    };
    let out = held.guard(work).await;
    let stopped = Instant::now();
    h.recorder.throttle_every(0);
    // Stopped by the keeper at the deadline (or by the work's own check just after it).
    let why = match out {
        Err(LockError::Fenced(f)) | Ok(Err(f)) => f,
        other => panic!("the work was not fenced: {other:?}"),
    };
    let text = why.to_string();
    for part in [
        "fleet lock of lockthrottle",
        "could not be renewed since",
        "Throttling",
        "stopped writing",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(stopped >= deadline, "stopped before the deadline");
    assert!(
        stopped - deadline < Duration::from_secs(1),
        "stopped {:?} after the deadline",
        stopped - deadline
    );
    assert_no_write_after(&h, started, deadline, deadline_wall);
    // Nothing of ours stands in the way longer than the TTL: the newest generation is the
    // one taken (every renewal was refused).
    let gens = h.lock_generations().await;
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert_eq!(gens[0].1["state"], "held");
}

/// The recorded requests since `started`: renewals retried quickly (every `RETRY_EVERY`,
/// not every TTL/3), all refused (each logged with its cause by bbfleet); writes of the work until the deadline, none after it.
fn assert_no_write_after(
    h: &Harness,
    started: Instant,
    deadline: Instant,
    deadline_wall: SystemTime,
) {
    let calls = h.recorder.calls();
    let renewals: Vec<&AwsCall> = calls
        .iter()
        .filter(|c| c.operation == "ssm:PutParameter" && lock_name(c, "lockthrottle"))
        .collect();
    assert!(renewals.iter().all(|c| c.throttled), "{renewals:?}");
    // The first at TTL/3 (4 s), then every RETRY_EVERY (2 s) until the deadline (9 s).
    let first_renewal = TTL / 3;
    let expected = 1 + (deadline - started).saturating_sub(first_renewal).as_secs() / 2;
    assert!(
        renewals.len() as u64 >= expected.min(3),
        "{} renewal attempts; expected the first and {} retries",
        renewals.len(),
        expected - 1
    );
    for pair in renewals.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap();
        assert!(
            gap < lock::RETRY_EVERY + Duration::from_millis(500),
            "a retry waited {gap:?}, not {:?}",
            lock::RETRY_EVERY
        );
    }
    // No write of the work reached the proxy after the deadline (200 ms: delivery over
    // loopback under a loaded machine; the work writes every 250 ms, so a write started
    // after the deadline would still show).
    let probes: Vec<&AwsCall> = calls
        .iter()
        .filter(|c| c.is_write() && !lock_name(c, "lockthrottle"))
        .collect();
    assert!(
        probes.len() >= 10,
        "the work wrote until then: {}",
        probes.len()
    );
    let late: Vec<_> = probes
        .iter()
        .filter(|c| c.at > deadline_wall + Duration::from_millis(200))
        .map(|c| (&c.operation, c.at.duration_since(deadline_wall).unwrap()))
        .collect();
    assert!(late.is_empty(), "writes after the deadline: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_holder_taken_over_writes_nothing_when_it_resumes() {
    // TTL 8 s: margin 3 s, so the holder's deadline is 5 s after it took the lock.
    let ttl = [("BBFLEET_LOCK_TTL", "8")];
    let h = Harness::new(KIT, "lockstop").await;
    let cfg = h.write_config(&h.config(2, None));
    let cfg = cfg.to_str().unwrap();
    let mut env: Vec<(&str, &str)> = Harness::token().to_vec();
    env.extend(ttl);
    let (a, a_pid, stopped_at) = start_then_stop_at_first_write(&h, cfg, &env).await;

    // Past the TTL (SSM's write time plus the 8 s lease), another apply takes over and
    // converges.
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(stopped_at.elapsed())).await;
    let b = h
        .run(&["--config", cfg, "apply", "--auto-approve"], &env)
        .await;
    b.expect_code(0);
    assert!(
        b.stderr.contains("Taking over the stale fleet lock") && b.stderr.contains("expired at"),
        "{}",
        b.stderr
    );
    assert!(b.stdout.contains("Apply complete!"), "{}", b.stdout);
    let gens_after_b = h.lock_generations().await;
    let bitbucket_writes = h.fake.write_count();
    let calls_before = h.recorder.calls().len();

    // Resumed, the first apply writes nothing and says why.
    let status = std::process::Command::new("kill")
        .args(["-CONT", &a_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(60), a.wait_with_output())
        .await
        .expect("the resumed apply finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fleet lock of lockstop")
            && (stderr.contains("could not be renewed") || stderr.contains("taken over"))
            && stderr.contains("stopped writing"),
        "{stderr}"
    );
    let after: Vec<String> = h.recorder.calls()[calls_before..]
        .iter()
        .filter(|c| c.is_write())
        .map(|c| c.operation.clone())
        .collect();
    assert!(after.is_empty(), "AWS writes after resuming: {after:?}");
    assert_eq!(
        h.fake.write_count(),
        bitbucket_writes,
        "Bitbucket writes after resuming"
    );
    assert_eq!(
        h.lock_generations().await,
        gens_after_b,
        "the lock is untouched"
    );
    assert_eq!(gens_after_b.last().unwrap().1["state"], "released");
    // The next apply finds nothing left to do.
    let again = h.apply(cfg, &[]).await;
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
}

/// Starts `apply` with `env` and stops it (SIGSTOP) when its first write under the lock
/// (the key) is at the proxy, so it is suspended between two batches: the child, its pid
/// and when it was stopped.
async fn start_then_stop_at_first_write(
    h: &Harness,
    cfg: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, u32, std::time::Instant) {
    let pid = Arc::new(AtomicU32::new(0));
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let target = pid.clone();
    h.recorder.on_operation("kms:CreateKey", move || {
        let pid = target.load(Ordering::SeqCst).to_string();
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill -STOP");
        let _ = stopped_tx.send((status.success(), std::time::Instant::now()));
    });
    let mut a = h.command(&["--config", cfg, "apply", "--auto-approve"], env);
    a.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let a = a.spawn().expect("start the first apply");
    let a_pid = a.id().expect("pid");
    pid.store(a_pid, Ordering::SeqCst);
    let (ok, stopped_at) = tokio::time::timeout(Duration::from_secs(60), stopped_rx)
        .await
        .expect("the first apply reached CreateKey")
        .unwrap();
    assert!(ok, "SIGSTOP sent");
    (a, a_pid, stopped_at)
}
