//! `bbfleet status`: runners, instances, claims, the fleet request and the lock holder; with
//! `--output prometheus`, the fleet's metrics (`crate::metrics`), which `autoscale
//! --metrics-file` also writes.

use std::path::Path;
use std::process::ExitCode;

use super::context::{Context, Remote};
use super::CliError;
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

/// `autoscale --metrics-file`: observes the fleet as `status` does and replaces `path` with
/// its metrics (atomically). Nothing without a path. A failure is reported on stderr and
/// leaves the previous file: the tick goes on (its decision does not depend on it).
pub(super) async fn write_metrics_file(ctx: &Context<'_>, remote: &Remote, path: Option<&Path>) {
    let Some(path) = path else {
        return;
    };
    // Boxed: the observation's future is large, and the tick's (on the main thread's
    // stack, with the apply's) must not grow by it.
    let written = Box::pin(async {
        let observed = remote.observe(ctx.config, Depth::Existing).await?;
        let text = metrics_text(ctx.config, remote, &observed).await;
        crate::metrics::write_atomically(path, text.as_bytes())?;
        Ok::<_, CliError>(())
    });
    if let Err(e) = written.await {
        eprintln!("autoscale: metrics not written to {}: {e}", path.display());
    }
}
