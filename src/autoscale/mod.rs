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
use crate::world::{FleetState, Runner, RunnerLoad};

/// One tick's reads, in parallel: the runners listing, the fleet requests (without their
/// instances) and the autoscaler's state.
pub async fn observe(
    config: &Config,
    bitbucket: &Bitbucket,
    fleet_api: &dyn FleetApi,
    ssm_client: &aws_sdk_ssm::Client,
) -> Result<(Load, Option<AutoscaleState>), ObserveError> {
    let fleet = config.name.as_str();
    let (runners, fleets, state) = tokio::try_join!(
        async {
            Ok::<_, ObserveError>(
                bitbucket
                    .list_runners(&crate::observe::scope(config))
                    .await?,
            )
        },
        async { Ok(fleet_api.list_targets(fleet).await?) },
        async { Ok(read_state(ssm_client, fleet).await?) },
    )?;
    let ours: Vec<Runner> = runners
        .iter()
        .filter(|r| names::runner_slot(fleet, &r.name).is_some())
        .map(Runner::from)
        .collect();
    Ok((load(config, &ours, &fleets), state))
}

/// What a tick sees in the fleet's runners and requests: the target of the live request
/// of the configured fleet API (the lowest id, should there be two), else the runners'
/// count, and the ONLINE and busy runners.
pub fn load(config: &Config, runners: &[Runner], fleets: &[FleetState]) -> Load {
    let load = RunnerLoad::of(runners);
    let current = fleets
        .iter()
        .filter(|f| f.api == config.spot.fleet_api && f.is_live())
        .min_by(|a, b| a.id.cmp(&b.id))
        .map_or(load.total, |f| f.target.max(0) as u32);
    Load {
        current,
        online: load.online,
        busy: load.busy,
    }
}

/// The autoscaler's memory; an unreadable one is logged and ignored.
pub async fn read_state(
    ssm_client: &aws_sdk_ssm::Client,
    fleet: &str,
) -> Result<Option<AutoscaleState>, AwsError> {
    let name = names::autoscale_state(fleet);
    let state = ssm::get_string(ssm_client, &name).await?;
    Ok(state.and_then(|s| match serde_json::from_str(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(parameter = %name, error = %e, "ignoring an unreadable autoscale state");
            None
        }
    }))
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
