//! Plans as terraform-style text and as stable JSON, from one value.

use std::fmt;

use serde::Serialize;

use super::{Action, Op, Plan};
use crate::config::Capacity;

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `+`
    pub add: usize,
    /// `~`
    pub change: usize,
    /// `-`
    pub destroy: usize,
}

/// One action as printed: `{"op", "kind", "name", "reason"}` plus its details.
#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    /// create | update | delete
    pub op: Op,
    /// What kind of thing.
    pub kind: &'static str,
    /// Which one.
    pub name: String,
    /// Why.
    pub reason: String,
    /// The action itself, for tools.
    pub detail: Action,
}

/// A plan as printed: `{"fleet", "capacity", "actions", "summary", "warnings"}`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// Fleet name.
    pub fleet: String,
    /// Desired capacity and its source (absent for destroy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Actions in order.
    pub actions: Vec<ActionView>,
    /// Counts.
    pub summary: Summary,
    /// Warnings.
    pub warnings: Vec<String>,
    /// What the plan does over several applies (roll-outs), for people.
    pub notes: Vec<String>,
}

fn list(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    if ids.len() <= SHOWN {
        ids.join(", ")
    } else {
        format!("{} and {} more", ids[..SHOWN].join(", "), ids.len() - SHOWN)
    }
}

impl Action {
    /// Kind, name and reason of the action, for people.
    pub fn describe(&self) -> (&'static str, String, String) {
        let (name, reason) = self.name_and_reason();
        (self.traits().kind, name, reason)
    }

    fn name_and_reason(&self) -> (String, String) {
        match self {
            Action::CreateKey { alias } => (alias.clone(),
                "no key under this alias: a customer managed key is created".into(),
            ),
            Action::DeleteRunner { uuid, name, reason } => {
                (format!("{name} {uuid}"), reason.clone())
            }
            Action::DeleteOrphanRunner {
                uuid,
                name,
                instance,
            } => (format!("{name} {uuid}"),
                format!(
                    "drift: its command is not stored (the secret is lost); deleted, and a new runner replaces it{}",
                    instance
                        .as_ref()
                        .map(|i| format!(" (its instance {i} is terminated first)"))
                        .unwrap_or_default()
                ),
            ),
            Action::DeleteOrphanParameter { name, runner_uuid } => (name.clone(),
                format!("drift: no runner of the fleet has uuid {runner_uuid}"),
            ),
            Action::DeleteParameter { name, reason } => (name.clone(), reason.clone()),
            Action::UpdateRunner { name, from, .. } => (name.clone(),
                format!("labels were {}", from.join(",")),
            ),
            Action::CreateRunner { name } => (name.clone(),
                "register, then store its command as a SecureString".into(),
            ),
            Action::CreateLaunchTemplate { name, fingerprint } => (name.clone(),
                format!("contents {fingerprint}"),
            ),
            Action::CreateLaunchTemplateVersion { name, fingerprint } => (name.clone(),
                format!("new version {fingerprint}: AMI, userdata or instance settings changed"),
            ),
            Action::RequestFleet { target, on_demand, reason, .. } => ("new request".into(),
                format!("target {target}{}: {reason}", split(*target, *on_demand)),
            ),
            Action::SetFleetTarget { id, from, to, on_demand_from, on_demand, split: why } => (id.clone(),
                if from == &(*to as i32) {
                    format!("on-demand part {on_demand_from} -> {on_demand} of {to}: {why}")
                } else {
                    format!("target capacity {from} -> {to}{}{}", split(*to, *on_demand), because(why))
                },
            ),
            Action::ModifyFleet { id, from, to, on_demand, reason } => (id.clone(),
                format!("in place, instances kept: {reason} (target {from} -> {to}{})", split(*to, *on_demand)),
            ),
            Action::CancelFleet { id, reason, .. } => (id.clone(), reason.clone()),
            Action::DrainRunner { name, instance, reason, .. } => (name.clone(),
                format!(
                    "{reason}: disable, re-read, and go on only if it took no step{}",
                    instance.as_ref().map(|i| format!(" (host {i})")).unwrap_or_default()
                ),
            ),
            Action::EnableRunner { name, reason, .. } => (name.clone(), format!("enable: {reason}")),
            Action::TerminateInstances { ids, reason } => (list(ids), reason.clone()),
            Action::DeleteClaims { names, reason } => (format!("{} claim parameter(s)", names.len()),
                reason.clone(),
            ),
            Action::ReleaseClaim {
                runner,
                generation,
                instance,
            } => (format!("{runner} generation {generation}"),
                format!("drift: claimed by {instance}, which is not running; released (written free)"),
            ),
            Action::OfferRunner { runner } => (format!("{runner} generation {}", crate::names::OFFER_GENERATION),
                "drift: its command is stored but no host can see it (no claim yet); offered (written free)".into(),
            ),
            Action::PruneClaims { names } => (format!("{} claim parameter(s)", names.len()),
                "superseded generations of kept runners (the newest of each is kept)".into(),
            ),
            Action::TerminateStrayInstances { ids } => (list(ids),
                "drift: tagged with the fleet but not part of its live fleet request".into(),
            ),
            Action::DeleteLaunchTemplate { name } => {
                (name.clone(), "destroy".into())
            }
        }
    }
}

impl Plan {
    /// Counts by op.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for a in &self.actions {
            match a.op() {
                Op::Create => s.add += 1,
                Op::Update => s.change += 1,
                Op::Delete => s.destroy += 1,
            }
        }
        s
    }

    /// The printable view.
    pub fn view(&self) -> PlanView {
        PlanView {
            fleet: self.fleet.clone(),
            capacity: self.capacity.clone(),
            actions: self
                .actions
                .iter()
                .map(|a| {
                    let (kind, name, reason) = a.describe();
                    ActionView {
                        op: a.op(),
                        kind,
                        name,
                        reason,
                        detail: a.clone(),
                    }
                })
                .collect(),
            summary: self.summary(),
            warnings: self.warnings.clone(),
            notes: self.notes.clone(),
        }
    }
}

impl fmt::Display for PlanView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.capacity {
            writeln!(
                f,
                "Fleet {}: {} runner(s) from {}.",
                self.fleet, c.desired, c.source
            )?;
        } else {
            writeln!(f, "Fleet {}: destroy.", self.fleet)?;
        }
        for w in &self.warnings {
            writeln!(f, "Warning: {w}")?;
        }
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        if self.actions.is_empty() {
            return if self.capacity.is_some() {
                writeln!(f, "\nNo changes. The fleet matches the configuration.")
            } else {
                writeln!(
                    f,
                    "\nNo changes. Nothing of fleet {} exists (the KMS key is kept).",
                    self.fleet
                )
            };
        }
        writeln!(f, "\nbbfleet will perform the following actions:\n")?;
        for a in &self.actions {
            let sign = match a.op {
                Op::Create => '+',
                Op::Update => '~',
                Op::Delete => '-',
            };
            writeln!(
                f,
                "  {sign} {} {}: {}",
                a.kind.replace('_', " "),
                a.name,
                a.reason
            )?;
        }
        let s = self.summary;
        writeln!(
            f,
            "\nPlan: {} to add, {} to change, {} to destroy.",
            s.add, s.change, s.destroy
        )
    }
}

/// ` (2 on-demand, 3 spot)`, or nothing when all is spot.
fn split(total: u32, on_demand: u32) -> String {
    if on_demand == 0 {
        String::new()
    } else {
        format!(
            " ({on_demand} on-demand, {} spot)",
            total.saturating_sub(on_demand)
        )
    }
}

/// `: why`, or nothing.
fn because(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    }
}
