//! The index of the observed world the phases share: runners and stored commands by
//! runner, the newest claim of each runner, and who claims what.

use std::collections::BTreeMap;

use crate::names::bare_uuid;
use crate::world::{Claim, InstanceInfo, Observed, Runner, RunnerParameter};

/// The observed world, indexed.
pub(super) struct Index<'a> {
    /// The (canonical) world.
    pub observed: &'a Observed,
    /// The fleet's runners by bare uuid.
    pub runners: BTreeMap<String, &'a Runner>,
    /// Stored commands by bare runner uuid.
    pub params: BTreeMap<&'a str, &'a RunnerParameter>,
    /// The newest claim generation of each runner.
    pub claims: BTreeMap<&'a str, &'a Claim>,
    /// Instances that exist (any state but terminated), by id.
    instances: BTreeMap<&'a str, &'a InstanceInfo>,
    /// The runners (bare uuids) each instance holds by a newest claim.
    holders: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Index<'a> {
    /// Indexes `observed`.
    pub fn new(observed: &'a Observed) -> Index<'a> {
        let claims = newest_claims(observed);
        let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in claims.values() {
            if let Some(i) = c.holder.instance() {
                holders.entry(i).or_default().push(c.runner_uuid.as_str());
            }
        }
        Index {
            observed,
            runners: observed
                .runners
                .iter()
                .map(|r| (bare_uuid(&r.uuid), r))
                .collect(),
            params: observed
                .parameters
                .iter()
                .map(|p| (p.runner_uuid.as_str(), p))
                .collect(),
            claims,
            instances: observed
                .instances
                .iter()
                .map(|i| (i.id.as_str(), i))
                .collect(),
            holders,
        }
    }

    /// The runners (bare uuids) whose newest claims name the instance.
    pub fn held_by(&self, instance: &str) -> &[&'a str] {
        self.holders.get(instance).map_or(&[], Vec::as_slice)
    }

    /// Whether the instance exists.
    pub fn exists(&self, id: &str) -> bool {
        self.instances.contains_key(id)
    }

    /// The existing instance the runner's newest claim names.
    pub fn claimed_by(&self, runner: &Runner) -> Option<String> {
        self.claimant(&bare_uuid(&runner.uuid))
    }

    /// [`Index::claimed_by`] by bare uuid.
    pub fn claimant(&self, uuid: &str) -> Option<String> {
        self.claims
            .get(uuid)
            .and_then(|c| c.holder.instance())
            .filter(|i| self.exists(i))
            .map(str::to_owned)
    }

    /// Whether a request explains the instance: some request lists it, or its launch tag
    /// names one. On AWS every fleet instance carries its request's launch tag.
    pub fn explained(&self, instance: &InstanceInfo) -> bool {
        instance.fleet_request.is_some()
            || self
                .observed
                .fleets
                .iter()
                .any(|f| f.instance_ids.contains(&instance.id))
    }

    /// Pending or running: it may be running a runner.
    pub fn is_up(&self, id: &str) -> bool {
        self.instances.get(id).is_some_and(|i| i.is_up())
    }

    /// Its command is stored.
    pub fn has_command(&self, runner: &Runner) -> bool {
        self.params.contains_key(bare_uuid(&runner.uuid).as_str())
    }
}

/// The newest claim generation of each runner.
pub fn newest_claims(observed: &Observed) -> BTreeMap<&str, &Claim> {
    let mut newest: BTreeMap<&str, &Claim> = BTreeMap::new();
    for c in &observed.claims {
        let slot = newest.entry(c.runner_uuid.as_str()).or_insert(c);
        if c.generation > slot.generation {
            *slot = c;
        }
    }
    newest
}
