//! Phase 5, the fleet: one live request with the desired configuration, its target the
//! runners after this plan that it must host. A request whose launch template or
//! overrides differ is modified in place (its instances keep running); one whose role or
//! strategy differ is replaced by a new request, and the old one is cancelled without its
//! instances, which the hosts phase replaces batch by batch, idle ones only.

use super::Action;
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

/// The live request that stays: the one with the desired configuration, else one whose
/// role and strategy match (ModifySpotFleetRequest changes the rest in place: EC2 API
/// Reference, ModifySpotFleetRequest `LaunchTemplateConfigs`), the one with the most
/// instances first.
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
            f.role.as_deref() == Some(spec.role.as_str()) && f.strategy == Some(spec.strategy)
        })
        .max_by_key(|f| (f.instance_ids.len(), std::cmp::Reverse(&f.id)));
    Choice {
        keep,
        modified: keep.is_some(),
    }
}

/// Plans the fleet request for `target` runners: the request stays, is modified, or a
/// new one is made; the other live requests are cancelled, their instances left running.
pub(super) fn plan<'a>(
    spec: &FleetSpec,
    observed: &'a Observed,
    choice: Choice<'a>,
    target: u32,
) -> Fleet<'a> {
    let mut actions = Vec::new();
    let live: Vec<&FleetState> = observed.fleets.iter().filter(|f| f.is_live()).collect();
    match choice.keep {
        Some(f) if choice.modified => actions.push(Action::ModifyFleet {
            id: f.id.clone(),
            from: f.target,
            to: target,
            reason: "launch template, instance types or subnets changed".to_owned(),
        }),
        Some(f) if f.target != target as i32 => actions.push(Action::SetFleetTarget {
            id: f.id.clone(),
            from: f.target,
            to: target,
        }),
        Some(_) => {}
        None if target > 0 => actions.push(Action::RequestFleet {
            target,
            fingerprint: spec.fingerprint(),
            reason: if live.is_empty() {
                "no fleet request yet".to_owned()
            } else {
                "fleet role or allocation strategy changed (a request cannot change them in place)"
                    .to_owned()
            },
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
