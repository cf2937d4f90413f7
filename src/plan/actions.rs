//! The actions a plan is made of, and each action's traits in one table: whether it
//! creates, updates or deletes, the kind printed for it, and how the executor batches it.

use serde::{Deserialize, Serialize};

/// One change to the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the customer key and its alias.
    CreateKey {
        /// Alias.
        alias: String,
    },
    /// Delete a runner.
    DeleteRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Drift: delete a runner of the fleet whose command is not stored (its secret is lost),
    /// after terminating the instance that holds it, so the fleet replaces that instance.
    DeleteOrphanRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// The instance its newest claim names, if that instance exists.
        instance: Option<String>,
    },
    /// Drift: delete a stored command that belongs to no runner of the fleet.
    DeleteOrphanParameter {
        /// Parameter name.
        name: String,
        /// The runner uuid it names (bare).
        runner_uuid: String,
    },
    /// Delete stored commands.
    DeleteParameter {
        /// Parameter name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Set a runner's labels to the configured ones.
    UpdateRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// Labels now.
        from: Vec<String>,
    },
    /// Register a runner, then store its command at once.
    CreateRunner {
        /// `bbfleet-{fleet}-{n}`.
        name: String,
    },
    /// Create the launch template.
    CreateLaunchTemplate {
        /// Name.
        name: String,
        /// Fingerprint of its contents.
        fingerprint: String,
    },
    /// Add a launch template version.
    CreateLaunchTemplateVersion {
        /// Name.
        name: String,
        /// Fingerprint of the new contents.
        fingerprint: String,
    },
    /// Request a fleet.
    RequestFleet {
        /// Target capacity.
        target: u32,
        /// Of it on on-demand instances.
        #[serde(default)]
        on_demand: u32,
        /// Fingerprint of the configuration.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// Change a fleet's target capacity.
    SetFleetTarget {
        /// Request id.
        id: String,
        /// Target now.
        from: i32,
        /// New target.
        to: u32,
        /// On-demand part now.
        #[serde(default)]
        on_demand_from: i32,
        /// New on-demand part.
        #[serde(default)]
        on_demand: u32,
        /// Why the on-demand part is what it is (empty: all spot, no base).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        split: String,
    },
    /// Move a fleet request to the current launch template version and overrides in
    /// place: its instances keep running (hosts on the old version are replaced later,
    /// idle ones only).
    ModifyFleet {
        /// Request id.
        id: String,
        /// Target now.
        from: i32,
        /// New target.
        to: u32,
        /// New on-demand part.
        #[serde(default)]
        on_demand: u32,
        /// Why.
        reason: String,
    },
    /// Cancel a fleet request; its instances terminate with it only when
    /// `terminate_instances` (destroy). Otherwise they run on and are replaced host by
    /// host, idle ones only.
    CancelFleet {
        /// Request id.
        id: String,
        /// Why.
        reason: String,
        /// Terminate its instances with it.
        #[serde(default = "terminate_by_default")]
        terminate_instances: bool,
    },
    /// Drain a runner before its host goes: disable it at Bitbucket, read it again, and
    /// keep it (enabled again) if it took a step meanwhile; the terminations, deletions and
    /// claim releases of this plan that concern it are then skipped.
    DrainRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// The host it runs on, if any.
        instance: Option<String>,
        /// Why.
        reason: String,
    },
    /// Enable a runner again at Bitbucket (after its host was replaced, or left disabled
    /// by an interrupted apply).
    EnableRunner {
        /// `{uuid}`.
        uuid: String,
        /// Name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Terminate instances.
    TerminateInstances {
        /// Instance ids.
        ids: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Delete claim generations.
    DeleteClaims {
        /// Parameter names.
        names: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Drift: write the next claim generation as `free` (never overwriting), because the
    /// newest claim names an instance that is not running.
    ReleaseClaim {
        /// Runner uuid, bare.
        runner: String,
        /// The generation to write (newest observed + 1).
        generation: u64,
        /// The instance the newest claim names.
        instance: String,
    },
    /// Drift: a kept runner with a stored command but no claim at all (hosts see only the
    /// runners that have one): write its generation 0 as `free`.
    OfferRunner {
        /// Runner uuid, bare.
        runner: String,
    },
    /// Garbage: delete superseded claim generations of kept runners (never the newest).
    PruneClaims {
        /// Parameter names.
        names: Vec<String>,
    },
    /// Drift: terminate instances tagged with the fleet that no live fleet request owns.
    TerminateStrayInstances {
        /// Instance ids.
        ids: Vec<String>,
    },
    /// Delete the launch template.
    DeleteLaunchTemplate {
        /// Name.
        name: String,
    },
}

/// Plans saved before cancellations could keep instances cancelled with termination.
fn terminate_by_default() -> bool {
    true
}

/// Create, update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `+`
    Create,
    /// `~`
    Update,
    /// `-`
    Delete,
}

/// How the executor runs a run of consecutive actions of one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// One at a time, in order.
    Alone,
    /// Independent calls, with bounded concurrency.
    FanOut,
    /// Parameter deletions: one call per ten names.
    DeleteParameters,
}

/// An action's traits: [`Action::traits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    /// Create, update or delete.
    pub op: Op,
    /// The kind printed in the plan (`runner`, `spot_fleet`, ...).
    pub kind: &'static str,
    /// How runs of it are executed.
    pub batch: Batch,
}

const fn traits(op: Op, kind: &'static str, batch: Batch) -> Traits {
    Traits { op, kind, batch }
}

impl Action {
    /// The one table of every action's op, kind and batching.
    pub fn traits(&self) -> Traits {
        use Batch::{Alone, DeleteParameters, FanOut};
        use Op::{Create, Delete, Update};
        match self {
            Action::CreateKey { .. } => traits(Create, "kms_key", Alone),
            Action::DeleteRunner { .. } => traits(Delete, "runner", FanOut),
            Action::DeleteOrphanRunner { .. } => traits(Delete, "orphan_runner", FanOut),
            Action::DeleteOrphanParameter { .. } => {
                traits(Delete, "orphan_parameter", DeleteParameters)
            }
            Action::DeleteParameter { .. } => traits(Delete, "parameter", DeleteParameters),
            Action::UpdateRunner { .. } => traits(Update, "runner", FanOut),
            Action::CreateRunner { .. } => traits(Create, "runner", FanOut),
            Action::CreateLaunchTemplate { .. } => traits(Create, "launch_template", Alone),
            Action::CreateLaunchTemplateVersion { .. } => traits(Update, "launch_template", Alone),
            Action::RequestFleet { .. } => traits(Create, "spot_fleet", Alone),
            Action::SetFleetTarget { .. } => traits(Update, "spot_fleet", Alone),
            Action::ModifyFleet { .. } => traits(Update, "spot_fleet", Alone),
            Action::CancelFleet { .. } => traits(Delete, "spot_fleet", Alone),
            Action::DrainRunner { .. } => traits(Update, "runner", FanOut),
            Action::EnableRunner { .. } => traits(Update, "runner", FanOut),
            Action::TerminateInstances { .. } => traits(Delete, "instances", Alone),
            Action::DeleteClaims { .. } => traits(Delete, "claims", Alone),
            Action::ReleaseClaim { .. } => traits(Update, "claim", FanOut),
            Action::OfferRunner { .. } => traits(Create, "offer", FanOut),
            Action::PruneClaims { .. } => traits(Delete, "old_claims", Alone),
            Action::TerminateStrayInstances { .. } => traits(Delete, "stray_instances", Alone),
            Action::DeleteLaunchTemplate { .. } => traits(Delete, "launch_template", Alone),
        }
    }

    /// Create, update or delete.
    pub fn op(&self) -> Op {
        self.traits().op
    }

    /// Whether `next` runs in one batch with `self` (the same variant, batched).
    pub fn batches_with(&self, next: &Action) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(next)
            && self.traits().batch != Batch::Alone
    }
}
