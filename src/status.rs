//! `bbfleet status`: runners, parameters, claims, fleet and instances, as a table or JSON.

use std::fmt;

use serde::Serialize;

use crate::names::bare_uuid;
use crate::plan::newest_claims;
use crate::world::{Observed, RunnerLoad};

/// One runner's row.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerRow {
    /// `{uuid}`.
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Bitbucket status.
    pub status: String,
    /// Executing a step.
    pub busy: bool,
    /// Instance holding its newest claim, if any.
    pub claimed_by: Option<String>,
    /// Its command is stored.
    pub parameter: bool,
}

/// The fleet request's row.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    /// Request id.
    pub id: String,
    /// State.
    pub state: String,
    /// Target capacity.
    pub target: i32,
    /// Of it on on-demand instances.
    pub on_demand_target: i32,
    /// The API that made it.
    pub api: &'static str,
    /// Spot capacity errors in its history within the fallback grace, newest first.
    pub capacity_errors: Vec<String>,
}

/// `{"fleet", "runners", "instances", "fleet_request", ...}`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Fleet name.
    pub fleet: String,
    /// Runners.
    pub runners: Vec<RunnerRow>,
    /// Instances.
    pub instances: Vec<crate::world::InstanceInfo>,
    /// The live fleet request (the first, if several).
    pub fleet_request: Option<FleetRow>,
    /// Parameters with no runner.
    pub orphan_parameters: Vec<String>,
    /// Busy / ONLINE runners.
    pub busy_ratio: Option<f64>,
    /// The fleet API the fleet's requests go through (`Spot Fleet`).
    pub fleet_api: &'static str,
    /// The launch template's newest version (hosts on an older one are rolled out).
    pub launch_template_version: Option<i64>,
}

impl StatusView {
    /// Builds the view.
    pub fn new(
        fleet: &str,
        fleet_api: &'static str,
        api: crate::config::FleetApiKind,
        observed: &Observed,
    ) -> StatusView {
        let claims = newest_claims(observed);
        let runners: Vec<RunnerRow> = observed
            .runners
            .iter()
            .map(|r| {
                let uuid = bare_uuid(&r.uuid);
                RunnerRow {
                    uuid: r.uuid.clone(),
                    name: r.name.clone(),
                    status: r.status.to_string(),
                    busy: r.busy,
                    claimed_by: claims
                        .get(uuid.as_str())
                        .and_then(|c| c.holder.instance())
                        .map(str::to_owned),
                    parameter: observed.parameters.iter().any(|p| p.runner_uuid == uuid),
                }
            })
            .collect();
        let load = RunnerLoad::of(&observed.runners);
        StatusView {
            fleet: fleet.to_owned(),
            orphan_parameters: observed
                .parameters
                .iter()
                .filter(|p| !runners.iter().any(|r| bare_uuid(&r.uuid) == p.runner_uuid))
                .map(|p| p.name.clone())
                .collect(),
            runners,
            instances: observed.instances.clone(),
            launch_template_version: observed
                .launch_template
                .as_ref()
                .map(|lt| lt.latest_version),
            fleet_request: observed
                .fleets
                .iter()
                .filter(|f| f.is_live())
                .max_by_key(|f| (f.api == api, f.instance_ids.len()))
                .map(|f| FleetRow {
                    id: f.id.clone(),
                    state: f.state.to_string(),
                    target: f.target,
                    on_demand_target: f.on_demand_target,
                    api: f.api.label(),
                    capacity_errors: f.capacity_errors.clone(),
                }),
            busy_ratio: load.busy_ratio(),
            fleet_api,
        }
    }
}

impl fmt::Display for StatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_fleet(f)?;
        self.fmt_runners(f)?;
        self.fmt_instances(f)?;
        for p in &self.orphan_parameters {
            writeln!(
                f,
                "\nWarning: parameter {p} has no runner (the next apply deletes it)."
            )?;
        }
        Ok(())
    }
}

impl StatusView {
    fn fmt_fleet(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fleet_request {
            Some(r) => {
                writeln!(
                    f,
                    "Fleet {}: {} request {} {}, target {} ({} on-demand, {} spot), {} instance(s) ({} on-demand).",
                    self.fleet,
                    r.api,
                    r.id,
                    r.state,
                    r.target,
                    r.on_demand_target,
                    r.target - r.on_demand_target,
                    self.instances.len(),
                    self.instances.iter().filter(|i| i.on_demand).count()
                )?;
                if let Some(e) = r.capacity_errors.first() {
                    writeln!(
                        f,
                        "Spot capacity: {} error(s) within the fallback grace, newest {e}.",
                        r.capacity_errors.len()
                    )?;
                }
            }
            None => writeln!(
                f,
                "Fleet {}: no {} request, {} instance(s).",
                self.fleet,
                self.fleet_api,
                self.instances.len()
            )?,
        }
        if let Some(ratio) = self.busy_ratio {
            writeln!(f, "Busy ratio: {:.2} (busy / online runners).", ratio)?;
        }
        Ok(())
    }

    fn fmt_runners(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\n{:<20} {:<38} {:<13} {:<5} {:<20} PARAMETER",
            "RUNNER", "UUID", "STATUS", "BUSY", "CLAIMED BY"
        )?;
        for r in &self.runners {
            writeln!(
                f,
                "{:<20} {:<38} {:<13} {:<5} {:<20} {}",
                r.name,
                r.uuid,
                r.status,
                if r.busy { "yes" } else { "no" },
                r.claimed_by.as_deref().unwrap_or("-"),
                if r.parameter { "stored" } else { "MISSING" }
            )?;
        }
        if self.runners.is_empty() {
            writeln!(f, "(no runners)")?;
        }
        Ok(())
    }

    fn fmt_instances(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\n{:<21} {:<14} {:<12} {:<14} TEMPLATE",
            "INSTANCE", "TYPE", "ZONE", "STATE"
        )?;
        for i in &self.instances {
            let template = match (i.template_version, self.launch_template_version) {
                (Some(v), Some(latest)) if v < latest => format!("v{v} (old, current v{latest})"),
                (Some(v), _) => format!("v{v}"),
                (None, _) => "?".to_owned(),
            };
            writeln!(
                f,
                "{:<21} {:<14} {:<12} {:<14} {template}",
                i.id,
                i.instance_type,
                i.az,
                i.state.to_string()
            )?;
        }
        if self.instances.is_empty() {
            writeln!(f, "(no instances)")?;
        }
        Ok(())
    }
}
