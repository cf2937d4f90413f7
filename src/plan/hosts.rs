//! Phase 6, the hosts: roll-outs and repair. A host on an old configuration (an older
//! launch template version, an instance type or zone no longer configured, or a request
//! this plan or an earlier one replaced) is replaced when its runner is idle, a batch at
//! a time; a busy one waits for a later apply. A host that holds no claim while a runner
//! waits for one, or whose runner has been OFFLINE past the grace, is replaced too. Every
//! replacement drains the runner first (disable, re-read, go on only without a step).

use std::collections::BTreeSet;

use super::fleet::Choice;
use super::index::Index;
use super::runners::Runners;
use super::Action;
use crate::config::Config;
use crate::names::bare_uuid;
use crate::world::{FleetSpec, InstanceInfo, Runner, RunnerStatus};

/// The launch template version hosts should run after this plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Current {
    /// Newest version now, if the template exists.
    pub latest: Option<i64>,
    /// This plan adds a version (or creates the template).
    pub new_version: bool,
}

impl Current {
    /// The version number after this plan (predicted: the lock keeps others out).
    fn number(&self) -> i64 {
        self.latest.unwrap_or(0) + i64::from(self.new_version)
    }
}

/// The hosts phase's hand-off.
#[derive(Default)]
pub(super) struct Hosts {
    /// Drains of the runners whose hosts are replaced.
    pub drains: Vec<Action>,
    /// Terminations of the replaced hosts.
    pub terminations: Vec<Action>,
    /// Runners enabled again (after their host's replacement, or left disabled).
    pub enables: Vec<Action>,
    /// Hosts this plan terminates.
    pub ended: Vec<String>,
    /// How the roll-out stands, for people.
    pub notes: Vec<String>,
    /// Hosts outside the kept request that still run a kept runner after this plan: the
    /// kept request's target leaves room for them.
    pub held_elsewhere: u32,
}

/// One host of a kept runner, or of the kept request.
struct Host<'a> {
    instance: &'a InstanceInfo,
    runner: Option<&'a Runner>,
    owned: bool,
    /// A busy runner holds it (its own, or another whose claim names it too).
    busy: bool,
    outdated: Option<String>,
}

/// Why a host is replaced.
enum Why {
    Outdated(String),
    Broken(String),
}

/// Plans the roll-out and repairs.
pub(super) fn plan(
    config: &Config,
    world: &Index,
    runners: &Runners,
    choice: Choice,
    spec: &FleetSpec,
    current: Current,
    force: bool,
) -> Hosts {
    let mut out = Hosts::default();
    let gone: BTreeSet<String> = runners
        .victims
        .iter()
        .filter_map(|r| world.claimed_by(r))
        .filter(|i| !runners.occupy(world, i))
        .chain(runners.orphan_instances.iter().cloned())
        .collect();
    let mut hosts = hosts(world, runners, &gone, choice, spec, current);
    on_demand_surplus(choice, &mut hosts);
    let waiting: Vec<&Runner> = runners
        .kept()
        .copied()
        .filter(|r| {
            world
                .claimed_by(r)
                .is_none_or(|i| !world.is_up(&i) || gone.contains(&i))
        })
        .collect();
    let batch = config
        .rollout
        .batch
        .hosts(runners.kept().count() as u32)
        .saturating_sub(waiting.len() as u32) as usize;
    let replaced: Vec<(&Host, Why)> = candidates(world, config, &hosts, force)
        .into_iter()
        .take(batch)
        .collect();
    let now: BTreeSet<&str> = replaced
        .iter()
        .map(|(h, _)| h.instance.id.as_str())
        .collect();
    out.notes.extend(note(&hosts, current, &now, config));
    replace(&replaced, &mut out);
    claimless(world, config, runners, &hosts, &waiting, &mut out);
    disabled_left(runners, &mut out);
    out.held_elsewhere = held_elsewhere(world, runners, choice, &hosts, &out.ended);
    out
}

/// Hosts to replace, the broken first, then the outdated with an idle runner (any with
/// `force`), not-online runners and older hosts first.
fn candidates<'h, 'a>(
    world: &Index,
    config: &Config,
    hosts: &'h [Host<'a>],
    force: bool,
) -> Vec<(&'h Host<'a>, Why)> {
    let mut candidates = Vec::new();
    for h in hosts {
        let Some(r) = h.runner else { continue };
        if let Some(why) = broken(world, config, h, r) {
            candidates.push((h, Why::Broken(why)));
        } else if let Some(why) = h.outdated.as_ref().filter(|_| force || !h.busy) {
            candidates.push((h, Why::Outdated(why.clone())));
        }
    }
    candidates.sort_by_key(|(h, why)| {
        (
            matches!(why, Why::Outdated(_)),
            h.runner.is_some_and(Runner::is_online),
            h.instance.launched_at,
            h.instance.id.clone(),
        )
    });
    candidates
}

/// Hosts of the kept request older than the grace that hold no claim, while a runner has
/// been free as long: they serve nothing, so they go without counting against the batch.
/// A runner is free that long when its newest claim (free, or naming a gone host) is that
/// old, or it never had one and is that old: a new runner, or one just released, may be
/// claimed by a claimless host any second.
fn claimless(
    world: &Index,
    config: &Config,
    runners: &Runners,
    hosts: &[Host],
    waiting: &[&Runner],
    out: &mut Hosts,
) {
    let grace = config.spot.host_grace_seconds;
    let Some(waits) = waiting.iter().find(|r| {
        let since = match world.claims.get(bare_uuid(&r.uuid).as_str()) {
            Some(c) => c.written_at,
            None => r.status_since,
        };
        !r.is_online() && older_than(world, since, grace)
    }) else {
        return;
    };
    let ids: Vec<String> = hosts
        .iter()
        .filter(|h| {
            h.runner.is_none()
                && h.owned
                && !runners.occupy(world, &h.instance.id)
                && older_than(world, h.instance.launched_at, grace)
        })
        .map(|h| h.instance.id.clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    out.ended.extend(ids.iter().cloned());
    out.terminations.push(Action::TerminateInstances {
        ids,
        reason: format!(
            "repair: they hold no claim {} after their launch while {} waits for a host",
            minutes(grace),
            waits.name
        ),
    });
}

/// Hosts outside the kept request that still run a kept runner (or a busy orphan, which
/// waits on its host to be deleted when idle) after this plan.
fn held_elsewhere(
    world: &Index,
    runners: &Runners,
    choice: Choice,
    hosts: &[Host],
    ended: &[String],
) -> u32 {
    let orphans: BTreeSet<String> = runners
        .busy_orphans
        .iter()
        .map(|r| bare_uuid(&r.uuid))
        .collect();
    let kept = hosts
        .iter()
        .filter(|h| !h.owned && h.runner.is_some() && !ended.contains(&h.instance.id))
        .map(|h| h.instance.id.as_str());
    let orphaned = world
        .observed
        .instances
        .iter()
        .filter(|i| i.is_up() && !choice.owns(i) && world.explained(i))
        .filter(|i| world.held_by(&i.id).iter().any(|u| orphans.contains(*u)))
        .map(|i| i.id.as_str());
    // One host runs one runner, also when two runners' newest claims name it.
    kept.chain(orphaned).collect::<BTreeSet<&str>>().len() as u32
}

/// The up hosts of kept runners, and the kept request's up instances, with what makes
/// each outdated.
fn hosts<'a>(
    world: &Index<'a>,
    runners: &Runners,
    gone: &BTreeSet<String>,
    choice: Choice,
    spec: &FleetSpec,
    current: Current,
) -> Vec<Host<'a>> {
    let zones: BTreeSet<&str> = world
        .observed
        .subnets
        .iter()
        .filter(|s| spec.subnets.contains(&s.id))
        .map(|s| s.az.as_str())
        .collect();
    world
        .observed
        .instances
        .iter()
        .filter(|i| i.is_up() && !gone.contains(&i.id))
        .filter_map(|i| {
            let runner = world
                .held_by(&i.id)
                .iter()
                .find(|u| runners.keeps(u))
                .and_then(|u| world.runners.get(*u).copied());
            // An instance no request explains counts as the kept request's (or the new
            // one's): on AWS every fleet instance carries its request's launch tag, and a
            // listing lags; only one another request lists or tags is of a replaced one.
            let owned = choice.owns(i) || !world.explained(i);
            if !owned && runner.is_none() {
                return None; // a stray: the garbage phase's
            }
            let outdated = if !owned {
                Some(match i.fleet_request.as_deref() {
                    Some(id) => format!("fleet request {id} (replaced)"),
                    None => "a replaced fleet request".to_owned(),
                })
            } else if i
                .template_version
                .is_some_and(|v| current.new_version || v < current.number())
            {
                Some(format!(
                    "launch template v{}",
                    i.template_version.unwrap_or(0)
                ))
            } else if !spec.instance_types.contains(&i.instance_type)
                || !(zones.is_empty() || zones.contains(i.az.as_str()))
            {
                Some(format!(
                    "{} in {} (no longer configured)",
                    i.instance_type, i.az
                ))
            } else {
                None
            };
            Some(Host {
                instance: i,
                runner,
                owned,
                busy: runners.busy_on(world, &i.id),
                outdated,
            })
        })
        .collect()
}

/// The kept request's on-demand hosts above its on-demand part (left from a fallback that
/// went back to spot, or a lower base) are outdated, idle and newer ones first: each one
/// replaced lets the fleet launch a spot instance in its place.
fn on_demand_surplus(choice: Choice, hosts: &mut [Host]) {
    let Some(keep) = choice.keep else { return };
    let part = usize::try_from(keep.on_demand_target).unwrap_or(0);
    let mut on_demand: Vec<&mut Host> = hosts
        .iter_mut()
        .filter(|h| h.owned && h.instance.on_demand && h.outdated.is_none())
        .collect();
    let surplus = on_demand.len().saturating_sub(part);
    on_demand.sort_by_key(|h| (h.busy, std::cmp::Reverse(h.instance.launched_at)));
    for h in on_demand.into_iter().take(surplus) {
        h.outdated = Some(format!(
            "on-demand beyond the fleet's on-demand part of {part} (spot takes its place)"
        ));
    }
}

/// A host whose runner has not been connected for longer than the grace, although the
/// host and its claim are older than the grace: its runner agent is failing.
fn broken(world: &Index, config: &Config, h: &Host, r: &Runner) -> Option<String> {
    let grace = config.spot.host_grace_seconds;
    let claim = world.claims.get(bare_uuid(&r.uuid).as_str())?;
    let down = matches!(r.status, RunnerStatus::Offline | RunnerStatus::Unregistered)
        && !h.busy
        && older_than(world, h.instance.launched_at, grace)
        && older_than(world, claim.written_at, grace)
        && older_than(world, r.status_since, grace);
    down.then(|| {
        format!(
            "repair: {} for over {} while its host runs",
            r.status,
            minutes(grace)
        )
    })
}

/// Whether `t` is more than `seconds` before the observation (unknown counts as old).
fn older_than(world: &Index, t: Option<jiff::Timestamp>, seconds: u64) -> bool {
    let grace = jiff::SignedDuration::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX));
    t.is_none_or(|t| world.observed.observed_at.duration_since(t) >= grace)
}

fn minutes(seconds: u64) -> String {
    format!("{} min", seconds.div_ceil(60))
}

/// Drain, terminate and enable again each replaced host's runner (the garbage phase
/// releases its claim, since its host ends).
fn replace(replaced: &[(&Host, Why)], out: &mut Hosts) {
    if replaced.is_empty() {
        return;
    }
    let mut ids = Vec::new();
    let mut reasons = BTreeSet::new();
    for (h, why) in replaced {
        let Some(r) = h.runner else { continue };
        let reason = match why {
            Why::Outdated(old) => format!("roll-out: its host runs {old}"),
            Why::Broken(why) => why.clone(),
        };
        out.drains.push(Action::DrainRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            instance: Some(h.instance.id.clone()),
            reason: reason.clone(),
        });
        out.enables.push(Action::EnableRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            reason: "its host was replaced; the new host runs it".to_owned(),
        });
        reasons.insert(match why {
            Why::Outdated(_) => "roll-out: hosts on an old configuration, idle".to_owned(),
            Why::Broken(why) => why.clone(),
        });
        ids.push(h.instance.id.clone());
    }
    out.ended.extend(ids.iter().cloned());
    out.terminations.push(Action::TerminateInstances {
        ids,
        reason: format!(
            "{} (their runners were drained; the fleet launches replacements)",
            reasons.into_iter().collect::<Vec<_>>().join("; ")
        ),
    });
}

/// Kept runners left DISABLED (an apply stopped between a drain and its enable) are
/// enabled again, unless this plan replaces their host (it enables them after).
fn disabled_left(runners: &Runners, out: &mut Hosts) {
    for r in runners.kept() {
        let drained = out
            .drains
            .iter()
            .any(|a| matches!(a, Action::DrainRunner { uuid, .. } if *uuid == r.uuid));
        if r.status == RunnerStatus::Disabled && !drained && !r.busy {
            out.enables.push(Action::EnableRunner {
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                reason: "drift: disabled, but the plan keeps it (an earlier apply stopped before enabling it again)".to_owned(),
            });
        }
    }
}

/// "Roll-out: 3 hosts on launch template v4, current v5: 1 idle replaced now, 2 busy
/// wait", for the hosts of runners on an old configuration (`None`: there are none).
fn note(hosts: &[Host], current: Current, now: &BTreeSet<&str>, config: &Config) -> Option<String> {
    let old: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.outdated.is_some() && h.runner.is_some())
        .collect();
    if old.is_empty() {
        return None;
    }
    let replaced = old
        .iter()
        .filter(|h| now.contains(h.instance.id.as_str()))
        .count();
    let busy = old
        .iter()
        .filter(|h| !now.contains(h.instance.id.as_str()) && h.busy)
        .count();
    let waiting = old.len() - replaced - busy;
    let mut parts = vec![format!("{replaced} idle replaced now")];
    if busy > 0 {
        parts.push(format!("{busy} busy wait"));
    }
    if waiting > 0 {
        let batch = match config.rollout.batch {
            crate::config::RolloutBatch::Count(c) => c.to_string(),
            crate::config::RolloutBatch::Percent(p) => format!("\"{p}%\""),
        };
        parts.push(format!("{waiting} idle wait for a later batch (rollout.batch = {batch}, hosts without a runner count as down)"));
    }
    let what: BTreeSet<&str> = old.iter().filter_map(|h| h.outdated.as_deref()).collect();
    Some(format!(
        "Roll-out: {} host{} on {}, current v{}: {}.",
        old.len(),
        if old.len() == 1 { "" } else { "s" },
        what.into_iter().collect::<Vec<_>>().join(", "),
        current.number(),
        parts.join(", ")
    ))
}
