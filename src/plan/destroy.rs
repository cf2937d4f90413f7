//! `destroy`: everything of the fleet goes but the key.

use super::{Action, Plan};
use crate::config::Config;
use crate::world::Observed;

/// Plans `destroy`.
pub fn plan_destroy(config: &Config, observed: &Observed) -> Plan {
    let mut actions: Vec<Action> = observed
        .fleets
        .iter()
        .map(|f| Action::CancelFleet {
            id: f.id.clone(),
            reason: "destroy (instances terminated)".to_owned(),
            terminate_instances: true,
        })
        .collect();
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
    actions.extend(observed.runners.iter().map(|r| Action::DeleteRunner {
        uuid: r.uuid.clone(),
        name: r.name.clone(),
        reason: "destroy".to_owned(),
    }));
    actions.extend(observed.parameters.iter().map(|p| Action::DeleteParameter {
        name: p.name.clone(),
        reason: "destroy".to_owned(),
    }));
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
        notes: Vec::new(),
    }
}
