//! The two fleet APIs and the on-demand part on moto (with the project's ModifyFleet and
//! Spot Fleet on-demand extension) through the AWS-rules layer: a full EC2 Fleet cycle,
//! a switch of `spot.fleet_api` with busy runners, an on-demand base, the fallback to
//! on-demand on a capacity shortage the layer injects, the cost cap, and the way back.

use std::collections::{BTreeMap, BTreeSet};

use testkit::harness::Harness;
use testkit::world;

use crate::KIT;

const ROLE_LINE: &str =
    "fleet_role = \"arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role\"\n";

/// The harness config with EC2 Fleet, and `spot` / `capacity` lines added.
fn ec2_fleet(h: &Harness, capacity: u32, spot: &str, cap: &str) -> String {
    h.config(capacity, None)
        .replace(ROLE_LINE, &format!("fleet_api = \"ec2-fleet\"\n{spot}"))
        .replace("max = 20\n", &format!("max = 20\n{cap}"))
}

/// The live requests of the fleet: id -> target.
async fn live(h: &Harness) -> BTreeMap<String, i32> {
    world::fleet_requests(h, &h.fleet)
        .await
        .into_iter()
        .filter(|(_, state, _)| !world::is_cancelled(state))
        .map(|(id, _, target)| (id, target))
        .collect()
}

/// Running instances of the fleet: (on-demand, spot).
async fn split(h: &Harness) -> (usize, usize) {
    let running = world::running_instances(h, &h.fleet).await;
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(running.iter().cloned().collect()))
        .send()
        .await
        .unwrap();
    let spot = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot"))
        .count();
    (running.len() - spot, spot)
}

/// A request's (total, on-demand) targets, as AWS shows them (through the layer: moto
/// holds the spot part the injected shortage clipped).
async fn targets(h: &Harness, id: &str) -> (i32, i32) {
    let ec2 = aws_sdk_ec2::Client::new(&testkit::moto::harness_sdk(&h.recorder.endpoint).await);
    if id.starts_with("sfr-") {
        let out = ec2
            .describe_spot_fleet_requests()
            .spot_fleet_request_ids(id)
            .send()
            .await
            .unwrap();
        let c = out.spot_fleet_request_configs()[0]
            .spot_fleet_request_config()
            .unwrap();
        (
            c.target_capacity().unwrap_or(-1),
            c.on_demand_target_capacity().unwrap_or(-1),
        )
    } else {
        let out = ec2.describe_fleets().fleet_ids(id).send().await.unwrap();
        let c = out.fleets()[0].target_capacity_specification().unwrap();
        (
            c.total_target_capacity().unwrap_or(-1),
            c.on_demand_target_capacity().unwrap_or(-1),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_fleet_converges_resizes_and_is_destroyed() {
    let h = Harness::new(KIT, "ec2f").await;
    let text = ec2_fleet(&h, 3, "", "");
    assert!(!text.contains("fleet_role"), "no fleet role: {text}");
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let run = h.apply(cfg, &[]).await;
    assert!(
        run.stdout.contains("CreateFleet") || run.stdout.contains("fleet-"),
        "{}",
        run.stdout
    );
    let fleets = live(&h).await;
    assert_eq!(fleets.len(), 1, "{fleets:?}");
    let (id, target) = fleets.iter().next().unwrap();
    assert!(id.starts_with("fleet-"), "{id}");
    assert_eq!(*target, 3);
    // No Spot Fleet request was made.
    assert!(world::fleet_requests(&h, &h.fleet)
        .await
        .iter()
        .all(|(id, _, _)| !id.starts_with("sfr-")));
    let problems = world::convergence_problems(&h, cfg, 3).await;
    assert!(problems.is_empty(), "{problems:#?}");

    let status = h
        .run(
            &["--config", cfg, "--output", "json", "status"],
            &Harness::token(),
        )
        .await;
    status.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["fleet_request"]["api"], "EC2 Fleet");
    assert_eq!(doc["fleet_request"]["id"], id.as_str());
    assert_eq!(doc["fleet_api"], "EC2 Fleet");

    h.apply(cfg, &["--capacity", "2"]).await;
    assert_eq!(live(&h).await.get(id), Some(&2));
    assert_eq!(world::running_instances(&h, &h.fleet).await.len(), 2);

    h.destroy(cfg).await;
    let left = world::leftovers(&h).await;
    assert!(left.is_empty(), "{left:?}");
    h.assert_no_parameter_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_fleet_api_never_terminates_a_busy_host() {
    let h = Harness::new(KIT, "switch").await;
    let spot = h.config(3, None);
    let path = h.write_config(&spot);
    let cfg = path.to_str().unwrap().to_owned();
    h.apply(&cfg, &[]).await;
    let (sfr, _) = live(&h).await.into_iter().next().unwrap();
    assert!(sfr.starts_with("sfr-"), "{sfr}");
    // What the hosts' userdata would do: each claims a runner; all come ONLINE; two busy.
    let hosts = h.fleet_members(&sfr).await;
    assert_eq!(hosts.len(), 3);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let mut host_of = BTreeMap::new();
    for (r, host) in h.runners(None).iter().zip(&hosts) {
        let uuid = r["uuid"].as_str().unwrap().to_owned();
        let bare = uuid
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase();
        ssm.put_parameter()
            .name(format!("/bbfleet/switch/claims/{bare}/1"))
            .value(host)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
        assert!(h.fake.set_status(&uuid, "ONLINE"));
        host_of.insert(uuid, host.clone());
    }
    let busy: Vec<String> = host_of.keys().take(2).cloned().collect();
    for u in &busy {
        assert!(h.fake.set_busy(u, true));
    }
    let busy_hosts: BTreeSet<String> = busy.iter().map(|u| host_of[u].clone()).collect();

    h.write_config(&ec2_fleet(&h, 3, "", ""));
    let run = h.apply(&cfg, &[]).await;
    assert!(
        run.stdout.contains("spot.fleet_api is now ec2-fleet"),
        "{}",
        run.stdout
    );
    let fleets = world::fleet_requests(&h, &h.fleet).await;
    let old = fleets.iter().find(|(id, _, _)| *id == sfr).unwrap();
    assert_eq!(
        old.1, "cancelled_running",
        "cancelled without its instances"
    );
    let new: Vec<_> = live(&h).await.into_iter().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].0.starts_with("fleet-"), "{new:?}");
    // The two busy hosts hold their runners outside the new fleet; it hosts the third.
    assert_eq!(new[0].1, 1);
    let running = world::running_instances(&h, &h.fleet).await;
    assert!(
        busy_hosts.is_subset(&running),
        "busy hosts kept: {running:?}"
    );
    let terminated = world::instances_in(&h, &h.fleet, &["shutting-down", "terminated"]).await;
    assert_eq!(
        terminated.len(),
        1,
        "only the idle host went: {terminated:?}"
    );
    assert!(terminated.is_disjoint(&busy_hosts));

    // Destroy finds both APIs' requests and leaves nothing.
    h.destroy(&cfg).await;
    let left = world::leftovers(&h).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_fleet_keeps_its_on_demand_base() {
    let h = Harness::new(KIT, "sfbase").await;
    let text = h
        .config(3, None)
        .replace("max = 20\n", "max = 20\non_demand_base = 1\n");
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let run = h.apply(cfg, &[]).await;
    assert!(
        run.stdout.contains("(1 on-demand, 2 spot)"),
        "{}",
        run.stdout
    );
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let (sfr, _) = live(&h).await.into_iter().next().unwrap();
    let out = ec2
        .describe_spot_fleet_requests()
        .spot_fleet_request_ids(&sfr)
        .send()
        .await
        .unwrap();
    let c = out.spot_fleet_request_configs()[0]
        .spot_fleet_request_config()
        .unwrap();
    assert_eq!(c.on_demand_target_capacity(), Some(1));
    assert_eq!(split(&h).await, (1, 2));
    let problems = world::convergence_problems(&h, cfg, 3).await;
    assert!(problems.is_empty(), "{problems:#?}");
    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_fleet_short_of_spot_falls_back_to_on_demand_within_the_cost_cap_and_returns() {
    fallback_cycle("fallback", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_fleet_short_of_spot_falls_back_to_on_demand_within_the_cost_cap_and_returns() {
    fallback_cycle("sffallback", false).await;
}

/// One fleet through a spot shortage: base, shortage, capped plan, fallback, way back.
async fn fallback_cycle(fleet: &str, ec2: bool) {
    let h = Harness::new(KIT, fleet).await;
    let spot = "fallback = \"on-demand\"\nfallback_grace_seconds = 5\n";
    let text = |capacity: u32, cap: &str| {
        let cap = format!("on_demand_base = 1\n{cap}");
        if ec2 {
            ec2_fleet(&h, capacity, spot, &cap)
        } else {
            h.config(capacity, None)
                .replace(ROLE_LINE, &format!("{ROLE_LINE}{spot}"))
                .replace("max = 20\n", &format!("max = 20\n{cap}"))
        }
    };
    let path = h.write_config(&text(3, ""));
    let cfg = path.to_str().unwrap().to_owned();
    // The pools have room for 2 spot instances.
    h.recorder.rules(|r| r.spot_capacity = Some(2));
    h.apply(&cfg, &[]).await;
    let (id, _) = live(&h).await.into_iter().next().unwrap();
    assert_eq!(targets(&h, &id).await, (3, 1));
    assert_eq!(
        split(&h).await,
        (1, 2),
        "the base on on-demand, the rest spot"
    );

    // Five runners: the fleet gets no third and fourth spot instance.
    h.write_config(&text(5, ""));
    let up = h.apply(&cfg, &[]).await;
    assert_eq!(targets(&h, &id).await, (5, 1), "{}", up.stdout);
    assert_eq!(split(&h).await, (1, 2), "short of 2 spot instances");

    // With a cost cap nothing above the base fits: the plan says so and changes nothing.
    h.write_config(&text(
        5,
        "max_hourly_cost = 0.001\non_demand_hourly_price = 0.1\n",
    ));
    let capped = h
        .run(
            &["--config", &cfg, "plan", "--no-preflight"],
            &Harness::token(),
        )
        .await;
    capped.expect_code(0);
    assert!(
        capped
            .stdout
            .contains("the spot fallback is held at 1 on-demand runner(s), not 3"),
        "{}",
        capped.stdout
    );
    assert!(capped.stdout.contains("No changes"), "{}", capped.stdout);

    // Without the cap, the capacity error in the fleet's history moves the missing two to
    // on-demand.
    h.write_config(&text(5, ""));
    let run = h.apply(&cfg, &[]).await;
    assert!(
        run.stdout
            .contains("spot fallback: 2 spot runner(s) missing"),
        "{}",
        run.stdout
    );
    assert_eq!(targets(&h, &id).await, (5, 3));
    assert_eq!(split(&h).await, (3, 2));
    let status = h
        .run(&["--config", &cfg, "status"], &Harness::token())
        .await;
    status.expect_code(0);
    assert!(
        status.stdout.contains("(3 on-demand, 2 spot)"),
        "{}",
        status.stdout
    );

    // Spot has room again; once the grace has passed without a capacity error, the next
    // apply moves the fallback back to spot (the base stays).
    h.recorder.rules(|r| r.spot_capacity = None);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let back = h.apply(&cfg, &[]).await;
    assert!(back.stdout.contains("back to spot"), "{}", back.stdout);
    assert_eq!(targets(&h, &id).await, (5, 1));
    h.destroy(&cfg).await;
    let left = world::leftovers(&h).await;
    assert!(left.is_empty(), "{left:?}");
}
