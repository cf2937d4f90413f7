//! `bbfleet status`: runners, instances, claims, the fleet request and the lock holder; with
//! `--output prometheus`, the fleet's metrics (`crate::metrics`), which `autoscale
//! --metrics-file` also writes.

use std::path::Path;
use std::process::ExitCode;

use super::context::{Context, Remote};
use super::CliError;
use crate::autoscale::{AutoscaleState, Load};
use crate::config::Config;
use crate::metrics::FleetMetrics;
use crate::observe::Depth;
use crate::status::StatusView;
use crate::world::Observed;

/// Reads the world and the lock at once and prints them; with `--output prometheus`, reads
/// the world (not the lock) and prints its metrics.
pub(super) async fn run(ctx: &Context<'_>) -> Result<ExitCode, CliError> {
    let config = ctx.config;
    let remote = ctx.connect().await?;
    if ctx.out.prometheus() {
        let observed = remote.observe(config, Depth::Existing).await?;
        ctx.out
            .metrics(&metrics_text(config, &remote, &observed).await)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (observed, lock) = tokio::try_join!(
        async {
            remote
                .observe(config, Depth::Existing)
                .await
                .map_err(CliError::from)
        },
        async {
            crate::lock::holder(&remote.aws.ssm, &config.name)
                .await
                .map_err(CliError::from)
        },
    )?;
    let view = view(config, &remote, &observed);
    let mut doc = serde_json::to_value(&view).map_err(std::io::Error::from)?;
    doc["lock"] = serde_json::to_value(&lock).map_err(std::io::Error::from)?;
    ctx.out.result(&doc, || {
        let mut text = view.to_string();
        if let Some(holder) = &lock {
            text.push_str(&format!("Fleet lock: held by {holder}\n"));
        }
        text
    })?;
    Ok(ExitCode::SUCCESS)
}

fn view(config: &Config, remote: &Remote, observed: &Observed) -> StatusView {
    StatusView::new(
        &config.name,
        remote.fleet_api.label(),
        config.spot.fleet_api,
        observed,
    )
}

/// The metrics of a status observation, as OpenMetrics text: the spot price history is
/// read here, only for running spot hosts whose type `spot.hourly_prices` does not price.
async fn metrics_text(config: &Config, remote: &Remote, observed: &Observed) -> String {
    let prices = crate::metrics::read_prices(config, &remote.aws.ec2, &observed.instances).await;
    FleetMetrics::new(&view(config, remote, observed), observed, &prices).encode()
}

/// `autoscale --metrics-file`: the tick's reads when it writes metrics. The world as
/// `status` reads it and the autoscaler's state, in parallel; `path` replaced with the
/// world's metrics (atomically), and the tick's load taken from the same observation. A
/// failed write is reported on stderr and leaves the previous file: the tick goes on.
pub(super) async fn observe_writing_metrics(
    ctx: &Context<'_>,
    remote: &Remote,
    path: &Path,
) -> Result<(Load, Option<AutoscaleState>), CliError> {
    let config = ctx.config;
    // Boxed: the observation's future is large, and the tick's (on the main thread's
    // stack, with the apply's) must not grow by it.
    Box::pin(async {
        let (observed, state) = tokio::try_join!(
            async {
                remote
                    .observe(config, Depth::Existing)
                    .await
                    .map_err(CliError::from)
            },
            async {
                crate::autoscale::read_state(&remote.aws.ssm, &config.name)
                    .await
                    .map_err(CliError::from)
            },
        )?;
        let text = metrics_text(config, remote, &observed).await;
        if let Err(e) = crate::metrics::write_atomically(path, text.as_bytes()) {
            eprintln!("autoscale: metrics not written to {}: {e}", path.display());
        }
        let load = crate::autoscale::load(config, &observed.runners, &observed.fleets);
        Ok((load, state))
    })
    .await
}
