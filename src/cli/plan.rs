//! `bbfleet plan`: what apply would change, with the pre-flight checks; optionally saved
//! for `apply PLANFILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::Target;
use super::context::{Context, Remote};
use super::CliError;
use crate::aws::AwsError;
use crate::config::Capacity;
use crate::observe::Depth;
use crate::plan::{self, Desired, Plan, PlanOptions};
use crate::planfile::SavedPlan;
use crate::world::Observed;

/// `bbfleet plan`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct PlanArgs {
    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Skip the pre-flight checks (subnets, offerings, AMI, DryRun, quota, cost).
    #[arg(long)]
    no_preflight: bool,
    /// Also save the plan to FILE (mode 0600, no secret) for `apply FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
}

impl PlanArgs {
    /// Plans, saves the plan if asked, runs the pre-flight and prints both.
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let config = ctx.config;
        let capacity = self.target.capacity(config)?;
        let remote = ctx.connect().await?;
        let (plan, observed, desired) = plan_apply(ctx, &remote, capacity, &self.target).await?;
        if let Some(path) = &self.out {
            let region = &remote.aws.region;
            SavedPlan::new(
                config,
                region,
                &plan,
                &desired,
                &observed,
                self.target.force,
            )
            .write(path)?;
        }
        let checks = if self.no_preflight {
            None
        } else {
            let api = remote.fleet_api.as_ref();
            Some(crate::preflight::run(config, &remote.aws, api, &observed, &desired).await)
        };
        let mut view = serde_json::to_value(plan.view()).map_err(std::io::Error::from)?;
        if let Some(checks) = &checks {
            view["preflight"] = serde_json::to_value(checks).map_err(std::io::Error::from)?;
        }
        if let Some(path) = &self.out {
            view["saved_to"] = path.display().to_string().into();
        }
        ctx.out.result(&view, || {
            let mut text = checks.as_deref().map(crate::preflight::render).unwrap_or_default();
            text.push_str(&plan.view().to_string());
            if let Some(path) = &self.out {
                text.push_str(&format!(
                    "\nSaved the plan to {p}. To perform exactly these actions, run: bbfleet apply {p}\n",
                    p = path.display()
                ));
            }
            text
        })?;
        Ok(if self.detailed_exitcode && !plan.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Observes what apply needs and plans towards `capacity`.
pub(super) async fn plan_apply(
    ctx: &Context<'_>,
    remote: &Remote,
    capacity: Capacity,
    target: &Target,
) -> Result<(Plan, Observed, Desired), CliError> {
    let config = ctx.config;
    let observed = remote.observe(config, Depth::ForApply).await?;
    let image = observed.image.as_ref().ok_or_else(|| {
        CliError::Aws(AwsError::Reference {
            field: "instance.ami".to_owned(),
            message: "not resolved".to_owned(),
        })
    })?;
    let desired = plan::desired(config, &remote.aws.region, image, capacity)?;
    let options = PlanOptions {
        force: target.force,
    };
    let plan = plan::plan_apply(config, &desired, &observed, options)?;
    Ok((plan, observed, desired))
}
