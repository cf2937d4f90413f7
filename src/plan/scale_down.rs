//! Phase 6, scale-down: terminate exactly the instances of the removed runners (by
//! scale-down or rotation, and surplus instances that hold no kept runner), then delete the
//! runners and their commands.

use std::collections::BTreeSet;

use super::fleet::Fleet;
use super::index::Index;
use super::runners::Runners;
use super::Action;
use crate::config::Config;
use crate::names::{self, bare_uuid};
use crate::world::Runner;

/// The scale-down phase's hand-off.
pub(super) struct ScaleDown {
    /// Drains of the removed runners (before any termination).
    pub drains: Vec<Action>,
    /// Terminations.
    pub actions: Vec<Action>,
    /// Runner and command deletions.
    pub deletions: Vec<Action>,
    /// The instances it terminates.
    pub terminated: Vec<String>,
}

/// Plans the scale-down of `runners.victims`.
pub(super) fn plan(
    config: &Config,
    world: &Index,
    runners: &Runners,
    fleet: &Fleet,
    replaced: &[String],
) -> ScaleDown {
    let mut terminated: Vec<String> = runners
        .victims
        .iter()
        .filter_map(|r| world.claimed_by(r))
        .filter(|i| !runners.orphan_instances.contains(i) && !runners.occupy(world, i))
        .collect();
    terminated.sort();
    terminated.dedup();
    let spare = surplus(world, runners, fleet, &terminated, replaced);
    terminated.extend(spare);
    let drains = runners
        .victims
        .iter()
        .map(|r| Action::DrainRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            instance: world.claimed_by(r),
            reason: why(runners, fleet, r),
        })
        .collect();
    let mut actions = Vec::new();
    if !terminated.is_empty() {
        let rotated = runners
            .victims
            .iter()
            .any(|r| rotation(runners, r).is_some());
        let what = if rotated {
            "scale-down, rotation"
        } else {
            "scale-down"
        };
        actions.push(Action::TerminateInstances {
            ids: terminated.clone(),
            reason: format!("{what}: they hold removed runners or no runner at all"),
        });
    }
    let deletions = deletions(config, runners, fleet);
    ScaleDown {
        drains,
        actions,
        deletions,
        terminated,
    }
}

/// The removed runners, then their commands.
fn deletions(config: &Config, runners: &Runners, fleet: &Fleet) -> Vec<Action> {
    let mut deletions = Vec::new();
    for r in &runners.victims {
        deletions.push(Action::DeleteRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            reason: format!(
                "{} ({}, {})",
                why(runners, fleet, r),
                r.status,
                if r.busy { "busy" } else { "idle" }
            ),
        });
    }
    for r in &runners.victims {
        deletions.push(Action::DeleteParameter {
            name: names::runner_parameter(&config.name, &r.uuid),
            reason: match rotation(runners, r) {
                Some(_) => format!(
                    "its runner {} is rotated out (no older value stays)",
                    r.name
                ),
                None => format!("its runner {} is removed", r.name),
            },
        });
    }
    deletions
}

/// Why the runner is removed: its rotation, or the scale-down.
fn why(runners: &Runners, fleet: &Fleet, r: &Runner) -> String {
    rotation(runners, r).map_or_else(|| format!("scale-down to {}", fleet.target), str::to_owned)
}

/// Why the runner is rotated, if it is.
fn rotation<'r>(runners: &'r Runners, r: &Runner) -> Option<&'r str> {
    runners
        .rotations
        .get(&bare_uuid(&r.uuid))
        .map(String::as_str)
}

/// The target drops with noTermination: surplus instances of the kept request holding no
/// kept runner go too. Checked at every apply, not only when the target drops: a run
/// stopped between lowering the target and terminating leaves the fleet above target for
/// good.
fn surplus(
    world: &Index,
    runners: &Runners,
    fleet: &Fleet,
    terminated: &[String],
    replaced: &[String],
) -> Vec<String> {
    let Some(f) = fleet.keep else {
        return Vec::new();
    };
    let kept_claims: BTreeSet<String> = runners
        .kept()
        .copied()
        .chain(runners.busy_orphans.iter().copied())
        .filter_map(|r| world.claimed_by(r))
        .collect();
    let ended = |i: &String| {
        terminated.contains(i) || runners.orphan_instances.contains(i) || replaced.contains(i)
    };
    let alive: Vec<&String> = f
        .instance_ids
        .iter()
        .filter(|i| world.exists(i) && !ended(i))
        .collect();
    let surplus = alive.len().saturating_sub(fleet.target as usize);
    alive
        .into_iter()
        .filter(|i| !kept_claims.contains(*i))
        .take(surplus)
        .cloned()
        .collect()
}
