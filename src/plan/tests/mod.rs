use super::*;
use crate::config::{Capacity, Config};
use crate::names::bare_uuid;
use crate::world::{
    Claim, ClaimHolder, FleetPhase, FleetState, ImageInfo, InstanceInfo, InstanceState, KeyStatus,
    LaunchTemplateState, Observed, Runner, RunnerParameter, RunnerStatus, SubnetInfo,
};

pub(super) const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/k1";

pub(super) fn config() -> Config {
    Config::parse(crate::config::tests::GOOD, "t").unwrap()
}

fn capacity(n: u32) -> Capacity {
    Capacity {
        desired: n,
        source: "test".into(),
    }
}

pub(super) fn desired_for(config: &Config, n: u32) -> Desired {
    let image = ImageInfo {
        id: "ami-0123abcd".into(),
        root_device: "/dev/xvda".into(),
        architecture: "x86_64".into(),
    };
    desired(config, "us-east-1", &image, capacity(n)).unwrap()
}

fn uuid(n: u32) -> String {
    format!("{{0000000{n}-0000-5000-8000-000000000000}}")
}

fn runner(n: u32, status: &str, busy: bool) -> Runner {
    Runner {
        status_since: None,
        uuid: uuid(n),
        name: format!("bbfleet-ci-{n}"),
        labels: vec!["self.hosted".into(), "linux".into(), "spot".into()],
        status: RunnerStatus::from_api(status),
        busy,
    }
}

fn param(n: u32) -> RunnerParameter {
    let bare = bare_uuid(&uuid(n));
    RunnerParameter {
        name: format!("/bbfleet/ci/runners/{bare}"),
        runner_uuid: bare,
        kind: "SecureString".into(),
        key_id: Some(ARN.into()),
        current_format: true,
    }
}

fn claim(n: u32, instance: &str) -> Claim {
    let bare = bare_uuid(&uuid(n));
    Claim {
        written_at: None,
        name: format!("/bbfleet/ci/claims/{bare}/1"),
        runner_uuid: bare,
        generation: 1,
        holder: ClaimHolder::parse(instance),
    }
}

/// A world that matches `n` runners exactly, each claimed by instance i-n.
pub(super) fn converged(config: &Config, n: u32) -> Observed {
    let d = desired_for(config, n);
    Observed {
        scope_name: "workspace acme".into(),
        account_uuid: "{a}".into(),
        repository_uuid: None,
        scope_runner_count: n as usize,
        runners: (1..=n).map(|i| runner(i, "ONLINE", false)).collect(),
        parameters: (1..=n).map(param).collect(),
        claims: (1..=n).map(|i| claim(i, &format!("i-{i}"))).collect(),
        key: Some(KeyStatus::Usable { arn: ARN.into() }),
        subnets: vec![
            SubnetInfo {
                id: "subnet-0123abcd".into(),
                az: "us-east-1a".into(),
                vpc: "v".into(),
            },
            SubnetInfo {
                id: "subnet-0123abce".into(),
                az: "us-east-1b".into(),
                vpc: "v".into(),
            },
        ],
        security_groups: Vec::new(),
        image: None,
        launch_template: Some(LaunchTemplateState {
            id: "lt-1".into(),
            name: "bbfleet-ci".into(),
            latest_version: 1,
            fingerprint: Some(d.launch_template.fingerprint()),
        }),
        fleets: vec![FleetState {
            role: Some(config.spot.fleet_role.clone()),
            strategy: Some(config.spot.allocation_strategy),
            api: Default::default(),
            on_demand_target: 0,
            fulfilled: None,
            spot_fulfilled: None,
            target_at: None,
            capacity_errors: Vec::new(),
            id: "sfr-1".into(),
            state: FleetPhase::Active,
            target: n as i32,
            fingerprint: Some(d.fleet.fingerprint()),
            instance_ids: (1..=n).map(|i| format!("i-{i}")).collect(),
        }],
        instances: (1..=n)
            .map(|i| InstanceInfo {
                template_version: Some(1),
                on_demand: false,
                id: format!("i-{i}"),
                instance_type: "m6i.large".into(),
                az: "us-east-1a".into(),
                state: InstanceState::Running,
                fleet_request: None,
                launched_at: None,
            })
            .collect(),
        autoscale_state: None,
        observed_at: jiff::Timestamp::UNIX_EPOCH,
        spot_price: None,
    }
}

fn plan(config: &Config, n: u32, observed: &Observed) -> Plan {
    plan_apply(
        config,
        &desired_for(config, n),
        observed,
        PlanOptions::default(),
    )
    .unwrap()
}

pub(super) fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            serde_json::to_value(a).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn empty_world_gets_everything_in_order() {
    let c = config();
    let mut o = Observed {
        subnets: converged(&c, 0).subnets,
        key: Some(KeyStatus::Absent),
        ..Default::default()
    };
    o.scope_name = "workspace acme".into();
    let p = plan(&c, 3, &o);
    assert_eq!(
        kinds(&p),
        [
            "create_key",
            "create_runner",
            "create_runner",
            "create_runner",
            "create_launch_template",
            "request_fleet"
        ]
    );
    assert_eq!(
        p.summary(),
        Summary {
            add: 6,
            change: 0,
            destroy: 0
        }
    );
}

#[test]
fn converged_world_plans_nothing() {
    let c = config();
    for n in [0, 1, 3, 20] {
        assert!(plan(&c, n, &converged(&c, n)).is_empty(), "n = {n}");
    }
}

#[test]
fn scale_up_registers_before_raising_the_target() {
    let c = config();
    let p = plan(&c, 4, &converged(&c, 2));
    assert_eq!(
        kinds(&p),
        ["create_runner", "create_runner", "set_fleet_target"]
    );
    assert_eq!(
        p.actions[0],
        Action::CreateRunner {
            name: "bbfleet-ci-3".into()
        }
    );
}

#[test]
fn scale_down_prefers_unclaimed_then_offline_and_never_busy() {
    let c = config();
    let mut o = converged(&c, 5);
    o.runners[0] = runner(1, "ONLINE", true); // busy
    o.runners[1] = runner(2, "OFFLINE", false); // claimed, offline
    o.claims.retain(|cl| cl.runner_uuid != bare_uuid(&uuid(4))); // 4: unclaimed
    let p = plan(&c, 3, &o);
    let removed: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteRunner { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["bbfleet-ci-4", "bbfleet-ci-2"]);
    // Lower first, then drain the removed runners (disable, re-read), then terminate
    // exactly the instances of the removed runners (and the surplus one that held no
    // claim), then delete.
    assert_eq!(kinds(&p)[0], "set_fleet_target");
    let drained: Vec<(&str, Option<&str>)> = p.actions[1..3]
        .iter()
        .map(|a| match a {
            Action::DrainRunner { name, instance, .. } => (name.as_str(), instance.as_deref()),
            other => panic!("a drain before any termination, not {other:?}"),
        })
        .collect();
    assert_eq!(
        drained,
        [("bbfleet-ci-4", None), ("bbfleet-ci-2", Some("i-2"))]
    );
    let Action::TerminateInstances { ids, .. } = &p.actions[3] else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(ids, &["i-2".to_owned(), "i-4".to_owned()]);
    assert!(
        !ids.contains(&"i-1".to_owned()),
        "the busy runner's instance stays"
    );
}

#[test]
fn scale_down_stops_short_of_busy_runners_unless_forced() {
    let c = config();
    let mut o = converged(&c, 3);
    for i in 0..3 {
        o.runners[i] = runner(i as u32 + 1, "ONLINE", true);
    }
    let p = plan(&c, 1, &o);
    assert!(p.is_empty() || !kinds(&p).contains(&"delete_runner".to_owned()));
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    let forced = plan_apply(&c, &desired_for(&c, 1), &o, PlanOptions { force: true }).unwrap();
    assert_eq!(
        kinds(&forced)
            .iter()
            .filter(|k| *k == "delete_runner")
            .count(),
        2
    );
}

#[test]
fn orphans_are_repaired() {
    let c = config();
    let mut o = converged(&c, 3);
    o.parameters.remove(0); // runner 1 lost its secret
    o.parameters.push(param(9)); // a parameter without a runner
    let p = plan(&c, 3, &o);
    let k = kinds(&p);
    assert!(
        k.contains(&"delete_orphan_runner".to_owned())
            && k.contains(&"delete_orphan_parameter".to_owned()),
        "{k:?}"
    );
    assert_eq!(
        k.iter().filter(|x| *x == "create_runner").count(),
        1,
        "{k:?}"
    );
    // The orphan's slot is reused.
    assert!(p.actions.contains(&Action::CreateRunner {
        name: "bbfleet-ci-1".into()
    }));
}

/// Hosts see only the runners that have a claim: a kept runner with none (stored by an
/// older bbfleet, or an apply stopped between storing and offering) is offered; its offer
/// (generation 0) is never pruned, so a claimed runner plans nothing.
#[test]
fn a_runner_without_a_claim_is_offered_and_the_offer_is_never_pruned() {
    let c = config();
    let mut o = converged(&c, 3);
    let bare2 = bare_uuid(&uuid(2));
    o.claims.retain(|cl| cl.runner_uuid != bare2);
    let mut offer = claim(1, "free");
    offer.generation = crate::names::OFFER_GENERATION;
    offer.name = offer.name.replace("/1", "/0");
    o.claims.push(offer);
    let p = plan(&c, 3, &o);
    assert_eq!(p.actions, [Action::OfferRunner { runner: bare2 }]);
    let (_, what, why) = p.actions[0].describe();
    assert_eq!(what, format!("{} generation 0", bare_uuid(&uuid(2))));
    assert!(
        why.contains("no host can see it (no claim yet); offered"),
        "{why}"
    );
}

#[test]
fn config_changes_modify_the_fleet_in_place_and_version_the_template() {
    let mut c = config();
    let o = converged(&c, 2);
    c.spot.instance_types.push("r6i.large".into());
    let p = plan(&c, 2, &o);
    // The request is modified in place: no host of a still-configured type is touched.
    assert_eq!(kinds(&p), ["modify_fleet"]);
    assert!(
        matches!(&p.actions[0], Action::ModifyFleet { id, from: 2, to: 2, .. } if id == "sfr-1")
    );
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let mut c = config();
    c.instance.root_volume_gb = 80;
    let p = plan(&c, 2, &o);
    // A new template version: the request moves to it, and one idle host (the batch)
    // is drained and replaced; its claim is released after the termination.
    assert_eq!(
        kinds(&p),
        [
            "create_launch_template_version",
            "modify_fleet",
            "drain_runner",
            "terminate_instances",
            "release_claim",
            "prune_claims",
            "enable_runner"
        ]
    );
    assert_eq!(
        p.notes,
        ["Roll-out: 2 hosts on launch template v1, current v2: 1 idle replaced now, 1 idle wait for a later batch (rollout.batch = 1, hosts without a runner count as down)."]
    );
}

#[test]
fn a_role_change_replaces_the_request_without_terminating_its_instances() {
    let mut c = config();
    let o = converged(&c, 3);
    c.spot.fleet_role = "arn:aws:iam::123456789012:role/other".into();
    let p = plan(&c, 3, &o);
    // The new request hosts only the runner whose old host is replaced now; the other
    // two old hosts keep their runners until a later batch.
    assert_eq!(
        kinds(&p),
        [
            "request_fleet",
            "cancel_fleet",
            "drain_runner",
            "terminate_instances",
            "release_claim",
            "prune_claims",
            "enable_runner"
        ]
    );
    assert!(matches!(
        p.actions[0],
        Action::RequestFleet { target: 1, .. }
    ));
    assert!(matches!(
        p.actions[1],
        Action::CancelFleet {
            terminate_instances: false,
            ..
        }
    ));
}

#[test]
fn unusable_keys_and_runner_limits_stop_the_plan() {
    let c = config();
    let mut o = converged(&c, 2);
    o.key = Some(KeyStatus::Unusable {
        reason: "kms.key alias/x is Disabled".into(),
    });
    assert!(matches!(
        plan_apply(&c, &desired_for(&c, 2), &o, PlanOptions::default()),
        Err(PlanError::KeyUnusable { .. })
    ));
    let mut o = converged(&c, 2);
    o.scope_runner_count = 99;
    assert!(matches!(
        plan_apply(&c, &desired_for(&c, 4), &o, PlanOptions::default()),
        Err(PlanError::RunnerLimit { .. })
    ));
}

#[test]
fn runners_off_the_fleet_key_are_rotated_and_labels_follow_the_config() {
    let c = config();
    let mut o = converged(&c, 2);
    o.parameters[0].key_id = Some("alias/aws/ssm".into());
    o.runners[1].labels = vec!["self.hosted".into(), "linux".into()];
    let p = plan(&c, 2, &o);
    // Runner 1 is replaced by a new runner, then retired with its host, command and
    // claims: its command is never rewritten in place (the old value would stay in the
    // parameter's history).
    assert_eq!(
        kinds(&p),
        [
            "update_runner",
            "create_runner",
            "drain_runner",
            "terminate_instances",
            "delete_runner",
            "delete_parameter",
            "delete_claims"
        ]
    );
    assert!(p.actions.contains(&Action::DeleteParameter {
        name: param(1).name,
        reason: "its runner bbfleet-ci-1 is rotated out (no older value stays)".into()
    }));
}

#[test]
fn destroy_takes_everything_but_the_key() {
    let c = config();
    let o = converged(&c, 2);
    let p = plan_destroy(&c, &o);
    assert_eq!(
        kinds(&p),
        [
            "cancel_fleet",
            "delete_runner",
            "delete_runner",
            "delete_parameter",
            "delete_parameter",
            "delete_claims",
            "delete_launch_template"
        ]
    );
    assert!(plan_destroy(&c, &Observed::default()).is_empty());
}

#[test]
fn plan_text_follows_terraform_habits() {
    let c = config();
    let p = plan(&c, 3, &converged(&c, 2));
    let text = p.view().to_string();
    assert!(text.contains("  + runner bbfleet-ci-3: register"), "{text}");
    assert!(
        text.contains("  ~ spot fleet sfr-1: target capacity 2 -> 3"),
        "{text}"
    );
    assert!(
        text.ends_with("Plan: 1 to add, 1 to change, 0 to destroy.\n"),
        "{text}"
    );
    let none = plan(&c, 2, &converged(&c, 2)).view().to_string();
    assert!(
        none.ends_with("No changes. The fleet matches the configuration.\n"),
        "{none}"
    );
}

mod drift;
mod hosts;
mod on_demand;
mod rotation;
