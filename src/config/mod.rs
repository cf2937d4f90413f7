//! The TOML config: parsed, validated offline, and turned into one `Config` the rest of
//! the program trusts. Every error names the field (`spot.subnets[1]: ...`).
//!
//! Here: the validated types, loading and the errors. `raw` is the TOML shape as written,
//! `validate` turns it into a `Config`, `checks` judges single values (regions, AWS ids,
//! KMS keys, URLs) and `schedule` parses and evaluates schedule windows.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod checks;
mod economics;
mod fleet;
mod raw;
mod schedule;
mod validate;

pub use checks::{check_api_url, check_region, is_region, LONGEST_REGION};
pub use economics::{AutoscaleConfig, AutoscalePolicy, LaunchDelay, SimulateConfig};
pub use schedule::{Capacity, ScheduleWindow};

use raw::RawConfig;

/// The image Bitbucket's "Add runner" dialog shows for Linux Docker runners.
pub const DEFAULT_RUNNER_IMAGE: &str =
    "docker-public.packages.atlassian.com/sox/atlassian/bitbucket-pipelines-runner:1";
/// Bitbucket's runners-per-scope limit (workspace, or each repository).
pub const BITBUCKET_RUNNER_LIMIT: u32 = 100;
/// Spot Fleet's limit of capacity pools (instance type x subnet) per request.
pub const MAX_POOLS: usize = 300;

// ---------------------------------------------------------------- validated

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Fleet name: `[a-z0-9-]`, at most 24 characters.
    pub name: String,
    /// AWS region; `None` = the AWS SDK's region chain.
    pub region: Option<String>,
    /// Bitbucket settings.
    pub bitbucket: BitbucketConfig,
    /// How many runners, when.
    pub capacity: CapacityConfig,
    /// The spot fleet.
    pub spot: SpotConfig,
    /// The instances.
    pub instance: InstanceConfig,
    /// The customer-managed KMS key for runner commands.
    pub kms: KmsConfig,
    /// How launch template changes reach running hosts.
    pub rollout: RolloutConfig,
    /// The model `bbfleet simulate` runs the fleet in.
    pub simulate: SimulateConfig,
}

/// How launch template changes reach running hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RolloutConfig {
    /// Hosts replaced at once, at most.
    pub batch: RolloutBatch,
}

/// `rollout.batch`: a count of hosts, or a percentage of the fleet's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutBatch {
    /// At most this many hosts (at least 1).
    Count(u32),
    /// At most this percentage of the capacity, rounded up (1 to 100).
    Percent(u32),
}

impl Default for RolloutBatch {
    fn default() -> Self {
        RolloutBatch::Count(1)
    }
}

impl RolloutBatch {
    /// Hosts that may be down at once in a fleet of `capacity` runners: at least one.
    pub fn hosts(&self, capacity: u32) -> u32 {
        match *self {
            RolloutBatch::Count(n) => n.max(1),
            RolloutBatch::Percent(p) => {
                (u64::from(capacity) * u64::from(p)).div_ceil(100).max(1) as u32
            }
        }
    }
}

/// Bitbucket settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BitbucketConfig {
    /// Workspace slug or `{uuid}`.
    pub workspace: String,
    /// Repository slug or `{uuid}`: repository runners instead of workspace runners.
    pub repository: Option<String>,
    /// Runner labels, mandatory ones (`self.hosted` and the platform label) first.
    pub labels: Vec<String>,
    /// The runner image.
    pub runner_image: String,
    /// API base URL from the config (the environment's `BITBUCKET_API_URL` wins).
    pub api_url: Option<String>,
}

/// Capacity settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityConfig {
    /// Runners when no schedule window matches.
    pub default: u32,
    /// Upper bound of every capacity (at most 100, Bitbucket's limit).
    pub max: u32,
    /// Schedule windows; the first match wins.
    pub schedule: Vec<ScheduleWindow>,
    /// Settings of `bbfleet autoscale`.
    pub autoscale: Option<AutoscaleConfig>,
    /// Runners kept on on-demand instances whatever spot does (at most `max`).
    pub on_demand_base: u32,
    /// The hourly cost a fallback to on-demand must not take the fleet above.
    pub cost_cap: Option<CostCap>,
    /// USD per hour of one on-demand instance (`capacity.on_demand_hourly_price`), for the
    /// cost cap, the metrics' estimate and `simulate`.
    pub on_demand_hourly_price: Option<f64>,
}

/// `capacity.max_hourly_cost` with the on-demand price it is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostCap {
    /// USD per hour for the whole fleet, at most.
    pub max_hourly_cost: f64,
    /// USD per hour of one on-demand instance of the configured types (the dearest): EC2's
    /// API has no on-demand price (the Price List API is another service), so the user
    /// gives it; spot runners are priced from the spot price history.
    pub on_demand_hourly_price: f64,
}

/// Spot fleet settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpotConfig {
    /// Instance types, in at least two families.
    pub instance_types: Vec<String>,
    /// Subnets, in at least two availability zones.
    pub subnets: Vec<String>,
    /// How the fleet spreads over pools.
    pub allocation_strategy: AllocationStrategy,
    /// The fleet API bbfleet requests the fleet with.
    pub fleet_api: FleetApiKind,
    /// ARN of the role Spot Fleet uses to launch and tag instances (empty with EC2 Fleet,
    /// which uses its service-linked role).
    pub fleet_role: String,
    /// What stands in for spot capacity the fleet cannot get.
    pub fallback: Fallback,
    /// How long a fleet may leave spot capacity unfulfilled after its target was set
    /// before the fallback takes it for missing.
    pub fallback_grace_seconds: u64,
    /// How long after its launch an unlisted, unclaimed-by-request instance is left alone.
    pub stray_grace_seconds: u64,
    /// How long after its launch a host may hold no claim while a runner waits, or run a
    /// runner that Bitbucket reports OFFLINE, before it is replaced.
    pub host_grace_seconds: u64,
    /// USD per hour of one spot instance, by instance type (`spot.hourly_prices`); a type
    /// not listed is priced from the spot price history where that is read.
    pub hourly_prices: std::collections::BTreeMap<String, f64>,
}

/// `spot.fleet_api`: which EC2 API requests and maintains the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetApiKind {
    /// `RequestSpotFleet` (the default; AWS calls it legacy).
    #[default]
    SpotFleet,
    /// `CreateFleet` of type `maintain` (no fleet role; allowed where an SCP denies
    /// RequestSpotFleet).
    Ec2Fleet,
}

impl FleetApiKind {
    /// Every value with its config spelling.
    pub const ALL: [(&'static str, FleetApiKind); 2] = [
        ("spot-fleet", FleetApiKind::SpotFleet),
        ("ec2-fleet", FleetApiKind::Ec2Fleet),
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetApiKind::SpotFleet => "spot-fleet",
            FleetApiKind::Ec2Fleet => "ec2-fleet",
        }
    }

    /// The API's name for people (`Spot Fleet`, `EC2 Fleet`).
    pub fn label(self) -> &'static str {
        match self {
            FleetApiKind::SpotFleet => "Spot Fleet",
            FleetApiKind::Ec2Fleet => "EC2 Fleet",
        }
    }

    /// Whether this is the default (left out of the fleet fingerprint, so fleets requested
    /// before the value existed keep theirs).
    pub fn is_default(&self) -> bool {
        *self == FleetApiKind::default()
    }
}

/// `spot.fallback`: what replaces spot capacity the fleet cannot get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Nothing: the fleet waits for spot capacity.
    #[default]
    None,
    /// On-demand instances for the missing runners, back to spot when spot is fulfilled.
    OnDemand,
}

/// Spot allocation strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationStrategy {
    /// Spread over all pools.
    Diversified,
    /// AWS's recommendation: cheapest among the deepest pools.
    PriceCapacityOptimized,
    /// The deepest pools.
    CapacityOptimized,
    /// The cheapest pools (AWS advises against it).
    LowestPrice,
}

impl AllocationStrategy {
    /// Every strategy with its config spelling.
    pub const ALL: [(&'static str, AllocationStrategy); 4] = [
        ("diversified", AllocationStrategy::Diversified),
        (
            "price-capacity-optimized",
            AllocationStrategy::PriceCapacityOptimized,
        ),
        ("capacity-optimized", AllocationStrategy::CapacityOptimized),
        ("lowest-price", AllocationStrategy::LowestPrice),
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("diversified", |(n, _)| n)
    }
}

/// Operating system of the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// Amazon Linux 2023 (dnf).
    Al2023,
    /// Ubuntu (apt).
    Ubuntu,
}

/// CPU architecture, derived from the instance families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64.
    X86_64,
    /// Graviton.
    Arm64,
}

impl Arch {
    /// Bitbucket's platform label for a Linux Docker runner on this architecture.
    pub fn platform_label(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux",
            Arch::Arm64 => "linux.arm64",
        }
    }
}

/// Where the AMI comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum AmiRef {
    /// A concrete `ami-...`.
    Id(String),
    /// An SSM parameter holding the AMI id, resolved by bbfleet at plan time.
    Ssm(String),
}

/// Instance settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceConfig {
    /// Operating system (template selection).
    pub os: Os,
    /// Architecture of every configured instance type.
    pub arch: Arch,
    /// The AMI hosts boot from, or with `baked` the base AMI `bbfleet bake` builds on.
    pub ami: AmiRef,
    /// `instance.ami = "baked"`: hosts boot from the fleet's newest available baked image
    /// (`bbfleet bake`); [`InstanceConfig::ami`] is then the OS's default AMI, the base.
    pub baked: bool,
    /// How many of the fleet's baked images `bbfleet bake` keeps (`instance.baked_images_kept`).
    pub baked_images_kept: u32,
    /// Instance profile name or ARN (role that reads the runner commands).
    pub instance_profile: String,
    /// Security groups; empty = the VPC's default group.
    pub security_groups: Vec<String>,
    /// Root volume size in GiB.
    pub root_volume_gb: u32,
    /// Swap file size in GiB; 0 = none.
    pub swap_gb: u32,
    /// A host that has claimed no runner after this long terminates itself.
    pub claim_timeout_seconds: u64,
}

/// KMS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KmsConfig {
    /// Key id, key ARN, alias name or alias ARN.
    pub key: String,
}

impl KmsConfig {
    /// bbfleet creates the key only when it is named by a plain alias.
    pub fn creatable_alias(&self) -> Option<&str> {
        self.key.starts_with("alias/").then_some(self.key.as_str())
    }
}

// ---------------------------------------------------------------- errors

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spot.subnets[1]`.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The path.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Fields are missing, of the wrong type or out of range.
    #[error("config file {path} is invalid:\n{}", list(.errors))]
    Invalid {
        /// The path.
        path: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- loading

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: syntax_message(text, &e),
                })?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let field = e.path().to_string();
                ConfigError::Invalid {
                    path: origin.to_owned(),
                    errors: vec![FieldError {
                        field: if field == "." { String::new() } else { field },
                        message: plain_types(
                            e.into_inner()
                                .to_string()
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .trim(),
                        ),
                    }],
                }
            })?;
        validate::config(raw).map_err(|errors| ConfigError::Invalid {
            path: origin.to_owned(),
            errors,
        })
    }

    /// Labels of this fleet's runners.
    pub fn labels(&self) -> &[String] {
        &self.bitbucket.labels
    }

    /// Distinct instance families, in config order.
    pub fn families(&self) -> Vec<&str> {
        let mut seen = Vec::new();
        for t in &self.spot.instance_types {
            let family = family(t);
            if !seen.contains(&family) {
                seen.push(family);
            }
        }
        seen
    }
}

/// `line L, column C: message`, on one line (the parser's own rendering draws a
/// multi-line source excerpt).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Serde's Rust type names in words a config author knows.
fn plain_types(message: &str) -> String {
    let message = [
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array [...]"),
    ]
    .iter()
    .fold(message.to_owned(), |m, (from, to)| m.replace(from, to));
    // "expected struct RawCapacity": the internal type name means nothing to the reader.
    match message.split_once("expected struct ") {
        Some((head, tail)) => {
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
            format!("{head}expected a table{rest}")
        }
        None => message,
    }
}

/// Instance family: the part of the type before the dot.
pub fn family(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

#[cfg(test)]
pub(crate) mod tests;
