//! The fleet's metrics in the OpenMetrics text format (`bbfleet status --output prometheus`,
//! `bbfleet autoscale --metrics-file`): gauges of what one status observation saw (runners,
//! hosts, claims, the live fleet request) and an estimate of the running hosts' cost,
//! encoded by `prometheus-client`. Every sample carries `fleet="<name>"`. docs/metrics.md
//! lists the families.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::status::StatusView;
use crate::world::{Observed, RunnerLoad};

mod cost;

use cost::lifecycle;
pub use cost::{read_prices, Cost, Prices};

/// Runner statuses exported even when no runner has them (as 0), so their series never
/// vanish; any other status appears when a runner has it.
const STATUSES: [&str; 3] = ["ONLINE", "OFFLINE", "UNREGISTERED"];

/// The live fleet request's capacities (the one `status` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCapacity {
    /// Target capacity.
    pub target: i64,
    /// Of it on on-demand instances.
    pub on_demand_target: i64,
    /// Capacity it runs now, when the API said.
    pub fulfilled: Option<i64>,
    /// Of it spot, when the API said.
    pub spot_fulfilled: Option<i64>,
}

/// The numbers of one status observation the metrics export.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetMetrics {
    /// The fleet's name (the `fleet` label).
    pub fleet: String,
    /// The fleet's runners by Bitbucket status.
    pub runners: BTreeMap<String, i64>,
    /// ONLINE runners.
    pub online: i64,
    /// ONLINE runners executing a step.
    pub busy: i64,
    /// Runners whose newest claim names a host.
    pub claimed: i64,
    /// Hosts by (lifecycle, launch template version or `unknown`, state).
    pub hosts: BTreeMap<(&'static str, String, &'static str), i64>,
    /// The launch template's newest version.
    pub template_version: Option<i64>,
    /// The live fleet request's capacities.
    pub request: Option<RequestCapacity>,
    /// The running hosts' estimated cost.
    pub cost: Cost,
}

impl FleetMetrics {
    /// From the status view of `observed` (its runners, claims, hosts and request).
    pub fn new(view: &StatusView, observed: &Observed, prices: &Prices) -> FleetMetrics {
        let mut runners: BTreeMap<String, i64> =
            STATUSES.iter().map(|s| ((*s).to_owned(), 0)).collect();
        for r in &view.runners {
            *runners.entry(r.status.clone()).or_default() += 1;
        }
        let mut hosts = BTreeMap::new();
        for h in &view.instances {
            let version = h
                .template_version
                .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
            *hosts
                .entry((lifecycle(h), version, h.state.as_str()))
                .or_default() += 1;
        }
        let load = RunnerLoad::of(&observed.runners);
        let request = view.fleet_request.as_ref().map(|row| {
            let state = observed.fleets.iter().find(|f| f.id == row.id);
            RequestCapacity {
                target: row.target.into(),
                on_demand_target: row.on_demand_target.into(),
                fulfilled: state.and_then(|f| f.fulfilled).map(i64::from),
                spot_fulfilled: state.and_then(|f| f.spot_fulfilled).map(i64::from),
            }
        });
        FleetMetrics {
            fleet: view.fleet.clone(),
            runners,
            online: load.online.into(),
            busy: load.busy.into(),
            claimed: view
                .runners
                .iter()
                .filter(|r| r.claimed_by.is_some())
                .count() as i64,
            hosts,
            template_version: view.launch_template_version,
            request,
            cost: Cost::of(&view.instances, prices),
        }
    }

    /// The OpenMetrics text, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let fleet = [(Cow::Borrowed("fleet"), Cow::Owned(self.fleet.clone()))];
        let mut registry = Registry::with_prefix_and_labels("bbfleet", fleet.into_iter());
        registry.register_collector(Box::new(self.families()));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Every family, in a fixed order, each sample's labels sorted by name.
    fn families(&self) -> Families {
        let mut f = Families::default();
        self.runner_families(&mut f);
        self.host_families(&mut f);
        self.request_families(&mut f);
        self.cost_families(&mut f);
        f
    }

    fn runner_families(&self, f: &mut Families) {
        let by_status = self
            .runners
            .iter()
            .map(|(s, n)| (vec![("status", s.clone())], *n));
        f.int(
            "runners",
            "The fleet's runners by Bitbucket status",
            by_status,
        );
        f.one("runners_online", "ONLINE runners of the fleet", self.online);
        f.one("runners_busy", "ONLINE runners executing a step", self.busy);
        f.one(
            "runners_claimed",
            "Runners whose newest claim names a host (the host runs them)",
            self.claimed,
        );
    }

    fn host_families(&self, f: &mut Families) {
        let hosts = self.hosts.iter().map(|((lifecycle, version, state), n)| {
            let labels = vec![
                ("lifecycle", (*lifecycle).to_owned()),
                ("state", (*state).to_owned()),
                ("template_version", version.clone()),
            ];
            (labels, *n)
        });
        f.int(
            "hosts",
            "Instances of the fleet (not terminated) by lifecycle, state and the launch template \
             version they were launched from (unknown: no version tag)",
            hosts,
        );
        if let Some(v) = self.template_version {
            f.one(
                "launch_template_latest_version",
                "The fleet launch template's newest version (hosts on an older one are rolled out)",
                v,
            );
        }
    }

    /// The live request's capacities; nothing without a live request.
    fn request_families(&self, f: &mut Families) {
        let Some(r) = self.request else {
            return;
        };
        let of_request = "of the live fleet request, in instances";
        f.one(
            "fleet_target_capacity",
            &format!("Target capacity {of_request}"),
            r.target,
        );
        let on_demand = format!("On-demand part of the target capacity {of_request}");
        f.one(
            "fleet_on_demand_target_capacity",
            &on_demand,
            r.on_demand_target,
        );
        if let Some(n) = r.fulfilled {
            let help = format!("Capacity running now (spot and on-demand) {of_request}");
            f.one("fleet_fulfilled_capacity", &help, n);
        }
        if let Some(n) = r.spot_fulfilled {
            let help = format!("Spot part of the capacity running now {of_request}");
            f.one("fleet_spot_fulfilled_capacity", &help, n);
        }
    }

    /// The unpriced hosts, and the estimate only when there are none.
    fn cost_families(&self, f: &mut Families) {
        let unpriced = self.cost.unpriced.len() as i64;
        f.one(
            "hosts_unpriced",
            "Running hosts with no known hourly price (while any, the cost estimate is left out)",
            unpriced,
        );
        if unpriced > 0 {
            return;
        }
        let cost = self.cost.usd_per_hour.iter().map(|(lifecycle, usd)| {
            (
                vec![("lifecycle", (*lifecycle).to_owned())],
                Value::Float(*usd),
            )
        });
        f.push(
            "estimated_cost",
            "Estimated cost of the running hosts by lifecycle, USD per hour (spot: \
             spot.hourly_prices, else the spot price history; on-demand: \
             capacity.on_demand_hourly_price)",
            Some(Unit::Other("usd_per_hour".to_owned())),
            cost.collect(),
        );
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Float(f64),
}

/// A family: name (without the prefix), help, unit, and samples with their labels.
type Family = (&'static str, String, Option<Unit>, Vec<(Labels, Value)>);

/// A sample's labels other than `fleet`, sorted by name.
type Labels = Vec<(&'static str, String)>;

/// Gauge families, encoded in the order they were added.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn push(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<Unit>,
        samples: Vec<(Labels, Value)>,
    ) {
        self.0.push((name, format!("{help}."), unit, samples));
    }

    fn int(
        &mut self,
        name: &'static str,
        help: &str,
        samples: impl Iterator<Item = (Labels, i64)>,
    ) {
        let samples = samples.map(|(l, n)| (l, Value::Int(n))).collect();
        self.push(name, help, None, samples);
    }

    fn one(&mut self, name: &'static str, help: &str, value: i64) {
        self.push(name, help, None, vec![(Vec::new(), Value::Int(value))]);
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, unit, samples) in &self.0 {
            let mut metric =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for (labels, value) in samples {
                let sample = metric.encode_family(labels)?;
                match value {
                    Value::Int(n) => ConstGauge::new(*n).encode(sample)?,
                    Value::Float(x) => ConstGauge::new(*x).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Replaces `path` with `contents` atomically, for node_exporter's textfile collector,
/// which must never read a half-written file: a temporary file in the same directory
/// (named `.NAME.PID.tmp`, which the collector's `*.prom` glob skips) is written, synced,
/// then renamed over `path`, and the directory is synced so the rename survives a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
