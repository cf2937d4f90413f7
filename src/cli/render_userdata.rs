//! `bbfleet render-userdata`: the user data script a host boots with (it holds no secret).

use std::process::ExitCode;

use super::context::Context;
use super::CliError;
use crate::userdata::{self, UserdataVars};

/// Prints the plain script (the launch template gets it gzipped).
pub(super) fn run(ctx: &Context) -> Result<ExitCode, CliError> {
    let region = ctx.region_offline()?;
    let vars = UserdataVars::from_config(ctx.config, &region);
    print!("{}", userdata::render(ctx.config.instance.os, &vars)?);
    Ok(ExitCode::SUCCESS)
}
