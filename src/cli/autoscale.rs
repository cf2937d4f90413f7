//! `bbfleet autoscale`: ticks that size the fleet to demand by `capacity.autoscale.policy`.
//! A tick reconciles: it observes, decides (`crate::autoscale::Policy`, the function
//! `bbfleet simulate` runs too), and applies a change through the normal planner; a failed
//! tick is retried at the next one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::apply::apply_to;
use super::approve::Approval;
use super::args::{arg_error, duration_arg, LockArgs, Target};
use super::context::{Context, Remote};
use super::CliError;
use crate::autoscale::{Clock, Policy, SystemClock};
use crate::config::{AutoscaleConfig, Capacity, FieldError};
use crate::execute::DEFAULT_CONCURRENCY;

/// `bbfleet autoscale`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct AutoscaleArgs {
    /// One tick, then exit.
    #[arg(long)]
    once: bool,
    /// Time between ticks (e.g. 60s, 5m); default capacity.autoscale.interval_seconds.
    #[arg(long)]
    interval: Option<String>,
    /// Calls in flight at once when a tick changes the fleet.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// At every tick, replace this file (atomically) with the fleet's metrics, as `status
    /// --output prometheus` prints them: for node_exporter's textfile collector (a `.prom`
    /// file in its directory). Each tick then reads the world as `status` does, and
    /// decides from that same observation.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    #[command(flatten)]
    lock: LockArgs,
}

impl AutoscaleArgs {
    /// Ticks until SIGINT/SIGTERM (between ticks: a tick in progress finishes), or once.
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let Some(auto) = ctx.config.capacity.autoscale.clone() else {
            return Err(CliError::Argument(FieldError {
                field: "capacity.autoscale".to_owned(),
                message: "missing: add a [capacity.autoscale] table (an empty one runs the bbfleet policy with its defaults) to use autoscale".to_owned(),
            }));
        };
        let interval = match &self.interval {
            None => Duration::from_secs(auto.interval_seconds),
            Some(text) => Duration::try_from(duration_arg("--interval", text, "60s, 5m")?)
                .ok()
                .filter(|d| d.as_secs() >= 1)
                .ok_or_else(|| arg_error("--interval", "must be at least 1s".to_owned()))?,
        };
        let how = Approval {
            auto_approve: true,
            command: "autoscale",
            lock: self.lock.parse()?,
            concurrency: self.concurrency as usize,
        };
        let remote = ctx.connect().await?;
        if self.once {
            tick(ctx, &remote, &auto, &how, self.metrics_file.as_deref()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            if let Err(e) = tick(ctx, &remote, &auto, &how, self.metrics_file.as_deref()).await {
                // The error policy: the next tick retries; the apply it runs converges then.
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
}

/// One tick: three reads (with `--metrics-file`, the status observation instead, and the
/// metrics file written from it), a decision printed on one line, an apply when it says
/// so, and the policy's memory saved when it changed (after the apply, so a failed apply
/// is retried).
async fn tick(
    ctx: &Context<'_>,
    remote: &Remote,
    auto: &AutoscaleConfig,
    how: &Approval,
    metrics_file: Option<&Path>,
) -> Result<(), CliError> {
    let (load, last) = match metrics_file {
        None => {
            crate::autoscale::observe(
                ctx.config,
                &remote.bitbucket,
                remote.fleet_api.as_ref(),
                &remote.aws.ssm,
            )
            .await?
        }
        Some(path) => super::status::observe_writing_metrics(ctx, remote, path).await?,
    };
    // The simulator runs this same call on its own clock (`bbfleet simulate`).
    let now = SystemClock.now();
    let decision = Policy::Autoscale(auto).decide(load, last.as_ref(), &now);
    let current = load.current;
    let doc = serde_json::json!({"at": now.to_string(), "load": load, "memory": last, "decision": decision});
    ctx.out.result(&doc, || match decision.scale_to {
        Some(n) => format!("autoscale: scale {current} -> {n}: {}\n", decision.reason),
        None => format!("autoscale: hold at {current}: {}\n", decision.reason),
    })?;
    if let Some(n) = decision.scale_to {
        // Boxed: an apply's future is large, and the tick's stays small on the stack.
        Box::pin(apply_capacity(ctx, remote, n, how)).await?;
    }
    if let Some(memory) = &decision.memory {
        crate::autoscale::save_state(&remote.aws.ssm, &ctx.config.name, memory).await?;
    }
    Ok(())
}

/// Applies capacity `n` through the normal planner (busy runners are never removed).
async fn apply_capacity(
    ctx: &Context<'_>,
    remote: &Remote,
    n: u32,
    how: &Approval,
) -> Result<(), CliError> {
    let capacity = Capacity {
        desired: n,
        source: "autoscale".to_owned(),
    };
    let target = Target {
        capacity: Some(n),
        at: None,
        force: false,
    };
    apply_to(ctx, remote, capacity, &target, how).await?;
    Ok(())
}
