//! Three-way drift repair against a real moto server and the Bitbucket fake: after an
//! apply, each kind of drift is made for real (a lost runner command, a command of no
//! runner, a claim naming a terminated instance, a fleet-tagged instance launched outside
//! the fleet request); `plan` shows each as its own action line, `apply` converges, and
//! the next plan is empty.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{InstanceStateName, InstanceType, LaunchTemplateSpecification};
use aws_sdk_ssm::types::ParameterType;
use testkit::harness::Harness;

use crate::KIT;

pub(crate) fn bare(uuid: &str) -> String {
    uuid.trim_matches(|c| c == '{' || c == '}').to_owned()
}

/// One instance launched from the fleet's launch template (so tagged with the fleet),
/// outside any fleet request.
async fn launch_outside_the_fleet(ec2: &aws_sdk_ec2::Client, fleet: &str) -> String {
    let out = ec2
        .run_instances()
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name(format!("bbfleet-{fleet}"))
                .version("$Latest")
                .build(),
        )
        .instance_type(InstanceType::M6iLarge)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("RunInstances from the fleet's template");
    out.instances()[0].instance_id().unwrap().to_owned()
}

pub(crate) async fn state(ec2: &aws_sdk_ec2::Client, id: &str) -> InstanceStateName {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .clone()
}

/// Claims of the fleet: runner (bare uuid) -> generation -> value.
async fn claims(ssm: &aws_sdk_ssm::Client, fleet: &str) -> BTreeMap<String, BTreeMap<u64, String>> {
    let prefix = format!("/bbfleet/{fleet}/claims/");
    let mut out: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut pages = ssm
        .get_parameters_by_path()
        .path(&prefix)
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().parameters() {
            let rest = p.name().unwrap().strip_prefix(&prefix).unwrap();
            let (uuid, generation) = rest.split_once('/').unwrap();
            out.entry(uuid.to_owned())
                .or_default()
                .insert(generation.parse().unwrap(), p.value().unwrap().to_owned());
        }
    }
    out
}

/// What the instances' userdata would do: each instance of the fleet request claims one
/// runner of `uuids` (as many as there are). Returns the instances, in that order.
pub(crate) async fn claim_hosts(h: &Harness, uuids: &[String]) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let fleets = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let fleet_id = fleets
        .spot_fleet_request_configs()
        .iter()
        .find(|f| {
            f.tags()
                .iter()
                .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some(h.fleet.as_str()))
        })
        .and_then(|f| f.spot_fleet_request_id())
        .expect("the fleet request")
        .to_owned();
    let ids = h.fleet_members(&fleet_id).await;
    assert_eq!(ids.len(), uuids.len());
    for (uuid, id) in uuids.iter().zip(&ids) {
        ssm.put_parameter()
            .name(format!("/bbfleet/{}/claims/{}/1", h.fleet, bare(uuid)))
            .value(id)
            .r#type(ParameterType::String)
            .send()
            .await
            .unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_drift_is_planned_as_its_own_action_and_one_apply_repairs_all() {
    let h = Harness::new(KIT, "drift").await;
    // The stray below is launched by hand a moment before the plan: no grace, so it counts
    // at once (the default grace leaves an unexplained instance alone for 10 minutes).
    let text = h
        .config(3, None)
        .replace("fleet_role = ", "stray_grace_seconds = 0\nfleet_role = ");
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    let token = Harness::token();
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    h.apply(cfg, &[]).await;

    let runners = h.runners(None);
    let uuids: Vec<String> = runners
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_owned())
        .collect();
    let ids = claim_hosts(&h, &uuids).await;
    let converged = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    converged.expect_code(0);

    // 1. Runner A loses its command (orphan runner); its instance holds a dead credential.
    let (a, b) = (&uuids[0], &uuids[1]);
    ssm.delete_parameter()
        .name(format!("/bbfleet/drift/runners/{}", bare(a)))
        .send()
        .await
        .unwrap();
    // 2. A command that no runner of the fleet has (orphan parameter).
    let foreign = "/bbfleet/drift/runners/0badc0de-0000-4000-8000-000000000000";
    ssm.put_parameter()
        .name(foreign)
        .value("docker run ... (never a real secret in tests)")
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    // 3. Runner B's newest claim names an instance that no longer runs.
    let dead = launch_outside_the_fleet(&ec2, "drift").await;
    ec2.terminate_instances()
        .instance_ids(&dead)
        .send()
        .await
        .unwrap();
    ssm.put_parameter()
        .name(format!("/bbfleet/drift/claims/{}/2", bare(b)))
        .value(&dead)
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    // 4. A fleet-tagged instance outside the fleet request (stray).
    let stray = launch_outside_the_fleet(&ec2, "drift").await;

    h.fake.clear_requests();
    h.recorder.clear();
    let plan = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    plan.expect_code(2);
    h.assert_no_writes("plan");
    let text = &plan.stdout;
    let slot_a = runners[0]["name"].as_str().unwrap();
    for line in [
        format!("  - orphan parameter {foreign}: drift: no runner of the fleet has uuid 0badc0de"),
        format!(
            "  - orphan runner {slot_a} {a}: drift: its command is not stored (the secret is lost); deleted, and a new runner replaces it (its instance {} is terminated first)",
            ids[0]
        ),
        format!("  + runner {slot_a}: register"),
        // The orphan's claim and its offer (generation 0).
        "  - claims 2 claim parameter(s): their runners no longer exist".to_owned(),
        format!("  - stray instances {stray}: drift: tagged with the fleet but not part of its live fleet request"),
        format!(
            "  ~ claim {} generation 3: drift: claimed by {dead}, which is not running; released (written free)",
            bare(b)
        ),
        "  - old claims 2 claim parameter(s): superseded generations of kept runners".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    assert!(
        text.contains("Plan: 1 to add, 1 to change, 5 to destroy."),
        "{text}"
    );

    let json = h
        .run(&["--config", cfg, "--output", "json", "plan"], &token)
        .await;
    json.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let kinds: Vec<&str> = doc["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "orphan_parameter",
            "orphan_runner",
            "runner",
            "claims",
            "stray_instances",
            "claim",
            "old_claims"
        ]
    );
    for a in doc["actions"].as_array().unwrap() {
        assert!(a["reason"].as_str().is_some_and(|r| !r.is_empty()), "{a}");
    }
    h.assert_no_writes("plan --output json");

    // One apply repairs everything.
    h.apply(cfg, &[]).await;
    assert_eq!(state(&ec2, &stray).await, InstanceStateName::Terminated);
    assert_eq!(
        state(&ec2, &ids[0]).await,
        InstanceStateName::Terminated,
        "the orphan's instance"
    );
    assert_eq!(state(&ec2, &ids[1]).await, InstanceStateName::Running);
    let now: Vec<String> = h.runner_uuids();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(!now.contains(a), "the orphan runner is deleted");
    let stored = ssm
        .get_parameters_by_path()
        .path("/bbfleet/drift/runners")
        .send()
        .await
        .unwrap();
    let mut stored: Vec<String> = stored
        .parameters()
        .iter()
        .map(|p| p.name().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect();
    stored.sort();
    let mut expected: Vec<String> = now.iter().map(|u| bare(u)).collect();
    expected.sort();
    assert_eq!(stored, expected, "one command per runner, none else");
    let after = claims(&ssm, "drift").await;
    assert_eq!(
        after.get(&bare(b)),
        Some(&BTreeMap::from([
            (0, "free".to_owned()),
            (3, "free".to_owned())
        ])),
        "B's claim is released and its old generations pruned (the offer stays): {after:?}"
    );
    assert!(!after.contains_key(&bare(a)), "{after:?}");
    assert_eq!(
        after.get(&bare(&uuids[2])),
        Some(&BTreeMap::from([
            (0, "free".to_owned()),
            (1, ids[2].clone())
        ])),
        "a live claim is untouched"
    );

    let again = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    again.expect_code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    h.destroy(cfg).await;
    let t = h.transcript.lock().unwrap();
    for secret in h.fake.issued_secrets() {
        assert!(!t.contains(&secret), "a runner secret was printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_claim_never_overwrites_a_generation_someone_wrote_first() {
    let h = Harness::new(KIT, "release").await;
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let runner = "{5eed0000-0000-4000-8000-000000000000}";
    let name = bbfleet::names::claim("release", runner, 2);
    assert_eq!(
        name,
        "/bbfleet/release/claims/5eed0000-0000-4000-8000-000000000000/2"
    );
    // Free: written, tagged with the fleet.
    let written = bbfleet::aws::ssm::put_claim_if_absent(&ssm, "release", runner, 2, "free").await;
    assert!(written.unwrap());
    // A booting instance took generation 3 first: releasing it is a success that changes
    // nothing (Overwrite=false), not an error.
    ssm.put_parameter()
        .name(bbfleet::names::claim("release", runner, 3))
        .value("i-0123456789abcdef0")
        .r#type(ParameterType::String)
        .overwrite(false)
        .send()
        .await
        .unwrap();
    let second = bbfleet::aws::ssm::put_claim_if_absent(&ssm, "release", runner, 3, "free").await;
    assert!(!second.unwrap());
    let after = claims(&ssm, "release").await;
    assert_eq!(
        after[&bare(runner)],
        BTreeMap::from([
            (2, "free".to_owned()),
            (3, "i-0123456789abcdef0".to_owned())
        ])
    );
    let tags = ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&name)
        .send()
        .await
        .unwrap();
    assert!(tags
        .tag_list()
        .iter()
        .any(|t| t.key() == "bbfleet:fleet" && t.value() == "release"));
}
