//! Crash safety: an apply (or destroy) stopped abruptly right after any of its writes,
//! followed by a normal run, converges.
//!
//! A normal run first tells how many writes W the command makes (its stats file, so a
//! change in the number of writes, such as a fleet lock, needs no edit here). Then, for
//! every k in 0..W, a fresh fleet runs the command with `BBFLEET_FAULT_AFTER_WRITES=k`
//! (the process exits abruptly before write k+1, like a kill), then runs it normally, and
//! the world is checked through the AWS SDK and the Bitbucket fake.

use futures::stream::{self, StreamExt};
use testkit::harness::Harness;
use testkit::world::{bbfleet, convergence_problems, leftovers};

use crate::KIT;

/// Runners the fleet should hold.
const CAPACITY: usize = 3;
/// Worlds (fleets) exercised at once: each bbfleet run is ~0.5-1 s, mostly waiting on moto.
const PARALLEL: usize = 3;
/// Apply arguments for one call in flight at a time: the crash point is exact.
const SEQUENTIAL: [&str; 2] = ["--concurrency", "1"];
/// Exit code of a run stopped by the fault hook (`bbfleet::stats::FAULT_EXIT_CODE`).
const FAULT_EXIT: i32 = bbfleet::stats::FAULT_EXIT_CODE;

/// A fresh world with a capacity-3 config; returns it with the config path.
async fn world(fleet: &str) -> (Harness, String) {
    let h = Harness::new(KIT, fleet).await;
    let path = h.write_config(&h.config(CAPACITY as u32, None));
    let cfg = path.to_str().unwrap().to_owned();
    (h, cfg)
}

/// Runs `args` normally with a stats file; returns the number of writes it made.
async fn counted_writes(h: &Harness, args: &[&str]) -> u64 {
    let stats = h.dir.path().join("stats.json");
    let run = bbfleet(h, args, &[("BBFLEET_STATS_FILE", stats.to_str().unwrap())]).await;
    run.expect_code(0);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("the stats file")).unwrap();
    doc["writes"].as_u64().expect("writes in the stats file")
}

/// Runs `args` with the hook at `k`: it must stop with the hook's exit code.
async fn crashed(h: &Harness, args: &[&str], k: u64) -> Result<(), String> {
    let k_text = k.to_string();
    let run = bbfleet(h, args, &[("BBFLEET_FAULT_AFTER_WRITES", &k_text)]).await;
    let expected = format!("stopping before write {}", k + 1);
    if run.code != FAULT_EXIT || !run.stderr.contains(&expected) {
        return Err(format!(
            "{args:?} with the hook at {k}: exit {} (wanted {FAULT_EXIT} and {expected:?})\n{}",
            run.code, run.stderr
        ));
    }
    Ok(())
}

/// Writes that reached moto (through the proxy) and the fake.
fn writes_at_servers(h: &Harness) -> usize {
    h.recorder.writes().len() + h.fake.write_count()
}

/// Writes to the fleet itself: those at the servers but the fleet lock's (a run may take
/// and release the lock even when it has nothing to do).
fn fleet_writes(h: &Harness) -> usize {
    let lock = format!("/bbfleet/{}/lock", h.fleet);
    let aws = h
        .recorder
        .calls()
        .iter()
        .filter(|c| c.is_write() && !c.body.contains(&lock))
        .count();
    aws + h.fake.write_count()
}

/// Apply with the hook at k, then a normal apply; returns what is wrong afterwards.
/// Returns what is wrong afterwards, and how many writes reached the servers before the stop.
async fn crash_apply_then_apply(
    fleet: String,
    k: u64,
    crash_args: &[&str],
) -> (Vec<String>, usize) {
    let (h, cfg) = world(&fleet).await;
    let mut args = vec!["--config", cfg.as_str(), "apply", "--auto-approve"];
    args.extend_from_slice(crash_args);
    if let Err(e) = crashed(&h, &args, k).await {
        return (vec![e], 0);
    }
    let mut problems = Vec::new();
    let sent = writes_at_servers(&h);
    let sequential = crash_args == SEQUENTIAL;
    // One call in flight: exactly k writes done. Fanned out: writes counted before the
    // stop may still be in flight and lost with the process, as in a real crash.
    if (sequential && sent != k as usize) || sent > k as usize {
        problems.push(format!("{sent} writes reached the servers before the stop"));
    }
    let again = bbfleet(&h, &["--config", &cfg, "apply", "--auto-approve"], &[]).await;
    if again.code != 0 {
        problems.push(format!(
            "the apply after the stop failed (exit {}):\n{}",
            again.code, again.stderr
        ));
        return (problems, sent);
    }
    problems.extend(convergence_problems(&h, &cfg, CAPACITY).await);
    (problems, sent)
}

/// Loops k over every write of an apply from empty run with `crash_args`.
async fn apply_crash_loop(tag: &str, crash_args: &[&str]) {
    let started = std::time::Instant::now();
    let (h, cfg) = world(&format!("crash-{tag}-base")).await;
    let mut args = vec!["--config", cfg.as_str(), "apply", "--auto-approve"];
    args.extend_from_slice(crash_args);
    let writes = counted_writes(&h, &args).await;
    // The check itself must pass on an undisturbed world, or every k below would fail.
    let baseline = convergence_problems(&h, &cfg, CAPACITY).await;
    assert!(baseline.is_empty(), "a normal apply: {baseline:#?}");
    assert!(
        writes >= 2 * CAPACITY as u64,
        "an apply from empty made {writes} writes"
    );

    let mut results: Vec<(u64, Vec<String>, usize)> = stream::iter(0..writes)
        .map(|k| async move {
            let (problems, sent) =
                crash_apply_then_apply(format!("crash-{tag}-{k}"), k, crash_args).await;
            (k, problems, sent)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.sort_by_key(|(k, _, _)| *k);
    eprintln!(
        "apply {crash_args:?}: {writes} writes, {writes} crash points checked in {:.1} s; writes at the servers when stopped after k: {:?}",
        started.elapsed().as_secs_f64(),
        results.iter().map(|(k, _, sent)| (*k, *sent)).collect::<Vec<_>>()
    );
    let failures: Vec<(u64, Vec<String>)> = results
        .into_iter()
        .filter(|(_, p, _)| !p.is_empty())
        .map(|(k, p, _)| (k, p))
        .collect();
    assert!(
        failures.is_empty(),
        "apply stopped after k writes, then apply, did not converge for k in {:?}:\n{failures:#?}",
        failures.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stopped_after_any_write_then_apply_converges() {
    apply_crash_loop("seq", &SEQUENTIAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stopped_mid_fan_out_then_apply_converges() {
    // Default concurrency: the runners are registered and stored in one fan-out, so the
    // stop lands while other registrations or stores are in flight.
    apply_crash_loop("fan", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_stopped_after_any_write_then_destroy_leaves_nothing() {
    let started = std::time::Instant::now();
    let (h, cfg) = world("crash-destroy-base").await;
    bbfleet(&h, &["--config", &cfg, "apply", "--auto-approve"], &[])
        .await
        .expect_code(0);
    let destroy = ["--config", cfg.as_str(), "destroy", "--auto-approve"];
    let writes = counted_writes(&h, &destroy).await;
    let baseline = leftovers(&h).await;
    assert!(baseline.is_empty(), "a normal destroy left {baseline:#?}");
    assert!(writes >= 3, "a destroy made {writes} writes");

    let failures: Vec<(u64, Vec<String>)> = stream::iter(0..writes)
        .map(|k| async move {
            let (h, cfg) = world(&format!("crash-destroy-{k}")).await;
            let destroy = ["--config", cfg.as_str(), "destroy", "--auto-approve"];
            let mut problems = Vec::new();
            bbfleet(&h, &["--config", &cfg, "apply", "--auto-approve"], &[])
                .await
                .expect_code(0);
            h.fake.clear_requests();
            h.recorder.clear();
            if let Err(e) = crashed(&h, &destroy, k).await {
                return (k, vec![e]);
            }
            if writes_at_servers(&h) > k as usize {
                problems.push(format!(
                    "{} writes reached the servers before the stop",
                    writes_at_servers(&h)
                ));
            }
            let again = bbfleet(&h, &destroy, &[]).await;
            if again.code != 0 {
                problems.push(format!(
                    "the destroy after the stop failed (exit {}):\n{}",
                    again.code, again.stderr
                ));
                return (k, problems);
            }
            problems.extend(leftovers(&h).await);
            // Idempotent: one more destroy finds nothing to do and writes nothing.
            h.fake.clear_requests();
            h.recorder.clear();
            let noop = bbfleet(&h, &destroy, &[]).await;
            if noop.code != 0 || !noop.stdout.contains("No changes.") || fleet_writes(&h) != 0 {
                problems.push(format!(
                    "a third destroy was not a no-op (exit {}, {} writes):\n{}",
                    noop.code,
                    fleet_writes(&h),
                    noop.stdout
                ));
            }
            (k, problems)
        })
        .buffer_unordered(PARALLEL)
        .filter(|(_, p)| std::future::ready(!p.is_empty()))
        .collect()
        .await;
    eprintln!(
        "destroy: {writes} writes, {writes} crash points checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "destroy stopped after k writes, then destroy, left things behind for k in {:?}:\n{failures:#?}",
        failures.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

/// A config of `h`'s fleet.
type ConfigFn = fn(&Harness) -> String;

/// Applies `before`, then loops k over every write of the apply that brings the world to
/// `after` (one call in flight): stopped after k writes, then applied normally, it converges.
async fn change_crash_loop(tag: &str, before: ConfigFn, after: ConfigFn) {
    let started = std::time::Instant::now();
    let h = Harness::new(KIT, &format!("crash-{tag}-base")).await;
    let cfg = h.write_config(&before(&h));
    let cfg = cfg.to_str().unwrap().to_owned();
    let apply = ["--config", cfg.as_str(), "apply", "--auto-approve"];
    bbfleet(&h, &apply, &[]).await.expect_code(0);
    h.write_config(&after(&h));
    let writes = counted_writes(&h, &[&apply[..], &SEQUENTIAL[..]].concat()).await;
    let baseline = convergence_problems(&h, &cfg, CAPACITY).await;
    assert!(baseline.is_empty(), "a normal {tag} apply: {baseline:#?}");
    assert!(writes >= 2, "the {tag} apply made {writes} writes");

    let mut failures: Vec<(u64, Vec<String>)> = stream::iter(0..writes)
        .map(|k| async move {
            let h = Harness::new(KIT, &format!("crash-{tag}-{k}")).await;
            let cfg = h.write_config(&before(&h));
            let cfg = cfg.to_str().unwrap().to_owned();
            let apply = ["--config", cfg.as_str(), "apply", "--auto-approve"];
            bbfleet(&h, &apply, &[]).await.expect_code(0);
            h.write_config(&after(&h));
            if let Err(e) = crashed(&h, &[&apply[..], &SEQUENTIAL[..]].concat(), k).await {
                return (k, vec![e]);
            }
            let again = bbfleet(&h, &apply, &[]).await;
            if again.code != 0 {
                return (
                    k,
                    vec![format!(
                        "the apply after the stop failed (exit {}):\n{}",
                        again.code, again.stderr
                    )],
                );
            }
            (k, convergence_problems(&h, &cfg, CAPACITY).await)
        })
        .buffer_unordered(PARALLEL)
        .filter(|(_, p)| std::future::ready(!p.is_empty()))
        .collect()
        .await;
    failures.sort_by_key(|(k, _)| *k);
    eprintln!(
        "{tag}: {writes} writes, {writes} crash points checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{tag} stopped after k writes, then apply, did not converge for k in {:?}:\n{failures:#?}",
        failures.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_stopped_after_any_write_then_apply_converges() {
    // A scale-down lowers the target (noTermination), terminates the surplus instances,
    // then deletes runners and commands; a stop between any two of those must not leave
    // instances or runners above the new capacity.
    change_crash_loop(
        "down",
        |h| h.config(5, None),
        |h| h.config(CAPACITY as u32, None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_stopped_after_any_write_then_apply_converges() {
    // New instance types and a new root volume size: a new launch template version, a new
    // fleet request, then the old one cancelled. Stopped in between, two live requests
    // exist until the next apply cancels the old one.
    change_crash_loop(
        "swap",
        |h| h.config(CAPACITY as u32, None),
        |h| {
            h.config(CAPACITY as u32, None)
                .replace("\"c6i.xlarge\"", "\"c6a.xlarge\"")
                .replace(
                    "instance_profile = \"bbfleet-runner\"\n",
                    "instance_profile = \"bbfleet-runner\"\nroot_volume_gb = 60\n",
                )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_fault_hook_value_is_refused_before_any_call() {
    let (h, cfg) = world("crash-badhook").await;
    let run = bbfleet(
        &h,
        &["--config", &cfg, "apply", "--auto-approve"],
        &[("BBFLEET_FAULT_AFTER_WRITES", "three")],
    )
    .await;
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("BBFLEET_FAULT_AFTER_WRITES: \"three\" is not a number"),
        "{}",
        run.stderr
    );
    assert!(h.fake.requests().is_empty() && h.recorder.calls().is_empty());
}
