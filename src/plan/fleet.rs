//! Phase 5, the fleet: one live request with the desired configuration, its target the
//! runners after this plan that it must host. A request whose launch template or
//! overrides differ is modified in place (its instances keep running); one whose role or
//! strategy differ is replaced by a new request, and the old one is cancelled without its
//! instances, which the hosts phase replaces batch by batch, idle ones only.

use super::on_demand::Split;
use super::Action;
use crate::config::FleetApiKind;
use crate::world::{FleetSpec, FleetState, Observed};

/// Which live request stays.
#[derive(Clone, Copy)]
pub(super) struct Choice<'a> {
    /// The request that stays (as it is, or modified in place).
    pub keep: Option<&'a FleetState>,
    /// `keep` is moved to the current launch template and overrides by this plan.
    pub modified: bool,
}

impl Choice<'_> {
    /// Whether the instance belongs to the kept request ([`FleetState::owns`]).
    pub fn owns(&self, instance: &crate::world::InstanceInfo) -> bool {
        self.keep.is_some_and(|k| k.owns(instance))
    }
}

/// The fleet phase's hand-off.
pub(super) struct Fleet<'a> {
    /// Request, modify, retarget, cancel.
    pub actions: Vec<Action>,
    /// The live request that stays.
    pub keep: Option<&'a FleetState>,
    /// The target after this plan.
    pub target: u32,
}

/// The live request that stays: the one with the desired configuration, else one of the
/// configured API whose role (Spot Fleet's only) and strategy match
/// (ModifySpotFleetRequest and ModifyFleet change the rest in place: EC2 API Reference,
/// their `LaunchTemplateConfigs`), the one with the most instances first. A request of
/// the other API never stays: switching `spot.fleet_api` is a roll-out.
pub(super) fn choose<'a>(spec: &FleetSpec, observed: &'a Observed) -> Choice<'a> {
    let fingerprint = spec.fingerprint();
    let live = || observed.fleets.iter().filter(|f| f.is_live());
    if let Some(f) = live().find(|f| f.fingerprint.as_deref() == Some(fingerprint.as_str())) {
        return Choice {
            keep: Some(f),
            modified: false,
        };
    }
    let keep = live()
        .filter(|f| {
            f.api == spec.api
                && (spec.api == FleetApiKind::Ec2Fleet
                    || f.role.as_deref() == Some(spec.role.as_str()))
                && f.strategy == Some(spec.strategy)
        })
        .max_by_key(|f| (f.instance_ids.len(), std::cmp::Reverse(&f.id)));
    Choice {
        keep,
        modified: keep.is_some(),
    }
}

/// Plans the fleet request for the split's target: the request stays, is modified, or a
/// new one is made; the other live requests are cancelled, their instances left running.
pub(super) fn plan<'a>(
    spec: &FleetSpec,
    observed: &'a Observed,
    choice: Choice<'a>,
    split: &Split,
) -> Fleet<'a> {
    let mut actions = Vec::new();
    let live: Vec<&FleetState> = observed.fleets.iter().filter(|f| f.is_live()).collect();
    let (target, on_demand) = (split.target.total, split.target.on_demand);
    match choice.keep {
        Some(f) if choice.modified => actions.push(Action::ModifyFleet {
            id: f.id.clone(),
            from: f.target,
            to: target,
            on_demand,
            reason: "launch template, instance types or subnets changed".to_owned(),
        }),
        Some(f) if f.target != target as i32 || f.on_demand_target != on_demand as i32 => actions
            .push(Action::SetFleetTarget {
                id: f.id.clone(),
                from: f.target,
                to: target,
                on_demand_from: f.on_demand_target,
                on_demand,
                split: split.why.clone(),
            }),
        Some(_) => {}
        None if target > 0 => actions.push(Action::RequestFleet {
            target,
            on_demand,
            fingerprint: spec.fingerprint(),
            reason: new_request_reason(spec, &live, &split.why),
        }),
        None => {}
    }
    for f in live
        .iter()
        .filter(|f| choice.keep.map(|k| &k.id) != Some(&f.id))
    {
        actions.push(Action::CancelFleet {
            id: f.id.clone(),
            reason: "replaced by a request with the current configuration; its instances run on and are replaced batch by batch, idle ones only".to_owned(),
            terminate_instances: false,
        });
    }
    Fleet {
        actions,
        keep: choice.keep,
        target,
    }
}

/// Why a new request is made.
fn new_request_reason(spec: &FleetSpec, live: &[&FleetState], split: &str) -> String {
    let why = if live.is_empty() {
        "no fleet request yet".to_owned()
    } else if live.iter().all(|f| f.api != spec.api) {
        format!(
            "spot.fleet_api is now {} (a request cannot move to another API)",
            spec.api.as_str()
        )
    } else {
        "fleet role or allocation strategy changed (a request cannot change them in place)"
            .to_owned()
    };
    if split.is_empty() {
        why
    } else {
        format!("{why}; {split}")
    }
}
