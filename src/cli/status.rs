//! `bbfleet status`: runners, instances, claims, the fleet request and the lock holder.

use std::process::ExitCode;

use super::context::Context;
use super::CliError;
use crate::observe::Depth;
use crate::status::StatusView;

/// Reads the world and the lock at once and prints them.
pub(super) async fn run(ctx: &Context<'_>) -> Result<ExitCode, CliError> {
    let config = ctx.config;
    let remote = ctx.connect().await?;
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
    let view = StatusView::new(
        &config.name,
        remote.fleet_api.label(),
        config.spot.fleet_api,
        &observed,
    );
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
