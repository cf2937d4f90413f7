//! `bbfleet autoscale`: sizes the fleet by a policy (`policy`: bbfleet's own, or the
//! semantics of Atlassian's runners-autoscaler) at O(1) API calls a tick (one runners
//! listing, one fleet describe, one state read). A change is applied through the normal
//! planner, so it never removes a busy runner. `bbfleet simulate` runs the same policies
//! on its own clock.

mod policy;

pub use policy::{decide, AutoscaleState, Clock, Decision, Load, Policy, SystemClock};

use crate::aws::fleet::FleetApi;
use crate::aws::{ssm, AwsError};
use crate::bitbucket::Bitbucket;
use crate::config::Config;
use crate::names;
use crate::observe::ObserveError;
use crate::world::{Runner, RunnerLoad};

/// One tick's reads, in parallel: the runners listing, the fleet requests (without their
/// instances) and the autoscaler's state. An unreadable state is logged and ignored.
pub async fn observe(
    config: &Config,
    bitbucket: &Bitbucket,
    fleet_api: &dyn FleetApi,
    ssm_client: &aws_sdk_ssm::Client,
) -> Result<(Load, Option<AutoscaleState>), ObserveError> {
    let fleet = config.name.as_str();
    let state_name = names::autoscale_state(fleet);
    let (runners, fleets, state) = tokio::try_join!(
        async {
            Ok::<_, ObserveError>(
                bitbucket
                    .list_runners(&crate::observe::scope(config))
                    .await?,
            )
        },
        async { Ok(fleet_api.list_targets(fleet).await?) },
        async { Ok(ssm::get_string(ssm_client, &state_name).await?) },
    )?;
    let ours: Vec<Runner> = runners
        .iter()
        .filter(|r| names::runner_slot(fleet, &r.name).is_some())
        .map(Runner::from)
        .collect();
    let load = RunnerLoad::of(&ours);
    let current = fleets
        .iter()
        .find(|f| f.is_live())
        .map_or(load.total, |f| f.target.max(0) as u32);
    let last = state.and_then(|s| match serde_json::from_str(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(parameter = %state_name, error = %e, "ignoring an unreadable autoscale state");
            None
        }
    });
    let load = Load {
        current,
        online: load.online,
        busy: load.busy,
    };
    Ok((load, last))
}

/// Remembers a change (the cooldown starts now).
pub async fn save_state(
    ssm_client: &aws_sdk_ssm::Client,
    fleet: &str,
    state: &AutoscaleState,
) -> Result<(), AwsError> {
    let value = serde_json::to_string(state).unwrap_or_default();
    ssm::put_string(ssm_client, &names::autoscale_state(fleet), &value).await
}
