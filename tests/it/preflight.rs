//! The pre-flight section of `plan` on moto (subnets, offerings, placement scores, AMI,
//! DryRun, vCPUs, cost), `--no-preflight`, JSON output, and refused DryRuns served from
//! recorded AWS answers by a loopback proxy (moto does not enforce IAM).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, Uri};
use testkit::harness::Harness;

use crate::KIT;

/// Lines of the pre-flight section.
fn section(stdout: &str) -> Vec<String> {
    let start = stdout
        .find("Pre-flight (read-only; skip with --no-preflight):")
        .unwrap_or_else(|| panic!("no pre-flight section in:\n{stdout}"));
    stdout[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find(|l| {
            l.get(7..)
                .is_some_and(|r| r.starts_with(&format!("{name}:")))
        })
        .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_on_moto_prints_the_preflight_section_and_writes_nothing() {
    let h = Harness::new(KIT, "pf-moto").await;
    let cfg = h.write_config(&h.config(3, None));
    let cfg = cfg.to_str().unwrap();

    let run = h.run(&["--config", cfg, "plan"], &Harness::token()).await;
    run.expect_code(0);
    let lines = section(&run.stdout);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let subnets = line(&lines, "subnets");
    assert!(
        subnets.starts_with("  ok   subnets: 3 in 3 availability zones"),
        "{subnets}"
    );
    for (id, az) in &h.subnets {
        assert!(subnets.contains(&format!("{id} ({az})")), "{subnets}");
    }
    assert_eq!(
        line(&lines, "instance types"),
        "  ok   instance types: all 3 offered in all 3 zones (9 pools)"
    );
    assert_placement_unknown_on_moto(&h, &lines);
    assert!(
        line(&lines, "AMI").starts_with("  ok   AMI: ami-"),
        "{lines:#?}"
    );
    assert_eq!(
        line(&lines, "launch template"),
        "  ok   launch template: DryRun CreateLaunchTemplate (instance profile included): allowed"
    );
    // No launch template yet: the fleet's DryRun waits for the first apply.
    assert!(line(&lines, "fleet request")
        .starts_with("  ?    fleet request: DryRun RequestSpotFleet needs the launch template"));
    // 3 runners on the largest type, c6i.xlarge with 4 vCPUs.
    assert!(
        line(&lines, "spot vCPU quota").contains("3 runner(s) need up to 12 vCPUs (c6i.xlarge)"),
        "{lines:#?}"
    );
    // moto's price history is a fake $0.00001 per pool.
    assert!(
        line(&lines, "cost")
            .starts_with("  ok   cost: ~$0.00003/h for 3 runner(s) (spot price history: 9 pools"),
        "{lines:#?}"
    );
    assert!(run.stdout.contains("Plan: "), "{}", run.stdout);
    h.assert_no_writes("plan");
    let calls = h.recorder.calls();
    let dry: Vec<&str> = calls
        .iter()
        .filter(|c| c.is_dry_run())
        .map(|c| c.operation.as_str())
        .collect();
    assert_eq!(dry, ["ec2:CreateLaunchTemplate"]);

    // After the first apply the launch template exists: the fleet request is dry-run too.
    h.apply(cfg, &[]).await;
    h.recorder.clear();
    let writes_before = h.fake.write_count();
    let stats = h.dir.path().join("plan-stats.json");
    let stats_env = [
        ("BITBUCKET_ACCESS_TOKEN", "fake-access-token"),
        ("BBFLEET_STATS_FILE", stats.to_str().unwrap()),
    ];
    let run = h.run(&["--config", cfg, "plan"], &stats_env).await;
    run.expect_code(0);
    let lines = section(&run.stdout);
    assert_eq!(
        line(&lines, "fleet request"),
        "  ok   fleet request: DryRun RequestSpotFleet (iam:PassRole of spot.fleet_role included): allowed"
    );
    // bbfleet's own count agrees: the two DryRun requests are reads, the plan wrote nothing.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(summary["writes"], 0, "{summary:#}");
    assert_eq!(summary["calls"]["ec2:RequestSpotFleet"], 1, "{summary:#}");
    assert!(line(&lines, "launch template").starts_with("  ok   launch template: "));
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    assert_eq!(h.fake.write_count(), writes_before);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());
    let fleet_dry_runs = h
        .recorder
        .calls()
        .iter()
        .filter(|c| c.operation == "ec2:RequestSpotFleet")
        .map(|c| c.is_dry_run())
        .collect::<Vec<_>>();
    assert_eq!(fleet_dry_runs, [true]);

    no_preflight_and_json(&h, cfg).await;
}

/// moto 5.2.5 has no GetSpotPlacementScores (an HTML 500): the check is unknown, and the
/// plan goes on; the request asked what pre-flight means to ask.
fn assert_placement_unknown_on_moto(h: &Harness, lines: &[String]) {
    assert_eq!(
        line(lines, "placement scores"),
        "  ?    placement scores: ec2:GetSpotPlacementScores is not reachable here (HTTP 500 without an AWS error in the body); no scores"
    );
    let scored: Vec<String> = h
        .recorder
        .calls()
        .iter()
        .filter(|c| c.operation == "ec2:GetSpotPlacementScores")
        .map(|c| c.body.clone())
        .collect();
    // One retry at most; the configured region, one zone per score, the larger of the
    // desired capacity (3) and capacity.max.
    assert!((1..=2).contains(&scored.len()), "{scored:?}");
    for kv in [
        "SingleAvailabilityZone=true",
        "RegionName.1=us-east-1",
        "TargetCapacityUnitType=units",
        "InstanceType.3=",
    ] {
        assert!(
            scored[0].split('&').any(|p| p.starts_with(kv)),
            "{kv} in {}",
            scored[0]
        );
    }
    assert!(
        scored[0].split('&').any(|p| p == "TargetCapacity=20"),
        "{}",
        scored[0]
    );
}

/// `--no-preflight` makes none of the section's calls; JSON output carries the checks.
async fn no_preflight_and_json(h: &Harness, cfg: &str) {
    // --no-preflight: no section, none of its calls.
    h.recorder.clear();
    let run = h
        .run(
            &["--config", cfg, "plan", "--no-preflight"],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    assert!(!run.stdout.contains("Pre-flight"), "{}", run.stdout);
    let ops: Vec<String> = h
        .recorder
        .calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    for op in [
        "ec2:DescribeSpotPriceHistory",
        "ec2:DescribeInstanceTypeOfferings",
        "ec2:DescribeInstanceTypes",
        "ec2:GetSpotPlacementScores",
    ] {
        assert!(!ops.iter().any(|o| o == op), "{op} in {ops:?}");
    }
    assert!(!h.recorder.calls().iter().any(|c| c.is_dry_run()));

    // JSON: the plan document gains a `preflight` array.
    let run = h
        .run(
            &["--config", cfg, "--output", "json", "plan"],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let checks = v["preflight"].as_array().expect("preflight array");
    assert_eq!(checks.len(), 8);
    assert_eq!(checks[0]["name"], "subnets");
    assert_eq!(checks[0]["status"], "ok");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "placement scores" && c["status"] == "unknown"),
        "{checks:?}"
    );
    assert!(v["summary"].is_object(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_offered_nowhere_fails_its_check_but_not_the_plan() {
    let h = Harness::new(KIT, "pf-offer").await;
    let text = h
        .config(2, None)
        .replace(r#""c6i.xlarge"]"#, r#""c6i.xlarge", "zz9.huge"]"#);
    assert!(text.contains("zz9.huge"));
    let cfg = h.write_config(&text);
    let run = h
        .run(
            &["--config", cfg.to_str().unwrap(), "plan"],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    let lines = section(&run.stdout);
    assert_eq!(
        line(&lines, "instance types"),
        "  FAIL instance types: not offered in any configured zone: zz9.huge (remove them from spot.instance_types)"
    );
    h.assert_no_writes("plan");
}

/// AWS's answer to a DryRun the caller may not make (recorded from the EC2 API format).
const UNAUTHORIZED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/bbfleet-ci-operator/bbfleet-42 is not authorized to perform: iam:PassRole on resource: arn:aws:iam::123456789012:role/bbfleet-runner because no identity-based policy allows the iam:PassRole action. Encoded authorization failure message: AbCdEf0123</Message></Error></Errors><RequestID>7b1c9f3e-0000-4000-8000-000000000000</RequestID></Response>"#;

/// What the loopback proxy refuses: every DryRun, or only those of one EC2 action.
#[derive(Clone)]
struct Refusal {
    /// The recording proxy, where everything else goes.
    upstream: String,
    /// `Action=...` refused; `None`: every DryRun.
    action: Option<&'static str>,
    /// The answer given instead (an EC2 error document, HTTP 403).
    answer: &'static str,
}

/// Forwards to the recording proxy, but answers the refused DryRuns with the refusal's answer.
async fn refuse_dry_runs(
    State(refusal): State<Refusal>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let text = String::from_utf8_lossy(&body).into_owned();
    let dry_run = text.split('&').any(|kv| kv == "DryRun=true");
    let action = refusal
        .action
        .is_none_or(|a| text.split('&').any(|kv| kv == format!("Action={a}")));
    if dry_run && action {
        return Response::builder()
            .status(403)
            .header("content-type", "text/xml")
            .body(Body::from(refusal.answer))
            .unwrap();
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http
        .request(method, format!("{}{uri}", refusal.upstream))
        .body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let r = req.send().await.unwrap();
    let mut out = Response::builder().status(r.status());
    for (k, v) in r.headers() {
        if k != "content-length" && k != "transfer-encoding" && k != "connection" {
            out = out.header(k, v);
        }
    }
    out.body(Body::from(r.bytes().await.unwrap())).unwrap()
}

/// `bbfleet plan` with its AWS calls through a loopback proxy that refuses as `refusal`
/// says; the pre-flight section's lines, after checking that the plan succeeded.
async fn plan_refused(h: &Harness, cfg: &std::path::Path, refusal: Refusal) -> Vec<String> {
    let app = axum::Router::new()
        .fallback(refuse_dry_runs)
        .with_state(refusal);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let mut cmd = h.command(
        &["--config", cfg.to_str().unwrap(), "plan"],
        &Harness::token(),
    );
    cmd.env("AWS_ENDPOINT_URL", &endpoint);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("bbfleet finished within 120 s")
        .expect("run bbfleet");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    section(&stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dry_run_is_reported_with_the_way_to_decode_it() {
    let h = Harness::new(KIT, "pf-deny").await;
    let cfg = h.write_config(&h.config(2, None));
    let refusal = Refusal {
        upstream: h.recorder.endpoint.clone(),
        action: None,
        answer: UNAUTHORIZED,
    };
    let lines = plan_refused(&h, &cfg, refusal).await;
    let lt = line(&lines, "launch template");
    assert!(
        lt.starts_with("  FAIL launch template: DryRun CreateLaunchTemplate (instance profile included): UnauthorizedOperation: You are not authorized"),
        "{lt}"
    );
    assert!(
        lt.contains("iam:PassRole")
            && lt.ends_with("decode with `aws sts decode-authorization-message`)"),
        "{lt}"
    );
    h.assert_no_writes("a refused plan");
}

/// AWS's answer to a DryRun RequestSpotFleet in an account where a service control policy
/// denies it (AWS Control Tower's CT.EC2.PV.6), worded as the IAM User Guide shows.
const SCP_DENIED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/bbfleet-ci-operator/bbfleet-42 is not authorized to perform: ec2:RequestSpotFleet on resource: arn:aws:ec2:us-east-1:123456789012:spot-fleet-request/* with an explicit deny in a service control policy. Encoded authorization failure message: AbCdEf0123</Message></Error></Errors><RequestID>7b1c9f3e-0000-4000-8000-000000000001</RequestID></Response>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_fleet_request_denied_by_an_scp_fails_and_suggests_ec2_fleet() {
    let h = Harness::new(KIT, "pf-scp").await;
    let cfg = h.write_config(&h.config(2, None));
    // The fleet request is dry-run once the launch template exists.
    h.apply(cfg.to_str().unwrap(), &[]).await;
    h.recorder.clear();
    let writes_before = h.fake.write_count();
    let refusal = Refusal {
        upstream: h.recorder.endpoint.clone(),
        action: Some("RequestSpotFleet"),
        answer: SCP_DENIED,
    };
    let lines = plan_refused(&h, &cfg, refusal).await;
    let fleet = line(&lines, "fleet request");
    assert!(
        fleet.starts_with("  FAIL fleet request: DryRun RequestSpotFleet (iam:PassRole of spot.fleet_role included): UnauthorizedOperation: You are not authorized")
            && fleet.contains("with an explicit deny in a service control policy")
            && fleet.contains("CT.EC2.PV.6")
            && fleet.contains(r#"set spot.fleet_api = "ec2-fleet""#),
        "{fleet}"
    );
    // Only the fleet request was refused.
    assert!(
        line(&lines, "launch template").starts_with("  ok   launch template: "),
        "{lines:#?}"
    );
    assert_eq!(h.fake.write_count(), writes_before);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());
}
