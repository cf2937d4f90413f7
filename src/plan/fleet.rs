//! Phase 5, the fleet: one live request with the desired configuration, its target the
//! runners after this plan; other live requests are cancelled.

use super::Action;
use crate::world::{FleetSpec, FleetState, Observed};

/// The fleet phase's hand-off.
pub(super) struct Fleet<'a> {
    /// Request, retarget, cancel.
    pub actions: Vec<Action>,
    /// The live request with the desired configuration, kept.
    pub keep: Option<&'a FleetState>,
    /// Live requests this plan cancels.
    pub cancelled: Vec<&'a FleetState>,
    /// The target after this plan.
    pub target: u32,
}

impl Fleet<'_> {
    /// Instances of the requests this plan cancels: they terminate with their request.
    pub fn cancelled_instances(&self) -> Vec<&String> {
        self.cancelled
            .iter()
            .flat_map(|f| f.instance_ids.iter())
            .collect()
    }
}

/// Plans the fleet request for `target` runners.
pub(super) fn plan<'a>(spec: &FleetSpec, observed: &'a Observed, target: u32) -> Fleet<'a> {
    let fingerprint = spec.fingerprint();
    let live: Vec<&FleetState> = observed.fleets.iter().filter(|f| f.is_live()).collect();
    let keep = live
        .iter()
        .copied()
        .find(|f| f.fingerprint.as_deref() == Some(fingerprint.as_str()));
    let mut actions = Vec::new();
    match keep {
        Some(f) if f.target != target as i32 => actions.push(Action::SetFleetTarget {
            id: f.id.clone(),
            from: f.target,
            to: target,
        }),
        Some(_) => {}
        None if target > 0 => actions.push(Action::RequestFleet {
            target,
            fingerprint,
            reason: if live.is_empty() {
                "no fleet request yet".to_owned()
            } else {
                "instance types, subnets, strategy, role or launch template changed".to_owned()
            },
        }),
        None => {}
    }
    let cancelled: Vec<&FleetState> = live
        .into_iter()
        .filter(|f| keep.map(|k| &k.id) != Some(&f.id))
        .collect();
    for f in &cancelled {
        actions.push(Action::CancelFleet {
            id: f.id.clone(),
            reason: "replaced by a request with the current configuration".to_owned(),
        });
    }
    Fleet {
        actions,
        keep,
        cancelled,
        target,
    }
}
