//! The command line: arguments become settings in one place ([`args`]), then each command
//! runs from its own module: observe -> plan -> (print | execute), printing through one
//! [`output::Output`]. Exit codes: 0 ok, 1 error, 2 changes present
//! (`plan --detailed-exitcode`; clap's usage errors are 2 as well).

mod apply;
mod approve;
mod args;
mod autoscale;
mod bake;
mod context;
mod destroy;
mod error;
mod logging;
mod output;
mod plan;
mod policy;
mod render_userdata;
mod simulate;
mod status;
mod unlock;
mod validate;

use std::process::ExitCode;

use clap::Parser;

use crate::config::Config;
use crate::stats::CallStats;

pub use args::Cli;
use args::Command;
use context::Context;
pub use error::CliError;
use output::Output;

/// Parses the process arguments and runs; returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet, cli.debug);
    let out = match cli.command {
        // Autoscale's documents are a stream, its final error included: one line each.
        Command::Autoscale(_) => Output::new(cli.output).json_lines(),
        _ => Output::new(cli.output),
    };
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
    // BBFLEET_FAULT_AFTER_WRITES is a testing hook (tests/it/crash.rs); unset, nothing changes.
    let stats = match CallStats::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli, out, &stats));
    logging::write_stats(&stats);
    result.unwrap_or_else(|e| out.fail(&e))
}

/// Refuses an `--output` the command does not print, loads the config and runs the command.
async fn run(cli: Cli, out: Output, stats: &CallStats) -> Result<ExitCode, CliError> {
    cli.check_output()?;
    let config = Config::load(&cli.config)?;
    let ctx = Context::new(&config, &cli.config, out, stats);
    match cli.command {
        Command::Validate => validate::run(&ctx),
        Command::RenderUserdata => render_userdata::run(&ctx),
        Command::Policy(args) => args.run(&ctx),
        Command::Plan(args) => args.run(&ctx).await,
        Command::Apply(args) => args.run(&ctx).await,
        Command::Destroy(args) => args.run(&ctx).await,
        Command::Unlock(args) => args.run(&ctx).await,
        Command::Status => status::run(&ctx).await,
        Command::Autoscale(args) => args.run(&ctx).await,
        Command::Bake(args) => args.run(&ctx).await,
        Command::Simulate(args) => args.run(&ctx).await,
    }
}
