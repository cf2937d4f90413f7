//! Phase 4, the launch template: created, or given a new version when its contents changed.

use super::Action;
use crate::world::{LaunchTemplateSpec, Observed};

/// The launch template action, if its newest version is not `spec`.
pub(super) fn plan(spec: &LaunchTemplateSpec, observed: &Observed) -> Option<Action> {
    let fingerprint = spec.fingerprint();
    match &observed.launch_template {
        None => Some(Action::CreateLaunchTemplate {
            name: spec.name.clone(),
            fingerprint,
        }),
        Some(lt) if lt.fingerprint.as_deref() != Some(fingerprint.as_str()) => {
            Some(Action::CreateLaunchTemplateVersion {
                name: lt.name.clone(),
                fingerprint,
            })
        }
        Some(_) => None,
    }
}
