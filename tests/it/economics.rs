//! `bbfleet simulate` end to end, and `bbfleet autoscale` deciding, on moto and the
//! Bitbucket fake, exactly what the simulator's policy decides on the same observations.

use std::path::{Path, PathBuf};
use std::process::Command;

use bbfleet::autoscale::{AutoscaleState, Load};
use bbfleet::config::Config;
use testkit::harness::Harness;

use crate::KIT;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `bbfleet --config examples/bbfleet.toml [args]`, offline (no credentials, no proxy).
fn offline(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(KIT.bbfleet)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run bbfleet")
}

fn simulate_json(trace: &str, extra: &[&str]) -> serde_json::Value {
    let trace = repo(trace);
    let mut args = vec![
        "--output",
        "json",
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = offline(&repo("examples/bbfleet.toml"), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

const FIELDS: [&str; 9] = [
    "name",
    "queue_wait_p50_s",
    "queue_wait_p90_s",
    "queue_wait_p99_s",
    "failed_steps",
    "rerun_steps",
    "busy_runner_hours",
    "idle_runner_hours",
    "cost_usd",
];

/// The README's claim: on both shipped traces, bbfleet's policy waits less at p90 and
/// idles less than Atlassian's, and the same seed prints the same figures.
#[test]
fn bbfleet_beats_atlassian_on_both_shipped_traces() {
    for trace in ["examples/traces/office.csv", "examples/traces/release.csv"] {
        let doc = simulate_json(trace, &[]);
        let policies = doc["policies"].as_array().unwrap();
        let names: Vec<&str> = policies
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["fixed", "schedule", "atlassian", "bbfleet"]);
        for p in policies {
            let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
            let mut want = FIELDS.to_vec();
            want.sort_unstable();
            let mut keys = keys.clone();
            keys.sort_unstable();
            assert_eq!(keys, want);
        }
        let (a, b) = (&policies[2], &policies[3]);
        let f = |p: &serde_json::Value, k: &str| p[k].as_f64().unwrap();
        assert!(
            f(b, "queue_wait_p90_s") < f(a, "queue_wait_p90_s"),
            "{trace}: {b} vs {a}"
        );
        assert!(
            f(b, "idle_runner_hours") < f(a, "idle_runner_hours"),
            "{trace}: {b} vs {a}"
        );
        // Every policy runs the same steps: the busy hours differ only by reruns.
        for p in policies {
            assert!(
                f(p, "busy_runner_hours") > 0.0 && f(p, "cost_usd") > 0.0,
                "{p}"
            );
        }
        assert_eq!(doc, simulate_json(trace, &[]), "{trace}: deterministic");
    }
}

#[test]
fn policies_and_seed_are_chosen_and_the_text_is_a_table() {
    let doc = simulate_json(
        "examples/traces/release.csv",
        &["--policy", "bbfleet,atlassian", "--seed", "5"],
    );
    let names: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bbfleet", "atlassian"]);
    let trace = repo("examples/traces/release.csv");
    let out = offline(
        &repo("examples/bbfleet.toml"),
        &[
            "simulate",
            "--trace",
            trace.to_str().unwrap(),
            "--policy",
            "fixed",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("| policy | wait p50 |"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("| fixed |")).count(),
        1,
        "{text}"
    );
}

#[test]
fn a_bad_trace_row_or_policy_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    std::fs::write(
        &trace,
        "submitted_at,duration_s\n2026-03-02T09:00:00Z,60\n2026-03-02T09:00:00Z,-5\n",
    )
    .unwrap();
    let config = repo("examples/bbfleet.toml");
    let out = offline(&config, &["simulate", "--trace", trace.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3: duration_s: \"-5\""), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = offline(
        &config,
        &[
            "simulate",
            "--trace",
            trace.to_str().unwrap(),
            "--policy",
            "greedy",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--policy \"greedy\" is not one of"),
        "{stderr}"
    );
    let out = offline(&config, &["simulate", "--trace", "/nonexistent.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trace"));
}

/// Without `spot.hourly_prices`, simulate prices the types from the spot price history
/// (the data pre-flight reads): DescribeSubnets and DescribeSpotPriceHistory, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_types_are_priced_from_the_spot_price_history() {
    let h = Harness::new(KIT, "simprice").await;
    let path = h.write_config(&h.config(1, None));
    let trace = repo("examples/traces/release.csv");
    let run = h
        .run(
            &[
                "--config",
                path.to_str().unwrap(),
                "--output",
                "json",
                "simulate",
                "--trace",
                trace.to_str().unwrap(),
                "--policy",
                "fixed",
            ],
            &[],
        )
        .await;
    run.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        doc["policies"][0]["cost_usd"].as_f64().unwrap() > 0.0,
        "{doc}"
    );
    let mut ops: Vec<String> = h
        .recorder
        .calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    ops.sort();
    ops.dedup();
    assert_eq!(ops, ["ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"]);
}

fn set_all(h: &Harness, busy: usize) {
    for (i, r) in h.runners(None).iter().enumerate() {
        let uuid = r["uuid"].as_str().unwrap();
        h.fake.set_status(uuid, "ONLINE");
        h.fake.set_busy(uuid, i < busy);
    }
}

/// One `autoscale --once --output json` tick, checked against the simulator's `bbfleet`
/// policy on the tick's own observation, memory and time. Returns the decision's target.
async fn same_decision(
    h: &Harness,
    config: &Path,
    previous: Option<&AutoscaleState>,
) -> (Option<u32>, Option<AutoscaleState>) {
    let run = h
        .run(
            &[
                "--config",
                config.to_str().unwrap(),
                "--output",
                "json",
                "autoscale",
                "--once",
            ],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    let line = run.stdout.lines().next().unwrap_or_default();
    let tick: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let load: Load = serde_json::from_value(tick["load"].clone()).unwrap();
    let memory: Option<AutoscaleState> = serde_json::from_value(tick["memory"].clone()).unwrap();
    assert_eq!(
        memory.as_ref(),
        previous,
        "the memory autoscale read back from SSM"
    );
    let at: jiff::Timestamp = tick["at"].as_str().unwrap().parse().unwrap();
    let cfg = Config::load(config).unwrap();
    let (policy, _) = bbfleet::simulate::policy(&cfg, "bbfleet").unwrap();
    let simulated = policy.decide(load, memory.as_ref(), &at);
    let decision = &tick["decision"];
    assert_eq!(
        decision["scale_to"],
        serde_json::json!(simulated.scale_to),
        "{line}"
    );
    assert_eq!(decision["reason"], simulated.reason.as_str(), "{line}");
    (simulated.scale_to, simulated.memory.or(memory))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_and_simulate_decide_alike_on_the_same_observations() {
    let h = Harness::new(KIT, "alike").await;
    let text = h.config(2, None).replace(
        "max = 20\n",
        "max = 20\n[capacity.autoscale]\nmax = 6\nscale_down_delay_seconds = 2\n",
    );
    let path = h.write_config(&text);
    h.apply(path.to_str().unwrap(), &[]).await;
    // Nobody online yet: the two hosts are coming up.
    let (to, memory) = same_decision(&h, &path, None).await;
    assert_eq!(to, None);
    // Both busy, none coming up: x3 = 6.
    set_all(&h, 2);
    let (to, memory) = same_decision(&h, &path, memory.as_ref()).await;
    assert_eq!(to, Some(6));
    assert_eq!(h.runners(None).len(), 6);
    // One busy of six: a surplus, remembered in SSM, then shed after 2 s to 1 + 1.
    set_all(&h, 1);
    let (to, memory) = same_decision(&h, &path, memory.as_ref()).await;
    assert_eq!(to, None);
    assert!(memory.as_ref().unwrap().surplus_since.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (to, _) = same_decision(&h, &path, memory.as_ref()).await;
    assert_eq!(to, Some(2));
    assert_eq!(h.runners(None).len(), 2);
    h.destroy(path.to_str().unwrap()).await;
}
