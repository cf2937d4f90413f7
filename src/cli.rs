//! The command line: arguments become settings in one place, then each command runs
//! observe -> plan -> (print | execute). Exit codes: 0 ok, 1 error, 2 changes present
//! (`plan --detailed-exitcode`; clap's usage errors are 2 as well).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::aws::fleet::{FleetApi, SpotFleet};
use crate::aws::{Aws, AwsError};
use crate::bitbucket::{
    Bitbucket, BitbucketError, Credentials, CredentialsError, RetryPolicy, DEFAULT_API_URL,
};
use crate::config::{Config, ConfigError, FieldError};
use crate::execute::{ExecuteError, Executor, DEFAULT_CONCURRENCY};
use crate::lock::LockError;
use crate::observe::{observe, Depth, ObserveError, Observed};
use crate::plan::{self, Plan, PlanError, PlanOptions};
use crate::planfile::{PlanfileError, SavedPlan};
use crate::stats::CallStats;
use crate::status::StatusView;
use crate::userdata::{self, UserdataError, UserdataVars};

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
    config: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Debug logs of bbfleet: every Bitbucket request (method, path, status, time) and AWS
    /// call; never a header, body or secret. Wins over BBFLEET_LOG, -v and -q.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config offline (no network, no credentials).
    Validate,
    /// Print the rendered userdata (it never holds a secret).
    RenderUserdata,
    /// Show what apply would change.
    Plan {
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
    },
    /// Bring the world to the config.
    Apply {
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
    },
    /// Remove the fleet's runners, commands, claims, launch template, fleet and instances (the key is kept).
    Destroy {
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Show the fleet lock's holder; with --force, release it (for a run that is gone).
    Unlock {
        /// Release the lock whoever holds it.
        #[arg(long)]
        force: bool,
    },
    /// Runners, instances, claims and the fleet request.
    Status,
    /// Print an IAM policy of policies/ filled in from the config (offline).
    Policy(PolicyArgs),
    /// Size the fleet to demand from the runners' busy ratio (`[capacity.autoscale]`).
    Autoscale {
        /// One tick, then exit.
        #[arg(long)]
        once: bool,
        /// Time between ticks (e.g. 60s, 5m).
        #[arg(long, default_value = "60s")]
        interval: String,
        /// Calls in flight at once when a tick changes the fleet.
        #[arg(long, default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        #[command(flatten)]
        lock: LockArgs,
    },
}

/// Waiting for the fleet lock (apply, destroy, autoscale).
#[derive(Debug, Clone, clap::Args)]
struct LockArgs {
    /// Wait this long for another run's fleet lock (e.g. 30s, 5m), then fail naming the holder.
    #[arg(long, default_value = crate::lock::DEFAULT_TIMEOUT)]
    lock_timeout: String,
}

/// `--lock-timeout`, parsed (the text is kept for messages).
#[derive(Debug, Clone)]
struct LockTimeout {
    duration: std::time::Duration,
    text: String,
}

impl LockArgs {
    fn parse(&self) -> Result<LockTimeout, CliError> {
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
fn arg_error(flag: &str, message: String) -> CliError {
    CliError::Argument(FieldError {
        field: flag.to_owned(),
        message,
    })
}

/// A duration flag's value (`30s`, `5m`), or an error naming the flag with `example`.
fn duration_arg(flag: &str, text: &str, example: &str) -> Result<jiff::SignedDuration, CliError> {
    text.parse().map_err(|e| {
        arg_error(
            flag,
            format!("{text:?} is not a duration (e.g. {example}): {e}"),
        )
    })
}

/// `bbfleet policy`.
#[derive(Debug, Clone, clap::Args)]
struct PolicyArgs {
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

/// Which capacity to plan for.
#[derive(Debug, Clone, clap::Args)]
struct Target {
    /// Run N runners now (one-shot: the next plain apply returns to the schedule).
    #[arg(long)]
    capacity: Option<u32>,
    /// Evaluate the schedule at this instant (RFC 3339), not now.
    #[arg(long)]
    at: Option<String>,
    /// Allow scale-down to remove runners that are running a step.
    #[arg(long)]
    force: bool,
}

/// Why a command failed. Messages name the cause; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line value.
    #[error("{0}")]
    Argument(FieldError),
    /// Credentials.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Bitbucket set-up.
    #[error(transparent)]
    Bitbucket(#[from] BitbucketError),
    /// AWS set-up.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Reading the world.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Planning.
    #[error("cannot plan: {0}")]
    Plan(#[from] PlanError),
    /// A saved plan.
    #[error(transparent)]
    Planfile(#[from] PlanfileError),
    /// Executing.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// Userdata.
    #[error(transparent)]
    Userdata(#[from] UserdataError),
    /// `bbfleet policy`.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The fleet lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Refused to act.
    #[error("{0}")]
    Refused(String),
    /// Terminal I/O.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses the process arguments and runs; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, cli.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // BBFLEET_FAULT_AFTER_WRITES is a testing hook (tests/crash.rs); unset, nothing changes.
    let stats = match CallStats::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, &stats));
    write_stats(&stats);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool, debug: bool) {
    use tracing_subscriber::prelude::*;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "bbfleet=info",
        (false, _) => "bbfleet=debug",
    };
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("bbfleet=debug")
    } else {
        tracing_subscriber::EnvFilter::try_from_env("BBFLEET_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
    };
    // Whatever BBFLEET_LOG asks, other crates log at info at most: the AWS SDK and the
    // HTTP stack print requests (headers, bodies: tokens, SecureString values) at debug/trace.
    let ours_or_info = tracing_subscriber::filter::filter_fn(|meta| {
        let target = meta.target();
        target == "bbfleet"
            || target.starts_with("bbfleet::")
            || *meta.level() <= tracing::Level::INFO
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only on a terminal: logs kept in files stay greppable.
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(debug)
                .with_filter(filter)
                .with_filter(ours_or_info),
        )
        .init();
}

/// With `BBFLEET_STATS_FILE`, the call counts of the run are written there as JSON.
fn write_stats(stats: &CallStats) {
    let summary = stats.summary();
    tracing::info!(
        reads = summary.reads,
        writes = summary.writes,
        "remote calls"
    );
    if let Some(path) = std::env::var_os("BBFLEET_STATS_FILE") {
        let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!(
                "warning: cannot write {}: {e}",
                PathBuf::from(path).display()
            );
        }
    }
}

struct Remote {
    aws: Aws,
    fleet_api: SpotFleet,
    bitbucket: Bitbucket,
}

impl Remote {
    /// Reads the fleet's world at `depth` (read-only).
    async fn observe(&self, config: &Config, depth: Depth) -> Result<Observed, ObserveError> {
        observe(config, &self.aws, &self.fleet_api, &self.bitbucket, depth).await
    }
}

/// Credentials and endpoints first (no network), then the clients.
async fn connect(config: &Config, stats: &CallStats) -> Result<Remote, CliError> {
    let credentials = Credentials::from_env(|k| std::env::var(k).ok())?;
    let base = match std::env::var("BITBUCKET_API_URL") {
        Ok(url) if !url.trim().is_empty() => {
            crate::config::check_api_url(url.trim()).map_err(|m| {
                CliError::Argument(FieldError {
                    field: "BITBUCKET_API_URL".to_owned(),
                    message: m,
                })
            })?;
            url.trim().to_owned()
        }
        _ => config
            .bitbucket
            .api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
    };
    let bitbucket = Bitbucket::new(&base, credentials, RetryPolicy::default(), stats.clone())?;
    let aws = Aws::connect(config.region.as_deref(), stats).await?;
    // The launch template's user data must fit, in the region in use: checked before any call.
    userdata::check_config_fits(config, &aws.region)?;
    let fleet_api = SpotFleet::new(aws.ec2.clone());
    Ok(Remote {
        aws,
        fleet_api,
        bitbucket,
    })
}

/// The region without the SDK (no profile, no instance metadata): the config's `region`,
/// else `AWS_REGION`, else `AWS_DEFAULT_REGION`; checked to be a region name, the error
/// naming where it came from.
fn region_offline(config: &Config) -> Result<String, CliError> {
    let (source, region) = match &config.region {
        Some(r) => ("region", r.clone()),
        None => crate::aws::REGION_ENV_VARS
            .into_iter()
            .find_map(|var| std::env::var(var).ok().map(|r| (var, r)))
            .ok_or(CliError::Aws(AwsError::NoRegion))?,
    };
    if region.is_empty() {
        return Err(CliError::Aws(AwsError::NoRegion));
    }
    crate::config::check_region(&region).map_err(|message| {
        CliError::Aws(AwsError::BadRegion {
            origin: source.to_owned(),
            message,
        })
    })?;
    Ok(region)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

async fn run(cli: Cli, stats: &CallStats) -> Result<ExitCode, CliError> {
    let config = Config::load(&cli.config)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Validate => {
            // Without a region known offline, the longest region name is the worst case.
            let region = match region_offline(&config) {
                Err(CliError::Aws(AwsError::NoRegion)) => crate::config::LONGEST_REGION.to_owned(),
                other => other?,
            };
            userdata::check_config_fits(&config, &region)?;
            if json {
                print_json(&serde_json::json!({"valid": true, "config": config}))?;
            } else {
                println!(
                    "{} is valid: fleet {}, {} instance types in {} families, {} subnets, capacity {} (max {}).",
                    cli.config.display(),
                    config.name,
                    config.spot.instance_types.len(),
                    config.families().len(),
                    config.spot.subnets.len(),
                    config.capacity.default,
                    config.capacity.max
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(args) => {
            let region = region_offline(&config)?;
            let overrides = crate::policy::Overrides {
                account_id: args.account_id,
                kms_key_arn: args.kms_key_arn,
                instance_role: args.instance_role,
                workspace_uuid: args.workspace_uuid,
                repository_uuid: args.repository_uuid,
            };
            let text = crate::policy::render(&args.name, &config, &region, &overrides)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::RenderUserdata => {
            let region = region_offline(&config)?;
            print!(
                "{}",
                userdata::render(
                    config.instance.os,
                    &UserdataVars::from_config(&config, &region)
                )?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            detailed_exitcode,
            no_preflight,
            out,
            target,
        } => {
            let capacity = resolve_capacity(&config, &target)?;
            let remote = connect(&config, stats).await?;
            let (plan, observed, desired) = plan_apply(&config, &remote, capacity, &target).await?;
            if let Some(path) = &out {
                SavedPlan::new(
                    &config,
                    &remote.aws.region,
                    &plan,
                    &desired,
                    &observed,
                    target.force,
                )
                .write(path)?;
            }
            let checks = if no_preflight {
                Vec::new()
            } else {
                crate::preflight::run(&config, &remote.aws, &observed, &desired).await
            };
            if json {
                let mut view = serde_json::to_value(plan.view()).map_err(std::io::Error::from)?;
                if !no_preflight {
                    view["preflight"] =
                        serde_json::to_value(&checks).map_err(std::io::Error::from)?;
                }
                if let Some(path) = &out {
                    view["saved_to"] = path.display().to_string().into();
                }
                print_json(&view)?;
            } else {
                if !no_preflight {
                    print!("{}", crate::preflight::render(&checks));
                }
                show_plan(&plan, false)?;
                if let Some(path) = &out {
                    println!(
                        "\nSaved the plan to {p}. To perform exactly these actions, run: bbfleet apply {p}",
                        p = path.display()
                    );
                }
            }
            Ok(if detailed_exitcode && !plan.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply {
            planfile: Some(path),
            concurrency,
            lock,
            ..
        } => {
            let how = Approval {
                auto_approve: true,
                command: "apply",
                lock: lock.parse()?,
                concurrency: concurrency as usize,
                json,
            };
            apply_saved(&config, &path, stats, &how).await
        }
        Command::Apply {
            planfile: None,
            auto_approve,
            target,
            concurrency,
            lock,
        } => {
            let capacity = resolve_capacity(&config, &target)?;
            let how = Approval {
                auto_approve,
                command: "apply",
                lock: lock.parse()?,
                concurrency: concurrency as usize,
                json,
            };
            let remote = connect(&config, stats).await?;
            apply_to(&config, &remote, capacity, &target, &how).await
        }
        Command::Destroy { auto_approve, lock } => {
            let lock = lock.parse()?;
            let remote = connect(&config, stats).await?;
            let planned = || async {
                let observed = remote.observe(&config, Depth::Existing).await?;
                Ok((plan::plan_destroy(&config, &observed), observed, None))
            };
            let how = Approval {
                auto_approve,
                command: "destroy",
                lock,
                concurrency: DEFAULT_CONCURRENCY,
                json,
            };
            let code = apply_locked(&config, &remote, planned, &how).await?;
            if !json && code == ExitCode::SUCCESS {
                println!(
                    "The KMS key {} is kept: a later apply reuses it.",
                    config.kms.key
                );
            }
            Ok(code)
        }
        Command::Autoscale {
            once,
            interval,
            concurrency,
            lock,
        } => {
            let Some(auto) = config.capacity.autoscale.clone() else {
                return Err(CliError::Argument(FieldError {
                    field: "capacity.autoscale".to_owned(),
                    message: "missing: add a [capacity.autoscale] table (min, thresholds, multipliers) to use autoscale".to_owned(),
                }));
            };
            let interval =
                std::time::Duration::try_from(duration_arg("--interval", &interval, "60s, 5m")?)
                    .ok()
                    .filter(|d| d.as_secs() >= 1)
                    .ok_or_else(|| arg_error("--interval", "must be at least 1s".to_owned()))?;
            let how = Approval {
                auto_approve: true,
                command: "autoscale",
                lock: lock.parse()?,
                concurrency: concurrency as usize,
                json,
            };
            let remote = connect(&config, stats).await?;
            autoscale(&config, &remote, &auto, once, interval, &how).await
        }
        Command::Unlock { force } => unlock(&config, stats, force, json).await,
        Command::Status => {
            let remote = connect(&config, stats).await?;
            let (observed, lock) = tokio::try_join!(
                async {
                    remote
                        .observe(&config, Depth::Existing)
                        .await
                        .map_err(CliError::from)
                },
                async {
                    crate::lock::holder(&remote.aws.ssm, &config.name)
                        .await
                        .map_err(CliError::from)
                },
            )?;
            let view = StatusView::new(&config.name, &observed);
            if json {
                let mut doc = serde_json::to_value(&view).map_err(std::io::Error::from)?;
                doc["lock"] = serde_json::to_value(&lock).map_err(std::io::Error::from)?;
                print_json(&doc)?;
            } else {
                print!("{view}");
                if let Some(holder) = lock {
                    println!("Fleet lock: held by {holder}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve_capacity(config: &Config, target: &Target) -> Result<crate::config::Capacity, CliError> {
    let at = match &target.at {
        None => jiff::Timestamp::now(),
        Some(s) => s.parse().map_err(|e| {
            CliError::Argument(FieldError {
                field: "--at".to_owned(),
                message: format!(
                    "{s:?} is not an RFC 3339 instant (e.g. 2026-03-04T06:30:00Z): {e}"
                ),
            })
        })?,
    };
    config
        .capacity
        .resolve(at, target.capacity)
        .map_err(CliError::Argument)
}

async fn plan_apply(
    config: &Config,
    remote: &Remote,
    capacity: crate::config::Capacity,
    target: &Target,
) -> Result<(Plan, Observed, plan::Desired), CliError> {
    let observed = remote.observe(config, Depth::ForApply).await?;
    let image = observed
        .image
        .as_ref()
        .ok_or(CliError::Aws(AwsError::Invalid(
            "instance.ami: not resolved".to_owned(),
        )))?;
    let desired = plan::desired(config, &remote.aws.region, image, capacity)?;
    let plan = plan::plan_apply(
        config,
        &desired,
        &observed,
        PlanOptions {
            force: target.force,
        },
    )?;
    Ok((plan, observed, desired))
}

/// `apply PLANFILE`: the file is checked offline, then, holding the fleet lock, against a
/// fresh look at the world; only an unchanged world runs the saved actions, without asking
/// (the plan was the approval). A stale or empty saved plan writes nothing.
async fn apply_saved(
    config: &Config,
    path: &Path,
    stats: &CallStats,
    how: &Approval,
) -> Result<ExitCode, CliError> {
    let saved = SavedPlan::read(path)?;
    saved.check_config(config)?;
    let remote = connect(config, stats).await?;
    let checked = || async {
        let observed = remote.observe(config, Depth::ForApply).await?;
        let (plan, desired) = saved.check_world(config, &remote.aws.region, &observed)?;
        Ok::<_, CliError>((plan, observed, desired))
    };
    // Checked first without the lock, so a stale plan is refused with no write at all, then
    // again under the lock, since the world may change while waiting for it.
    let (plan, _, _) = checked().await?;
    if plan.is_empty() {
        show_plan(&plan, how.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    with_lock(config, &remote.aws.ssm, how.command, &how.lock, async {
        let (plan, observed, desired) = checked().await?;
        if !how.json {
            show_plan(&plan, false)?;
        }
        execute(
            config,
            &remote,
            &plan,
            &observed,
            Some(&desired),
            how.concurrency,
            how.json,
        )
        .await
    })
    .await
}

fn show_plan(plan: &Plan, json: bool) -> Result<(), CliError> {
    let view = plan.view();
    if json {
        print_json(&view)
    } else {
        print!("{view}");
        Ok(())
    }
}

/// A plan with what it was computed from (`desired` is `None` for destroy).
type Planned = (Plan, Observed, Option<plan::Desired>);

/// How a writing command approves and runs its plan.
struct Approval {
    auto_approve: bool,
    /// `apply`, `destroy`, `autoscale`: recorded in the lock.
    command: &'static str,
    lock: LockTimeout,
    concurrency: usize,
    json: bool,
}

/// `apply` towards `capacity`, through [`apply_locked`].
async fn apply_to(
    config: &Config,
    remote: &Remote,
    capacity: crate::config::Capacity,
    target: &Target,
    how: &Approval,
) -> Result<ExitCode, CliError> {
    let planned = || async {
        let (plan, observed, desired) =
            plan_apply(config, remote, capacity.clone(), target).await?;
        Ok((plan, observed, Some(desired)))
    };
    apply_locked(config, remote, planned, how).await
}

/// Plans with `planner` without the lock (so a no-op run writes nothing), shows and
/// approves that plan, then, holding the fleet lock, plans again and executes what is
/// left. A plan that changed while waiting is refused after an interactive approval, and
/// shown and run with --auto-approve.
async fn apply_locked<F, Fut>(
    config: &Config,
    remote: &Remote,
    planner: F,
    how: &Approval,
) -> Result<ExitCode, CliError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Planned, CliError>>,
{
    let (approved, _, _) = planner().await?;
    if approved.is_empty() {
        show_plan(&approved, how.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !how.json {
        show_plan(&approved, false)?;
    }
    confirm(how.auto_approve)?;
    with_lock(config, &remote.aws.ssm, how.command, &how.lock, async {
        let (plan, observed, desired) = planner().await?;
        let outcome = replanned(&approved, &plan, how.auto_approve);
        if outcome == Replanned::Refused {
            return Err(CliError::Refused(
                "the world changed while waiting for the lock; nothing was changed; run again"
                    .to_owned(),
            ));
        }
        if outcome != Replanned::Same {
            if !how.json {
                println!("\nThe fleet changed while waiting for the lock; planned again:\n");
            }
            if outcome == Replanned::NothingLeft || !how.json {
                show_plan(&plan, how.json)?;
            }
            if outcome == Replanned::NothingLeft {
                return Ok(ExitCode::SUCCESS);
            }
        }
        execute(
            config,
            remote,
            &plan,
            &observed,
            desired.as_ref(),
            how.concurrency,
            how.json,
        )
        .await
    })
    .await
}

/// The plan made again under the lock, against the approved one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replanned {
    /// Unchanged: run it.
    Same,
    /// Someone else did it all: nothing to run.
    NothingLeft,
    /// Different, and --auto-approve: show it and run it.
    Changed,
    /// Different after a human approved the old one: refuse.
    Refused,
}

fn replanned(approved: &Plan, now: &Plan, auto_approve: bool) -> Replanned {
    if now == approved {
        Replanned::Same
    } else if now.is_empty() {
        Replanned::NothingLeft
    } else if auto_approve {
        Replanned::Changed
    } else {
        Replanned::Refused
    }
}

/// Runs `work` holding the fleet lock (renewed while it runs) and releases it afterwards,
/// also when `work` fails. A crash leaves the lock: the next run finds it stale.
async fn with_lock<T>(
    config: &Config,
    ssm: &aws_sdk_ssm::Client,
    command: &str,
    timeout: &LockTimeout,
    work: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let mut held = crate::lock::acquire(
        ssm,
        &config.name,
        command,
        timeout.duration,
        &timeout.text,
        |event| match event {
            crate::lock::Event::Waiting(holder) => eprintln!(
                "Waiting for the fleet lock (up to {}): held by {holder}",
                timeout.text
            ),
            crate::lock::Event::TakingOver { holder, reason } => {
                eprintln!("Taking over the stale fleet lock of {holder}: {reason}")
            }
        },
    )
    .await?;
    let result = held.guard(work).await?;
    if let Err(e) = held.release().await {
        // The work is done (or failed on its own); the lock expires by itself.
        eprintln!("warning: {e}");
    }
    result
}

/// Asks for `yes` on a terminal unless auto-approved; refuses without a terminal.
fn confirm(auto_approve: bool) -> Result<(), CliError> {
    if !auto_approve {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Refused(
                "refusing to change anything without confirmation: standard input is not a terminal; pass --auto-approve".to_owned(),
            ));
        }
        eprint!("\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            return Err(CliError::Refused(
                "apply cancelled: nothing was changed".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Executes an approved, non-empty plan and prints the outcome.
async fn execute(
    config: &Config,
    remote: &Remote,
    plan: &Plan,
    observed: &Observed,
    desired: Option<&plan::Desired>,
    concurrency: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    let executor = Executor {
        config,
        aws: &remote.aws,
        fleet_api: &remote.fleet_api,
        bitbucket: &remote.bitbucket,
        observed,
        desired,
        concurrency,
    };
    let on_done = |action: &plan::Action, detail: &str| {
        let (kind, name, _) = action.describe();
        tracing::info!(kind, %name, detail, "done");
        if !json {
            eprintln!("  done: {} {name}: {detail}", kind.replace('_', " "));
        }
    };
    executor.execute(plan, &on_done).await?;
    let s = plan.summary();
    if json {
        print_json(&serde_json::json!({"plan": plan.view(), "applied": true}))?;
    } else {
        let verb = if desired.is_some() {
            "Apply"
        } else {
            "Destroy"
        };
        println!(
            "\n{verb} complete! Resources: {} added, {} changed, {} destroyed.",
            s.add, s.change, s.destroy
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One tick: three reads, a decision logged on one line, and an apply when it says so.
async fn autoscale_tick(
    config: &Config,
    remote: &Remote,
    auto: &crate::config::AutoscaleConfig,
    how: &Approval,
) -> Result<(), CliError> {
    let json = how.json;
    use crate::autoscale::{decide, AutoscaleState, Load};
    let scope = crate::observe::scope(config);
    let state_name = crate::names::autoscale_state(&config.name);
    let (runners, fleets, state) = tokio::try_join!(
        async {
            remote
                .bitbucket
                .list_runners(&scope)
                .await
                .map_err(CliError::from)
        },
        async {
            remote
                .fleet_api
                .list(&config.name, false)
                .await
                .map_err(CliError::from)
        },
        async {
            crate::aws::ssm::get_string(&remote.aws.ssm, &state_name)
                .await
                .map_err(CliError::from)
        },
    )?;
    let ours: Vec<_> = runners
        .iter()
        .filter(|r| crate::names::runner_slot(&config.name, &r.name).is_some())
        .collect();
    let online = ours.iter().filter(|r| r.status() == "ONLINE").count() as u32;
    let busy = ours
        .iter()
        .filter(|r| r.status() == "ONLINE" && r.is_busy())
        .count() as u32;
    let current = fleets
        .iter()
        .find(|f| f.is_live())
        .map_or(ours.len() as u32, |f| f.target.max(0) as u32);
    let last: Option<AutoscaleState> = state.and_then(|s: String| match serde_json::from_str(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(parameter = %state_name, error = %e, "ignoring an unreadable autoscale state");
            None
        }
    });
    let now = jiff::Timestamp::now();
    let load = Load {
        current,
        online,
        busy,
    };
    let decision = decide(auto, load, last.as_ref(), now);
    if json {
        print_json(
            &serde_json::json!({"at": now.to_string(), "load": load, "decision": decision}),
        )?;
    } else {
        match decision.scale_to {
            Some(n) => println!("autoscale: scale {current} -> {n}: {}", decision.reason),
            None => println!("autoscale: hold at {current}: {}", decision.reason),
        }
    }
    let Some(n) = decision.scale_to else {
        return Ok(());
    };
    let capacity = crate::config::Capacity {
        desired: n,
        source: "autoscale".to_owned(),
    };
    let target = Target {
        capacity: Some(n),
        at: None,
        force: false,
    };
    apply_to(config, remote, capacity, &target, how).await?;
    let state = serde_json::to_string(&AutoscaleState {
        capacity: n,
        changed_at: now,
    })
    .unwrap_or_default();
    crate::aws::ssm::put_string(&remote.aws.ssm, &state_name, &state).await?;
    Ok(())
}

/// Ticks until SIGINT/SIGTERM (between ticks: a tick in progress finishes), or once.
async fn autoscale(
    config: &Config,
    remote: &Remote,
    auto: &crate::config::AutoscaleConfig,
    once: bool,
    interval: std::time::Duration,
    how: &Approval,
) -> Result<ExitCode, CliError> {
    if once {
        autoscale_tick(config, remote, auto, how).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        if let Err(e) = autoscale_tick(config, remote, auto, how).await {
            // A failed tick is retried at the next one; the apply it ran converges then.
            eprintln!("autoscale: tick failed: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    eprintln!("autoscale: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `bbfleet unlock [--force]`: shows the holder; with --force writes a `released` generation.
async fn unlock(
    config: &Config,
    stats: &CallStats,
    force: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let aws = Aws::connect(config.region.as_deref(), stats).await?;
    let Some(holder) = crate::lock::holder(&aws.ssm, &config.name).await? else {
        if json {
            print_json(
                &serde_json::json!({"fleet": config.name, "holder": null, "released": false}),
            )?;
        } else {
            println!("The fleet lock of {} is not held.", config.name);
        }
        return Ok(ExitCode::SUCCESS);
    };
    if !force {
        return Err(CliError::Refused(format!(
            "the fleet lock of {} is held by {holder}; nothing was changed. If that run is gone, `bbfleet unlock --force` releases the lock (a run still working would then share the fleet with the next one)",
            config.name
        )));
    }
    let released = crate::lock::force_release(&aws.ssm, &config.name).await?;
    if json {
        print_json(
            &serde_json::json!({"fleet": config.name, "holder": released, "released": released.is_some()}),
        )?;
    } else if let Some(holder) = released {
        println!(
            "Released the fleet lock of {} held by {holder}.",
            config.name
        );
    } else {
        println!("The fleet lock of {} is not held.", config.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(keys: &[&str]) -> Plan {
        Plan {
            fleet: "ci".to_owned(),
            capacity: None,
            actions: keys
                .iter()
                .map(|k| plan::Action::CreateKey {
                    alias: (*k).to_owned(),
                })
                .collect(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_plan_changed_under_the_lock_is_refused_only_after_a_human_approval() {
        let approved = plan(&["alias/a"]);
        for auto in [true, false] {
            assert_eq!(
                replanned(&approved, &plan(&["alias/a"]), auto),
                Replanned::Same
            );
            assert_eq!(
                replanned(&approved, &plan(&[]), auto),
                Replanned::NothingLeft
            );
        }
        let other = plan(&["alias/b"]);
        assert_eq!(replanned(&approved, &other, true), Replanned::Changed);
        assert_eq!(replanned(&approved, &other, false), Replanned::Refused);
    }

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
