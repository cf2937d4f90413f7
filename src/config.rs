//! The TOML config: parsed, validated offline, and turned into one `Config` the rest of
//! the program trusts. Every error names the field (`spot.subnets[1]: ...`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::names;

/// The image Bitbucket's "Add runner" dialog shows for Linux Docker runners.
pub const DEFAULT_RUNNER_IMAGE: &str =
    "docker-public.packages.atlassian.com/sox/atlassian/bitbucket-pipelines-runner:1";
/// Bitbucket's runners-per-scope limit (workspace, or each repository).
pub const BITBUCKET_RUNNER_LIMIT: u32 = 100;
/// Spot Fleet's limit of capacity pools (instance type x subnet) per request.
pub const MAX_POOLS: usize = 300;

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    region: Option<String>,
    bitbucket: RawBitbucket,
    capacity: RawCapacity,
    spot: RawSpot,
    instance: RawInstance,
    #[serde(default)]
    kms: RawKms,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBitbucket {
    workspace: String,
    repository: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    runner_image: Option<String>,
    api_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    default: u32,
    max: u32,
    #[serde(default)]
    schedule: Vec<RawWindow>,
    autoscale: Option<RawAutoscale>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: String,
    hours: String,
    timezone: String,
    capacity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoscale {
    min: u32,
    max: Option<u32>,
    #[serde(default = "default_up_threshold")]
    scale_up_threshold: f64,
    #[serde(default = "default_down_threshold")]
    scale_down_threshold: f64,
    #[serde(default = "default_up_multiplier")]
    scale_up_multiplier: f64,
    #[serde(default = "default_down_multiplier")]
    scale_down_multiplier: f64,
    #[serde(default = "default_cooldown")]
    cooldown_seconds: u64,
}

fn default_up_threshold() -> f64 {
    0.8
}
fn default_down_threshold() -> f64 {
    0.2
}
fn default_up_multiplier() -> f64 {
    1.5
}
fn default_down_multiplier() -> f64 {
    0.5
}
fn default_cooldown() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpot {
    instance_types: Vec<String>,
    subnets: Vec<String>,
    allocation_strategy: Option<String>,
    fleet_role: String,
    #[serde(default = "default_stray_grace")]
    stray_grace_seconds: u64,
}

/// A fleet-tagged instance that no request lists and whose launch tag names no request
/// is a stray only after this long: DescribeSpotFleetInstances "might be out of date".
fn default_stray_grace() -> u64 {
    600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    #[serde(default = "default_os")]
    os: String,
    ami: Option<String>,
    instance_profile: String,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default = "default_root_volume")]
    root_volume_gb: u32,
    #[serde(default)]
    swap_gb: u32,
}

fn default_os() -> String {
    "al2023".to_owned()
}
fn default_root_volume() -> u32 {
    50
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKms {
    key: Option<String>,
}

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
}

/// Settings of `bbfleet autoscale` (the semantics of Atlassian's runners-autoscaler).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleConfig {
    /// Fewest runners.
    pub min: u32,
    /// Most runners (defaults to `capacity.max`).
    pub max: u32,
    /// Grow above this busy ratio.
    pub scale_up_threshold: f64,
    /// Shrink below this busy ratio.
    pub scale_down_threshold: f64,
    /// Growth factor (rounded up).
    pub scale_up_multiplier: f64,
    /// Shrink factor (rounded down).
    pub scale_down_multiplier: f64,
    /// Quiet time after a change, in seconds.
    pub cooldown_seconds: u64,
}

/// A schedule window: on `days`, between `hours` in `timezone`, run `capacity` runners.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleWindow {
    /// As written, e.g. `mon-fri`.
    pub days: String,
    /// As written, e.g. `07:00-19:00`.
    pub hours: String,
    /// IANA time zone name.
    pub timezone: String,
    /// Runners during the window.
    pub capacity: u32,
    #[serde(skip)]
    day_set: [bool; 7],
    #[serde(skip)]
    start_minute: u16,
    #[serde(skip)]
    end_minute: u16,
    #[serde(skip)]
    tz: jiff::tz::TimeZone,
}

/// Spot fleet settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpotConfig {
    /// Instance types, in at least two families.
    pub instance_types: Vec<String>,
    /// Subnets, in at least two availability zones.
    pub subnets: Vec<String>,
    /// How the fleet spreads over pools.
    pub allocation_strategy: AllocationStrategy,
    /// ARN of the role Spot Fleet uses to launch and tag instances.
    pub fleet_role: String,
    /// How long after its launch an unlisted, unclaimed-by-request instance is left alone.
    pub stray_grace_seconds: u64,
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
    const ALL: [(&'static str, AllocationStrategy); 4] = [
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
    /// The AMI.
    pub ami: AmiRef,
    /// Instance profile name or ARN (role that reads the runner commands).
    pub instance_profile: String,
    /// Security groups; empty = the VPC's default group.
    pub security_groups: Vec<String>,
    /// Root volume size in GiB.
    pub root_volume_gb: u32,
    /// Swap file size in GiB; 0 = none.
    pub swap_gb: u32,
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
        let mut v = Validator::default();
        let config = v.config(raw);
        match config {
            Some(c) if v.errors.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid {
                path: origin.to_owned(),
                errors: v.errors,
            }),
        }
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

fn arch_of_family(family: &str) -> Arch {
    // Graviton families carry a `g` right after the generation digit: m6g, c7gn, t4g, im4gn, a1.
    let digits_end = family
        .char_indices()
        .skip_while(|(_, c)| c.is_ascii_lowercase())
        .find(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| i);
    let arm = family == "a1"
        || (!family.contains('-')
            && digits_end.is_some_and(|i| {
                family[i..].starts_with('g') && family[..i].ends_with(|c: char| c.is_ascii_digit())
            }));
    if arm {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.err(field, message);
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        self.check(
            is_fleet_name(&raw.name),
            "name",
            format!(
                "{:?} is not a valid fleet name: use 1-24 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
                raw.name
            ),
        );
        if let Some(region) = &raw.region {
            if let Err(message) = check_region(region) {
                self.err("region", message);
            }
        }
        let instance_types = self.instance_types(&raw.spot.instance_types);
        let arch = self.arch(&instance_types);
        let bitbucket = self.bitbucket(raw.bitbucket, arch);
        let capacity = self.capacity(raw.capacity);
        let spot = self.spot(raw.spot, instance_types);
        let instance = self.instance(raw.instance, arch);
        let kms = self.kms(raw.kms, &raw.name);
        Some(Config {
            name: raw.name,
            region: raw.region,
            bitbucket,
            capacity: capacity?,
            spot: spot?,
            instance: instance?,
            kms,
        })
    }

    fn bitbucket(&mut self, raw: RawBitbucket, arch: Arch) -> BitbucketConfig {
        self.check(
            is_slug_or_uuid(&raw.workspace),
            "bitbucket.workspace",
            format!("{:?} is not a workspace slug or {{uuid}}", raw.workspace),
        );
        if let Some(repo) = &raw.repository {
            self.check(
                is_slug_or_uuid(repo),
                "bitbucket.repository",
                format!("{repo:?} is not a repository slug or {{uuid}}"),
            );
        }
        let platform = arch.platform_label();
        let mut labels = vec!["self.hosted".to_owned(), platform.to_owned()];
        let mut custom = 0;
        for (i, label) in raw.labels.iter().enumerate() {
            let field = format!("bitbucket.labels[{i}]");
            if label.is_empty()
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
            {
                self.err(
                    field,
                    format!("{label:?}: labels may hold only lowercase letters, digits and dots"),
                );
                continue;
            }
            let other_platform = ["linux", "linux.arm64", "linux.shell", "windows", "macos"];
            if label != platform && other_platform.contains(&label.as_str()) {
                self.err(
                    field,
                    format!("{label:?} is another platform's label; these instances are {arch:?} Linux Docker runners, labelled {platform:?}"),
                );
                continue;
            }
            if labels.contains(label) {
                // The mandatory labels may be written out; a custom one twice is a typo.
                if labels[..2].contains(label) {
                    continue;
                }
                self.err(field, format!("{label:?} is listed twice"));
                continue;
            }
            custom += 1;
            labels.push(label.clone());
        }
        self.check(
            custom <= 10,
            "bitbucket.labels",
            format!("{custom} custom labels; Bitbucket allows at most 10 besides self.hosted and the platform label"),
        );
        let runner_image = raw
            .runner_image
            .unwrap_or_else(|| DEFAULT_RUNNER_IMAGE.to_owned());
        self.check(
            !runner_image.is_empty()
                && runner_image
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"'),
            "bitbucket.runner_image",
            format!("{runner_image:?} is not a container image reference"),
        );
        if let Some(url) = &raw.api_url {
            if let Err(message) = check_api_url(url) {
                self.err("bitbucket.api_url", message);
            }
        }
        BitbucketConfig {
            workspace: raw.workspace,
            repository: raw.repository,
            labels,
            runner_image,
            api_url: raw.api_url,
        }
    }

    fn capacity(&mut self, raw: RawCapacity) -> Option<CapacityConfig> {
        let max = raw.max;
        self.check(
            (1..=BITBUCKET_RUNNER_LIMIT).contains(&max),
            "capacity.max",
            format!("{max} is out of range: 1 to {BITBUCKET_RUNNER_LIMIT} (Bitbucket allows 100 runners per workspace or repository)"),
        );
        self.check(
            raw.default <= max,
            "capacity.default",
            format!("{} is above capacity.max ({max})", raw.default),
        );
        let mut schedule = Vec::new();
        for (i, w) in raw.schedule.into_iter().enumerate() {
            if let Some(window) = self.window(i, w, max) {
                schedule.push(window);
            }
        }
        let autoscale = raw.autoscale.map(|a| {
            let amax = a.max.unwrap_or(max);
            self.check(
                amax <= max,
                "capacity.autoscale.max",
                format!("{amax} is above capacity.max ({max})"),
            );
            self.check(
                a.min <= amax,
                "capacity.autoscale.min",
                format!("{} is above the autoscale max ({amax})", a.min),
            );
            for (name, value) in [
                ("scale_up_threshold", a.scale_up_threshold),
                ("scale_down_threshold", a.scale_down_threshold),
            ] {
                self.check(
                    (0.0..=1.0).contains(&value),
                    format!("capacity.autoscale.{name}"),
                    format!("{value} is not a ratio between 0 and 1"),
                );
            }
            self.check(
                a.scale_down_threshold < a.scale_up_threshold,
                "capacity.autoscale.scale_down_threshold",
                "must be below scale_up_threshold",
            );
            self.check(
                a.scale_up_multiplier > 1.0 && a.scale_up_multiplier <= 10.0,
                "capacity.autoscale.scale_up_multiplier",
                format!(
                    "{} is out of range: above 1, at most 10",
                    a.scale_up_multiplier
                ),
            );
            self.check(
                a.scale_down_multiplier > 0.0 && a.scale_down_multiplier < 1.0,
                "capacity.autoscale.scale_down_multiplier",
                format!(
                    "{} is out of range: above 0, below 1",
                    a.scale_down_multiplier
                ),
            );
            AutoscaleConfig {
                min: a.min,
                max: amax,
                scale_up_threshold: a.scale_up_threshold,
                scale_down_threshold: a.scale_down_threshold,
                scale_up_multiplier: a.scale_up_multiplier,
                scale_down_multiplier: a.scale_down_multiplier,
                cooldown_seconds: a.cooldown_seconds,
            }
        });
        Some(CapacityConfig {
            default: raw.default,
            max,
            schedule,
            autoscale,
        })
    }

    fn window(&mut self, i: usize, w: RawWindow, max: u32) -> Option<ScheduleWindow> {
        let field = |k: &str| format!("capacity.schedule[{i}].{k}");
        let day_set = parse_days(&w.days)
            .map_err(|m| self.err(field("days"), m))
            .ok();
        let hours = parse_hours(&w.hours)
            .map_err(|m| self.err(field("hours"), m))
            .ok();
        let tz = jiff::tz::TimeZone::get(&w.timezone)
            .map_err(|_| {
                self.err(
                    field("timezone"),
                    format!(
                        "{:?} is not an IANA time zone (e.g. Europe/Warsaw, UTC)",
                        w.timezone
                    ),
                )
            })
            .ok();
        self.check(
            w.capacity <= max,
            field("capacity"),
            format!("{} is above capacity.max ({max})", w.capacity),
        );
        let (start_minute, end_minute) = hours?;
        Some(ScheduleWindow {
            days: w.days,
            hours: w.hours,
            timezone: w.timezone,
            capacity: w.capacity,
            day_set: day_set?,
            start_minute,
            end_minute,
            tz: tz?,
        })
    }

    fn instance_types(&mut self, types: &[String]) -> Vec<String> {
        let mut seen = BTreeSet::new();
        for (i, t) in types.iter().enumerate() {
            let field = format!("spot.instance_types[{i}]");
            if !is_instance_type(t) {
                self.err(
                    field,
                    format!("{t:?} is not an EC2 instance type (e.g. m6i.large)"),
                );
            } else if !seen.insert(t.as_str()) {
                self.err(field, format!("{t:?} is listed twice"));
            }
        }
        let families: BTreeSet<&str> = types.iter().map(|t| family(t)).collect();
        self.check(
            families.len() >= 2,
            "spot.instance_types",
            format!(
                "the fleet spans {} instance famil{} ({}); list types from at least 2 families so one family's spot shortage cannot empty the fleet",
                families.len(),
                if families.len() == 1 { "y" } else { "ies" },
                families.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        );
        types.to_vec()
    }

    fn arch(&mut self, types: &[String]) -> Arch {
        let arches: BTreeSet<_> = types
            .iter()
            .map(|t| arch_of_family(family(t)) as u8)
            .collect();
        if arches.len() > 1 {
            self.err(
                "spot.instance_types",
                "mixes x86_64 and arm64 (Graviton) types; one launch template has one AMI, so use one architecture",
            );
        }
        types
            .first()
            .map_or(Arch::X86_64, |t| arch_of_family(family(t)))
    }

    fn spot(&mut self, raw: RawSpot, instance_types: Vec<String>) -> Option<SpotConfig> {
        let mut seen = BTreeSet::new();
        for (i, s) in raw.subnets.iter().enumerate() {
            let field = format!("spot.subnets[{i}]");
            if !is_aws_id(s, "subnet-") {
                self.err(
                    field,
                    format!("{s:?} is not a subnet id (subnet-0123abcd...)"),
                );
            } else if !seen.insert(s.as_str()) {
                self.err(field, format!("{s:?} is listed twice"));
            }
        }
        self.check(
            raw.subnets.len() >= 2,
            "spot.subnets",
            format!(
                "{} subnet(s); list subnets in at least 2 availability zones so one zone's spot shortage cannot empty the fleet",
                raw.subnets.len()
            ),
        );
        let pools = instance_types.len() * raw.subnets.len();
        self.check(
            pools <= MAX_POOLS,
            "spot",
            format!("{pools} capacity pools (instance types x subnets); Spot Fleet allows at most {MAX_POOLS}"),
        );
        let allocation_strategy = match raw.allocation_strategy.as_deref() {
            None => Some(AllocationStrategy::Diversified),
            Some(s) => {
                let found = AllocationStrategy::ALL
                    .iter()
                    .find(|(n, _)| *n == s)
                    .map(|(_, v)| *v);
                if found.is_none() {
                    self.err(
                        "spot.allocation_strategy",
                        format!(
                            "{s:?} is not one of {}",
                            AllocationStrategy::ALL
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                found
            }
        };
        self.check(
            is_role_arn(&raw.fleet_role),
            "spot.fleet_role",
            format!(
                "{:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)",
                raw.fleet_role
            ),
        );
        Some(SpotConfig {
            instance_types,
            subnets: raw.subnets,
            allocation_strategy: allocation_strategy?,
            fleet_role: raw.fleet_role,
            stray_grace_seconds: raw.stray_grace_seconds,
        })
    }

    fn instance(&mut self, raw: RawInstance, arch: Arch) -> Option<InstanceConfig> {
        let os = match raw.os.as_str() {
            "al2023" => Some(Os::Al2023),
            "ubuntu" => Some(Os::Ubuntu),
            other => {
                self.err(
                    "instance.os",
                    format!("{other:?} is not one of al2023, ubuntu"),
                );
                None
            }
        };
        let ami = match raw.ami {
            Some(a) => {
                let parsed = parse_ami(&a);
                if parsed.is_none() {
                    self.err(
                        "instance.ami",
                        format!("{a:?} is neither an AMI id (ami-...) nor an SSM parameter (ssm:/path or resolve:ssm:/path)"),
                    );
                }
                parsed
            }
            None => os.map(|os| AmiRef::Ssm(default_ami_parameter(os, arch))),
        };
        self.check(
            is_instance_profile(&raw.instance_profile),
            "instance.instance_profile",
            format!(
                "{:?} is not an instance profile name or ARN",
                raw.instance_profile
            ),
        );
        let mut seen = BTreeSet::new();
        for (i, sg) in raw.security_groups.iter().enumerate() {
            let field = format!("instance.security_groups[{i}]");
            if !is_aws_id(sg, "sg-") {
                self.err(
                    field,
                    format!("{sg:?} is not a security group id (sg-0123abcd...)"),
                );
            } else if !seen.insert(sg) {
                self.err(field, format!("{sg:?} is listed twice"));
            }
        }
        self.check(
            (8..=16384).contains(&raw.root_volume_gb),
            "instance.root_volume_gb",
            format!("{} is out of range: 8 to 16384", raw.root_volume_gb),
        );
        self.check(
            raw.swap_gb <= 64 && raw.swap_gb < raw.root_volume_gb / 2,
            "instance.swap_gb",
            format!(
                "{} is out of range: 0 to 64 and less than half of root_volume_gb",
                raw.swap_gb
            ),
        );
        Some(InstanceConfig {
            os: os?,
            arch,
            ami: ami?,
            instance_profile: raw.instance_profile,
            security_groups: raw.security_groups,
            root_volume_gb: raw.root_volume_gb,
            swap_gb: raw.swap_gb,
        })
    }

    fn kms(&mut self, raw: RawKms, fleet: &str) -> KmsConfig {
        let key = raw.key.unwrap_or_else(|| names::default_key_alias(fleet));
        if let Err(message) = check_kms_key(&key) {
            self.err("kms.key", message);
        }
        KmsConfig { key }
    }
}

// ---------------------------------------------------------------- schedule

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| *d == s)
        .ok_or_else(|| format!("{s:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut set = [false; 7];
    let s = s.trim().to_ascii_lowercase();
    if s == "daily" || s == "*" {
        return Ok([true; 7]);
    }
    for part in s.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a.trim())?, day_index(b.trim())?);
                let mut d = a;
                loop {
                    set[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set[day_index(part)?] = true,
        }
    }
    Ok(set)
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("{s:?} is not a range HH:MM-HH:MM (start inclusive, end exclusive)")
    })?;
    let (start, end) = (parse_hhmm(a, false)?, parse_hhmm(b, true)?);
    if start == end {
        return Err(format!("{s:?} is empty: start and end are the same"));
    }
    Ok((start, end))
}

impl ScheduleWindow {
    /// Whether the window covers the instant, in wall-clock time of its time zone.
    /// A window that crosses midnight belongs to the day it starts on.
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start_minute < self.end_minute {
            self.day_set[day] && (self.start_minute..self.end_minute).contains(&minute)
        } else {
            let yesterday = (day + 6) % 7;
            (self.day_set[day] && minute >= self.start_minute)
                || (self.day_set[yesterday] && minute < self.end_minute)
        }
    }
}

/// Where a capacity came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Number of runners (= instances).
    pub desired: u32,
    /// Human-readable origin: `default`, `--capacity`, `schedule mon-fri 07:00-19:00 Europe/Warsaw`.
    pub source: String,
}

impl CapacityConfig {
    /// The capacity at `at`: `--capacity` > first matching schedule window > default.
    pub fn resolve(
        &self,
        at: jiff::Timestamp,
        explicit: Option<u32>,
    ) -> Result<Capacity, FieldError> {
        if let Some(n) = explicit {
            if n > self.max {
                return Err(FieldError {
                    field: "--capacity".to_owned(),
                    message: format!(
                        "{n} is above capacity.max ({}); raise capacity.max in the config first",
                        self.max
                    ),
                });
            }
            return Ok(Capacity {
                desired: n,
                source: "--capacity".to_owned(),
            });
        }
        Ok(self
            .schedule
            .iter()
            .find(|w| w.contains(at))
            .map(|w| Capacity {
                desired: w.capacity,
                source: format!("schedule {} {} {}", w.days, w.hours, w.timezone),
            })
            .unwrap_or_else(|| Capacity {
                desired: self.default,
                source: "default".to_owned(),
            }))
    }
}

// ---------------------------------------------------------------- field checks

fn is_fleet_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 24
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// Region name prefixes, one per AWS partition: the `regionRegex` of each partition in the
/// AWS SDKs' endpoint partition data (`partitions.json`, compiled into aws-sdk-ec2 as
/// `src/endpoint_lib.rs`): `^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$` for `aws`, `^cn\-...` for
/// `aws-cn`, `^us\-gov\-...`, `^us\-iso\-...`, `^us\-isob\-...`, `^eu\-isoe\-...`, `^us\-isof\-...` and
/// `^eusc\-(de)\-...`. Longest first, so `us-gov-west-1` is read as `us-gov` + `west` + `1`.
const REGION_PREFIXES: [&str; 16] = [
    "eusc-de", "us-isob", "us-isof", "eu-isoe", "us-gov", "us-iso", "us", "eu", "ap", "sa", "ca",
    "me", "af", "il", "mx", "cn",
];
/// Longest direction word of a region name bbfleet accepts (`northwest` has 9 letters).
const REGION_WORD_MAX: usize = 16;
/// The longest region name [`check_region`] accepts: the worst case for anything a region
/// is rendered into (the userdata size check uses it when the region is not known offline).
pub const LONGEST_REGION: &str = "eusc-de-abcdefghijklmnop-99";

/// Whether `s` is an AWS region name: a partition prefix, a lowercase word and a number of
/// one or two digits (`us-east-1`, `us-gov-west-1`, `cn-northwest-1`, `eu-isoe-west-1`).
/// Stricter than the SDKs' `\w+` and `\d+` (no capitals, underscores or long numbers), so a
/// region is always a short, plain word when it is rendered into an ARN or a root script.
pub fn is_region(s: &str) -> bool {
    REGION_PREFIXES.iter().any(|prefix| {
        s.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(word, number)| {
                (1..=REGION_WORD_MAX).contains(&word.len())
                    && word.bytes().all(|b| b.is_ascii_lowercase())
                    && (1..=2).contains(&number.len())
                    && number.bytes().all(|b| b.is_ascii_digit())
                    && !number.starts_with('0')
            })
    })
}

/// `Ok` for an AWS region name, else what is wrong, for an error that names where the
/// value came from (`region`, `AWS_REGION`, ...).
pub fn check_region(region: &str) -> Result<(), String> {
    if is_region(region) {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not an AWS region name (e.g. eu-west-1, us-gov-west-1, cn-northwest-1)"
        ))
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

fn is_slug_or_uuid(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        return is_uuid(inner);
    }
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn is_instance_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((fam, size)) => {
            fam.starts_with(|c: char| c.is_ascii_lowercase())
                && fam
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !size.is_empty()
                && size
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => false,
    }
}

fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_iam_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

fn iam_arn_of(s: &str, kind: &str) -> Option<String> {
    let rest = s.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    let rest = rest.strip_prefix("iam::")?;
    let (account, name) = rest.split_once(':')?;
    let name = name.strip_prefix(kind)?.strip_prefix('/')?;
    (partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && is_iam_name(name))
    .then(|| name.to_owned())
}

fn is_role_arn(s: &str) -> bool {
    iam_arn_of(s, "role").is_some()
}

fn is_instance_profile(s: &str) -> bool {
    iam_arn_of(s, "instance-profile").is_some()
        || (!s.starts_with("arn:") && !s.contains('/') && is_iam_name(s))
}

fn parse_ami(s: &str) -> Option<AmiRef> {
    if is_aws_id(s, "ami-") {
        return Some(AmiRef::Id(s.to_owned()));
    }
    let path = s
        .strip_prefix("resolve:ssm:")
        .or_else(|| s.strip_prefix("ssm:"))?;
    (path.starts_with('/')
        && path.len() > 1
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b)))
    .then(|| AmiRef::Ssm(path.to_owned()))
}

fn default_ami_parameter(os: Os, arch: Arch) -> String {
    match (os, arch) {
        (Os::Al2023, Arch::X86_64) => {
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".to_owned()
        }
        (Os::Al2023, Arch::Arm64) => {
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64".to_owned()
        }
        (Os::Ubuntu, Arch::X86_64) => {
            "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
                .to_owned()
        }
        (Os::Ubuntu, Arch::Arm64) => {
            "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
                .to_owned()
        }
    }
}

fn check_kms_key(key: &str) -> Result<(), String> {
    if let Some(name) = key.strip_prefix("alias/") {
        if name.starts_with("aws/") {
            return Err(format!("{key:?} is an AWS managed key; bbfleet needs a customer managed key (e.g. alias/bbfleet-ci)"));
        }
        if name.is_empty()
            || key.len() > 256
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
        {
            return Err(format!(
                "{key:?} is not a valid alias: alias/ followed by letters, digits, '/', '_' or '-'"
            ));
        }
        return Ok(());
    }
    if is_uuid(key)
        || key
            .strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Ok(());
    }
    if key.starts_with("arn:aws")
        && key.contains(":kms:")
        && (key.contains(":key/") || key.contains(":alias/"))
    {
        if key.contains(":alias/aws/") {
            return Err(format!(
                "{key:?} is an AWS managed key; bbfleet needs a customer managed key"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "{key:?} is not a KMS key id, key ARN, alias (alias/NAME) or alias ARN"
    ))
}

/// A Bitbucket-facing URL: https, or http only to a loopback host (credentials travel on it).
pub fn check_api_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Said without the URL: what is in it is a credential, and messages are logged.
        return Err("the URL holds a user name or password (user:pass@); give credentials in the BITBUCKET_* variables only".to_owned());
    }
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("{url:?}: credentials are sent to this URL, so it must be https (http only to a loopback host)")),
    }
}

#[cfg(test)]
pub(crate) mod tests;
