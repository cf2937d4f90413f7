//! Resizing on moto + the Bitbucket fake: schedules evaluated `--at` two instants, safe
//! scale-down around busy runners, autoscale ticks, and the cost of a tick.

use std::collections::BTreeSet;

use testkit::harness::Harness;

use crate::KIT;

/// The fleet's live request: (id, target).
async fn fleet_request(h: &Harness) -> (String, i32) {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let f = out
        .spot_fleet_request_configs()
        .iter()
        .find(|f| {
            f.tags()
                .iter()
                .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some(h.fleet.as_str()))
                && f.spot_fleet_request_state()
                    .is_some_and(|s| s.as_str() == "active")
        })
        .expect("a live fleet request");
    (
        f.spot_fleet_request_id().unwrap().to_owned(),
        f.spot_fleet_request_config()
            .unwrap()
            .target_capacity()
            .unwrap(),
    )
}

/// Instances of the fleet in `state`.
async fn instances(h: &Harness, state: &str) -> BTreeSet<String> {
    testkit::world::instances_in(h, &h.fleet, &[state]).await
}

fn bare(uuid: &str) -> String {
    uuid.trim_matches(|c| c == '{' || c == '}').to_owned()
}

fn with_capacity_section(h: &Harness, capacity: u32, extra: &str) -> String {
    h.config(capacity, None)
        .replace("max = 20\n", &format!("max = 20\n{extra}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_resizes_up_then_down_at_two_instants() {
    let h = Harness::new(KIT, "sched").await;
    let text = with_capacity_section(
        &h,
        1,
        "[[capacity.schedule]]\ndays = \"mon-fri\"\nhours = \"07:00-19:00\"\ntimezone = \"Europe/Warsaw\"\ncapacity = 4",
    );
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let token = Harness::token();
    // Monday 2026-03-02 10:00 in Warsaw.
    let day = h
        .run(
            &["--config", cfg, "plan", "--at", "2026-03-02T09:00:00Z"],
            &token,
        )
        .await;
    day.expect_code(0);
    assert!(
        day.stdout
            .contains("4 runner(s) from schedule mon-fri 07:00-19:00 Europe/Warsaw"),
        "{}",
        day.stdout
    );
    h.apply(cfg, &["--at", "2026-03-02T09:00:00Z"]).await;
    assert_eq!(h.runners(None).len(), 4);
    assert_eq!(fleet_request(&h).await.1, 4);
    // The same Monday, 23:00 in Warsaw: back to the default.
    let night = h.apply(cfg, &["--at", "2026-03-02T22:00:00Z"]).await;
    assert!(
        night.stdout.contains("1 runner(s) from default"),
        "{}",
        night.stdout
    );
    assert_eq!(h.runners(None).len(), 1);
    assert_eq!(fleet_request(&h).await.1, 1);
    // --capacity wins over the schedule, once; above capacity.max it is refused.
    let explicit = h
        .run(
            &[
                "--config",
                cfg,
                "plan",
                "--at",
                "2026-03-02T09:00:00Z",
                "--capacity",
                "2",
            ],
            &token,
        )
        .await;
    assert!(
        explicit.stdout.contains("2 runner(s) from --capacity"),
        "{}",
        explicit.stdout
    );
    let over = h
        .run(&["--config", cfg, "plan", "--capacity", "21"], &token)
        .await;
    over.expect_code(1);
    assert!(
        over.stderr
            .contains("--capacity: 21 is above capacity.max (20)"),
        "{}",
        over.stderr
    );
    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_keeps_busy_runners_and_terminates_only_idle_instances() {
    let h = Harness::new(KIT, "busy").await;
    let path = h.write_config(&h.config(5, None));
    let cfg = path.to_str().unwrap();
    let token = Harness::token();
    h.apply(cfg, &[]).await;

    // What the instances' userdata would do: each claims one runner; all come ONLINE.
    let (fleet_id, _) = fleet_request(&h).await;
    let ids = h.fleet_members(&fleet_id).await;
    assert_eq!(ids.len(), 5);
    let runners = h.runners(None);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let mut holder = std::collections::BTreeMap::new();
    for (r, id) in runners.iter().zip(&ids) {
        let uuid = r["uuid"].as_str().unwrap();
        ssm.put_parameter()
            .name(format!("/bbfleet/busy/claims/{}/1", bare(uuid)))
            .value(id)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
        assert!(h.fake.set_status(uuid, "ONLINE"));
        holder.insert(uuid.to_owned(), id.clone());
    }
    let busy: Vec<String> = runners[..2]
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_owned())
        .collect();
    for u in &busy {
        assert!(h.fake.set_busy(u, true));
    }

    // Down to 2: exactly the busy runners stay, on their instances.
    h.apply(cfg, &["--capacity", "2"]).await;
    let left: BTreeSet<String> = h.runner_uuids().into_iter().collect();
    assert_eq!(left, busy.iter().cloned().collect());
    let running = instances(&h, "running").await;
    let busy_instances: BTreeSet<String> = busy.iter().map(|u| holder[u].clone()).collect();
    assert_eq!(
        running, busy_instances,
        "only the busy runners' instances keep running"
    );
    assert_eq!(instances(&h, "terminated").await.len(), 3);
    assert_eq!(fleet_request(&h).await.1, 2);
    let claims = ssm
        .get_parameters_by_path()
        .path("/bbfleet/busy/claims")
        .recursive(true)
        .send()
        .await
        .unwrap();
    // Each kept runner keeps its offer (generation 0) and its claim; the removed runners'
    // claims are deleted.
    assert_eq!(
        claims.parameters().len(),
        4,
        "claims of removed runners are deleted"
    );
    let claimed: BTreeSet<String> = claims
        .parameters()
        .iter()
        .filter_map(|p| p.name()?.split('/').nth(4).map(str::to_owned))
        .collect();
    let kept: BTreeSet<String> = busy
        .iter()
        .map(|u| {
            u.trim_matches(|c| c == '{' || c == '}')
                .to_ascii_lowercase()
        })
        .collect();
    assert_eq!(claimed, kept, "only the kept runners have claims");
    let params = ssm
        .get_parameters_by_path()
        .path("/bbfleet/busy/runners")
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters().len(), 2);

    // Down to 1 with both busy: nothing is removed, and the plan says why.
    let short = h
        .run(
            &[
                "--config",
                cfg,
                "apply",
                "--auto-approve",
                "--capacity",
                "1",
            ],
            &token,
        )
        .await;
    short.expect_code(0);
    assert!(
        short
            .stdout
            .contains("Warning: scale-down stops at 2 runners"),
        "{}",
        short.stdout
    );
    assert_eq!(h.runners(None).len(), 2);
    assert_eq!(instances(&h, "running").await, busy_instances);

    // When a step ends, the next apply finishes the job.
    h.fake.set_busy(&busy[1], false);
    h.apply(cfg, &["--capacity", "1"]).await;
    let left: Vec<String> = h.runner_uuids().into_iter().collect();
    assert_eq!(left, [busy[0].clone()]);
    assert_eq!(
        instances(&h, "running").await,
        BTreeSet::from([holder[&busy[0]].clone()])
    );
    h.destroy(cfg).await;
}

/// One `autoscale --once`; panics unless it exits 0 and prints `expected`.
async fn tick(h: &Harness, config: &str, expected: &str) {
    let run = h
        .run(
            &["--config", config, "autoscale", "--once"],
            &Harness::token(),
        )
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains(expected),
        "expected {expected:?} in:\n{}",
        run.stdout
    );
}

const AUTOSCALE: &str = "[capacity.autoscale]\npolicy = \"atlassian\"\nmin = 1\nmax = 6\nscale_up_threshold = 0.8\nscale_down_threshold = 0.2\nscale_up_multiplier = 1.5\nscale_down_multiplier = 0.5";

fn set_all(h: &Harness, status: &str, busy: usize) {
    for (i, r) in h.runners(None).iter().enumerate() {
        let uuid = r["uuid"].as_str().unwrap();
        h.fake.set_status(uuid, status);
        h.fake.set_busy(uuid, i < busy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_once_steps_up_hold_down_and_cools_down() {
    let h = Harness::new(KIT, "auto").await;
    let token = Harness::token();
    let path = h.write_config(&with_capacity_section(
        &h,
        2,
        &format!("{AUTOSCALE}\ncooldown_seconds = 0"),
    ));
    let cfg = path.to_str().unwrap();
    h.apply(cfg, &[]).await;

    // Nobody online yet: hold.
    tick(&h, cfg, "autoscale: hold at 2: no runner is online yet").await;

    // 2 of 2 busy: up to ceil(2 x 1.5) = 3.
    set_all(&h, "ONLINE", 2);
    tick(&h, cfg, "autoscale: scale 2 -> 3: busy 2/2 online = 1.00").await;
    assert_eq!(h.runners(None).len(), 3);
    assert_eq!(fleet_request(&h).await.1, 3);

    // 2 of 3 busy (0.67): hold.
    set_all(&h, "ONLINE", 2);
    tick(&h, cfg, "autoscale: hold at 3: busy 2/3 online = 0.67").await;
    assert_eq!(h.runners(None).len(), 3);

    // All idle: down to floor(3 x 0.5) = 1.
    set_all(&h, "ONLINE", 0);
    let json_tick = h
        .run(
            &["--config", cfg, "--output", "json", "autoscale", "--once"],
            &token,
        )
        .await;
    json_tick.expect_code(0);
    let first: serde_json::Value = serde_json::Deserializer::from_str(&json_tick.stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first["decision"]["scale_to"], 1, "{}", json_tick.stdout);
    assert_eq!(h.runners(None).len(), 1);

    // With a cooldown, the tick right after a change holds even though all are busy.
    let cooled = h.write_config(&with_capacity_section(
        &h,
        2,
        &format!("{AUTOSCALE}\ncooldown_seconds = 3600"),
    ));
    set_all(&h, "ONLINE", 1);
    tick(
        &h,
        cooled.to_str().unwrap(),
        "autoscale: hold at 1: cooldown: last change to 1 was",
    )
    .await;
    assert_eq!(h.runners(None).len(), 1);

    // destroy removes the autoscaler's state too.
    h.destroy(cfg).await;
    h.assert_no_parameter_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_costs_the_same_calls_at_10_and_50_runners() {
    let h = Harness::new(KIT, "tick").await;
    let token = Harness::token();
    let mut costs = Vec::new();
    for n in [10u32, 50] {
        let autoscale = format!(
            "{}\ncooldown_seconds = 0",
            AUTOSCALE.replace("max = 6", "max = 60")
        );
        let path = h.write_config(
            &with_capacity_section(&h, n, &autoscale).replace("max = 20\n", "max = 60\n"),
        );
        let cfg = path.to_str().unwrap();
        h.apply(cfg, &[]).await;
        assert_eq!(h.runners(None).len(), n as usize);
        set_all(&h, "ONLINE", n as usize / 2); // ratio 0.5: a holding tick
        h.fake.clear_requests();
        h.recorder.clear();
        tick(&h, cfg, "hold").await;
        let mut aws: Vec<String> = h
            .recorder
            .calls()
            .into_iter()
            .map(|c| c.operation)
            .collect();
        aws.sort();
        let bitbucket = h.fake.requests().len();
        costs.push((bitbucket, aws));
    }
    assert_eq!(costs[0], costs[1], "a tick's calls at 10 vs 50 runners");
    let (bitbucket, aws) = &costs[0];
    assert!(
        *bitbucket <= 2 && aws.len() <= 2,
        "bitbucket {bitbucket}, aws {aws:?}"
    );
    h.run(
        &[
            "--config",
            h.write_config(&h.config(0, None)).to_str().unwrap(),
            "destroy",
            "--auto-approve",
        ],
        &token,
    )
    .await
    .expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_loop_stops_cleanly_on_sigterm() {
    let h = Harness::new(KIT, "sigterm").await;
    let path = h.write_config(&with_capacity_section(&h, 1, AUTOSCALE));
    let child = h
        .command(
            &[
                "--config",
                path.to_str().unwrap(),
                "autoscale",
                "--interval",
                "1s",
            ],
            &Harness::token(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) for the first tick, then ask it to stop.
    let mut ticked = false;
    for _ in 0..100 {
        if h.fake
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/runners") || r.path.ends_with("/runners/"))
        {
            ticked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ticked, "no tick within 10 s");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("autoscale stopped within 10 s of SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("autoscale: stopped"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("autoscale: "),
        "one line per decision"
    );
}
