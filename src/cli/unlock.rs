//! `bbfleet unlock [--force]`: shows the fleet lock's holder; with --force writes a
//! `released` generation (for a run that is gone).

use std::process::ExitCode;

use serde_json::json;

use super::context::Context;
use super::CliError;
use crate::aws::Aws;

/// `bbfleet unlock`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct UnlockArgs {
    /// Release the lock whoever holds it.
    #[arg(long)]
    force: bool,
}

impl UnlockArgs {
    /// Shows, or with --force releases, the lock (AWS only: no Bitbucket credentials needed).
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let fleet = &ctx.config.name;
        let aws = Aws::connect(ctx.config.region.as_deref(), ctx.stats).await?;
        let not_held = || format!("The fleet lock of {fleet} is not held.\n");
        let Some(holder) = crate::lock::holder(&aws.ssm, fleet).await? else {
            let doc = json!({"fleet": fleet, "holder": null, "released": false});
            ctx.out.result(&doc, not_held)?;
            return Ok(ExitCode::SUCCESS);
        };
        if !self.force {
            return Err(CliError::Refused(format!(
                "the fleet lock of {fleet} is held by {holder}; nothing was changed. If that run is gone, `bbfleet unlock --force` releases the lock (a run still working would then share the fleet with the next one)"
            )));
        }
        let released = crate::lock::force_release(&aws.ssm, fleet).await?;
        let doc = json!({"fleet": fleet, "holder": released, "released": released.is_some()});
        ctx.out.result(&doc, || match &released {
            Some(holder) => format!("Released the fleet lock of {fleet} held by {holder}.\n"),
            None => not_held(),
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
