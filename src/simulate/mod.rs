//! `bbfleet simulate`: the configured fleet against a job trace, under each sizing policy
//! side by side, by a deterministic, seeded discrete-event simulation (`engine`). The
//! `bbfleet` policy is the one `bbfleet autoscale` runs: the same function, on the
//! simulator's clock.

pub mod engine;
pub(crate) mod report;
pub mod trace;

pub use engine::{Job, Model, Outcome};
pub use report::{PolicyReport, Report};
pub use trace::{Step, TraceError};

use crate::autoscale::Policy;
use crate::config::Config;

/// The policies, in the order they are shown.
pub const POLICIES: [&str; 4] = ["fixed", "schedule", "atlassian", "bbfleet"];

/// A policy name that is not one of [`POLICIES`].
#[derive(Debug, thiserror::Error)]
#[error("--policy {0:?} is not one of fixed, schedule, atlassian, bbfleet")]
pub struct UnknownPolicy(pub String);

/// The policy `name` over `config`, with its tick interval in ms.
pub fn policy<'a>(config: &'a Config, name: &str) -> Result<(Policy<'a>, i64), UnknownPolicy> {
    let sim = &config.simulate;
    Ok(match name {
        "fixed" => (Policy::Fixed(config.capacity.default), 3_600_000),
        "schedule" => (
            Policy::Schedule(&config.capacity),
            sim.schedule_interval_seconds as i64 * 1000,
        ),
        "atlassian" => (
            Policy::Autoscale(&sim.atlassian),
            sim.atlassian.interval_seconds as i64 * 1000,
        ),
        "bbfleet" => (
            Policy::Autoscale(&sim.bbfleet),
            sim.bbfleet.interval_seconds as i64 * 1000,
        ),
        other => return Err(UnknownPolicy(other.to_owned())),
    })
}

/// The engine's view of `steps`: whether the fleet's runners match each. A runner has the
/// fleet's labels (Bitbucket's mandatory ones included); a repository-scoped fleet serves
/// only its repository.
pub fn jobs(config: &Config, steps: &[Step]) -> Vec<Job> {
    let labels = config.labels();
    let repository = config.bitbucket.repository.as_deref();
    steps
        .iter()
        .map(|s| Job {
            submitted_ms: s.submitted_ms,
            duration_ms: s.duration_ms,
            matches: s.labels.iter().all(|l| labels.contains(l))
                && (s.repository.is_empty() || repository.is_none_or(|r| r == s.repository)),
        })
        .collect()
}

/// A policy as `simulate` runs it: its name, the policy and its tick interval in ms.
pub type Named<'a> = (&'a str, Policy<'a>, i64);

/// Simulates each of `policies` and reports them in that order.
pub fn simulate(config: &Config, model: &Model, steps: &[Step], policies: &[Named<'_>]) -> Report {
    let jobs = jobs(config, steps);
    let policies = policies
        .iter()
        .map(|(name, policy, interval_ms)| {
            PolicyReport::new(name, &engine::run(model, &jobs, policy, *interval_ms))
        })
        .collect();
    Report { policies }
}

#[cfg(test)]
mod tests;
