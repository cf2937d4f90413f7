//! `bbfleet bake`: builds a fleet host image ([`crate::bake`]) under the fleet lock.

use std::process::ExitCode;

use super::approve::with_lock;
use super::args::{arg_error, duration_arg, LockArgs};
use super::context::Context;
use super::CliError;
use crate::aws::Aws;
use crate::bake::{BakeError, BakeOptions, Baked};

/// `bbfleet bake`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct BakeArgs {
    /// Most time the builder gets to install, pull and signal (e.g. 20m, 45m).
    #[arg(long, default_value = crate::bake::DEFAULT_TIMEOUT)]
    timeout: String,
    /// Most time the new image gets to become available (e.g. 30m).
    #[arg(long, default_value = crate::bake::DEFAULT_IMAGE_TIMEOUT)]
    image_timeout: String,
    #[command(flatten)]
    lock: LockArgs,
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, CliError> {
    let d = duration_arg(flag, text.trim(), "20m, 90s")?;
    std::time::Duration::try_from(d)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| arg_error(flag, format!("{text:?} is not a positive duration")))
}

impl BakeArgs {
    /// Bakes, holding the fleet lock (AWS only: no Bitbucket credentials needed).
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let opts = BakeOptions {
            timeout: duration("--timeout", &self.timeout)?,
            image_timeout: duration("--image-timeout", &self.image_timeout)?,
        };
        let lock = self.lock.parse()?;
        let config = ctx.config;
        let aws = Aws::connect(config.region.as_deref(), ctx.stats).await?;
        let progress = |line: String| ctx.out.progress(|| line);
        let baked = with_lock(config, &aws.ssm, "bake", &lock, async {
            crate::bake::bake(config, &aws, &opts, &progress)
                .await
                .map_err(|e| match e {
                    BakeError::Aws(e) => CliError::Aws(e),
                    BakeError::Userdata(e) => CliError::Userdata(e),
                    other => CliError::Refused(other.to_string()),
                })
        })
        .await?;
        ctx.out.result(&baked, || text(config, &baked))?;
        Ok(ExitCode::SUCCESS)
    }
}

fn text(config: &crate::config::Config, b: &Baked) -> String {
    let mut s = format!(
        "Baked {} ({}) from {} for fleet {}.\n",
        b.image, b.name, b.source_ami, config.name
    );
    if !b.deregistered.is_empty() {
        s.push_str(&format!(
            "Deregistered {} older image(s) beyond instance.baked_images_kept = {}: {} (snapshots deleted: {}).\n",
            b.deregistered.len(),
            config.instance.baked_images_kept,
            b.deregistered.join(", "),
            if b.deleted_snapshots.is_empty() { "none".to_owned() } else { b.deleted_snapshots.join(", ") }
        ));
    }
    if config.instance.baked {
        s.push_str("instance.ami = \"baked\": the next `bbfleet apply` rolls the fleet onto it.\n");
    } else {
        s.push_str("Set instance.ami = \"baked\" to boot the fleet from it.\n");
    }
    s
}
