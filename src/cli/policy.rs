//! `bbfleet policy NAME`: an IAM document of policies/, filled in from the config (offline).

use std::process::ExitCode;

use super::context::Context;
use super::CliError;

/// `bbfleet policy`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct PolicyArgs {
    /// Which document.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(["operator", "instance", "spot-fleet-trust", "instance-trust", "bitbucket-oidc-trust"]))]
    name: String,
    /// AWS account id (default: the account of spot.fleet_role).
    #[arg(long)]
    account_id: Option<String>,
    /// ARN of the fleet's KMS key (default: kms.key if it is a key ARN, else key/* of the account).
    #[arg(long)]
    kms_key_arn: Option<String>,
    /// Name of the runner instance role (default: the instance profile's name).
    #[arg(long)]
    instance_role: Option<String>,
    /// Bitbucket workspace UUID (bitbucket-oidc-trust).
    #[arg(long)]
    workspace_uuid: Option<String>,
    /// UUID of the repository running bbfleet's pipelines (bitbucket-oidc-trust).
    #[arg(long)]
    repository_uuid: Option<String>,
}

impl PolicyArgs {
    /// Prints the document (it is JSON in either output format).
    pub(super) fn run(self, ctx: &Context) -> Result<ExitCode, CliError> {
        let region = ctx.region_offline()?;
        let overrides = crate::policy::Overrides {
            account_id: self.account_id,
            kms_key_arn: self.kms_key_arn,
            instance_role: self.instance_role,
            workspace_uuid: self.workspace_uuid,
            repository_uuid: self.repository_uuid,
        };
        let text = crate::policy::render(&self.name, ctx.config, &region, &overrides)?;
        print!("{text}");
        Ok(ExitCode::SUCCESS)
    }
}
