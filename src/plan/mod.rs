//! The planner: a pure function from (config, desired state, observed world) to an
//! ordered list of actions. Printing a plan and executing it use the same value.

mod render;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::aws::ec2::{InstanceInfo, LaunchTemplateSpec};
use crate::aws::fleet::{FleetSpec, FleetState};
use crate::aws::kms::KeyStatus;
use crate::config::{Capacity, Config, BITBUCKET_RUNNER_LIMIT};
use crate::names::{self, bare_uuid};
use crate::observe::Observed;

pub use render::{PlanView, Summary};

/// What the configuration asks for, with everything resolved (AMI, userdata, capacity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// How many runners, and why.
    pub capacity: Capacity,
    /// The launch template's newest version.
    pub launch_template: LaunchTemplateSpec,
    /// The fleet request.
    pub fleet: FleetSpec,
}

/// One change to the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the customer key and its alias.
    CreateKey {
        /// Alias.
        alias: String,
    },
    /// Re-encrypt a stored command under the fleet key.
    RekeyParameter {
        /// Parameter name.
        name: String,
        /// Key it is under now.
        from_key: Option<String>,
    },
    /// Delete a runner.
    DeleteRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Drift: delete a runner of the fleet whose command is not stored (its secret is lost),
    /// after terminating the instance that holds it, so the fleet replaces that instance.
    DeleteOrphanRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// The instance its newest claim names, if that instance exists.
        instance: Option<String>,
    },
    /// Drift: delete a stored command that belongs to no runner of the fleet.
    DeleteOrphanParameter {
        /// Parameter name.
        name: String,
        /// The runner uuid it names (bare).
        runner_uuid: String,
    },
    /// Delete stored commands.
    DeleteParameter {
        /// Parameter name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Set a runner's labels to the configured ones.
    UpdateRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// Labels now.
        from: Vec<String>,
    },
    /// Register a runner, then store its command at once.
    CreateRunner {
        /// `bbfleet-{fleet}-{n}`.
        name: String,
    },
    /// Create the launch template.
    CreateLaunchTemplate {
        /// Name.
        name: String,
        /// Fingerprint of its contents.
        fingerprint: String,
    },
    /// Add a launch template version.
    CreateLaunchTemplateVersion {
        /// Name.
        name: String,
        /// Fingerprint of the new contents.
        fingerprint: String,
    },
    /// Request a fleet.
    RequestFleet {
        /// Target capacity.
        target: u32,
        /// Fingerprint of the configuration.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// Change a fleet's target capacity.
    SetFleetTarget {
        /// Request id.
        id: String,
        /// Target now.
        from: i32,
        /// New target.
        to: u32,
    },
    /// Cancel a fleet request and terminate its instances.
    CancelFleet {
        /// Request id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Terminate instances.
    TerminateInstances {
        /// Instance ids.
        ids: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Delete claim generations.
    DeleteClaims {
        /// Parameter names.
        names: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Drift: write the next claim generation as `free` (never overwriting), because the
    /// newest claim names an instance that is not running.
    ReleaseClaim {
        /// Runner uuid, bare.
        runner: String,
        /// The generation to write (newest observed + 1).
        generation: u64,
        /// The instance the newest claim names.
        instance: String,
    },
    /// Garbage: delete superseded claim generations of kept runners (never the newest).
    PruneClaims {
        /// Parameter names.
        names: Vec<String>,
    },
    /// Drift: terminate instances tagged with the fleet that no live fleet request owns.
    TerminateStrayInstances {
        /// Instance ids.
        ids: Vec<String>,
    },
    /// Delete the launch template.
    DeleteLaunchTemplate {
        /// Name.
        name: String,
    },
}

/// Create, update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `+`
    Create,
    /// `~`
    Update,
    /// `-`
    Delete,
}

impl Action {
    /// Create, update or delete.
    pub fn op(&self) -> Op {
        match self {
            Action::CreateKey { .. }
            | Action::CreateRunner { .. }
            | Action::CreateLaunchTemplate { .. }
            | Action::RequestFleet { .. } => Op::Create,
            Action::RekeyParameter { .. }
            | Action::UpdateRunner { .. }
            | Action::CreateLaunchTemplateVersion { .. }
            | Action::SetFleetTarget { .. }
            | Action::ReleaseClaim { .. } => Op::Update,
            Action::DeleteRunner { .. }
            | Action::DeleteOrphanRunner { .. }
            | Action::DeleteOrphanParameter { .. }
            | Action::PruneClaims { .. }
            | Action::TerminateStrayInstances { .. }
            | Action::DeleteParameter { .. }
            | Action::CancelFleet { .. }
            | Action::TerminateInstances { .. }
            | Action::DeleteClaims { .. }
            | Action::DeleteLaunchTemplate { .. } => Op::Delete,
        }
    }
}

/// An ordered set of actions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Fleet name.
    pub fleet: String,
    /// Capacity the plan aims at (`None` for destroy).
    pub capacity: Option<Capacity>,
    /// In execution order.
    pub actions: Vec<Action>,
    /// Things the user should know (e.g. scale-down stopped short of busy runners).
    pub warnings: Vec<String>,
}

impl Plan {
    /// No action.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The world cannot be brought to the configuration without the user's help.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The configured key exists but must not be used, or is missing and cannot be created.
    #[error("{0}")]
    Key(String),
    /// Bitbucket's runner limit would be exceeded.
    #[error("{0}")]
    RunnerLimit(String),
    /// The subnets do not give the fleet enough zones.
    #[error("{0}")]
    Zones(String),
    /// Two subnets in one availability zone: a Spot Fleet takes one subnet per zone.
    #[error("spot.subnets[{index}]: {subnet} is in {az} like spot.subnets[{first}]; a fleet takes one subnet per availability zone")]
    SubnetSameZone {
        /// Index of the later subnet in `spot.subnets`.
        index: usize,
        /// Its id.
        subnet: String,
        /// The zone both are in.
        az: String,
        /// Index of the earlier subnet in that zone.
        first: usize,
    },
    /// A subnet in another VPC than the first subnet's.
    #[error("spot.subnets[{index}]: {subnet} is in {vpc} but spot.subnets[{first}] is in {first_vpc}; a fleet's subnets must all be in one VPC")]
    SubnetOtherVpc {
        /// Index in `spot.subnets`.
        index: usize,
        /// Its id.
        subnet: String,
        /// Its VPC.
        vpc: String,
        /// Index of the first subnet.
        first: usize,
        /// The first subnet's VPC.
        first_vpc: String,
    },
    /// A security group of another VPC than the subnets'.
    #[error("instance.security_groups[{index}]: {group} is in {vpc} but the subnets are in {subnets_vpc}; the instances can only use security groups of their subnets' VPC")]
    SecurityGroupOtherVpc {
        /// Index in `instance.security_groups`.
        index: usize,
        /// Its id.
        group: String,
        /// Its VPC.
        vpc: String,
        /// The subnets' VPC.
        subnets_vpc: String,
    },
}

/// Options that change what the planner may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Allow removing busy runners.
    pub force: bool,
}

/// Where a runner stands, for choosing whom to remove first.
fn removal_rank(status: &str, claimed: bool) -> u8 {
    match (claimed, status) {
        (false, _) => 0,
        (true, "ONLINE") => 2,
        (true, _) => 1,
    }
}

/// Plans `apply`: bring the world to `desired`.
pub fn plan_apply(
    config: &Config,
    desired: &Desired,
    observed: &Observed,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    let fleet = &config.name;
    let mut actions = Vec::new();
    let mut warnings = Vec::new();
    // The observer sorts its lists, but the plan must not depend on that: equal worlds,
    // listed in any order, give equal plans (a property test checks it).
    let observed = &canonical(observed);

    // 1. The key.
    let key_arn = match &observed.key {
        Some(KeyStatus::Usable { arn }) => Some(arn.clone()),
        Some(KeyStatus::Unusable { reason }) => return Err(PlanError::Key(reason.clone())),
        Some(KeyStatus::Absent) | None => match config.kms.creatable_alias() {
            Some(alias) => {
                actions.push(Action::CreateKey { alias: alias.to_owned() });
                None
            }
            None => {
                return Err(PlanError::Key(format!(
                    "kms.key {} does not exist; give an existing customer managed key, or an alias (alias/NAME) for bbfleet to create",
                    config.kms.key
                )))
            }
        },
    };

    // 2. Zones: one subnet per zone, all in one VPC with the security groups, and a
    // diversified fleet needs two zones.
    zones::check_network(config, observed)?;
    let zones: BTreeSet<&str> = observed.subnets.iter().map(|s| s.az.as_str()).collect();
    if zones.len() < 2 {
        return Err(PlanError::Zones(format!(
            "spot.subnets: the subnets are in {} availability zone(s) ({}); list subnets in at least 2 zones",
            zones.len(),
            zones.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }

    // 3. Runners and their stored commands.
    let runners: BTreeMap<String, &crate::bitbucket::Runner> = observed
        .runners
        .iter()
        .map(|r| (bare_uuid(&r.uuid), r))
        .collect();
    let params: BTreeMap<&str, &crate::aws::ssm::RunnerParameter> = observed
        .parameters
        .iter()
        .map(|p| (p.runner_uuid.as_str(), p))
        .collect();
    let mut deleted_runners = BTreeSet::new();
    for p in &observed.parameters {
        if !runners.contains_key(&p.runner_uuid) {
            actions.push(Action::DeleteOrphanParameter {
                name: p.name.clone(),
                runner_uuid: p.runner_uuid.clone(),
            });
        } else if let Some(arn) = &key_arn {
            let on_key = p.kind == "SecureString"
                && p.key_id
                    .as_deref()
                    .is_some_and(|k| key_matches(k, arn, &config.kms.key));
            if !on_key {
                actions.push(Action::RekeyParameter {
                    name: p.name.clone(),
                    from_key: p.key_id.clone(),
                });
            }
        } else {
            // The key is created by this plan: every existing command moves to it.
            actions.push(Action::RekeyParameter {
                name: p.name.clone(),
                from_key: p.key_id.clone(),
            });
        }
    }
    let claims = newest_claims(observed);
    let live_instances: BTreeSet<&str> = observed.instances.iter().map(|i| i.id.as_str()).collect();
    let claimed_by = |uuid: &str| -> Option<String> {
        claims
            .get(uuid)
            .filter(|c| c.value != "free" && live_instances.contains(c.value.as_str()))
            .map(|c| c.value.clone())
    };
    let mut busy_orphans = Vec::new();
    let mut orphan_instances: Vec<String> = Vec::new();
    for (uuid, r) in &runners {
        if !params.contains_key(uuid.as_str()) {
            // Its secret is lost, so no instance of ours can start it again; but one that
            // read it earlier may be running a step on it, and deleting the runner would
            // kill that step. Busy orphans wait like busy surplus runners (or --force).
            if r.is_busy() && !options.force {
                busy_orphans.push(*r);
                continue;
            }
            deleted_runners.insert(uuid.clone());
            // The instance running it can never run another runner (it claimed this one).
            let instance = claimed_by(uuid).filter(|i| !orphan_instances.contains(i));
            orphan_instances.extend(instance.clone());
            actions.push(Action::DeleteOrphanRunner {
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                instance,
            });
        }
    }
    if !busy_orphans.is_empty() {
        warnings.push(format!(
            "{} stored command (the secret is lost) but busy with a pipeline step: deleted when idle (run again later, or pass --force); a new runner replaces it now",
            if busy_orphans.len() == 1 {
                format!("runner {} has no", busy_orphans[0].name)
            } else {
                let names: Vec<&str> = busy_orphans.iter().map(|r| r.name.as_str()).collect();
                format!("runners {} have no", names.join(", "))
            }
        ));
    }
    let mut healthy: Vec<&crate::bitbucket::Runner> = runners
        .iter()
        .filter(|(u, _)| params.contains_key(u.as_str()))
        .map(|(_, r)| *r)
        .collect();
    healthy.sort_by_key(|r| names::runner_slot(fleet, &r.name));
    for r in &healthy {
        if !same_labels(&r.labels, config.labels()) {
            actions.push(Action::UpdateRunner {
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                from: r.labels.clone(),
            });
        }
    }

    let desired_n = desired.capacity.desired as usize;
    let mut creates = 0;
    let mut victims = Vec::new();
    if desired_n > healthy.len() {
        // Busy orphans keep their names until they are deleted.
        let used: BTreeSet<u32> = healthy
            .iter()
            .chain(&busy_orphans)
            .filter_map(|r| names::runner_slot(fleet, &r.name))
            .collect();
        let mut slot = 1;
        while healthy.len() + creates < desired_n {
            if !used.contains(&slot) {
                actions.push(Action::CreateRunner {
                    name: names::runner_name(fleet, slot),
                });
                creates += 1;
            }
            slot += 1;
        }
    } else if desired_n < healthy.len() {
        let mut candidates: Vec<&crate::bitbucket::Runner> = healthy
            .iter()
            .copied()
            .filter(|r| options.force || !r.is_busy())
            .collect();
        // Unclaimed first, then not online, then online and idle; newest slot first.
        candidates.sort_by_key(|r| {
            let claimed = claimed_by(&bare_uuid(&r.uuid)).is_some();
            (
                removal_rank(r.status(), claimed),
                r.is_busy(),
                std::cmp::Reverse(names::runner_slot(fleet, &r.name)),
            )
        });
        let wanted = healthy.len() - desired_n;
        victims = candidates.into_iter().take(wanted).collect();
        if victims.len() < wanted {
            warnings.push(format!(
                "scale-down stops at {} runners: {} of the runners to remove are busy with a pipeline step (run again when they are idle, or pass --force)",
                healthy.len() - victims.len(),
                wanted - victims.len()
            ));
        }
    }

    // Bitbucket's limit counts every runner in the scope, bbfleet's or not.
    let after = observed.scope_runner_count - deleted_runners.len() - victims.len() + creates;
    if creates > 0 && after > BITBUCKET_RUNNER_LIMIT as usize {
        return Err(PlanError::RunnerLimit(format!(
            "{} would hold {after} runners ({} today, {} of them not this fleet's); Bitbucket allows {BITBUCKET_RUNNER_LIMIT}",
            observed.scope_name,
            observed.scope_runner_count,
            observed.scope_runner_count - runners.len()
        )));
    }

    // 4. Launch template.
    let lt_fingerprint = desired.launch_template.fingerprint();
    match &observed.launch_template {
        None => actions.push(Action::CreateLaunchTemplate {
            name: desired.launch_template.name.clone(),
            fingerprint: lt_fingerprint,
        }),
        Some(lt) if lt.fingerprint.as_deref() != Some(lt_fingerprint.as_str()) => {
            actions.push(Action::CreateLaunchTemplateVersion {
                name: lt.name.clone(),
                fingerprint: lt_fingerprint,
            })
        }
        Some(_) => {}
    }

    // 5. Fleet: one live request with the desired configuration, target = runners
    // (a busy orphan still occupies its instance).
    let target = (healthy.len() + creates - victims.len() + busy_orphans.len()) as u32;
    let fingerprint = desired.fleet.fingerprint();
    let live: Vec<_> = observed.fleets.iter().filter(|f| f.is_live()).collect();
    let keep = live
        .iter()
        .find(|f| f.fingerprint.as_deref() == Some(fingerprint.as_str()));
    match keep {
        Some(f) if f.target != target as i32 => actions.push(Action::SetFleetTarget {
            id: f.id.clone(),
            from: f.target,
            to: target,
        }),
        Some(_) => {}
        None if target > 0 => actions.push(Action::RequestFleet {
            target,
            fingerprint: fingerprint.clone(),
            reason: if live.is_empty() {
                "no fleet request yet".to_owned()
            } else {
                "instance types, subnets, strategy, role or launch template changed".to_owned()
            },
        }),
        None => {}
    }
    for f in &live {
        if keep.map(|k| &k.id) != Some(&f.id) {
            actions.push(Action::CancelFleet {
                id: f.id.clone(),
                reason: "replaced by a request with the current configuration".to_owned(),
            });
        }
    }

    // 6. Scale-down: terminate exactly the instances of the removed runners, then delete them.
    let mut victim_instances: Vec<String> = victims
        .iter()
        .filter_map(|r| claimed_by(&bare_uuid(&r.uuid)))
        .filter(|i| !orphan_instances.contains(i))
        .collect();
    victim_instances.sort();
    victim_instances.dedup();
    if let Some(f) = keep {
        // The target drops with noTermination: surplus instances holding no kept runner go
        // too. Checked at every apply, not only when the target drops: a run stopped between
        // lowering the target and terminating leaves the fleet above target for good.
        let kept_claims: BTreeSet<String> = healthy
            .iter()
            .filter(|r| !victims.iter().any(|v| v.uuid == r.uuid))
            .chain(&busy_orphans)
            .filter_map(|r| claimed_by(&bare_uuid(&r.uuid)))
            .collect();
        let alive: Vec<&String> = f
            .instance_ids
            .iter()
            .filter(|i| live_instances.contains(i.as_str()))
            .collect();
        let ended = |i: &String| victim_instances.contains(i) || orphan_instances.contains(i);
        let remaining = alive.iter().filter(|i| !ended(i)).count();
        let surplus = remaining.saturating_sub(target as usize);
        let spare: Vec<String> = alive
            .into_iter()
            .filter(|i| !kept_claims.contains(*i) && !ended(i))
            .take(surplus)
            .cloned()
            .collect();
        victim_instances.extend(spare);
    }
    if !victim_instances.is_empty() {
        actions.push(Action::TerminateInstances {
            ids: victim_instances.clone(),
            reason: "scale-down: they hold removed runners or no runner at all".to_owned(),
        });
    }
    for r in &victims {
        deleted_runners.insert(bare_uuid(&r.uuid));
        actions.push(Action::DeleteRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            reason: format!(
                "scale-down to {target} ({}, {})",
                r.status(),
                if r.is_busy() { "busy" } else { "idle" }
            ),
        });
    }
    for r in &victims {
        actions.push(Action::DeleteParameter {
            name: names::runner_parameter(fleet, &r.uuid),
            reason: format!("its runner {} is removed", r.name),
        });
    }

    // 7. Garbage and drift: claims of runners that are gone or going; instances outside
    // any live fleet; claims naming instances that do not run; superseded claims.
    let keep_claims = |uuid: &str| runners.contains_key(uuid) && !deleted_runners.contains(uuid);
    let stale: Vec<String> = observed
        .claims
        .iter()
        .filter(|c| !keep_claims(&c.runner_uuid))
        .map(|c| c.name.clone())
        .collect();
    if !stale.is_empty() {
        actions.push(Action::DeleteClaims {
            names: stale,
            reason: "their runners no longer exist".to_owned(),
        });
    }
    // Instances of live requests replaced above terminate with their request.
    let cancelled_now: Vec<&String> = live
        .iter()
        .filter(|f| keep.map(|k| &k.id) != Some(&f.id))
        .flat_map(|f| f.instance_ids.iter())
        .collect();
    let ended: Vec<String> = victim_instances
        .iter()
        .chain(&orphan_instances)
        .cloned()
        .collect();
    let running = |id: &str| {
        observed
            .instances
            .iter()
            .any(|i| i.id == id && matches!(i.state.as_str(), "pending" | "running"))
    };
    let mut strays = stray_instances(
        observed,
        keep.copied(),
        target,
        config.spot.stray_grace_seconds,
        &cancelled_now,
        &ended,
    );
    if !options.force {
        // A running stray that hosts a busy runner is running a pipeline step: it waits,
        // like busy surplus runners do. (A stopped one runs nothing: its claim is released
        // below, so holding it would only defer its termination to the next plan.)
        let busy_hosts: BTreeSet<String> = runners
            .iter()
            .filter(|(u, r)| r.is_busy() && !deleted_runners.contains(*u))
            .filter_map(|(u, _)| claimed_by(u))
            .filter(|i| running(i))
            .collect();
        let held: Vec<String> = strays
            .iter()
            .filter(|i| busy_hosts.contains(*i))
            .cloned()
            .collect();
        if !held.is_empty() {
            strays.retain(|i| !busy_hosts.contains(i));
            warnings.push(format!(
                "stray instance(s) {} host a runner busy with a pipeline step: terminated when it is idle (run again later, or pass --force)",
                held.join(", ")
            ));
        }
    }
    if !strays.is_empty() {
        actions.push(Action::TerminateStrayInstances {
            ids: strays.clone(),
        });
    }
    // A claim is live while its instance is pending or running and this plan does not
    // end it; otherwise the runner's next generation is written `free`, after the
    // terminations above, so the instance cannot still be using it.
    let alive = |id: &str| {
        running(id)
            && !ended.iter().any(|v| v == id)
            && !strays.iter().any(|s| s == id)
            && !cancelled_now.iter().any(|c| *c == id)
    };
    let mut superseded = Vec::new();
    for r in healthy
        .iter()
        .filter(|r| !victims.iter().any(|v| v.uuid == r.uuid))
    {
        let uuid = bare_uuid(&r.uuid);
        let Some(newest) = claims.get(uuid.as_str()) else {
            continue;
        };
        // The generation this plan writes `free`, if the claimant is gone.
        let released = (newest.value != "free" && !alive(&newest.value))
            .then(|| newest.generation.checked_add(1))
            .flatten();
        if let Some(generation) = released {
            actions.push(Action::ReleaseClaim {
                runner: uuid.clone(),
                generation,
                instance: newest.value.clone(),
            });
        }
        // Older generations never matter again (claimants read only the newest); the
        // newest is kept unless this plan writes a newer one, so no name is re-created.
        superseded.extend(
            observed
                .claims
                .iter()
                .filter(|c| c.runner_uuid == uuid)
                .filter(|c| {
                    c.generation < newest.generation
                        || (released.is_some() && c.generation == newest.generation)
                })
                .map(|c| c.name.clone()),
        );
    }
    if !superseded.is_empty() {
        actions.push(Action::PruneClaims { names: superseded });
    }

    Ok(Plan {
        fleet: fleet.clone(),
        capacity: Some(desired.capacity.clone()),
        actions,
        warnings,
    })
}

/// Plans `destroy`: everything of the fleet goes but the key.
pub fn plan_destroy(config: &Config, observed: &Observed) -> Plan {
    let mut actions = Vec::new();
    for f in &observed.fleets {
        actions.push(Action::CancelFleet {
            id: f.id.clone(),
            reason: "destroy (instances terminated)".to_owned(),
        });
    }
    // Instances of the cancelled requests terminate with them; the others are terminated here.
    let instances: Vec<String> = observed
        .instances
        .iter()
        .filter(|i| {
            !observed
                .fleets
                .iter()
                .any(|f| f.instance_ids.contains(&i.id))
        })
        .map(|i| i.id.clone())
        .collect();
    if !instances.is_empty() {
        actions.push(Action::TerminateInstances {
            ids: instances,
            reason: "destroy".to_owned(),
        });
    }
    for r in &observed.runners {
        actions.push(Action::DeleteRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            reason: "destroy".to_owned(),
        });
    }
    for p in &observed.parameters {
        actions.push(Action::DeleteParameter {
            name: p.name.clone(),
            reason: "destroy".to_owned(),
        });
    }
    if !observed.claims.is_empty() {
        actions.push(Action::DeleteClaims {
            names: observed.claims.iter().map(|c| c.name.clone()).collect(),
            reason: "destroy".to_owned(),
        });
    }
    if let Some(name) = &observed.autoscale_state {
        actions.push(Action::DeleteParameter {
            name: name.clone(),
            reason: "destroy (autoscaler state)".to_owned(),
        });
    }
    if let Some(lt) = &observed.launch_template {
        actions.push(Action::DeleteLaunchTemplate {
            name: lt.name.clone(),
        });
    }
    Plan {
        fleet: config.name.clone(),
        capacity: None,
        actions,
        warnings: Vec::new(),
    }
}

/// Fleet-tagged instances that no live request owns, besides those this plan already
/// ends (`already`, and the instances of requests it cancels). An instance belongs to the
/// kept request if the request lists it or if its `aws:ec2spot:fleet-request-id` launch
/// tag names it: DescribeSpotFleetInstances "might be out of date", the tag is set at
/// launch. An instance listed by, or tagged with, another request is a leftover. One that
/// neither a listing nor its tag explains is a leftover once it is older than the grace,
/// and while the kept request lists fewer instances than its target it may be that
/// request's launch in flight, so it waits.
fn stray_instances(
    observed: &Observed,
    keep: Option<&FleetState>,
    target: u32,
    grace_seconds: u64,
    cancelled_now: &[&String],
    already: &[String],
) -> Vec<String> {
    let exists = |id: &String| observed.instances.iter().any(|i| &i.id == id);
    // In flight now (fewer listed than the target) and after this plan (fewer left than
    // the new target): an instance flagged now would otherwise be flagged by the next plan.
    let launching = keep.is_some_and(|k| {
        let listed = k.instance_ids.iter().filter(|i| exists(i));
        (listed.clone().count() as i64) < i64::from(k.target)
            && listed.filter(|i| !already.contains(i)).count() < target as usize
    });
    let owned = |i: &InstanceInfo| {
        keep.is_some_and(|k| {
            k.instance_ids.contains(&i.id) || i.fleet_request.as_deref() == Some(k.id.as_str())
        })
    };
    let listed_by_other = |id: &String| observed.fleets.iter().any(|f| f.instance_ids.contains(id));
    let grace = jiff::SignedDuration::from_secs(i64::try_from(grace_seconds).unwrap_or(i64::MAX));
    // Without a launch time (never on EC2's answers) an instance counts as old.
    let young = |i: &InstanceInfo| {
        i.launched_at
            .is_some_and(|t| observed.observed_at.duration_since(t) < grace)
    };
    observed
        .instances
        .iter()
        .filter(|i| !owned(i))
        .filter(|i| !cancelled_now.contains(&&i.id) && !already.contains(&i.id))
        .filter(|i| i.fleet_request.is_some() || listed_by_other(&i.id) || !(launching || young(i)))
        .map(|i| i.id.clone())
        .collect()
}

/// The observed world with every list in one order, so the plan is independent of the
/// order the observer happened to produce.
fn canonical(observed: &Observed) -> Observed {
    let mut o = observed.clone();
    o.runners
        .sort_by(|a, b| (&a.name, &a.uuid).cmp(&(&b.name, &b.uuid)));
    o.parameters.sort_by(|a, b| a.name.cmp(&b.name));
    o.claims.sort_by(|a, b| {
        (&a.runner_uuid, a.generation, &a.name).cmp(&(&b.runner_uuid, b.generation, &b.name))
    });
    o.fleets.sort_by(|a, b| a.id.cmp(&b.id));
    for f in &mut o.fleets {
        f.instance_ids.sort();
    }
    o.instances.sort_by(|a, b| a.id.cmp(&b.id));
    o.subnets.sort_by(|a, b| a.id.cmp(&b.id));
    o
}

/// The newest claim generation of each runner.
pub fn newest_claims(observed: &Observed) -> BTreeMap<&str, &crate::aws::ssm::Claim> {
    let mut newest: BTreeMap<&str, &crate::aws::ssm::Claim> = BTreeMap::new();
    for c in &observed.claims {
        let slot = newest.entry(c.runner_uuid.as_str()).or_insert(c);
        if c.generation > slot.generation {
            *slot = c;
        }
    }
    newest
}

fn same_labels(a: &[String], b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.iter().collect();
    let b: BTreeSet<&String> = b.iter().collect();
    a == b
}

/// SSM reports the key as it was given: the ARN, the key id, or the alias.
fn key_matches(reported: &str, arn: &str, configured: &str) -> bool {
    reported == arn || reported == configured || arn.ends_with(&format!("/{reported}"))
}

/// The desired state: resolved capacity, the launch template's contents, the fleet request.
pub fn desired(
    config: &Config,
    region: &str,
    image: &crate::aws::ec2::ImageInfo,
    capacity: Capacity,
) -> Result<Desired, crate::userdata::UserdataError> {
    let userdata = crate::userdata::render(
        config.instance.os,
        &crate::userdata::UserdataVars::from_config(config, region),
    )?;
    let launch_template = LaunchTemplateSpec {
        name: names::launch_template(&config.name),
        fleet: config.name.clone(),
        image_id: image.id.clone(),
        root_device: image.root_device.clone(),
        root_volume_gb: config.instance.root_volume_gb,
        instance_profile: config.instance.instance_profile.clone(),
        security_groups: config.instance.security_groups.clone(),
        userdata,
    };
    let fleet = FleetSpec {
        fleet: config.name.clone(),
        role: config.spot.fleet_role.clone(),
        strategy: config.spot.allocation_strategy,
        instance_types: config.spot.instance_types.clone(),
        subnets: config.spot.subnets.clone(),
        launch_template_fingerprint: launch_template.fingerprint(),
    };
    Ok(Desired {
        capacity,
        launch_template,
        fleet,
    })
}

mod zones;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
