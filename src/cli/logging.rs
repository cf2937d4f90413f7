//! Logging and the run's call statistics.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::stats::CallStats;

/// Logs to stderr at the level the flags (or BBFLEET_LOG) ask for.
pub(super) fn init(verbose: u8, quiet: bool, debug: bool) {
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
pub(super) fn write_stats(stats: &CallStats) {
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
