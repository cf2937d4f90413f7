//! `bbfleet simulate`: the configured fleet against a job trace under each sizing policy.
//! Offline when `spot.hourly_prices` prices every configured type; otherwise the missing
//! prices come from the spot price history (AWS credentials only, as pre-flight reads it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::context::Context;
use super::CliError;
use crate::aws::{ec2, Aws};
use crate::config::{Config, FieldError};
use crate::simulate::{self, Model, POLICIES};

/// `bbfleet simulate`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct SimulateArgs {
    /// The job trace: CSV rows submitted_at,duration_s[,labels][,repository].
    #[arg(long)]
    trace: PathBuf,
    /// A policy to simulate (repeat, or comma-separate): fixed, schedule, atlassian,
    /// bbfleet. Default: all four.
    #[arg(long, value_delimiter = ',')]
    policy: Vec<String>,
    /// Seed of every random draw (default simulate.seed).
    #[arg(long)]
    seed: Option<u64>,
}

fn argument(field: &str, message: String) -> CliError {
    CliError::Argument(FieldError {
        field: field.to_owned(),
        message,
    })
}

impl SimulateArgs {
    /// Checks the arguments and the trace, prices the model, simulates, prints.
    pub(super) async fn run(self, ctx: &Context<'_>) -> Result<ExitCode, CliError> {
        let config = ctx.config;
        let names: Vec<&str> = if self.policy.is_empty() {
            POLICIES.to_vec()
        } else {
            self.policy.iter().map(|p| p.trim()).collect()
        };
        let policies = names
            .iter()
            .map(|name| simulate::policy(config, name).map(|(p, interval)| (*name, p, interval)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| argument("--policy", e.to_string()))?;
        let steps =
            simulate::trace::read(&self.trace).map_err(|e| argument("--trace", e.to_string()))?;
        let seed = self.seed.unwrap_or(config.simulate.seed);
        let model = Model::new(config, seed, spot_prices(ctx).await?, on_demand(config)?);
        let started = std::time::Instant::now();
        let report = simulate::simulate(config, &model, &steps, &policies);
        let took = started.elapsed();
        ctx.out.progress(|| {
            format!(
                "simulated {} steps under {} policies in {:.2} s (seed {})",
                steps.len(),
                names.len(),
                took.as_secs_f64(),
                model.seed
            )
        });
        ctx.out.result(&report, || report.to_string())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The on-demand base and its price (required when there is a base).
fn on_demand(config: &Config) -> Result<(u32, f64), CliError> {
    let base = config.capacity.on_demand_base;
    match (base, config.capacity.on_demand_hourly_price) {
        (0, price) => Ok((0, price.unwrap_or(0.0))),
        (_, Some(price)) => Ok((base, price)),
        (_, None) => Err(argument(
            "capacity.on_demand_hourly_price",
            format!("missing: simulate prices the on-demand base ({base}) with it (USD per hour of one on-demand instance)"),
        )),
    }
}

/// USD per hour of each configured type, in order: `spot.hourly_prices`, else the mean of
/// the latest spot prices of the type's pools in the fleet's zones.
async fn spot_prices(ctx: &Context<'_>) -> Result<Vec<f64>, CliError> {
    let config = ctx.config;
    let types = &config.spot.instance_types;
    let missing: Vec<String> = types
        .iter()
        .filter(|t| !config.spot.hourly_prices.contains_key(*t))
        .cloned()
        .collect();
    let history = if missing.is_empty() {
        BTreeMap::new()
    } else {
        ctx.out.progress(|| {
            format!(
                "reading spot prices for {} (not in spot.hourly_prices)",
                missing.join(", ")
            )
        });
        history_prices(config, &missing, ctx).await?
    };
    types
        .iter()
        .map(|t| {
            config
                .spot
                .hourly_prices
                .get(t)
                .or_else(|| history.get(t))
                .copied()
                .ok_or_else(|| {
                    argument(
                        "spot.hourly_prices",
                        format!("{t:?} has no price: give it here (USD per hour), as the spot price history has none in the fleet's zones"),
                    )
                })
        })
        .collect()
}

/// The mean latest spot price per type over the fleet's zones.
async fn history_prices(
    config: &Config,
    types: &[String],
    ctx: &Context<'_>,
) -> Result<BTreeMap<String, f64>, CliError> {
    let aws = Aws::connect(config.region.as_deref(), ctx.stats).await?;
    let subnets = ec2::describe_subnets(&aws.ec2, &config.spot.subnets).await?;
    let azs: Vec<String> = subnets.into_iter().map(|s| s.az).collect();
    let prices = crate::aws::offerings::spot_prices(&aws.ec2, types, &azs).await?;
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for ((ty, _az), price) in prices {
        let e = sums.entry(ty).or_default();
        e.0 += price;
        e.1 += 1;
    }
    Ok(sums
        .into_iter()
        .map(|(ty, (sum, n))| (ty, sum / f64::from(n)))
        .collect())
}
