//! Checks of a fleet's world through the AWS SDK (straight to moto) and the Bitbucket fake,
//! returning what is wrong instead of panicking, so a test can report every case at once.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Filter;

use crate::harness::{Harness, Run};

/// Runs bbfleet with the fake's Bearer token and `env`.
pub async fn bbfleet(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all: Vec<(&str, &str)> = Harness::token().to_vec();
    all.extend_from_slice(env);
    h.run(args, &all).await
}

/// Everything wrong with the world of `h` for a converged fleet of `capacity` runners:
/// runners = commands = fleet target, one launch template, no orphan runner, parameter,
/// claim, key, fleet request or instance, and a plan with no changes.
pub async fn convergence_problems(h: &Harness, cfg: &str, capacity: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let fleet = h.fleet.as_str();

    // Runners: exactly `capacity`, named by the lowest free slots, nothing else in the scope.
    let runners = h.fake.runners("acme", None);
    let names: BTreeSet<String> = runners
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let wanted: BTreeSet<String> = (1..=capacity)
        .map(|n| format!("bbfleet-{fleet}-{n}"))
        .collect();
    if runners.len() != capacity || names != wanted {
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

    // Parameters: one command per runner holding that runner's uuid, and its offer (claim
    // generation 0 = free: no instance runs the userdata here, so nothing claims it); no
    // other claim, no other name.
    let params = parameters(h, fleet, true).await;
    let runners_prefix = format!("/bbfleet/{fleet}/runners/");
    let claims_prefix = format!("/bbfleet/{fleet}/claims/");
    let mut commands = BTreeSet::new();
    let mut offered = BTreeSet::new();
    for (name, value) in &params {
        let offer = name
            .strip_prefix(&claims_prefix)
            .and_then(|rest| rest.strip_suffix("/0"))
            .filter(|uuid| runner_uuids.contains(*uuid) && value == "free");
        if let Some(uuid) = offer {
            offered.insert(uuid.to_owned());
        } else if let Some(uuid) = name.strip_prefix(&runners_prefix) {
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
    if offered != runner_uuids {
        problems.push(format!(
            "runners {runner_uuids:?} but offers (claim generation 0) for {offered:?}"
        ));
    }

    // One launch template.
    let lts = launch_templates(h, fleet).await;
    if lts != [format!("bbfleet-{fleet}")] {
        problems.push(format!("launch templates: {lts:?}"));
    }

    // Exactly one live fleet request, target capacity, owning every running tagged instance.
    let fleets = fleet_requests(h, fleet).await;
    let live: Vec<&(String, String, i32)> = fleets
        .iter()
        .filter(|(_, state, _)| ["submitted", "active", "modifying"].contains(&state.as_str()))
        .collect();
    match live.as_slice() {
        [(id, _, target)] => {
            if *target != capacity as i32 {
                problems.push(format!("fleet {id} has target {target}"));
            }
            let owned = fleet_instances(h, id).await;
            let running = running_instances(h, fleet).await;
            if owned.len() != capacity {
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
        &[
            "--config",
            cfg,
            "plan",
            "--detailed-exitcode",
            "--no-preflight",
        ],
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
pub async fn leftovers(h: &Harness) -> Vec<String> {
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
        if !is_cancelled(&state) {
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
pub async fn parameters(h: &Harness, fleet: &str, decrypt: bool) -> Vec<(String, String)> {
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
pub async fn launch_templates(h: &Harness, fleet: &str) -> Vec<String> {
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

/// (id, state, target) of the fleet requests tagged with the fleet, of both APIs (Spot
/// Fleet `sfr-...`, EC2 Fleet `fleet-...`, its states spelled `deleted...` for cancelled).
pub async fn fleet_requests(h: &Harness, fleet: &str) -> Vec<(String, String, i32)> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let ours = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter()
            .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some(fleet))
    };
    let out = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let mut found: Vec<(String, String, i32)> = out
        .spot_fleet_request_configs()
        .iter()
        .filter(|f| ours(f.tags()))
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
        .collect();
    let out = ec2.describe_fleets().send().await.unwrap();
    found.extend(out.fleets().iter().filter(|f| ours(f.tags())).map(|f| {
        (
            f.fleet_id().unwrap_or_default().to_owned(),
            f.fleet_state().map_or("unknown", |s| s.as_str()).to_owned(),
            f.target_capacity_specification()
                .and_then(|c| c.total_target_capacity())
                .unwrap_or(-1),
        )
    }));
    found
}

/// Whether a request state is cancelled (Spot Fleet) or deleted (EC2 Fleet).
pub fn is_cancelled(state: &str) -> bool {
    state.starts_with("cancelled") || state.starts_with("deleted")
}

/// The instances a fleet request lists (DescribeSpotFleetInstances or
/// DescribeFleetInstances, by its id).
pub async fn fleet_instances(h: &Harness, id: &str) -> BTreeSet<String> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    if id.starts_with("sfr-") {
        let out = ec2
            .describe_spot_fleet_instances()
            .spot_fleet_request_id(id)
            .send()
            .await
            .expect("describe the fleet's instances");
        out.active_instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    } else {
        let out = ec2
            .describe_fleet_instances()
            .fleet_id(id)
            .send()
            .await
            .expect("describe the fleet's instances");
        out.active_instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    }
}

/// Pending or running instances tagged with the fleet.
pub async fn running_instances(h: &Harness, fleet: &str) -> BTreeSet<String> {
    instances_in(h, fleet, &["pending", "running"]).await
}

/// Instances tagged with the fleet, in one of `states`.
pub async fn instances_in(h: &Harness, fleet: &str, states: &[&str]) -> BTreeSet<String> {
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
                .set_values(Some(states.iter().map(|s| (*s).to_owned()).collect()))
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
pub async fn unaliased_fleet_keys(h: &Harness, fleet: &str) -> Vec<String> {
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

/// The VPC of a subnet.
pub async fn vpc_of(ec2: &aws_sdk_ec2::Client, subnet: &str) -> String {
    ec2.describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .expect("describe a subnet")
        .subnets()[0]
        .vpc_id()
        .expect("a subnet's VPC")
        .to_owned()
}

/// A new VPC; returns its id.
pub async fn create_vpc(ec2: &aws_sdk_ec2::Client, cidr: &str) -> String {
    ec2.create_vpc()
        .cidr_block(cidr)
        .send()
        .await
        .expect("create a VPC")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("the new VPC's id")
        .to_owned()
}

/// A new subnet of `vpc` in `az`; returns its id.
pub async fn create_subnet(ec2: &aws_sdk_ec2::Client, vpc: &str, cidr: &str, az: &str) -> String {
    ec2.create_subnet()
        .vpc_id(vpc)
        .cidr_block(cidr)
        .availability_zone(az)
        .send()
        .await
        .expect("create a subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("the new subnet's id")
        .to_owned()
}

/// Cancels a spot fleet request with its instances.
pub async fn cancel_fleet(ec2: &aws_sdk_ec2::Client, id: &str) {
    ec2.cancel_spot_fleet_requests()
        .spot_fleet_request_ids(id)
        .terminate_instances(true)
        .send()
        .await
        .expect("cancel a spot fleet request");
}
