//! Phase 7, garbage and drift: claims of runners that are gone or going, instances outside
//! any live fleet request, claims naming instances that do not run, superseded claims.

use std::collections::BTreeSet;

use super::fleet::Fleet;
use super::hosts::Hosts;
use super::index::Index;
use super::runners::Runners;
use super::scale_down::ScaleDown;
use super::{Action, PlanOptions};
use crate::config::Config;
use crate::names::{self, bare_uuid};
use crate::world::{ClaimHolder, InstanceInfo};

/// The garbage phase's hand-off.
pub(super) struct Garbage {
    /// Claim deletions, stray terminations, releases and prunes, in order.
    pub actions: Vec<Action>,
    /// What the user should know.
    pub warnings: Vec<String>,
}

/// Plans the garbage and drift repairs.
pub(super) fn plan(
    config: &Config,
    world: &Index,
    runners: &Runners,
    fleet: &Fleet,
    scale_down: &ScaleDown,
    hosts: &Hosts,
    options: PlanOptions,
) -> Garbage {
    let mut out = Garbage {
        actions: Vec::new(),
        warnings: Vec::new(),
    };
    let stale: Vec<String> = world
        .observed
        .claims
        .iter()
        .filter(|c| !world.runners.contains_key(&c.runner_uuid) || runners.removes(&c.runner_uuid))
        .map(|c| c.name.clone())
        .collect();
    if !stale.is_empty() {
        out.actions.push(Action::DeleteClaims {
            names: stale,
            reason: "their runners no longer exist".to_owned(),
        });
    }
    let ended: Vec<String> = scale_down
        .terminated
        .iter()
        .chain(&runners.orphan_instances)
        .chain(&hosts.ended)
        .cloned()
        .collect();
    let grace = config.spot.stray_grace_seconds;
    let mut strays = stray_instances(world, runners, fleet, grace, &ended);
    if !options.force {
        hold_busy_strays(world, runners, &mut strays, &mut out.warnings);
    }
    if !strays.is_empty() {
        out.actions.push(Action::TerminateStrayInstances {
            ids: strays.clone(),
        });
    }
    // A claim is live while its instance is pending or running and this plan does not
    // end it; otherwise the runner's next generation is written `free`, after the
    // terminations above, so the instance cannot still be using it.
    let alive = |id: &str| {
        world.is_up(id) && !ended.iter().any(|v| v == id) && !strays.iter().any(|s| s == id)
    };
    release_and_prune(world, runners, &alive, &mut out.actions);
    out
}

/// A running stray that hosts a busy runner is running a pipeline step: it waits, like
/// busy surplus runners do. (A stopped one runs nothing: its claim is released, so holding
/// it would only defer its termination to the next plan.)
fn hold_busy_strays(
    world: &Index,
    runners: &Runners,
    strays: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let busy_hosts: BTreeSet<String> = world
        .runners
        .iter()
        .filter(|(u, r)| r.busy && !runners.removes(u))
        .filter_map(|(u, _)| world.claimant(u))
        .filter(|i| world.is_up(i))
        .collect();
    let held: Vec<String> = strays
        .iter()
        .filter(|i| busy_hosts.contains(*i))
        .cloned()
        .collect();
    // One warning per instance: a later plan may hold fewer of them (one that a launching
    // request may own stops looking stray), and says nothing the first did not.
    strays.retain(|i| !busy_hosts.contains(i));
    for id in held {
        warnings.push(format!(
            "stray instance(s) {id} host a runner busy with a pipeline step: terminated when it is idle (run again later, or pass --force)"
        ));
    }
}

/// For each kept runner: its newest claim is released (the next generation written
/// `free`) when its claimant is gone; older generations never matter again (claimants read
/// only the newest), and the newest is kept unless this plan writes a newer one, so no
/// name is re-created. Generation 0, the offer, stays with the runner (pruning it when the
/// first host claims would make every converged fleet plan a deletion); a runner without
/// any claim is offered.
fn release_and_prune(
    world: &Index,
    runners: &Runners,
    alive: &dyn Fn(&str) -> bool,
    actions: &mut Vec<Action>,
) {
    let mut superseded = Vec::new();
    for r in runners.kept() {
        let uuid = bare_uuid(&r.uuid);
        let Some(newest) = world.claims.get(uuid.as_str()) else {
            actions.push(Action::OfferRunner { runner: uuid });
            continue;
        };
        let released = match &newest.holder {
            ClaimHolder::Instance(i) if !alive(i) => newest.generation.checked_add(1),
            _ => None,
        };
        if let Some(generation) = released {
            actions.push(Action::ReleaseClaim {
                runner: uuid.clone(),
                generation,
                instance: newest.holder.as_str().to_owned(),
            });
        }
        superseded.extend(
            world
                .observed
                .claims
                .iter()
                .filter(|c| c.runner_uuid == uuid && c.generation != names::OFFER_GENERATION)
                .filter(|c| {
                    c.generation < newest.generation
                        || (released.is_some() && c.generation == newest.generation)
                })
                .map(|c| c.name.clone()),
        );
    }
    if !superseded.is_empty() {
        actions.push(Action::PruneClaims { names: superseded });
    }
}

/// Fleet-tagged instances that no live request owns, besides those this plan already
/// ends (`already`) and the hosts of kept runners (the hosts phase replaces those when
/// their runner is idle, a batch at a time). An instance belongs to the kept request if
/// the request lists it or if its `aws:ec2spot:fleet-request-id` launch tag names it:
/// DescribeSpotFleetInstances "might be out of date", the tag is set at launch. An
/// instance listed by, or tagged with, another request (a cancelled one: its instances
/// run on) is a leftover. One that neither a listing nor its tag explains is a leftover
/// once it is older than the grace, and while the kept request lists fewer instances than
/// its target it may be that request's launch in flight, so it waits.
fn stray_instances(
    world: &Index,
    runners: &Runners,
    fleet: &Fleet,
    grace_seconds: u64,
    already: &[String],
) -> Vec<String> {
    let (observed, keep, target) = (world.observed, fleet.keep, fleet.target);
    // In flight now (fewer listed than the target) and after this plan (fewer left than
    // the new target): an instance flagged now would otherwise be flagged by the next plan.
    let launching = keep.is_some_and(|k| {
        let listed = k.instance_ids.iter().filter(|i| world.exists(i));
        (listed.clone().count() as i64) < i64::from(k.target)
            && listed.filter(|i| !already.contains(i)).count() < target as usize
    });
    let owned = |i: &InstanceInfo| keep.is_some_and(|k| k.owns(i));
    let grace = jiff::SignedDuration::from_secs(i64::try_from(grace_seconds).unwrap_or(i64::MAX));
    // Without a launch time (never on EC2's answers) an instance counts as old.
    let young = |i: &InstanceInfo| {
        i.launched_at
            .is_some_and(|t| observed.observed_at.duration_since(t) < grace)
    };
    observed
        .instances
        .iter()
        .filter(|i| !owned(i) && !already.contains(&i.id))
        .filter(|i| !(i.is_up() && runners.occupy(world, &i.id)))
        .filter(|i| world.explained(i) || !(launching || young(i)))
        .map(|i| i.id.clone())
        .collect()
}
