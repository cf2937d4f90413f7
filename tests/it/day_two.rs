//! Day two on moto + the Bitbucket fake, with claims written by the test as the userdata
//! writes them: an AMI change rolls out without touching busy hosts, every scale-down and
//! replacement disables the runner before its host goes (as seen on the wire), a runner
//! that takes a step during the drain is kept, and claimless hosts are replaced only past
//! the grace.

use std::time::SystemTime;

use aws_sdk_ssm::types::ParameterType;
use testkit::harness::Harness;

use crate::KIT;

fn bare(uuid: &str) -> String {
    uuid.trim_matches(|c| c == '{' || c == '}').to_owned()
}

/// The fleet's live request id.
async fn live_request(h: &Harness) -> String {
    testkit::world::fleet_requests(h, &h.fleet)
        .await
        .into_iter()
        .find(|(_, state, _)| state == "active")
        .map(|(id, _, _)| id)
        .expect("a live fleet request")
}

/// Applies `cfg`, then claims runner k for the fleet's k-th instance (generation 1) and
/// marks every runner ONLINE: what booted hosts leave. Returns (runner uuid, instance).
async fn booted(h: &Harness, cfg: &str) -> Vec<(String, String)> {
    h.apply(cfg, &[]).await;
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let instances = h.fleet_members(&live_request(h).await).await;
    let uuids = h.runner_uuids();
    assert_eq!(instances.len(), uuids.len());
    let mut pairs = Vec::new();
    for (uuid, id) in uuids.into_iter().zip(instances) {
        ssm.put_parameter()
            .name(format!("/bbfleet/{}/claims/{}/1", h.fleet, bare(&uuid)))
            .value(&id)
            .r#type(ParameterType::String)
            .send()
            .await
            .unwrap();
        assert!(h.fake.set_status(&uuid, "ONLINE"));
        pairs.push((uuid, id));
    }
    pairs
}

/// When the fake got `method` on a path ending in `suffix` with `status` in its body.
fn bitbucket_at(h: &Harness, method: &str, suffix: &str, status: Option<&str>) -> Vec<SystemTime> {
    h.fake
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .filter(|r| {
            status.is_none_or(|s| r.body.as_ref().and_then(|b| b["status"].as_str()) == Some(s))
        })
        .map(|r| r.at)
        .collect()
}

/// When the recorder saw `operation` with `needle` in its body.
fn aws_at(h: &Harness, operation: &str, needle: &str) -> Vec<SystemTime> {
    h.recorder
        .calls()
        .into_iter()
        .filter(|c| c.operation == operation && c.body.contains(needle))
        .map(|c| c.at)
        .collect()
}

/// A second AL2023 x86_64 image moto knows, other than `current`.
async fn other_image(h: &Harness, current: &str) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2
        .describe_images()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("architecture")
                .values("x86_64")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.images()
        .iter()
        .filter(|i| i.root_device_name() == Some("/dev/xvda"))
        .filter_map(|i| i.image_id())
        .find(|id| *id != current)
        .expect("another x86_64 image in moto")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ami_change_replaces_the_idle_host_and_busy_ones_survive() {
    let h = Harness::new(KIT, "rollout").await;
    let text = h.config(3, None);
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let hosts = booted(&h, cfg).await;
    let (busy_a, busy_b, idle) = (&hosts[0], &hosts[1], &hosts[2]);
    assert!(h.fake.set_busy(&busy_a.0, true) && h.fake.set_busy(&busy_b.0, true));
    let request = live_request(&h).await;

    // A new AMI: the launch template gets version 2.
    let ami = other_image(&h, "ami-0d27e0fb3bac4d724").await;
    let text = text.replace(
        "os = \"al2023\"\n",
        &format!("os = \"al2023\"\nami = \"{ami}\"\n"),
    );
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let plan = h.run(&["--config", cfg, "plan"], &Harness::token()).await;
    plan.expect_code(0);
    assert!(
        plan.stdout.contains(
            "Roll-out: 3 hosts on launch template v1, current v2: 1 idle replaced now, 2 busy wait."
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains(&format!("~ spot fleet {request}: in place, instances kept")),
        "{}",
        plan.stdout
    );

    h.fake.clear_requests();
    h.recorder.clear();
    h.apply(cfg, &[]).await;
    let calls = h.recorder.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.operation == "ec2:CancelSpotFleetRequests"),
        "a roll-out never cancels the request"
    );
    let modify = calls
        .iter()
        .find(|c| c.operation == "ec2:ModifySpotFleetRequest")
        .expect("the request is modified in place");
    assert!(
        modify
            .body
            .contains("LaunchTemplateConfig.1.LaunchTemplateSpecification.Version=2")
            && modify
                .body
                .contains("ExcessCapacityTerminationPolicy=noTermination"),
        "{}",
        modify.body
    );
    let terminated: Vec<&String> = calls
        .iter()
        .filter(|c| c.operation == "ec2:TerminateInstances")
        .map(|c| &c.body)
        .collect();
    assert_eq!(terminated.len(), 1, "{terminated:?}");
    assert!(terminated[0].contains(&idle.1), "{}", terminated[0]);
    let running = testkit::world::running_instances(&h, "rollout").await;
    assert!(
        running.contains(&busy_a.1) && running.contains(&busy_b.1),
        "{running:?}"
    );
    assert!(!running.contains(&idle.1));
    // The idle runner was disabled before its host went, and enabled after.
    let disabled = bitbucket_at(&h, "PUT", &format!("{}/state", idle.0), Some("DISABLED"));
    let enabled = bitbucket_at(&h, "PUT", &format!("{}/state", idle.0), Some("ENABLED"));
    let terminate = aws_at(&h, "ec2:TerminateInstances", &idle.1);
    assert!(disabled.len() == 1 && enabled.len() == 1 && terminate.len() == 1);
    assert!(disabled[0] < terminate[0] && terminate[0] < enabled[0]);
    for busy in [busy_a, busy_b] {
        assert!(bitbucket_at(&h, "PUT", &format!("{}/state", busy.0), None).is_empty());
    }
    // Its claim moved on: generation 2 is free for the replacement host.
    let claims = testkit::world::parameters(&h, "rollout", false).await;
    assert!(claims.contains(&(
        format!("/bbfleet/rollout/claims/{}/2", bare(&idle.0)),
        "free".to_owned()
    )));
    // The busy ones wait: the next plan says so again and replaces nothing yet (the
    // replaced runner has no host in moto, which launches no replacement: capacity down).
    let again = h.run(&["--config", cfg, "plan"], &Harness::token()).await;
    assert!(again.stdout.contains("2 busy wait"), "{}", again.stdout);
    let status = h.run(&["--config", cfg, "status"], &Harness::token()).await;
    status.expect_code(0);
    assert!(status.stdout.contains("v1"), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_disables_first_and_keeps_a_runner_that_takes_a_step_meanwhile() {
    let h = Harness::new(KIT, "drain").await;
    let path = h.write_config(&h.config(3, None));
    let cfg = path.to_str().unwrap();
    let hosts = booted(&h, cfg).await;
    // The newest slot goes first (runners are registered in parallel: find it by name).
    let newest = h
        .runners(None)
        .into_iter()
        .find(|r| r["name"] == "bbfleet-drain-3")
        .map(|r| r["uuid"].as_str().unwrap().to_owned())
        .unwrap();
    let (uuid, host) = hosts.iter().find(|(u, _)| *u == newest).unwrap();
    // Bitbucket hands it a step just before the disable lands.
    assert!(h.fake.set_step_on_disable(uuid, true));
    let path = h.write_config(&h.config(2, None));
    let cfg = path.to_str().unwrap();
    h.fake.clear_requests();
    h.recorder.clear();
    let run = h.apply(cfg, &[]).await;
    let seen: Vec<(String, String, Option<serde_json::Value>)> = h
        .fake
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.body))
        .collect();
    assert_eq!(
        h.runners(None).len(),
        3,
        "the runner is kept: {seen:#?}\n{}",
        run.stderr
    );
    assert_eq!(h.runners(None).len(), 3, "the runner is kept");
    assert!(testkit::world::running_instances(&h, "drain")
        .await
        .contains(host));
    assert!(aws_at(&h, "ec2:TerminateInstances", host).is_empty());
    let state = format!("{uuid}/state");
    let disabled = bitbucket_at(&h, "PUT", &state, Some("DISABLED"));
    let enabled = bitbucket_at(&h, "PUT", &state, Some("ENABLED"));
    assert!(disabled.len() == 1 && enabled.len() == 1 && disabled[0] < enabled[0]);
    // The next apply corrects the count: the busy runner stays, an idle one goes, and it
    // is disabled before its host is terminated, and that before it is deleted.
    let (uuid, host) = hosts
        .iter()
        .find(|(u, _)| {
            h.runners(None)
                .iter()
                .any(|r| r["uuid"] == u.as_str() && r["name"] == "bbfleet-drain-2")
        })
        .unwrap();
    h.fake.clear_requests();
    h.recorder.clear();
    h.apply(cfg, &[]).await;
    let state = format!("{uuid}/state");
    let disabled = bitbucket_at(&h, "PUT", &state, Some("DISABLED"));
    let deleted = bitbucket_at(&h, "DELETE", uuid, None);
    let terminated = aws_at(&h, "ec2:TerminateInstances", host);
    assert!(disabled.len() == 1 && deleted.len() == 1 && terminated.len() == 1);
    assert!(disabled[0] < terminated[0] && terminated[0] < deleted[0]);
    let left: Vec<String> = h
        .runners(None)
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&newest), "the busy runner is never removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimless_host_is_replaced_past_the_grace_and_left_alone_before() {
    let h = Harness::new(KIT, "heal").await;
    let grace = |s: u32| {
        h.config(2, None).replace(
            "fleet_role =",
            &format!("host_grace_seconds = {s}\nstray_grace_seconds = {s}\nfleet_role ="),
        )
    };
    let path = h.write_config(&grace(3600));
    let cfg = path.to_str().unwrap();
    let hosts = booted(&h, cfg).await;
    // Host 2 never claimed: runner 2 has a free claim, host 2 none.
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let (runner2, host2) = &hosts[1];
    ssm.delete_parameter()
        .name(format!("/bbfleet/heal/claims/{}/1", bare(runner2)))
        .send()
        .await
        .unwrap();
    ssm.put_parameter()
        .name(format!("/bbfleet/heal/claims/{}/2", bare(runner2)))
        .value("free")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    assert!(h.fake.set_status(runner2, "OFFLINE"));
    // Young: left alone.
    let young = h
        .run(
            &["--config", cfg, "plan", "--detailed-exitcode"],
            &Harness::token(),
        )
        .await;
    assert!(!young.stdout.contains(host2.as_str()), "{}", young.stdout);
    // Past a (short) grace: replaced, the runner waiting for it untouched.
    let path = h.write_config(&grace(1));
    let cfg = path.to_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    h.recorder.clear();
    let run = h.apply(cfg, &[]).await;
    assert!(
        run.stdout.contains("repair: they hold no claim"),
        "{}",
        run.stdout
    );
    let terminated: Vec<String> = h
        .recorder
        .calls()
        .into_iter()
        .filter(|c| c.operation == "ec2:TerminateInstances")
        .map(|c| c.body)
        .collect();
    assert_eq!(terminated.len(), 1, "{terminated:?}");
    assert!(terminated[0].contains(host2.as_str()));
    assert!(!terminated[0].contains(hosts[0].1.as_str()));
    assert_eq!(h.runners(None).len(), 2);
}
