//! Planner properties over random worlds (docs/design.md, "Safety guarantees"):
//!
//! (a) the plan is a function of the world: the same world gives the same plan, also when
//!     the observed lists come in another order (the planner sorts them itself, so it does
//!     not rely on the observer's sort);
//! (b) applying the plan to the world (`apply_model`, a pure model of each action's effect)
//!     leaves a world whose plan is empty; without `--force` the only thing left is waiting
//!     on busy runners, which the second plan repeats (a subset of the first plan's
//!     warnings, no action); with `--force` there is no warning and exactly the desired
//!     number of runners; every stored command left is a SecureString on the fleet key
//!     but a busy runner's that waits for its rotation (without `--force`);
//! (c) without `--force` no action deletes a busy runner, not even an orphan (a runner whose
//!     secret is lost may still be running a step on an instance that read it earlier), and
//!     no stray termination hits a running instance a busy runner's newest claim names;
//! (d) after the apply, exactly one live request has the current configuration and its
//!     target equals the number of the fleet's runners (none when there are no runners).

use proptest::prelude::*;

use super::tests::{config, desired_for, ARN};
use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::config::Config;
use crate::names::{self, bare_uuid};
use crate::world::{
    Claim, ClaimHolder, FleetPhase, FleetState, InstanceInfo, InstanceState, KeyStatus,
    LaunchTemplateState, Observed, Runner, RunnerParameter, RunnerStatus, SubnetInfo,
};

const STATUSES: [&str; 5] = ["ONLINE", "OFFLINE", "UNREGISTERED", "DISABLED", "UNHEALTHY"];
const INSTANCE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// The key a `CreateKey` action makes in the model.
const NEW_ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/new";

/// Who a claim generation names.
#[derive(Debug, Clone, Copy)]
enum Holder {
    Free,
    /// `i-{k:02}`: one of the world's instances, or (k past the end) one EC2 no longer lists.
    Instance(usize),
    /// An instance id that was never among the fleet's.
    Dead(u8),
}

#[derive(Debug, Clone)]
struct RunnerGen {
    slot: u32,
    status: usize,
    busy: bool,
    labels_ok: bool,
    /// 0: no parameter (orphan); 1, 2: on the fleet key; 3: a plain String.
    param: u8,
    claims: Vec<(u64, Holder)>,
}

#[derive(Debug, Clone)]
struct FleetGen {
    live: bool,
    matching: bool,
    target: i32,
    members: Vec<usize>,
}

#[derive(Debug, Clone)]
struct World {
    runners: Vec<RunnerGen>,
    orphan_params: Vec<u8>,
    foreign_claims: Vec<(u8, u64)>,
    instances: Vec<usize>,
    fleets: Vec<FleetGen>,
    key_usable: bool,
    launch_template: u8,
    other_runners: usize,
}

fn holder() -> impl Strategy<Value = Holder> {
    prop_oneof![
        2 => Just(Holder::Free),
        5 => (0usize..12).prop_map(Holder::Instance),
        1 => (0u8..3).prop_map(Holder::Dead),
    ]
}

fn runner_gen() -> impl Strategy<Value = RunnerGen> {
    (
        1u32..=12,
        0..STATUSES.len(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.85),
        prop_oneof![1 => Just(0u8), 6 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8)],
        prop::collection::btree_map(1u64..8, holder(), 0..=3),
    )
        .prop_map(|(slot, status, busy, labels_ok, param, claims)| RunnerGen {
            slot,
            status,
            busy,
            labels_ok,
            param,
            claims: claims.into_iter().collect(),
        })
}

fn fleet_gen() -> impl Strategy<Value = FleetGen> {
    (
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.7),
        0i32..=10,
        prop::collection::vec(0usize..12, 0..=8),
    )
        .prop_map(|(live, matching, target, members)| FleetGen {
            live,
            matching,
            target,
            members,
        })
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(runner_gen(), 0..=8),
        prop::collection::vec(0u8..4, 0..=2),
        prop::collection::vec((0u8..3, 1u64..5), 0..=2),
        prop::collection::vec(0..INSTANCE_STATES.len(), 0..=10),
        prop::collection::vec(fleet_gen(), 0..=2),
        prop::bool::weighted(0.8),
        0u8..3,
        0usize..5,
    )
        .prop_map(
            |(
                runners,
                orphan_params,
                foreign_claims,
                instances,
                fleets,
                key_usable,
                launch_template,
                other_runners,
            )| World {
                runners,
                orphan_params,
                foreign_claims,
                instances,
                fleets,
                key_usable,
                launch_template,
                other_runners,
            },
        )
}

fn uuid_of(n: u32) -> String {
    format!("{{{n:08x}-0000-4000-8000-000000000000}}")
}

fn instance_id(k: usize) -> String {
    format!("i-{k:02}")
}

fn parameter(uuid: &str, on_key: bool) -> RunnerParameter {
    RunnerParameter {
        name: names::runner_parameter("ci", uuid),
        runner_uuid: bare_uuid(uuid),
        kind: if on_key { "SecureString" } else { "String" }.into(),
        key_id: on_key.then(|| ARN.to_owned()),
        current_format: true,
    }
}

fn claim(uuid: &str, generation: u64, value: &str) -> Claim {
    Claim {
        written_at: None,
        name: names::claim("ci", uuid, generation),
        runner_uuid: bare_uuid(uuid),
        generation,
        holder: ClaimHolder::parse(value),
    }
}

/// The observed world a generated one describes.
fn build(config: &Config, w: &World) -> Observed {
    let d = setup(0).1;
    let mut seen = BTreeSet::new();
    let mut o = Observed {
        scope_name: "workspace acme".into(),
        account_uuid: "{a}".into(),
        key: Some(if w.key_usable {
            KeyStatus::Usable { arn: ARN.into() }
        } else {
            KeyStatus::Absent
        }),
        subnets: vec![
            SubnetInfo {
                id: "subnet-a".into(),
                az: "us-east-1a".into(),
                vpc: "v".into(),
            },
            SubnetInfo {
                id: "subnet-b".into(),
                az: "us-east-1b".into(),
                vpc: "v".into(),
            },
        ],
        ..Default::default()
    };
    for r in &w.runners {
        if !seen.insert(r.slot) {
            continue;
        }
        let uuid = uuid_of(r.slot);
        let mut labels: Vec<String> = config.labels().to_vec();
        if !r.labels_ok {
            labels.pop();
        }
        o.runners.push(Runner {
            status_since: None,
            uuid: uuid.clone(),
            name: names::runner_name("ci", r.slot),
            labels,
            status: RunnerStatus::from_api(STATUSES[r.status]),
            busy: r.busy,
        });
        if r.param > 0 {
            o.parameters.push(parameter(&uuid, r.param < 3));
        }
        for (generation, h) in &r.claims {
            let value = match h {
                Holder::Free => "free".to_owned(),
                Holder::Instance(k) => instance_id(*k),
                Holder::Dead(k) => format!("i-dead{k}"),
            };
            o.claims.push(claim(&uuid, *generation, &value));
        }
    }
    for p in &w.orphan_params {
        let p = parameter(&uuid_of(0xa0 + u32::from(*p)), true);
        if !o.parameters.contains(&p) {
            o.parameters.push(p);
        }
    }
    for (r, generation) in &w.foreign_claims {
        let c = claim(&uuid_of(0xf0 + u32::from(*r)), *generation, "i-00");
        if !o.claims.contains(&c) {
            o.claims.push(c);
        }
    }
    o.instances = w
        .instances
        .iter()
        .enumerate()
        .map(|(k, s)| InstanceInfo {
            template_version: None,
            on_demand: false,
            id: instance_id(k),
            instance_type: "m6i.large".into(),
            az: "us-east-1a".into(),
            state: InstanceState::from_api(INSTANCE_STATES[*s]),
            fleet_request: None,
            launched_at: None,
        })
        .collect();
    o.fleets = w
        .fleets
        .iter()
        .enumerate()
        .map(|(n, f)| {
            let mut members: Vec<String> = f.members.iter().map(|k| instance_id(*k)).collect();
            members.sort();
            members.dedup();
            FleetState {
                role: None,
                strategy: None,
                api: Default::default(),
                on_demand_target: 0,
                fulfilled: None,
                spot_fulfilled: None,
                target_at: None,
                capacity_errors: Vec::new(),
                id: format!("sfr-{n}"),
                state: if f.live {
                    FleetPhase::Active
                } else {
                    FleetPhase::CancelledRunning
                },
                target: f.target,
                fingerprint: Some(if f.matching {
                    d.fleet.fingerprint()
                } else {
                    "0ld".into()
                }),
                instance_ids: members,
            }
        })
        .collect();
    o.launch_template = match w.launch_template {
        0 => None,
        n => Some(LaunchTemplateState {
            id: "lt-1".into(),
            name: "bbfleet-ci".into(),
            latest_version: 1,
            fingerprint: Some(if n == 1 {
                d.launch_template.fingerprint()
            } else {
                "0ld".into()
            }),
        }),
    };
    o.scope_runner_count = o.runners.len() + w.other_runners;
    o
}

/// The world after every action of `plan` took effect, as AWS and Bitbucket would leave it
/// (new runners get fresh uuids and stored commands; requests launch nothing yet).
fn apply_model(observed: &Observed, plan: &Plan, config: &Config, desired: &Desired) -> Observed {
    let mut w = observed.clone();
    let mut fresh = 0x100;
    let terminate = |w: &mut Observed, ids: &[String]| {
        w.instances.retain(|i| !ids.contains(&i.id));
        for f in &mut w.fleets {
            f.instance_ids.retain(|i| !ids.contains(i));
        }
    };
    let key_arn = |w: &Observed| match &w.key {
        Some(KeyStatus::Usable { arn }) => arn.clone(),
        other => panic!("the plan stores commands without a usable key: {other:?}"),
    };
    for a in &plan.actions {
        match a {
            Action::CreateKey { .. } => {
                w.key = Some(KeyStatus::Usable {
                    arn: NEW_ARN.into(),
                })
            }
            Action::DeleteRunner { uuid, .. } => {
                w.runners.retain(|r| &r.uuid != uuid);
                w.scope_runner_count -= 1;
            }
            Action::DeleteOrphanRunner { uuid, instance, .. } => {
                if let Some(id) = instance {
                    terminate(&mut w, std::slice::from_ref(id));
                }
                w.runners.retain(|r| &r.uuid != uuid);
                w.scope_runner_count -= 1;
            }
            Action::DeleteParameter { name, .. } | Action::DeleteOrphanParameter { name, .. } => {
                w.parameters.retain(|p| &p.name != name)
            }
            Action::UpdateRunner { uuid, .. } => {
                for r in w.runners.iter_mut().filter(|r| &r.uuid == uuid) {
                    r.labels = config.labels().to_vec();
                }
            }
            Action::CreateRunner { name } => {
                let uuid = uuid_of(fresh);
                fresh += 1;
                let arn = key_arn(&w);
                w.runners.push(Runner {
                    status_since: Some(w.observed_at),
                    uuid: uuid.clone(),
                    name: name.clone(),
                    labels: config.labels().to_vec(),
                    status: RunnerStatus::Unregistered,
                    busy: false,
                });
                let mut p = parameter(&uuid, true);
                p.key_id = Some(arn);
                w.parameters.push(p);
                w.scope_runner_count += 1;
                // Stored, then offered to the hosts.
                write_free(&mut w, &bare_uuid(&uuid), names::OFFER_GENERATION);
            }
            Action::CreateLaunchTemplate { fingerprint, .. }
            | Action::CreateLaunchTemplateVersion { fingerprint, .. } => {
                w.launch_template = Some(LaunchTemplateState {
                    id: "lt-1".into(),
                    name: desired.launch_template.name.clone(),
                    latest_version: 2,
                    fingerprint: Some(fingerprint.clone()),
                })
            }
            Action::RequestFleet {
                target,
                fingerprint,
                ..
            } => w.fleets.push(FleetState {
                role: None,
                strategy: None,
                api: Default::default(),
                on_demand_target: 0,
                fulfilled: None,
                spot_fulfilled: None,
                target_at: None,
                capacity_errors: Vec::new(),
                id: "sfr-new".into(),
                state: FleetPhase::Active,
                target: *target as i32,
                fingerprint: Some(fingerprint.clone()),
                instance_ids: Vec::new(),
            }),
            Action::SetFleetTarget { id, to, .. } => {
                for f in w.fleets.iter_mut().filter(|f| &f.id == id) {
                    f.target = *to as i32;
                }
            }
            Action::ModifyFleet { id, to, .. } => {
                for f in w.fleets.iter_mut().filter(|f| &f.id == id) {
                    f.target = *to as i32;
                    f.fingerprint = Some(desired.fleet.fingerprint());
                }
            }
            Action::CancelFleet {
                id,
                terminate_instances,
                ..
            } => {
                let ids: Vec<String> = w
                    .fleets
                    .iter()
                    .filter(|f| &f.id == id)
                    .flat_map(|f| f.instance_ids.clone())
                    .collect();
                if *terminate_instances {
                    terminate(&mut w, &ids);
                }
                for f in w.fleets.iter_mut().filter(|f| &f.id == id) {
                    f.state = if *terminate_instances {
                        FleetPhase::CancelledTerminating
                    } else {
                        FleetPhase::CancelledRunning
                    };
                }
            }
            // Nobody hands out steps in the model: a drain always goes on.
            Action::DrainRunner { uuid, .. } => {
                for r in w.runners.iter_mut().filter(|r| &r.uuid == uuid) {
                    r.status = RunnerStatus::Disabled;
                }
            }
            Action::EnableRunner { uuid, .. } => {
                for r in w.runners.iter_mut().filter(|r| &r.uuid == uuid) {
                    r.status = RunnerStatus::Enabled;
                }
            }
            Action::TerminateInstances { ids, .. } | Action::TerminateStrayInstances { ids } => {
                terminate(&mut w, ids)
            }
            Action::DeleteClaims { names, .. } | Action::PruneClaims { names } => {
                w.claims.retain(|c| !names.contains(&c.name))
            }
            Action::ReleaseClaim {
                runner, generation, ..
            } => write_free(&mut w, runner, *generation),
            Action::OfferRunner { runner } => write_free(&mut w, runner, names::OFFER_GENERATION),
            Action::DeleteLaunchTemplate { .. } => w.launch_template = None,
        }
    }
    w
}

/// A claim generation written `free` with Overwrite=false: an existing one stays as it is.
fn write_free(w: &mut Observed, runner: &str, generation: u64) {
    let mut c = claim(runner, generation, "free");
    c.written_at = Some(w.observed_at);
    if !w.claims.iter().any(|x| x.name == c.name) {
        w.claims.push(c);
    }
}

/// The same world with every list in another order.
fn reorder(o: &Observed, rot: usize) -> Observed {
    fn turn<T>(v: &mut [T], rot: usize) {
        v.reverse();
        if !v.is_empty() {
            let n = rot % v.len();
            v.rotate_left(n);
        }
    }
    let mut r = o.clone();
    turn(&mut r.runners, rot);
    turn(&mut r.parameters, rot);
    turn(&mut r.claims, rot);
    turn(&mut r.instances, rot);
    turn(&mut r.fleets, rot);
    for f in &mut r.fleets {
        turn(&mut f.instance_ids, rot);
    }
    r
}

/// The config and the desired state for `n` runners; rendering userdata is the slow part,
/// so it is done once and only the capacity changes per case.
fn setup(n: u32) -> (Config, Desired) {
    static BASE: std::sync::OnceLock<(Config, Desired)> = std::sync::OnceLock::new();
    let (c, d) = BASE.get_or_init(|| {
        let mut c = config();
        // The model launches no replacement host, so a roll-out in batches would stall at
        // its first batch: here every outdated idle host goes in one apply (the batch
        // itself is tested in plan::tests).
        c.rollout.batch = crate::config::RolloutBatch::Percent(100);
        let d = desired_for(&c, 0);
        (c, d)
    });
    let mut d = d.clone();
    d.capacity.desired = n;
    (c.clone(), d)
}

fn runs(config: &Config, desired: &Desired, o: &Observed, force: bool) -> Option<Plan> {
    plan_apply(config, desired, o, PlanOptions { force }).ok()
}

/// Hosts named by runners' newest claims that are up instances of another request than the live
/// `keep` (listed by it or launch-tagged with it). An instance no listing or tag explains
/// counts as `keep`'s, as the planner takes it.
fn held_elsewhere(o: &Observed, keep: Option<&FleetState>) -> usize {
    let claims = newest_claims(o);
    let hosts: BTreeSet<&str> = o
        .runners
        .iter()
        .filter_map(|r| claims.get(bare_uuid(&r.uuid).as_str()))
        .filter_map(|c| c.holder.instance())
        .filter_map(|id| o.instances.iter().find(|i| i.id == id))
        .filter(|i| {
            // Not `keep`'s, so a launch tag or a listing names another request.
            i.is_up()
                && !keep.is_some_and(|k| k.owns(i))
                && (i.fleet_request.is_some()
                    || o.fleets.iter().any(|f| f.instance_ids.contains(&i.id)))
        })
        .map(|i| i.id.as_str())
        .collect();
    // One host runs one runner, also when two runners' claims name it (one is stale).
    hosts.len()
}

/// Runners holding a stored command.
fn healthy(o: &Observed) -> usize {
    o.runners
        .iter()
        .filter(|r| {
            o.parameters
                .iter()
                .any(|p| p.runner_uuid == bare_uuid(&r.uuid))
        })
        .count()
}

mod properties;

/// Found by `applying_the_plan_leaves_nothing_to_do`: two busy orphans' hosts are held
/// strays; once the new request is launching, the host no other request lists stops looking
/// stray, and the second plan must not word the remaining one as a new warning.
#[test]
fn a_held_stray_that_stops_looking_stray_is_no_new_warning() {
    let r = |slot, k| RunnerGen {
        slot,
        status: 0,
        busy: true,
        labels_ok: false,
        param: 0,
        claims: vec![(1, Holder::Instance(k))],
    };
    let w = World {
        runners: vec![r(1, 0), r(2, 7)],
        orphan_params: vec![],
        foreign_claims: vec![],
        instances: vec![0; 8],
        fleets: vec![FleetGen {
            live: false,
            matching: false,
            target: 0,
            members: vec![0],
        }],
        key_usable: false,
        launch_template: 0,
        other_runners: 0,
    };
    let (c, d) = setup(0);
    let o = build(&c, &w);
    let first = runs(&c, &d, &o, false).unwrap();
    let second = runs(&c, &d, &apply_model(&o, &first, &c, &d), false).unwrap();
    assert!(second.is_empty(), "{:?}", second.actions);
    for warning in &second.warnings {
        assert!(first.warnings.contains(warning), "new warning {warning}");
    }
}
