//! Crash safety: an apply (or destroy) stopped abruptly right after any of its writes,
//! followed by a normal run, converges.
//!
//! A normal run first tells how many writes W the command makes (its stats file, so a
//! change in the number of writes, such as a fleet lock, needs no edit here). Then, for
//! every k in 0..W, a fresh fleet runs the command with `BBFLEET_FAULT_AFTER_WRITES=k`
//! (the process exits abruptly before write k+1, like a kill), then runs it normally, and
//! the world is checked through the AWS SDK and the Bitbucket fake.

mod support;

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Filter;
use futures::stream::{self, StreamExt};
use support::harness::{Harness, Run};

/// Runners the fleet should hold.
const CAPACITY: usize = 3;
/// Worlds (fleets) exercised at once: each bbfleet run is ~0.5-1 s, mostly waiting on moto.
const PARALLEL: usize = 3;
/// Exit code of a run stopped by the fault hook (`bbfleet::stats::FAULT_EXIT_CODE`).
const FAULT_EXIT: i32 = bbfleet::stats::FAULT_EXIT_CODE;

/// Runs bbfleet with the fake's token and `env`.
async fn bbfleet(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all: Vec<(&str, &str)> = Harness::token().to_vec();
    all.extend_from_slice(env);
    h.run(args, &all).await
}

/// A fresh world with a capacity-3 config; returns it with the config path.
async fn world(fleet: &str) -> (Harness, String) {
    let h = Harness::new(fleet).await;
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

/// Everything wrong with the world of `h` for a converged fleet of `CAPACITY` runners.
async fn convergence_problems(h: &Harness, cfg: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let fleet = h.fleet.as_str();

    // Runners: exactly CAPACITY, named by the lowest free slots, nothing else in the scope.
    let runners = h.fake.runners("acme", None);
    let names: BTreeSet<String> = runners
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let wanted: BTreeSet<String> = (1..=CAPACITY)
        .map(|n| format!("bbfleet-{fleet}-{n}"))
        .collect();
    if runners.len() != CAPACITY || names != wanted {
        problems.push(format!("runners: {names:?} ({} in all)", runners.len()));
    }
    let runner_uuids: BTreeSet<String> = runners
        .iter()
        .map(|r| {
            r["uuid"]
                .as_str()
                .unwrap_or_default()
                .trim_matches(|c| c == '{' || c == '}')
                .to_ascii_lowercase()
        })
        .collect();

    // Parameters: one command per runner holding that runner's uuid; no claim, no other name.
    let params = parameters(h, fleet, true).await;
    let runners_prefix = format!("/bbfleet/{fleet}/runners/");
    let mut commands = BTreeSet::new();
    for (name, value) in &params {
        if let Some(uuid) = name.strip_prefix(&runners_prefix) {
            if !runner_uuids.contains(uuid) {
                problems.push(format!("parameter {name} has no runner"));
            } else if !value.contains(&format!("RUNNER_UUID={{{uuid}}}")) {
                problems.push(format!("parameter {name} holds another runner's command"));
            }
            commands.insert(uuid.to_owned());
        } else {
            problems.push(format!("unexpected parameter {name}"));
        }
    }
    if commands != runner_uuids {
        problems.push(format!(
            "runners {runner_uuids:?} but commands for {commands:?}"
        ));
    }

    // One launch template.
    let lts = launch_templates(h, fleet).await;
    if lts != [format!("bbfleet-{fleet}")] {
        problems.push(format!("launch templates: {lts:?}"));
    }

    // Exactly one live fleet request, target CAPACITY, owning every running tagged instance.
    let fleets = fleet_requests(h, fleet).await;
    let live: Vec<&(String, String, i32)> = fleets
        .iter()
        .filter(|(_, state, _)| ["submitted", "active", "modifying"].contains(&state.as_str()))
        .collect();
    match live.as_slice() {
        [(id, _, target)] => {
            if *target != CAPACITY as i32 {
                problems.push(format!("fleet {id} has target {target}"));
            }
            let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
            let owned: BTreeSet<String> = ec2
                .describe_spot_fleet_instances()
                .spot_fleet_request_id(id)
                .send()
                .await
                .unwrap()
                .active_instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect();
            let running = running_instances(h, fleet).await;
            if owned.len() != CAPACITY {
                problems.push(format!("fleet {id} has instances {owned:?}"));
            }
            let outside: Vec<&String> = running.difference(&owned).collect();
            if !outside.is_empty() {
                problems.push(format!("tagged instances outside the fleet: {outside:?}"));
            }
        }
        _ => problems.push(format!("live fleet requests: {live:?}")),
    }

    // One key: the aliased one; no key an interrupted run created and left without an alias.
    let orphans = unaliased_fleet_keys(h, fleet).await;
    if !orphans.is_empty() {
        problems.push(format!("keys of the fleet without an alias: {orphans:?}"));
    }

    // And bbfleet agrees: nothing left to do.
    let plan = bbfleet(
        h,
        &["--config", cfg, "plan", "--detailed-exitcode", "--no-preflight"],
        &[],
    )
    .await;
    if plan.code != 0 {
        problems.push(format!(
            "the next plan is not empty (exit {}):\n{}{}",
            plan.code, plan.stdout, plan.stderr
        ));
    }
    problems
}

/// Everything of the fleet still in the world after a destroy (the key is kept on purpose).
async fn leftovers(h: &Harness) -> Vec<String> {
    let mut left = Vec::new();
    let fleet = h.fleet.as_str();
    let runners = h.fake.runners("acme", None);
    if !runners.is_empty() {
        left.push(format!("{} runners", runners.len()));
    }
    for (name, _) in parameters(h, fleet, false).await {
        left.push(format!("parameter {name}"));
    }
    for lt in launch_templates(h, fleet).await {
        left.push(format!("launch template {lt}"));
    }
    for (id, state, _) in fleet_requests(h, fleet).await {
        if !state.starts_with("cancelled") {
            left.push(format!("fleet request {id} ({state})"));
        }
    }
    for id in running_instances(h, fleet).await {
        left.push(format!("running instance {id}"));
    }
    left
}

/// Parameters under `/bbfleet/{fleet}` with their values (decrypted when `decrypt`), but
/// the fleet lock's: it coordinates runs and is not part of the fleet.
async fn parameters(h: &Harness, fleet: &str, decrypt: bool) -> Vec<(String, String)> {
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let mut pages = ssm
        .get_parameters_by_path()
        .path(format!("/bbfleet/{fleet}"))
        .recursive(true)
        .with_decryption(decrypt)
        .into_paginator()
        .send();
    let lock = format!("/bbfleet/{fleet}/lock/");
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().parameters() {
            let name = p.name().unwrap_or_default().to_owned();
            if !name.starts_with(&lock) {
                out.push((name, p.value().unwrap_or_default().to_owned()));
            }
        }
    }
    out
}

/// Names of the launch templates tagged with the fleet.
async fn launch_templates(h: &Harness, fleet: &str) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("tag:bbfleet:fleet")
                .values(fleet)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.launch_templates()
        .iter()
        .filter_map(|t| t.launch_template_name().map(str::to_owned))
        .collect()
}

/// (id, state, target) of the spot fleet requests tagged with the fleet.
async fn fleet_requests(h: &Harness, fleet: &str) -> Vec<(String, String, i32)> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2.describe_spot_fleet_requests().send().await.unwrap();
    out.spot_fleet_request_configs()
        .iter()
        .filter(|f| {
            f.tags()
                .iter()
                .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some(fleet))
        })
        .map(|f| {
            (
                f.spot_fleet_request_id().unwrap_or_default().to_owned(),
                f.spot_fleet_request_state()
                    .map_or("unknown", |s| s.as_str())
                    .to_owned(),
                f.spot_fleet_request_config()
                    .and_then(|c| c.target_capacity())
                    .unwrap_or(-1),
            )
        })
        .collect()
}

/// Pending or running instances tagged with the fleet.
async fn running_instances(h: &Harness, fleet: &str) -> BTreeSet<String> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:bbfleet:fleet")
                .values(fleet)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// KMS keys tagged with the fleet that no alias points at.
async fn unaliased_fleet_keys(h: &Harness, fleet: &str) -> Vec<String> {
    let kms = aws_sdk_kms::Client::new(&h.sdk);
    let aliased: BTreeSet<String> = kms
        .list_aliases()
        .limit(100)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(|a| a.unwrap().target_key_id().map(str::to_owned))
        .collect();
    let keys = kms
        .list_keys()
        .limit(1000)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::new();
    for key in keys {
        let id = key.unwrap().key_id().unwrap_or_default().to_owned();
        if aliased.contains(&id) {
            continue;
        }
        let tags = kms.list_resource_tags().key_id(&id).send().await.unwrap();
        if tags
            .tags()
            .iter()
            .any(|t| t.tag_key() == "bbfleet:fleet" && t.tag_value() == fleet)
        {
            out.push(id);
        }
    }
    out
}

/// Apply with the hook at k, then a normal apply; returns what is wrong afterwards.
async fn crash_apply_then_apply(fleet: String, k: u64, crash_args: &[&str]) -> Vec<String> {
    let (h, cfg) = world(&fleet).await;
    let mut args = vec!["--config", cfg.as_str(), "apply", "--auto-approve"];
    args.extend_from_slice(crash_args);
    if let Err(e) = crashed(&h, &args, k).await {
        return vec![e];
    }
    let mut problems = Vec::new();
    let sent = writes_at_servers(&h);
    let sequential = crash_args.contains(&"1");
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
        return problems;
    }
    problems.extend(convergence_problems(&h, &cfg).await);
    problems
}

/// Loops k over every write of an apply from empty run with `crash_args`.
async fn apply_crash_loop(tag: &str, crash_args: &[&str]) {
    let started = std::time::Instant::now();
    let (h, cfg) = world(&format!("crash-{tag}-base")).await;
    let mut args = vec!["--config", cfg.as_str(), "apply", "--auto-approve"];
    args.extend_from_slice(crash_args);
    let writes = counted_writes(&h, &args).await;
    // The check itself must pass on an undisturbed world, or every k below would fail.
    let baseline = convergence_problems(&h, &cfg).await;
    assert!(baseline.is_empty(), "a normal apply: {baseline:#?}");
    assert!(writes >= 2 * CAPACITY as u64, "an apply from empty made {writes} writes");

    let failures: Vec<(u64, Vec<String>)> = stream::iter(0..writes)
        .map(|k| async move {
            let problems = crash_apply_then_apply(format!("crash-{tag}-{k}"), k, crash_args).await;
            (k, problems)
        })
        .buffer_unordered(PARALLEL)
        .filter(|(_, p)| std::future::ready(!p.is_empty()))
        .collect()
        .await;
    eprintln!(
        "apply {crash_args:?}: {writes} writes, {writes} crash points checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "apply stopped after k writes, then apply, did not converge for k in {:?}:\n{failures:#?}",
        failures.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stopped_after_any_write_then_apply_converges() {
    apply_crash_loop("seq", &["--concurrency", "1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stopped_mid_fan_out_then_apply_converges() {
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
            if noop.code != 0 || !noop.stdout.contains("No changes.") || writes_at_servers(&h) != 0
            {
                problems.push(format!(
                    "a third destroy was not a no-op (exit {}, {} writes):\n{}",
                    noop.code,
                    writes_at_servers(&h),
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
