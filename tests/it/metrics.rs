//! The fleet's metrics on moto + the Bitbucket fake, read back by a strict OpenMetrics
//! parser (Python's `prometheus_client.openmetrics.parser`, installed by scripts/tools.sh):
//! `status --output prometheus` after an apply (runners, claims, the target, hosts, the
//! cost from `spot.hourly_prices` or the spot price history), `autoscale --once
//! --metrics-file` (the file, one JSON line, the calls of a tick with and without it), and
//! `--output prometheus` refused by every other command before it does anything.

use std::collections::BTreeMap;

use aws_sdk_ssm::types::ParameterType;
use testkit::harness::{Harness, Run};

use crate::KIT;

/// Family name -> samples (labels, value), as the parser reads them.
type Families = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// Parses OpenMetrics text with the strict parser; panics (with the text) if it refuses it.
fn parse(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = [[s.labels, s.value] for s in f.samples]
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 on PATH (scripts/test.sh puts .venv/bin first)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused (no prometheus_client? run scripts/tools.sh):\n{}\n--- text\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of `family`'s sample with `labels` (besides `fleet`, checked on every sample).
fn value(families: &Families, fleet: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family} in {families:#?}"));
    let mut found = samples.iter().filter(|(l, _)| {
        l.len() == labels.len() + 1
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    });
    let (l, v) = found
        .next()
        .unwrap_or_else(|| panic!("no {family}{labels:?} in {samples:?}"));
    assert_eq!(l["fleet"], fleet, "{family}");
    *v
}

/// The sum of a family's samples.
fn total(families: &Families, family: &str) -> f64 {
    families[family].iter().map(|(_, v)| v).sum()
}

/// The fleet's running instances: id -> type (read from moto directly).
async fn instance_types(h: &Harness) -> BTreeMap<String, String> {
    let ids = testkit::world::running_instances(h, &h.fleet).await;
    let out = aws_sdk_ec2::Client::new(&h.sdk)
        .describe_instances()
        .set_instance_ids(Some(ids.into_iter().collect()))
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let ty = i.instance_type().unwrap().as_str().to_owned();
            (i.instance_id().unwrap().to_owned(), ty)
        })
        .collect()
}

/// The harness config with `spot.hourly_prices` and, after `max = 20`, `capacity` lines.
fn config(h: &Harness, capacity: u32, prices: &str, capacity_lines: &str) -> String {
    h.config(capacity, None)
        .replace(
            "[spot]\n",
            &format!("[spot]\nhourly_prices = {{ {prices} }}\n"),
        )
        .replace("max = 20\n", &format!("max = 20\n{capacity_lines}"))
}

const PRICES: &str = r#""m6i.large" = 0.096, "m6a.large" = 0.086, "c6i.xlarge" = 0.17"#;

async fn status(h: &Harness, cfg: &str) -> Run {
    let run = h
        .run(
            &["--config", cfg, "--output", "prometheus", "status"],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    assert!(run.stdout.ends_with("# EOF\n"), "{}", run.stdout);
    run
}

/// The AWS operations and Bitbucket requests since the last clear.
fn calls(h: &Harness) -> (Vec<String>, usize) {
    let mut aws: Vec<String> = h
        .recorder
        .calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    aws.sort();
    (aws, h.fake.requests().len())
}

/// Applies `cfg` (3 runners), then sets two runners ONLINE (the first busy) and claims the
/// first for a host, as a booted host would. Returns the running hosts: id -> type.
async fn booted(h: &Harness, cfg: &str) -> BTreeMap<String, String> {
    h.apply(cfg, &[]).await;
    let uuids = h.runner_uuids();
    let hosts = instance_types(h).await;
    assert_eq!((uuids.len(), hosts.len()), (3, 3), "{hosts:?}");
    for uuid in &uuids[..2] {
        assert!(h.fake.set_status(uuid, "ONLINE"));
    }
    assert!(h.fake.set_busy(&uuids[0], true));
    let claim = format!(
        "/bbfleet/{}/claims/{}/1",
        h.fleet,
        uuids[0].trim_matches(['{', '}'])
    );
    aws_sdk_ssm::Client::new(&h.sdk)
        .put_parameter()
        .name(claim)
        .value(hosts.keys().next().unwrap())
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    hosts
}

/// The spot price history reads among `aws`.
fn history_reads(aws: &[String]) -> usize {
    aws.iter()
        .filter(|op| op.ends_with("DescribeSpotPriceHistory"))
        .count()
}

const COST: &str = "bbfleet_estimated_cost_usd_per_hour";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_openmetrics_that_a_strict_parser_reads_back() {
    let h = Harness::new(KIT, "metrics").await;
    let path = h.write_config(&config(&h, 3, PRICES, "on_demand_hourly_price = 0.2\n"));
    let cfg = path.to_str().unwrap();
    let hosts = booted(&h, cfg).await;
    h.recorder.clear();
    h.fake.clear_requests();
    let run = status(&h, cfg).await;
    h.assert_no_writes("status --output prometheus");
    assert_eq!(
        history_reads(&calls(&h).0),
        0,
        "every type has a configured price"
    );
    let m = parse(&run.stdout);
    let v = |family: &str, labels: &[(&str, &str)]| value(&m, &h.fleet, family, labels);
    assert_eq!(v("bbfleet_runners", &[("status", "ONLINE")]), 2.0);
    assert_eq!(v("bbfleet_runners", &[("status", "UNREGISTERED")]), 1.0);
    assert_eq!(v("bbfleet_runners", &[("status", "OFFLINE")]), 0.0);
    assert_eq!(v("bbfleet_runners_online", &[]), 2.0);
    assert_eq!(v("bbfleet_runners_busy", &[]), 1.0);
    assert_eq!(v("bbfleet_runners_claimed", &[]), 1.0);
    assert_eq!(v("bbfleet_fleet_target_capacity", &[]), 3.0);
    assert_eq!(v("bbfleet_fleet_on_demand_target_capacity", &[]), 0.0);
    assert_eq!(total(&m, "bbfleet_hosts"), 3.0);
    let spot_running = |(l, _): &(BTreeMap<String, String>, f64)| {
        l["lifecycle"] == "spot" && l["state"] == "running"
    };
    assert!(m["bbfleet_hosts"].iter().all(spot_running), "{m:?}");
    let price = |ty: &str| match ty {
        "m6i.large" => 0.096,
        "m6a.large" => 0.086,
        "c6i.xlarge" => 0.17,
        other => panic!("a host of type {other}"),
    };
    let want: f64 = hosts.values().map(|t| price(t)).sum();
    assert!(
        (v(COST, &[("lifecycle", "spot")]) - want).abs() < 1e-9,
        "{m:?}"
    );
    assert_eq!(v(COST, &[("lifecycle", "on-demand")]), 0.0);
    assert_eq!(v("bbfleet_hosts_unpriced", &[]), 0.0);

    // No configured price: the spot price history prices each host's pool (moto's is
    // 0.00001 for every pool), read by status in this mode only.
    let unpriced = h.write_config(&config(&h, 3, "", ""));
    h.recorder.clear();
    let m = parse(&status(&h, unpriced.to_str().unwrap()).await.stdout);
    assert_eq!(history_reads(&calls(&h).0), 1, "{:?}", calls(&h));
    let spot = value(&m, &h.fleet, COST, &[("lifecycle", "spot")]);
    assert!((spot - 3.0 * 0.00001).abs() < 1e-9, "{spot}");

    refused_elsewhere(&h, cfg).await;
    h.destroy(cfg).await;
}

/// Every command but `status` refuses `--output prometheus`, naming the flag, before it
/// makes any call.
async fn refused_elsewhere(h: &Harness, cfg: &str) {
    h.recorder.clear();
    h.fake.clear_requests();
    let commands = [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["autoscale", "--once"],
        &["validate"],
    ];
    for args in commands {
        let mut argv = vec!["--config", cfg, "--output", "prometheus"];
        argv.extend_from_slice(args);
        let run = h.run(&argv, &Harness::token()).await;
        assert_ne!(run.code, 0, "{args:?}: {}", run.stdout);
        let named = run.stderr.contains("--output") && run.stderr.contains("prometheus");
        assert!(named, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    assert_eq!(calls(h), (Vec::new(), 0), "a refused command made no call");
}

/// `--output json autoscale --once` with `extra`: the run and the calls it made.
async fn tick(h: &Harness, cfg: &str, extra: &[&str]) -> (Run, (Vec<String>, usize)) {
    h.recorder.clear();
    h.fake.clear_requests();
    let mut argv = vec!["--config", cfg, "--output", "json", "autoscale", "--once"];
    argv.extend_from_slice(extra);
    let run = h.run(&argv, &Harness::token()).await;
    run.expect_code(0);
    (run, calls(h))
}

const AUTOSCALE: &str = "[capacity.autoscale]\nmin = 1\nmax = 6\ncooldown_seconds = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_writes_the_metrics_file_at_a_tick_and_prints_one_json_line() {
    let h = Harness::new(KIT, "metricstick").await;
    let path = h.write_config(&config(&h, 2, PRICES, AUTOSCALE));
    let cfg = path.to_str().unwrap();
    h.apply(cfg, &[]).await;
    // One of two ONLINE runners busy: a ratio of 0.5, a holding tick.
    let uuids = h.runner_uuids();
    for uuid in &uuids {
        assert!(h.fake.set_status(uuid, "ONLINE"));
    }
    assert!(h.fake.set_busy(&uuids[0], true));
    let (plain, (plain_aws, plain_bitbucket)) = tick(&h, cfg, &[]).await;
    let metrics_file = h.dir.path().join("textfile").join("bbfleet.prom");
    std::fs::create_dir_all(metrics_file.parent().unwrap()).unwrap();
    let flag = ["--metrics-file", metrics_file.to_str().unwrap()];
    let (run, (aws, bitbucket)) = tick(&h, cfg, &flag).await;
    for out in [&plain.stdout, &run.stdout] {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON line per tick:\n{out}");
        let doc: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(doc["decision"]["scale_to"].is_null(), "{doc}");
        assert_eq!(doc["load"]["busy"], 1, "{doc}");
    }
    let text = std::fs::read_to_string(&metrics_file).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let m = parse(&text);
    let v = |family: &str| value(&m, &h.fleet, family, &[]);
    assert_eq!(v("bbfleet_runners_busy"), 1.0);
    assert_eq!(v("bbfleet_runners_online"), 2.0);
    assert_eq!(v("bbfleet_fleet_target_capacity"), 2.0);
    assert_eq!(total(&m, "bbfleet_hosts"), 2.0);
    assert!(m.contains_key(COST), "{m:?}");
    let dir: Vec<_> = std::fs::read_dir(metrics_file.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(dir.len(), 1, "no temporary file left: {dir:?}");

    // Without the flag a tick makes today's three reads; with it, also a status observation.
    eprintln!("a tick: AWS {plain_aws:?}, Bitbucket {plain_bitbucket}");
    eprintln!("with --metrics-file: AWS {aws:?}, Bitbucket {bitbucket}");
    let today = ["ec2:DescribeSpotFleetRequests", "ssm:GetParameter"];
    assert_eq!(
        (plain_aws.clone(), plain_bitbucket),
        (today.map(String::from).to_vec(), 1)
    );
    assert!(
        today.iter().all(|op| aws.iter().any(|a| a == op)),
        "{aws:?}"
    );
    assert!(
        aws.iter().any(|op| op == "ec2:DescribeInstances"),
        "{aws:?}"
    );
    assert_eq!(
        h.recorder.writes(),
        Vec::<String>::new(),
        "a holding tick writes nothing"
    );
    h.destroy(cfg).await;
}
