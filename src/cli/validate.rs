//! `bbfleet validate`: the config, checked offline (no network, no credentials).

use std::process::ExitCode;

use super::context::Context;
use super::CliError;
use crate::aws::AwsError;
use crate::userdata;

/// Checks that the config's user data fits in the region (the longest region name when
/// none is known offline) and reports the fleet's shape.
pub(super) fn run(ctx: &Context) -> Result<ExitCode, CliError> {
    let config = ctx.config;
    let region = match ctx.region_offline() {
        Err(CliError::Aws(AwsError::NoRegion)) => crate::config::LONGEST_REGION.to_owned(),
        other => other?,
    };
    userdata::check_config_fits(config, &region)?;
    ctx.out.result(&serde_json::json!({"valid": true, "config": config}), || {
        format!(
            "{} is valid: fleet {}, {} instance types in {} families, {} subnets, capacity {} (max {}).\n",
            ctx.config_path.display(),
            config.name,
            config.spot.instance_types.len(),
            config.families().len(),
            config.spot.subnets.len(),
            config.capacity.default,
            config.capacity.max
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
