//! The fleet lock against a real moto server and the Bitbucket fake: two applies at once,
//! a live foreign holder (wait, then fail naming it, no writes), stale holders (expired, or
//! a dead process on this machine) taken over at once, `unlock`, no-op applies that never
//! touch the lock, and destroy deleting the lock's generations. Fencing: `lock_fence.rs`.

use std::time::{Duration, Instant};

use bitbucket_fake::FakeConfig;
use testkit::harness::{Harness, Run};

use crate::KIT;

/// A fake whose every call takes `ms`, so two runs started together overlap.
async fn slow_harness(fleet: &str, ms: u64) -> Harness {
    Harness::with_fake(
        KIT,
        fleet,
        FakeConfig {
            latency: Duration::from_millis(ms),
            ..FakeConfig::default()
        },
    )
    .await
}

/// A lock value as another run writes it.
fn holder(host: &str, pid: u32, pid_scope: Option<&str>, expires_in_s: i64) -> serde_json::Value {
    let now = jiff::Timestamp::now();
    let expires = now
        .checked_add(jiff::SignedDuration::from_secs(expires_in_s))
        .unwrap();
    let mut v = serde_json::json!({
        "state": "held",
        "owner": format!("ops@{host}"),
        "host": host,
        "pid": pid,
        "command": "apply",
        "acquired_at": now.to_string(),
        "expires_at": expires.to_string(),
    });
    if let Some(scope) = pid_scope {
        v["pid_scope"] = scope.into();
    }
    v
}

/// The world holds exactly `n` runners, commands, one live fleet with target `n` and one
/// launch template, and the lock is released.
async fn assert_world(h: &Harness, n: usize) {
    assert_eq!(h.runners(None).len(), n, "runners at the fake");
    assert_eq!(
        h.fake.runners("acme", None).len(),
        n,
        "no stray runner registered"
    );
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let params = ssm
        .get_parameters_by_path()
        .path(format!("/bbfleet/{}/runners", h.fleet))
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters().len(), n, "runner commands");
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let fleets = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let live: Vec<_> = fleets
        .spot_fleet_request_configs()
        .iter()
        .filter(|f| {
            f.tags()
                .iter()
                .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some(h.fleet.as_str()))
        })
        .filter(|f| {
            f.spot_fleet_request_state()
                .is_some_and(|s| !s.as_str().starts_with("cancelled"))
        })
        .collect();
    assert_eq!(live.len(), 1, "live fleet requests");
    assert_eq!(
        live[0]
            .spot_fleet_request_config()
            .and_then(|c| c.target_capacity()),
        Some(n as i32)
    );
    let lts = ec2
        .describe_launch_templates()
        .launch_template_names(format!("bbfleet-{}", h.fleet))
        .send()
        .await
        .unwrap();
    assert_eq!(lts.launch_templates().len(), 1, "launch templates");
    let gens = h.lock_generations().await;
    let newest = &gens.last().expect("a lock generation").1;
    assert_eq!(newest["state"], "released", "lock: {gens:?}");
}

fn both(a: &Run, b: &Run) -> String {
    format!(
        "--- first\n{}{}\n--- second\n{}{}",
        a.stdout, a.stderr, b.stdout, b.stderr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_started_together_converge() {
    let h = slow_harness("lockpair", 150).await;
    let config = h.write_config(&h.config(3, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    let args = ["--config", cfg, "apply", "--auto-approve"];
    let (a, b) = tokio::join!(h.run(&args, &token), h.run(&args, &token));
    let all = both(&a, &b);
    assert_eq!((a.code, b.code), (0, 0), "{all}");
    let applied: Vec<&Run> = [&a, &b]
        .into_iter()
        .filter(|r| r.stdout.contains("Apply complete!"))
        .collect();
    assert_eq!(applied.len(), 1, "exactly one run applied:\n{all}");
    let other = if applied[0].stdout == a.stdout {
        &b
    } else {
        &a
    };
    // The other one planned the same changes, waited for the lock, planned again under it
    // and found nothing left to do.
    assert!(
        other.stdout.contains("Plan: 6 to add"),
        "both planned before the lock:\n{all}"
    );
    assert!(
        other.stderr.contains("Waiting for the fleet lock"),
        "the second waited:\n{all}"
    );
    assert!(
        other
            .stdout
            .contains("The fleet changed while waiting for the lock")
            && other.stdout.contains("No changes."),
        "the second planned again:\n{all}"
    );
    assert_world(&h, 3).await;
    // Generations only grow; old ones are pruned (kept: the newest two at acquire + release).
    let gens = h.lock_generations().await;
    assert!(gens.len() <= 3, "lock generations not pruned: {gens:?}");
    let transcript = h.transcript.lock().unwrap().clone();
    for s in h.fake.issued_secrets() {
        assert!(
            !transcript.contains(s.as_str()),
            "a runner secret was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tiny_lock_timeout_the_second_apply_fails_naming_the_holder() {
    let h = slow_harness("locktiny", 300).await;
    let config = h.write_config(&h.config(3, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    let args = [
        "--config",
        cfg,
        "apply",
        "--auto-approve",
        "--lock-timeout",
        "0s",
    ];
    let (a, b) = tokio::join!(h.run(&args, &token), h.run(&args, &token));
    let all = both(&a, &b);
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 1], "{all}");
    let loser = if a.code == 1 { &a } else { &b };
    for part in [
        "the fleet lock of locktiny is held by",
        "pid ",
        "`bbfleet apply`",
        "since ",
        "expires ",
        "--lock-timeout",
        "nothing was changed",
    ] {
        assert!(loser.stderr.contains(part), "{part:?} in:\n{all}");
    }
    assert_world(&h, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_holders_block_stale_ones_are_taken_over_and_unlock_releases() {
    let h = Harness::new(KIT, "lockheld").await;
    let token = Harness::token();
    // Two config files: a blocked apply must have changes to make.
    let two = h.dir.path().join("two.toml");
    std::fs::write(&two, h.config(2, None)).unwrap();
    let cfg = two.to_str().unwrap();

    // A live holder on another machine: apply waits --lock-timeout, then fails naming it,
    // having written nothing anywhere.
    h.put_lock(1, &holder("build-7", 4242, None, 3600)).await;
    let started = Instant::now();
    let blocked = h
        .run(
            &[
                "--config",
                cfg,
                "apply",
                "--auto-approve",
                "--lock-timeout",
                "2s",
            ],
            &token,
        )
        .await;
    blocked.expect_code(1);
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
    for part in [
        "held by ops@build-7 on host build-7 (pid 4242, `bbfleet apply`",
        "gave up after waiting 2s",
        "unlock --force",
    ] {
        assert!(
            blocked.stderr.contains(part),
            "{part:?} in:\n{}",
            blocked.stderr
        );
    }
    assert!(
        blocked.stderr.contains("Waiting for the fleet lock"),
        "{}",
        blocked.stderr
    );
    h.assert_no_writes("an apply blocked by a live lock");

    // Bad --lock-timeout: refused before any call.
    let bad = h
        .run(
            &[
                "--config",
                cfg,
                "apply",
                "--auto-approve",
                "--lock-timeout",
                "soon",
            ],
            &token,
        )
        .await;
    bad.expect_code(1);
    assert!(bad.stderr.contains("--lock-timeout"), "{}", bad.stderr);

    // status shows the holder; unlock without --force only shows it.
    let status = h.run(&["--config", cfg, "status"], &token).await;
    status.expect_code(0);
    assert!(
        status.stdout.contains("Fleet lock: held by ops@build-7"),
        "{}",
        status.stdout
    );
    let refused = h.run(&["--config", cfg, "unlock"], &[]).await;
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("held by ops@build-7"),
        "{}",
        refused.stderr
    );
    h.assert_no_writes("unlock without --force");

    // An expired holder is taken over at once.
    h.put_lock(2, &holder("build-7", 4242, None, -60)).await;
    let started = Instant::now();
    let took = h.apply(cfg, &[]).await;
    assert!(
        took.stderr
            .contains("Taking over the stale fleet lock of ops@build-7")
            && took.stderr.contains("expired at"),
        "{}",
        took.stderr
    );
    assert!(!took.stderr.contains("Waiting"), "{}", took.stderr);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_world(&h, 2).await;
    let gens: Vec<u64> = h.lock_generations().await.iter().map(|(g, _)| *g).collect();
    assert_eq!(
        gens,
        [2, 3, 4],
        "took generation 3, pruned 1, released as 4"
    );

    // A holder on this machine whose process is gone (a crashed run) is taken over at once,
    // though its lock has not expired.
    let me = bbfleet::lock::Identity::current();
    let scope = me
        .pid_scope
        .clone()
        .expect("boot id and pid namespace readable");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    h.put_lock(5, &holder(&me.host, dead_pid, Some(&scope), 3600))
        .await;
    let one = h.dir.path().join("one.toml");
    std::fs::write(&one, h.config(1, None)).unwrap();
    let one = one.to_str().unwrap();
    let took = h.apply(one, &[]).await;
    assert!(
        took.stderr
            .contains(&format!("process {dead_pid} on this host is gone")),
        "{}",
        took.stderr
    );
    assert_world(&h, 1).await;

    // A holder on this machine whose process runs (this test) holds: waited for, then refused.
    h.put_lock(8, &holder(&me.host, std::process::id(), Some(&scope), 3600))
        .await;
    h.fake.clear_requests();
    h.recorder.clear();
    let blocked = h
        .run(
            &[
                "--config",
                cfg,
                "apply",
                "--auto-approve",
                "--lock-timeout",
                "1s",
            ],
            &token,
        )
        .await;
    blocked.expect_code(1);
    assert!(blocked.stderr.contains("is held by"), "{}", blocked.stderr);
    h.assert_no_writes("an apply blocked by a live local lock");

    // A no-op apply never takes the lock: it finishes at once, with zero writes, even
    // while someone holds it.
    let noop = h.apply(one, &["--lock-timeout", "0s"]).await;
    assert!(noop.stdout.contains("No changes."), "{}", noop.stdout);
    h.assert_no_writes("a no-op apply under a held lock");

    // unlock --force releases it (and says whose it was); then there is nothing to unlock.
    let forced = h.run(&["--config", one, "unlock", "--force"], &[]).await;
    forced.expect_code(0);
    assert!(
        forced
            .stdout
            .contains("Released the fleet lock of lockheld held by ops@"),
        "{}",
        forced.stdout
    );
    let gens = h.lock_generations().await;
    assert_eq!(gens.last().unwrap().0, 9);
    assert_eq!(gens.last().unwrap().1["state"], "released");
    let again = h.run(&["--config", one, "unlock"], &[]).await;
    again.expect_code(0);
    assert!(again.stdout.contains("is not held"), "{}", again.stdout);

    // A running process of this machine that is not the holder (its pid was reused: the
    // start time differs) does not hold the lock either.
    if let Some(started) = me.pid_started {
        let mut reused = holder(&me.host, std::process::id(), Some(&scope), 3600);
        reused["pid_started"] = (started + 1).into();
        h.put_lock(10, &reused).await;
        let took = h.apply(cfg, &[]).await;
        assert!(
            took.stderr.contains(&format!(
                "process {} on this host is gone",
                std::process::id()
            )),
            "{}",
            took.stderr
        );
        assert_world(&h, 2).await;
    }
    let before = h.lock_generations().await.last().unwrap().0;

    destroy_deletes_the_lock(&h, one, before).await;
}

/// destroy takes the lock too (acquire, release: its generations keep counting up, names
/// are never re-created while they exist), and once its work is done deletes every
/// generation: nothing of the fleet is left in SSM, not even the lock.
async fn destroy_deletes_the_lock(h: &Harness, one: &str, before: u64) {
    h.recorder.clear();
    h.destroy(one).await;
    h.assert_no_parameter_left().await;
    let gens = destroy_lock_writes(h);
    assert_eq!(
        gens.last().unwrap().0,
        before + 2,
        "destroy: acquire, release"
    );
    assert_eq!(gens.last().unwrap().1["state"], "released");
    assert_eq!(gens.last().unwrap().1["command"], "destroy");
    let left = h.lock_generations().await;
    assert!(
        left.is_empty(),
        "lock generations left by destroy: {left:?}"
    );
    // The next writer starts a new series.
    let again = h.apply(one, &[]).await;
    assert!(again.stdout.contains("Apply complete!"), "{}", again.stdout);
    let gens: Vec<u64> = h.lock_generations().await.iter().map(|(g, _)| *g).collect();
    assert_eq!(gens, [1, 2], "taken as 1, released as 2");
    h.destroy(one).await;
    assert!(h.lock_generations().await.is_empty());
}

/// The lock generations destroy wrote (from the recorded PutParameter requests), in order.
fn destroy_lock_writes(h: &Harness) -> Vec<(u64, serde_json::Value)> {
    let prefix = format!("/bbfleet/{}/lock/", h.fleet);
    h.recorder
        .calls()
        .iter()
        .filter(|c| c.operation == "ssm:PutParameter" && c.status == 200)
        .filter_map(|c| {
            let body: serde_json::Value = serde_json::from_str(&c.body).ok()?;
            let generation = body["Name"].as_str()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((
                generation,
                serde_json::from_str(body["Value"].as_str()?).ok()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holders_never_overlap_and_a_takeover_is_noticed() {
    use bbfleet::lock::{self, LockError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let h = Harness::new(KIT, "lockrace").await;
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);

    // Six holders race (same process, so none looks stale to another): at most one holds
    // the lock at any time, and every one gets it in turn.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (ssm, inside, most) = (ssm.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let held = lock::acquire(
                &ssm,
                "lockrace",
                "apply",
                Duration::from_secs(60),
                "60s",
                |_| {},
            )
            .await
            .expect("acquire");
            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            held.release().await.expect("release");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
    let gens = h.lock_generations().await;
    assert_eq!(gens.last().unwrap().1["state"], "released");
    assert!(gens.len() <= 3, "pruned: {gens:?}");
    let newest = gens.last().unwrap().0;
    assert!(
        newest >= 12,
        "6 acquires + 6 releases, got generation {newest}"
    );

    // Renewal writes the next generation, held by us, with a later expiry.
    let mut held = lock::acquire(&ssm, "lockrace", "autoscale", Duration::ZERO, "0s", |_| {})
        .await
        .unwrap();
    held.renew().await.unwrap();
    let gens = h.lock_generations().await;
    let (g, v) = gens.last().unwrap();
    assert_eq!(
        (v["state"].as_str(), v["command"].as_str()),
        (Some("held"), Some("autoscale"))
    );
    // Someone takes it over (as if we were stale): renewal and release both report the loss
    // and neither overwrites the new holder.
    h.put_lock(g + 1, &holder("elsewhere", 1, None, 600)).await;
    let lost = held.renew().await.unwrap_err();
    assert!(
        matches!(&lost, LockError::Lost { holder, .. } if holder.contains("ops@elsewhere")),
        "{lost}"
    );
    assert!(matches!(held.release().await, Err(LockError::Lost { .. })));
    let gens = h.lock_generations().await;
    assert_eq!(gens.last().unwrap().1["owner"], "ops@elsewhere");

    let forced = lock::force_release(&ssm, "lockrace").await.unwrap();
    assert_eq!(forced.unwrap().owner, "ops@elsewhere");
    assert!(lock::force_release(&ssm, "lockrace")
        .await
        .unwrap()
        .is_none());

    // The heartbeat renews while the work runs (a new held generation per interval)...
    let mut held = lock::acquire(&ssm, "lockrace", "apply", Duration::ZERO, "0s", |_| {})
        .await
        .unwrap();
    let first = h.lock_generations().await.last().unwrap().0;
    let out = held
        .guard_every(Duration::from_millis(300), async {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            "done"
        })
        .await
        .unwrap();
    assert_eq!(out, "done");
    let gens = h.lock_generations().await;
    let (renewed, v) = gens.last().unwrap();
    assert!(*renewed >= first + 2, "renewed from {first} to {renewed}");
    assert_eq!(v["state"], "held");
    assert_eq!(v["owner"], lock::Identity::current().owner);
    // ...and stops the work when a renewal finds the lock taken over.
    h.put_lock(renewed + 1, &holder("elsewhere", 1, None, 600))
        .await;
    let finished = Arc::new(AtomicUsize::new(0));
    let flag = finished.clone();
    let stopped = held
        .guard_every(Duration::from_millis(200), async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            flag.store(1, Ordering::SeqCst);
        })
        .await;
    assert!(
        matches!(stopped, Err(LockError::Lost { .. })),
        "{stopped:?}"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0, "the work was stopped");
}
