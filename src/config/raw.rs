//! The config as written: the TOML shape serde reads, before validation.

use serde::Deserialize;

pub(super) use super::economics::{RawAutoscale, RawSimulate};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) name: String,
    pub(super) region: Option<String>,
    pub(super) bitbucket: RawBitbucket,
    pub(super) capacity: RawCapacity,
    pub(super) spot: RawSpot,
    pub(super) instance: RawInstance,
    #[serde(default)]
    pub(super) kms: RawKms,
    #[serde(default)]
    pub(super) rollout: RawRollout,
    #[serde(default)]
    pub(super) simulate: RawSimulate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBitbucket {
    pub(super) workspace: String,
    pub(super) repository: Option<String>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    pub(super) runner_image: Option<String>,
    pub(super) api_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapacity {
    pub(super) default: u32,
    pub(super) max: u32,
    #[serde(default)]
    pub(super) schedule: Vec<RawWindow>,
    pub(super) autoscale: Option<RawAutoscale>,
    #[serde(default)]
    pub(super) on_demand_base: u32,
    pub(super) max_hourly_cost: Option<f64>,
    pub(super) on_demand_hourly_price: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub(super) days: String,
    pub(super) hours: String,
    pub(super) timezone: String,
    pub(super) capacity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpot {
    pub(super) instance_types: Vec<String>,
    pub(super) subnets: Vec<String>,
    pub(super) allocation_strategy: Option<String>,
    pub(super) fleet_api: Option<String>,
    pub(super) fleet_role: Option<String>,
    pub(super) fallback: Option<String>,
    #[serde(default = "default_fallback_grace")]
    pub(super) fallback_grace_seconds: u64,
    #[serde(default = "default_stray_grace")]
    pub(super) stray_grace_seconds: u64,
    #[serde(default = "default_host_grace")]
    pub(super) host_grace_seconds: u64,
    #[serde(default)]
    pub(super) hourly_prices: std::collections::BTreeMap<String, f64>,
}

/// A fleet-tagged instance that no request lists and whose launch tag names no request
/// is a stray only after this long: DescribeSpotFleetInstances "might be out of date".
fn default_stray_grace() -> u64 {
    600
}

/// Spot capacity a fleet has not fulfilled this long after its target was set is taken
/// for missing (a fleet launches within a minute or two when the pools have capacity).
fn default_fallback_grace() -> u64 {
    600
}

/// A host that holds no claim while a runner waits, or whose runner is OFFLINE, is
/// replaced once it is older than this (boot and claim take a few minutes).
fn default_host_grace() -> u64 {
    900
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    #[serde(default = "default_os")]
    pub(super) os: String,
    pub(super) ami: Option<String>,
    pub(super) instance_profile: String,
    #[serde(default)]
    pub(super) security_groups: Vec<String>,
    #[serde(default = "default_root_volume")]
    pub(super) root_volume_gb: u32,
    #[serde(default)]
    pub(super) swap_gb: u32,
    #[serde(default = "default_claim_timeout")]
    pub(super) claim_timeout_seconds: u64,
    #[serde(default = "default_baked_images_kept")]
    pub(super) baked_images_kept: u32,
}

/// `bbfleet bake` keeps the fleet's three newest baked images.
fn default_baked_images_kept() -> u32 {
    3
}

/// A host that has claimed no runner after this long gives up and terminates itself.
fn default_claim_timeout() -> u64 {
    1200
}

fn default_os() -> String {
    "al2023".to_owned()
}
fn default_root_volume() -> u32 {
    50
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKms {
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) batch: Option<RawBatch>,
}

/// `batch = 2` or `batch = "25%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawBatch {
    Count(i64),
    Text(String),
}
