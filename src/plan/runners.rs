//! Phase 3, the runners: orphans of either side go, runners whose stored command is not
//! on the fleet key are rotated (replaced, then retired), labels follow the config, and the
//! count follows the capacity (busy runners stay).

use std::collections::{BTreeMap, BTreeSet};

use super::index::Index;
use super::key::{on_key, Key};
use super::{Action, PlanError, PlanOptions};
use crate::config::{Config, BITBUCKET_RUNNER_LIMIT};
use crate::names::{self, bare_uuid};
use crate::world::{Runner, RunnerParameter, RunnerStatus};

/// The runners phase's hand-off.
pub(super) struct Runners<'a> {
    /// Parameter drift, orphan runners, label updates and creates, in order.
    pub actions: Vec<Action>,
    /// What the user should know.
    pub warnings: Vec<String>,
    /// Runners with a stored command, by slot.
    pub healthy: Vec<&'a Runner>,
    /// Runners without a stored command that are busy: they wait (unless --force).
    pub busy_orphans: Vec<&'a Runner>,
    /// Runners removed by scale-down or rotation (the scale-down phase deletes them).
    pub victims: Vec<&'a Runner>,
    /// Runners rotated out (bare uuid -> why), retired now (one of `victims`) or, busy,
    /// when idle: a new runner replaces each, so they do not count towards the capacity.
    pub rotations: BTreeMap<String, String>,
    /// Runners this plan registers.
    pub creates: usize,
    /// Orphan runners deleted by this plan (bare uuids).
    pub orphans_deleted: BTreeSet<String>,
    /// The instances of deleted orphans, terminated with them.
    pub orphan_instances: Vec<String>,
}

impl Runners<'_> {
    /// Runners after the plan: the fleet's target (a busy orphan still occupies its instance).
    pub fn target(&self) -> u32 {
        (self.healthy.len() + self.creates - self.victims.len() + self.busy_orphans.len()) as u32
    }

    /// Whether the plan removes the runner (bare uuid): an orphan or a victim.
    pub fn removes(&self, uuid: &str) -> bool {
        self.orphans_deleted.contains(uuid)
            || self.victims.iter().any(|v| bare_uuid(&v.uuid) == uuid)
    }

    /// Whether the plan keeps the runner (bare uuid) with its command: one of [`Self::kept`].
    pub fn keeps(&self, uuid: &str) -> bool {
        self.kept().any(|r| bare_uuid(&r.uuid) == uuid)
    }

    /// Whether the runner (bare uuid) is there after the plan: kept, or a busy orphan.
    pub fn stays(&self, uuid: &str) -> bool {
        self.keeps(uuid) || self.busy_orphans.iter().any(|r| bare_uuid(&r.uuid) == uuid)
    }

    /// Whether a runner that [stays](Self::stays) holds the instance by its newest claim:
    /// it may be running a step there, so the instance stays too.
    pub fn occupy(&self, world: &Index, instance: &str) -> bool {
        world.held_by(instance).iter().any(|u| self.stays(u))
    }

    /// Whether a busy runner that [stays](Self::stays) holds the instance.
    pub fn busy_on(&self, world: &Index, instance: &str) -> bool {
        world
            .held_by(instance)
            .iter()
            .filter(|u| self.stays(u))
            .any(|u| world.runners.get(*u).is_some_and(|r| r.busy))
    }

    /// Healthy runners the plan keeps, by slot.
    pub fn kept(&self) -> impl Iterator<Item = &&Runner> {
        self.healthy
            .iter()
            .filter(|r| !self.victims.iter().any(|v| v.uuid == r.uuid))
    }
}

/// Plans the runners and their stored commands for `desired` runners.
pub(super) fn plan<'a>(
    config: &Config,
    world: &Index<'a>,
    key: &Key,
    desired: u32,
    options: PlanOptions,
) -> Result<Runners<'a>, PlanError> {
    let fleet = &config.name;
    let mut out = Runners {
        actions: orphan_parameters(world),
        warnings: Vec::new(),
        healthy: Vec::new(),
        busy_orphans: Vec::new(),
        victims: Vec::new(),
        rotations: BTreeMap::new(),
        creates: 0,
        orphans_deleted: BTreeSet::new(),
        orphan_instances: Vec::new(),
    };
    orphans(world, options, &mut out);
    out.healthy = world
        .runners
        .values()
        .copied()
        .filter(|r| world.has_command(r))
        .collect();
    out.healthy
        .sort_by_key(|r| names::runner_slot(fleet, &r.name));
    let desired = desired as usize;
    rotate(
        config,
        world,
        key.arn.as_deref(),
        desired,
        options,
        &mut out,
    );
    labels(config, &mut out);
    // Rotated runners are replaced: only the others count towards the capacity.
    let current = out.healthy.len() - out.rotations.len();
    if desired > current {
        creates(fleet, current, desired, &mut out);
    } else if desired < current {
        victims(fleet, world, current, desired, options, &mut out);
    }
    check_limit(world, &out)?;
    Ok(out)
}

/// Runners whose labels differ get the configured ones (not those rotated out now).
fn labels(config: &Config, out: &mut Runners) {
    for r in &out.healthy {
        if !same_labels(&r.labels, config.labels()) && !out.victims.contains(r) {
            out.actions.push(Action::UpdateRunner {
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                from: r.labels.clone(),
            });
        }
    }
}

/// Stored commands of no runner go.
fn orphan_parameters(world: &Index) -> Vec<Action> {
    world
        .observed
        .parameters
        .iter()
        .filter(|p| !world.runners.contains_key(&p.runner_uuid))
        .map(|p| Action::DeleteOrphanParameter {
            name: p.name.clone(),
            runner_uuid: p.runner_uuid.clone(),
        })
        .collect()
}

/// Why a stored command is not current (a SecureString on the fleet key), if it is not.
/// Without an ARN the key is created by this plan: every existing command is on another.
fn not_current(p: &RunnerParameter, key_arn: Option<&str>, configured: &str) -> Option<String> {
    if !p.is_secure() {
        return Some(format!(
            "rotate: its command is a {}, not a SecureString on the fleet key",
            p.kind
        ));
    }
    if !p.current_format {
        return Some(
            "rotate: its command is stored in an older format, which hosts no longer read"
                .to_owned(),
        );
    }
    let key = p.key_id.as_deref();
    if key_arn.is_some_and(|arn| key.is_some_and(|k| on_key(k, arn, configured))) {
        return None;
    }
    Some(format!(
        "rotate: its command is on key {}, not the fleet key",
        key.unwrap_or("(none reported)")
    ))
}

/// Runners whose stored command is not current are rotated, never re-encrypted in place:
/// SSM cannot change a parameter's type ("you can't change a parameter from a String type
/// to a SecureString type. You must create a new, unique parameter": PutParameter,
/// HierarchyTypeMismatchException, AWS Systems Manager API Reference), and an overwrite
/// keeps the old value in GetParameterHistory under the old key. A new runner replaces
/// each (registered first, its command a SecureString on the fleet key); the old one is
/// retired like a scale-down victim (drained, its host terminated, the runner, its command
/// and its claims deleted). A busy one waits with its host (counted in the target) unless
/// --force. Bitbucket's limit counts a replacement before its old runner goes, so
/// rotations that do not fit under it wait.
fn rotate<'a>(
    config: &Config,
    world: &Index<'a>,
    key_arn: Option<&str>,
    desired: usize,
    options: PlanOptions,
    out: &mut Runners<'a>,
) {
    let stale: Vec<(&'a Runner, String)> = out
        .healthy
        .iter()
        .filter_map(|r| {
            let p = world.params.get(bare_uuid(&r.uuid).as_str())?;
            not_current(p, key_arn, &config.kms.key).map(|why| (*r, why))
        })
        .collect();
    // At most: today - orphans + creates, where creates = desired - (healthy - rotated).
    let room = (BITBUCKET_RUNNER_LIMIT as usize + out.orphans_deleted.len() + out.healthy.len())
        .saturating_sub(world.observed.scope_runner_count + desired);
    if stale.len() > room {
        out.warnings.push(format!(
            "{} runner(s) wait for their rotation: a replacement is registered before its old runner goes, and {} would then hold more than Bitbucket's {BITBUCKET_RUNNER_LIMIT} runners (lower the capacity for one apply to make room)",
            stale.len() - room,
            world.observed.scope_name
        ));
    }
    let mut busy = Vec::new();
    for (r, why) in stale.into_iter().take(room) {
        if r.busy && !options.force {
            busy.push(r.name.as_str());
        } else {
            out.victims.push(r);
        }
        out.rotations.insert(bare_uuid(&r.uuid), why);
    }
    if !busy.is_empty() {
        out.warnings.push(format!(
            "{} {} to rotate (the stored command is not a SecureString in the current format on the fleet key) but busy with a pipeline step: retired when idle (run again later, or pass --force); a new runner replaces it now",
            if busy.len() == 1 { "runner" } else { "runners" },
            busy.join(", "),
        ));
    }
}

/// Runners whose command is not stored: their secret is lost, so no instance of ours can
/// start them again; but one that read it earlier may be running a step on it, and
/// deleting the runner would kill that step. Busy orphans wait like busy surplus runners
/// (or --force).
fn orphans<'a>(world: &Index<'a>, options: PlanOptions, out: &mut Runners<'a>) {
    for (uuid, r) in &world.runners {
        if world.params.contains_key(uuid.as_str()) {
            continue;
        }
        if r.busy && !options.force {
            out.busy_orphans.push(*r);
        } else {
            out.orphans_deleted.insert(uuid.clone());
        }
    }
    for uuid in &out.orphans_deleted {
        // The instance running it can never run another runner (it claimed this one); it
        // goes with it unless another runner that stays names it too (a stale claim on one
        // side, but which side is not known, so the instance stays).
        let instance = world.claimant(uuid).filter(|i| {
            !out.orphan_instances.contains(i)
                && world
                    .held_by(i)
                    .iter()
                    .all(|u| out.orphans_deleted.contains(*u) || !world.runners.contains_key(*u))
        });
        out.orphan_instances.extend(instance.clone());
        let r = world.runners[uuid];
        out.actions.push(Action::DeleteOrphanRunner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            instance,
        });
    }
    if let [one] = out.busy_orphans.as_slice() {
        out.warnings
            .push(busy_orphans_warning(format!("runner {} has no", one.name)));
    } else if !out.busy_orphans.is_empty() {
        let names: Vec<&str> = out.busy_orphans.iter().map(|r| r.name.as_str()).collect();
        out.warnings.push(busy_orphans_warning(format!(
            "runners {} have no",
            names.join(", ")
        )));
    }
}

fn busy_orphans_warning(who: String) -> String {
    format!("{who} stored command (the secret is lost) but busy with a pipeline step: deleted when idle (run again later, or pass --force); a new runner replaces it now")
}

/// New runners in the lowest free slots (busy orphans and rotated runners keep their
/// names until deleted), `current` runners counting towards `desired`.
fn creates(fleet: &str, current: usize, desired: usize, out: &mut Runners) {
    let used: BTreeSet<u32> = out
        .healthy
        .iter()
        .chain(&out.busy_orphans)
        .filter_map(|r| names::runner_slot(fleet, &r.name))
        .collect();
    let mut slot = 1;
    while current + out.creates < desired {
        if !used.contains(&slot) {
            out.actions.push(Action::CreateRunner {
                name: names::runner_name(fleet, slot),
            });
            out.creates += 1;
        }
        slot += 1;
    }
}

/// The runners scale-down removes from the `current` ones (not rotated): unclaimed first,
/// then not online, then online and idle; newest slot first; busy ones only with --force.
fn victims<'a>(
    fleet: &str,
    world: &Index<'a>,
    current: usize,
    desired: usize,
    options: PlanOptions,
    out: &mut Runners<'a>,
) {
    let mut candidates: Vec<&Runner> = out
        .healthy
        .iter()
        .copied()
        .filter(|r| options.force || !r.busy)
        .filter(|r| !out.rotations.contains_key(&bare_uuid(&r.uuid)))
        .collect();
    candidates.sort_by_key(|r| {
        let claimed = world.claimed_by(r).is_some();
        (
            removal_rank(&r.status, claimed),
            r.busy,
            std::cmp::Reverse(names::runner_slot(fleet, &r.name)),
        )
    });
    let wanted = current - desired;
    let removed: Vec<&Runner> = candidates.into_iter().take(wanted).collect();
    if removed.len() < wanted {
        out.warnings.push(format!(
            "scale-down stops at {} runners: {} of the runners to remove are busy with a pipeline step (run again when they are idle, or pass --force)",
            current - removed.len(),
            wanted - removed.len()
        ));
    }
    out.victims.extend(removed);
}

/// Where a runner stands, for choosing whom to remove first.
fn removal_rank(status: &RunnerStatus, claimed: bool) -> u8 {
    match (claimed, status) {
        (false, _) => 0,
        (true, RunnerStatus::Online) => 2,
        (true, _) => 1,
    }
}

/// Bitbucket's limit counts every runner in the scope, bbfleet's or not.
fn check_limit(world: &Index, out: &Runners) -> Result<(), PlanError> {
    let today = world.observed.scope_runner_count;
    // The most it holds: new runners are registered before victims (rotated ones) go.
    let after = today - out.orphans_deleted.len() + out.creates;
    if out.creates > 0 && after > BITBUCKET_RUNNER_LIMIT as usize {
        return Err(PlanError::RunnerLimit {
            scope: world.observed.scope_name.clone(),
            after,
            today,
            others: today - world.runners.len(),
            limit: BITBUCKET_RUNNER_LIMIT,
        });
    }
    Ok(())
}

fn same_labels(a: &[String], b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.iter().collect();
    let b: BTreeSet<&String> = b.iter().collect();
    a == b
}
