//! The planner: a pure function from (config, desired state, observed world) to an
//! ordered list of actions. Printing a plan and executing it use the same value.
//!
//! `plan_apply` runs eight phases, each a function with a typed hand-off to the next:
//! [`key`] (the customer key), [`zones`] (the network), [`runners`] (Bitbucket runners and
//! their stored commands), [`template`] (the launch template), [`hosts`] (roll-outs and
//! repair: which hosts are replaced), [`fleet`] (the fleet request), [`scale_down`]
//! (instances of removed runners) and [`garbage`] (claims and strays). They
//! read the world through one [`index::Index`]. The planner knows only the domain model
//! ([`crate::world`]) and the config, never a provider's types.

mod actions;
mod desired;
mod destroy;
mod fleet;
mod garbage;
mod hosts;
mod index;
mod key;
mod on_demand;
mod render;
mod runners;
mod scale_down;
mod template;
mod zones;

use serde::{Deserialize, Serialize};

use crate::config::{Capacity, Config};
use crate::world::{FleetSpec, LaunchTemplateSpec, Observed};

pub use actions::{Action, Batch, Op, Traits};
pub use desired::desired;
pub use destroy::plan_destroy;
pub use index::newest_claims;
pub use render::{PlanView, Summary};

/// What the configuration asks for, with everything resolved (AMI, userdata, capacity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// How many runners, and why.
    pub capacity: Capacity,
    /// The launch template's newest version.
    pub launch_template: LaunchTemplateSpec,
    /// The fleet request.
    pub fleet: FleetSpec,
}

/// An ordered set of actions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Fleet name.
    pub fleet: String,
    /// Capacity the plan aims at (`None` for destroy).
    pub capacity: Option<Capacity>,
    /// In execution order.
    pub actions: Vec<Action>,
    /// Things the user should know (e.g. scale-down stopped short of busy runners).
    pub warnings: Vec<String>,
    /// How a roll-out stands (hosts on an old configuration: replaced now, waiting).
    pub notes: Vec<String>,
}

impl Plan {
    /// No action.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The world cannot be brought to the configuration without the user's help.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum PlanError {
    /// The configured key exists but must not be used.
    #[error("{reason}")]
    KeyUnusable {
        /// `kms.key` as configured.
        key: String,
        /// Why, for the user.
        reason: String,
    },
    /// The configured key does not exist and is not an alias bbfleet may create.
    #[error("kms.key {key} does not exist; give an existing customer managed key, or an alias (alias/NAME) for bbfleet to create")]
    KeyMissing {
        /// `kms.key` as configured.
        key: String,
    },
    /// Bitbucket's runner limit would be exceeded.
    #[error("{scope} would hold {after} runners ({today} today, {others} of them not this fleet's); Bitbucket allows {limit}")]
    RunnerLimit {
        /// `workspace acme` or `repository acme/app`.
        scope: String,
        /// Runners in the scope after the plan.
        after: usize,
        /// Runners in the scope now.
        today: usize,
        /// Runners in the scope that are not the fleet's.
        others: usize,
        /// Bitbucket's limit.
        limit: u32,
    },
    /// The subnets do not give the fleet enough zones.
    #[error("spot.subnets: the subnets are in {} availability zone(s) ({}); list subnets in at least 2 zones", .zones.len(), .zones.join(", "))]
    TooFewZones {
        /// The zones the subnets are in.
        zones: Vec<String>,
    },
    /// Two subnets in one availability zone: a Spot Fleet takes one subnet per zone.
    #[error("spot.subnets[{index}]: {subnet} is in {az} like spot.subnets[{first}]; a fleet takes one subnet per availability zone")]
    SubnetSameZone {
        /// Index of the later subnet in `spot.subnets`.
        index: usize,
        /// Its id.
        subnet: String,
        /// The zone both are in.
        az: String,
        /// Index of the earlier subnet in that zone.
        first: usize,
    },
    /// A subnet in another VPC than the first subnet's.
    #[error("spot.subnets[{index}]: {subnet} is in {vpc} but spot.subnets[{first}] is in {first_vpc}; a fleet's subnets must all be in one VPC")]
    SubnetOtherVpc {
        /// Index in `spot.subnets`.
        index: usize,
        /// Its id.
        subnet: String,
        /// Its VPC.
        vpc: String,
        /// Index of the first subnet.
        first: usize,
        /// The first subnet's VPC.
        first_vpc: String,
    },
    /// A security group of another VPC than the subnets'.
    #[error("instance.security_groups[{index}]: {group} is in {vpc} but the subnets are in {subnets_vpc}; the instances can only use security groups of their subnets' VPC")]
    SecurityGroupOtherVpc {
        /// Index in `instance.security_groups`.
        index: usize,
        /// Its id.
        group: String,
        /// Its VPC.
        vpc: String,
        /// The subnets' VPC.
        subnets_vpc: String,
    },
}

impl PlanError {
    /// The config field the error is about.
    pub fn field(&self) -> String {
        match self {
            PlanError::KeyUnusable { .. } | PlanError::KeyMissing { .. } => "kms.key".to_owned(),
            PlanError::RunnerLimit { .. } => "capacity".to_owned(),
            PlanError::TooFewZones { .. } => "spot.subnets".to_owned(),
            PlanError::SubnetSameZone { index, .. } | PlanError::SubnetOtherVpc { index, .. } => {
                format!("spot.subnets[{index}]")
            }
            PlanError::SecurityGroupOtherVpc { index, .. } => {
                format!("instance.security_groups[{index}]")
            }
        }
    }
}

/// Options that change what the planner may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Allow removing busy runners.
    pub force: bool,
}

/// Plans `apply`: bring the world to `desired`.
pub fn plan_apply(
    config: &Config,
    desired: &Desired,
    observed: &Observed,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    // The observer sorts its lists, but the plan must not depend on that: equal worlds,
    // listed in any order, give equal plans (a property test checks it).
    let observed = &crate::world::canonical(observed);
    let world = index::Index::new(observed);
    let key = key::plan(config, observed)?;
    zones::plan(config, observed)?;
    let runners = runners::plan(config, &world, &key, desired.capacity.desired, options)?;
    let template = template::plan(&desired.launch_template, observed);
    let current = hosts::Current {
        latest: observed
            .launch_template
            .as_ref()
            .map(|lt| lt.latest_version),
        new_version: template.is_some(),
    };
    let choice = fleet::choose(&desired.fleet, observed);
    let hosts = hosts::plan(
        config,
        &world,
        &runners,
        choice,
        &desired.fleet,
        current,
        options.force,
    );
    let target = runners.target().saturating_sub(hosts.held_elsewhere);
    let split = on_demand::split(config, observed, choice.keep, target);
    let fleet = fleet::plan(&desired.fleet, observed, choice, &split);
    let scale_down = scale_down::plan(config, &world, &runners, &fleet, &hosts.ended);
    let garbage = garbage::plan(
        config,
        &world,
        &runners,
        &fleet,
        &scale_down,
        &hosts,
        options,
    );
    let mut actions = key.actions;
    actions.extend(runners.actions.iter().cloned());
    actions.extend(template);
    actions.extend(fleet.actions);
    // Every drain before any termination: a runner that took a step keeps its host.
    actions.extend(scale_down.drains);
    actions.extend(hosts.drains);
    actions.extend(scale_down.actions);
    actions.extend(hosts.terminations);
    actions.extend(scale_down.deletions);
    actions.extend(garbage.actions);
    actions.extend(hosts.enables);
    let mut warnings = runners.warnings.clone();
    warnings.extend(garbage.warnings);
    warnings.extend(split.warning);
    Ok(Plan {
        fleet: config.name.clone(),
        capacity: Some(desired.capacity.clone()),
        actions,
        warnings,
        notes: hosts.notes,
    })
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
