//! The clap types shared by the commands, and the parsing of flag values.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::apply::ApplyArgs;
use super::autoscale::AutoscaleArgs;
use super::bake::BakeArgs;
use super::destroy::DestroyArgs;
use super::plan::PlanArgs;
use super::policy::PolicyArgs;
use super::simulate::SimulateArgs;
use super::unlock::UnlockArgs;
use super::CliError;
use crate::config::{Capacity, Config, FieldError};

/// Bitbucket Pipelines self-hosted runners on AWS spot capacity.
#[derive(Debug, Parser)]
#[command(name = "bbfleet", version, about, long_about = None)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "BBFLEET_CONFIG",
        default_value = "bbfleet.toml"
    )]
    pub(super) config: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub(super) output: Format,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true)]
    pub(super) quiet: bool,
    /// Debug logs of bbfleet: every Bitbucket request (method, path, status, time) and AWS
    /// call; never a header, body or secret. Wins over BBFLEET_LOG, -v and -q.
    #[arg(long, global = true)]
    pub(super) debug: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    Text,
    Json,
    /// OpenMetrics text (`status` only; docs/metrics.md).
    Prometheus,
}

impl Cli {
    /// `--output prometheus` is `status`'s alone: any other command refuses it, naming the
    /// flag, before it reads the config or goes online.
    pub(super) fn check_output(&self) -> Result<(), CliError> {
        if self.output != Format::Prometheus || matches!(self.command, Command::Status) {
            return Ok(());
        }
        Err(arg_error(
            "--output",
            "prometheus is for `bbfleet status` only (`autoscale` writes the metrics with \
             --metrics-file); this command prints text or json"
                .to_owned(),
        ))
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Check the config offline (no network, no credentials).
    Validate,
    /// Print the rendered userdata (it never holds a secret).
    RenderUserdata,
    /// Show what apply would change.
    Plan(PlanArgs),
    /// Bring the world to the config.
    Apply(ApplyArgs),
    /// Remove the fleet's runners, commands, claims, launch template, fleet and instances (the key is kept).
    Destroy(DestroyArgs),
    /// Show the fleet lock's holder; with --force, release it (for a run that is gone).
    Unlock(UnlockArgs),
    /// Runners, instances, claims and the fleet request.
    Status,
    /// Print an IAM policy of policies/ filled in from the config (offline).
    Policy(PolicyArgs),
    /// Size the fleet to demand, tick by tick (`[capacity.autoscale]`: the bbfleet or the
    /// atlassian policy).
    Autoscale(AutoscaleArgs),
    /// Build a fleet host image (Docker, the aws CLI, the runner image) for `instance.ami = "baked"`.
    Bake(BakeArgs),
    /// Simulate the fleet against a job trace under each sizing policy (queue waits, idle
    /// runner-hours, cost), side by side.
    Simulate(SimulateArgs),
}

/// Waiting for the fleet lock (apply, destroy, autoscale, bake).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct LockArgs {
    /// Wait this long for another run's fleet lock (e.g. 30s, 5m), then fail naming the holder.
    #[arg(long, default_value = crate::lock::DEFAULT_TIMEOUT)]
    pub(super) lock_timeout: String,
}

/// `--lock-timeout`, parsed (the text is kept for messages).
#[derive(Debug, Clone)]
pub(super) struct LockTimeout {
    pub(super) duration: std::time::Duration,
    pub(super) text: String,
}

impl LockArgs {
    pub(super) fn parse(&self) -> Result<LockTimeout, CliError> {
        const FLAG: &str = "--lock-timeout";
        let text = self.lock_timeout.trim();
        let duration = std::time::Duration::try_from(duration_arg(FLAG, text, "30s, 5m")?)
            .map_err(|_| arg_error(FLAG, format!("{text:?} is negative")))?;
        Ok(LockTimeout {
            duration,
            text: text.to_owned(),
        })
    }
}

/// An error in a command-line value, naming the flag.
pub(super) fn arg_error(flag: &str, message: String) -> CliError {
    CliError::Argument(FieldError {
        field: flag.to_owned(),
        message,
    })
}

/// A duration flag's value (`30s`, `5m`), or an error naming the flag with `example`.
pub(super) fn duration_arg(
    flag: &str,
    text: &str,
    example: &str,
) -> Result<jiff::SignedDuration, CliError> {
    text.parse().map_err(|e| {
        arg_error(
            flag,
            format!("{text:?} is not a duration (e.g. {example}): {e}"),
        )
    })
}

/// Which capacity to plan for.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct Target {
    /// Run N runners now (one-shot: the next plain apply returns to the schedule).
    #[arg(long)]
    pub(super) capacity: Option<u32>,
    /// Evaluate the schedule at this instant (RFC 3339), not now.
    #[arg(long)]
    pub(super) at: Option<String>,
    /// Allow scale-down to remove runners that are running a step.
    #[arg(long)]
    pub(super) force: bool,
}

impl Target {
    /// The capacity the flags and the schedule ask for.
    pub(super) fn capacity(&self, config: &Config) -> Result<Capacity, CliError> {
        let at = match &self.at {
            None => jiff::Timestamp::now(),
            Some(s) => s.parse().map_err(|e| {
                arg_error(
                    "--at",
                    format!("{s:?} is not an RFC 3339 instant (e.g. 2026-03-04T06:30:00Z): {e}"),
                )
            })?,
        };
        config
            .capacity
            .resolve(at, self.capacity)
            .map_err(CliError::Argument)
    }
}

#[cfg(test)]
mod tests {
    use super::LockArgs;

    #[test]
    fn lock_timeouts_parse_or_name_the_flag() {
        let parse = |t: &str| {
            LockArgs {
                lock_timeout: t.to_owned(),
            }
            .parse()
        };
        assert_eq!(
            parse("30s").unwrap().duration,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            parse("5m").unwrap().duration,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(parse("0s").unwrap().duration, std::time::Duration::ZERO);
        for bad in ["soon", "-5s", ""] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--lock-timeout"), "{bad}: {e}");
        }
    }
}
