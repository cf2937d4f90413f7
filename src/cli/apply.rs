//! `bbfleet apply [PLANFILE]`: bring the world to the config, or run a saved plan.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::approve::{apply_locked, execute, with_lock, Approval};
use super::args::{LockArgs, Target};
use super::context::{Context, Remote};
use super::plan::plan_apply;
use super::CliError;
use crate::config::Capacity;
use crate::execute::DEFAULT_CONCURRENCY;
use crate::observe::Depth;
use crate::planfile::SavedPlan;

/// `bbfleet apply`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ApplyArgs {
    /// A plan saved by `plan --out`: run exactly it, without asking, if the world has not changed since.
    #[arg(value_name = "PLANFILE", conflicts_with_all = ["capacity", "at", "force"])]
    planfile: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    auto_approve: bool,
    #[command(flatten)]
    target: Target,
    /// Calls in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    #[command(flatten)]
    lock: LockArgs,
}

impl ApplyArgs {
    /// Applies the config, or the saved plan.
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let mut how = Approval {
            auto_approve: self.auto_approve,
            command: "apply",
            lock: self.lock.parse()?,
            concurrency: self.concurrency as usize,
        };
        if let Some(path) = &self.planfile {
            how.auto_approve = true;
            return apply_saved(ctx, path, &how).await;
        }
        let capacity = self.target.capacity(ctx.config)?;
        let remote = ctx.connect().await?;
        apply_to(ctx, &remote, capacity, &self.target, &how).await
    }
}

/// `apply` towards `capacity`, through [`apply_locked`].
pub(super) async fn apply_to(
    ctx: &Context<'_>,
    remote: &Remote,
    capacity: Capacity,
    target: &Target,
    how: &Approval,
) -> Result<ExitCode, CliError> {
    let planned = || async {
        let (plan, observed, desired) = plan_apply(ctx, remote, capacity.clone(), target).await?;
        Ok((plan, observed, Some(desired)))
    };
    apply_locked(ctx, remote, planned, how).await
}

/// `apply PLANFILE`: the file is checked offline, then, holding the fleet lock, against a
/// fresh look at the world; only an unchanged world runs the saved actions, without asking
/// (the plan was the approval). A stale or empty saved plan writes nothing.
async fn apply_saved(ctx: &Context<'_>, path: &Path, how: &Approval) -> Result<ExitCode, CliError> {
    let config = ctx.config;
    let saved = SavedPlan::read(path)?;
    saved.check_config(config)?;
    let remote = ctx.connect().await?;
    let checked = || async {
        let observed = remote.observe(config, Depth::ForApply).await?;
        let (plan, desired) = saved.check_world(config, &remote.aws.region, &observed)?;
        Ok::<_, CliError>((plan, observed, desired))
    };
    // Checked first without the lock, so a stale plan is refused with no write at all, then
    // again under the lock, since the world may change while waiting for it.
    let (plan, _, _) = checked().await?;
    if plan.is_empty() {
        ctx.out.plan(&plan)?;
        return Ok(ExitCode::SUCCESS);
    }
    with_lock(config, &remote.aws.ssm, how.command, &how.lock, async {
        let (plan, observed, desired) = checked().await?;
        ctx.out.plan_text(&plan);
        execute(
            ctx,
            &remote,
            &plan,
            &observed,
            Some(&desired),
            how.concurrency,
        )
        .await
    })
    .await
}
