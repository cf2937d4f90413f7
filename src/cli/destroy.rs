//! `bbfleet destroy`: the fleet's runners, commands, claims, launch template, fleet and
//! instances go; the key is kept.

use std::process::ExitCode;

use super::approve::{apply_locked, Approval};
use super::args::LockArgs;
use super::context::Context;
use super::CliError;
use crate::execute::DEFAULT_CONCURRENCY;
use crate::observe::Depth;
use crate::plan;

/// `bbfleet destroy`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct DestroyArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    auto_approve: bool,
    #[command(flatten)]
    lock: LockArgs,
}

impl DestroyArgs {
    /// Plans the destroy, approves and runs it under the lock.
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let config = ctx.config;
        let how = Approval {
            auto_approve: self.auto_approve,
            command: "destroy",
            lock: self.lock.parse()?,
            concurrency: DEFAULT_CONCURRENCY,
        };
        let remote = ctx.connect().await?;
        let planned = || async {
            let observed = remote.observe(config, Depth::Existing).await?;
            Ok((plan::plan_destroy(config, &observed), observed, None))
        };
        let code = apply_locked(ctx, &remote, planned, &how).await?;
        if code == ExitCode::SUCCESS {
            ctx.out.text(|| {
                format!(
                    "The KMS key {} is kept: a later apply reuses it.\n",
                    config.kms.key
                )
            });
        }
        Ok(code)
    }
}
