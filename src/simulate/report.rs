//! The figures per policy: queue wait percentiles, failed and rerun steps, runner-hours
//! busy and idle, and the cost; as a table or as JSON.

use std::fmt;

use serde::Serialize;

use super::engine::Outcome;

/// `{"policies": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// One row per policy, in the order asked.
    pub policies: Vec<PolicyReport>,
}

/// One policy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// `fixed`, `schedule`, `atlassian` or `bbfleet`.
    pub name: String,
    /// Median queue wait of the steps that ran, in seconds.
    pub queue_wait_p50_s: f64,
    /// 90th percentile.
    pub queue_wait_p90_s: f64,
    /// 99th percentile.
    pub queue_wait_p99_s: f64,
    /// Steps that failed for want of an online runner.
    pub failed_steps: u64,
    /// Steps rerun after a spot interruption.
    pub rerun_steps: u64,
    /// Runner-hours executing steps (interrupted attempts included).
    pub busy_runner_hours: f64,
    /// Runner-hours ONLINE and idle.
    pub idle_runner_hours: f64,
    /// USD for the hosts, from launch to termination.
    pub cost_usd: f64,
}

const MS_PER_HOUR: f64 = 3_600_000.0;

impl PolicyReport {
    /// The figures of `outcome`.
    pub fn new(name: &str, outcome: &Outcome) -> PolicyReport {
        let mut waits = outcome.waits_ms.clone();
        waits.sort_unstable();
        let p = |q: f64| percentile(&waits, q) as f64 / 1000.0;
        PolicyReport {
            name: name.to_owned(),
            queue_wait_p50_s: p(0.50),
            queue_wait_p90_s: p(0.90),
            queue_wait_p99_s: p(0.99),
            failed_steps: outcome.failed,
            rerun_steps: outcome.reruns,
            busy_runner_hours: round2(outcome.busy_ms as f64 / MS_PER_HOUR),
            idle_runner_hours: round2(outcome.idle_ms as f64 / MS_PER_HOUR),
            cost_usd: round2(outcome.cost_usd),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The nearest-rank percentile of sorted `values` (0 when there are none).
pub(super) fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| policy | wait p50 | wait p90 | wait p99 | failed | reruns | busy h | idle h | cost $ |"
        )?;
        writeln!(f, "|---|--:|--:|--:|--:|--:|--:|--:|--:|")?;
        for p in &self.policies {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} |",
                p.name,
                seconds(p.queue_wait_p50_s),
                seconds(p.queue_wait_p90_s),
                seconds(p.queue_wait_p99_s),
                p.failed_steps,
                p.rerun_steps,
                p.busy_runner_hours,
                p.idle_runner_hours,
                p.cost_usd,
            )?;
        }
        Ok(())
    }
}

/// `0 s`, `42 s`, `7.5 min`, `616.1 h`.
fn seconds(s: f64) -> String {
    if s < 100.0 {
        format!("{s:.0} s")
    } else if s < 6000.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
