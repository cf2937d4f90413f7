//! Validation: the raw config, section by section, into a `Config`; every problem is
//! collected as a `FieldError` that names its field.

use std::collections::BTreeSet;

use super::checks::{
    arch_of_family, check_api_url, check_kms_key, check_region, default_ami_parameter, is_aws_id,
    is_fleet_name, is_instance_profile, is_instance_type, is_slug_or_uuid, parse_ami,
};
use super::economics::AutoscalePolicy;
use super::raw::{
    RawBatch, RawBitbucket, RawCapacity, RawConfig, RawInstance, RawKms, RawRollout, RawSpot,
    RawWindow,
};
use super::schedule::{parse_days, parse_hours, parse_timezone, ScheduleWindow};
use super::{
    family, AllocationStrategy, AmiRef, Arch, BitbucketConfig, CapacityConfig, Config, FieldError,
    InstanceConfig, KmsConfig, Os, RolloutBatch, RolloutConfig, SpotConfig, BITBUCKET_RUNNER_LIMIT,
    DEFAULT_RUNNER_IMAGE, MAX_POOLS,
};
use crate::names;

/// `instance.ami = "baked"`: the fleet's newest baked image ([`InstanceConfig::baked`]).
const BAKED: &str = "baked";

/// Validates `raw`: the config, or every problem found.
pub(super) fn config(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut v = Validator::default();
    match v.config(raw) {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => Err(v.errors),
    }
}

#[derive(Default)]
pub(super) struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub(super) fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.err(field, message);
        }
    }

    /// Records the message of a failed value check.
    fn check_value(&mut self, field: &str, checked: Result<(), String>) {
        if let Err(message) = checked {
            self.err(field, message);
        }
    }

    /// Each of `items` (field `{field}[i]`) must be `valid` (else `invalid` says what it
    /// is not) and listed once.
    fn each_once(
        &mut self,
        field: &str,
        items: &[String],
        valid: impl Fn(&str) -> bool,
        invalid: impl Fn(&str) -> String,
    ) {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{field}[{i}]");
            if !valid(item) {
                self.err(field, invalid(item));
            } else if !seen.insert(item.as_str()) {
                self.err(field, format!("{item:?} is listed twice"));
            }
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
            self.check_value("region", check_region(region));
        }
        let instance_types = self.instance_types(&raw.spot.instance_types);
        let arch = self.arch(&instance_types);
        let bitbucket = self.bitbucket(raw.bitbucket, arch);
        let capacity = self.capacity(raw.capacity);
        let spot = self.spot(raw.spot, instance_types);
        let instance = self.instance(raw.instance, arch);
        let kms = self.kms(raw.kms, &raw.name);
        let rollout = self.rollout(raw.rollout);
        let max = capacity.as_ref().map_or(BITBUCKET_RUNNER_LIMIT, |c| c.max);
        let autoscale = capacity.as_ref().and_then(|c| c.autoscale.as_ref());
        let simulate = self.simulate(raw.simulate, max, autoscale);
        Some(Config {
            name: raw.name,
            region: raw.region,
            bitbucket,
            capacity: capacity?,
            spot: spot?,
            instance: instance?,
            kms,
            rollout,
            simulate,
        })
    }

    fn rollout(&mut self, raw: RawRollout) -> RolloutConfig {
        let field = "rollout.batch";
        let batch = match raw.batch {
            None => RolloutBatch::default(),
            Some(RawBatch::Count(n)) => match u32::try_from(n) {
                Ok(n @ 1..=BITBUCKET_RUNNER_LIMIT) => RolloutBatch::Count(n),
                _ => {
                    self.err(field, format!("{n} is out of range: 1 to {BITBUCKET_RUNNER_LIMIT} hosts, or a percentage such as \"25%\""));
                    RolloutBatch::default()
                }
            },
            Some(RawBatch::Text(t)) => match t.strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(p @ 1..=100)) => RolloutBatch::Percent(p),
                _ => {
                    self.err(field, format!("{t:?} is not a host count (1, 2, ...) or a percentage from \"1%\" to \"100%\""));
                    RolloutBatch::default()
                }
            },
        };
        RolloutConfig { batch }
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
        let labels = self.labels(&raw.labels, arch);
        let runner_image = self.runner_image(raw.runner_image);
        if let Some(url) = &raw.api_url {
            self.check_value("bitbucket.api_url", check_api_url(url));
        }
        BitbucketConfig {
            workspace: raw.workspace,
            repository: raw.repository,
            labels,
            runner_image,
            api_url: raw.api_url,
        }
    }

    /// The runner labels: `self.hosted` and the platform label first, then the custom ones.
    fn labels(&mut self, raw: &[String], arch: Arch) -> Vec<String> {
        let platform = arch.platform_label();
        let mut labels = vec!["self.hosted".to_owned(), platform.to_owned()];
        let mut custom = 0;
        for (i, label) in raw.iter().enumerate() {
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
        labels
    }

    fn runner_image(&mut self, raw: Option<String>) -> String {
        let runner_image = raw.unwrap_or_else(|| DEFAULT_RUNNER_IMAGE.to_owned());
        self.check(
            !runner_image.is_empty()
                && runner_image
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"'),
            "bitbucket.runner_image",
            format!("{runner_image:?} is not a container image reference"),
        );
        runner_image
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
        let autoscale = raw
            .autoscale
            .map(|a| self.autoscale(a, max, "capacity.autoscale", AutoscalePolicy::Bbfleet));
        self.check(
            raw.on_demand_base <= max,
            "capacity.on_demand_base",
            format!("{} is above capacity.max ({max})", raw.on_demand_base),
        );
        let cost_cap = self.cost_cap(raw.max_hourly_cost, raw.on_demand_hourly_price);
        Some(CapacityConfig {
            default: raw.default,
            max,
            schedule,
            autoscale,
            on_demand_base: raw.on_demand_base,
            cost_cap,
            on_demand_hourly_price: raw.on_demand_hourly_price,
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
        let tz = parse_timezone(&w.timezone)
            .map_err(|m| self.err(field("timezone"), m))
            .ok();
        self.check(
            w.capacity <= max,
            field("capacity"),
            format!("{} is above capacity.max ({max})", w.capacity),
        );
        let hours = hours?;
        Some(ScheduleWindow::new(w, day_set?, hours, tz?))
    }

    fn instance_types(&mut self, types: &[String]) -> Vec<String> {
        self.each_once("spot.instance_types", types, is_instance_type, |t| {
            format!("{t:?} is not an EC2 instance type (e.g. m6i.large)")
        });
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
        self.each_once(
            "spot.subnets",
            &raw.subnets,
            |s| is_aws_id(s, "subnet-"),
            |s| format!("{s:?} is not a subnet id (subnet-0123abcd...)"),
        );
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
        let allocation_strategy = self.allocation_strategy(raw.allocation_strategy.as_deref());
        let fleet_api = self.fleet_api(raw.fleet_api.as_deref());
        let fleet_role = self.fleet_role(raw.fleet_role, fleet_api);
        let fallback = self.fallback(raw.fallback.as_deref());
        self.hourly_prices(&raw.hourly_prices, &instance_types);
        Some(SpotConfig {
            instance_types,
            subnets: raw.subnets,
            allocation_strategy: allocation_strategy?,
            fleet_api,
            fleet_role,
            fallback,
            fallback_grace_seconds: raw.fallback_grace_seconds,
            stray_grace_seconds: raw.stray_grace_seconds,
            host_grace_seconds: raw.host_grace_seconds,
            hourly_prices: raw.hourly_prices,
        })
    }

    fn allocation_strategy(&mut self, raw: Option<&str>) -> Option<AllocationStrategy> {
        let Some(s) = raw else {
            return Some(AllocationStrategy::Diversified);
        };
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

    fn instance(&mut self, raw: RawInstance, arch: Arch) -> Option<InstanceConfig> {
        let os = self.os(&raw.os);
        let baked = raw.ami.as_deref() == Some(BAKED);
        let ami = self.ami(raw.ami.filter(|a| a != BAKED), os, arch);
        self.check(
            (1..=100).contains(&raw.baked_images_kept),
            "instance.baked_images_kept",
            format!("{} is out of range: 1 to 100", raw.baked_images_kept),
        );
        self.check(
            is_instance_profile(&raw.instance_profile),
            "instance.instance_profile",
            format!(
                "{:?} is not an instance profile name or ARN",
                raw.instance_profile
            ),
        );
        self.each_once(
            "instance.security_groups",
            &raw.security_groups,
            |sg| is_aws_id(sg, "sg-"),
            |sg| format!("{sg:?} is not a security group id (sg-0123abcd...)"),
        );
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
        self.check(
            (300..=86_400).contains(&raw.claim_timeout_seconds),
            "instance.claim_timeout_seconds",
            format!(
                "{} is out of range: 300 to 86400 (a host needs a few minutes to boot and claim)",
                raw.claim_timeout_seconds
            ),
        );
        Some(InstanceConfig {
            os: os?,
            arch,
            ami: ami?,
            baked,
            baked_images_kept: raw.baked_images_kept,
            instance_profile: raw.instance_profile,
            security_groups: raw.security_groups,
            root_volume_gb: raw.root_volume_gb,
            swap_gb: raw.swap_gb,
            claim_timeout_seconds: raw.claim_timeout_seconds,
        })
    }

    fn os(&mut self, raw: &str) -> Option<Os> {
        match raw {
            "al2023" => Some(Os::Al2023),
            "ubuntu" => Some(Os::Ubuntu),
            other => {
                self.err(
                    "instance.os",
                    format!("{other:?} is not one of al2023, ubuntu"),
                );
                None
            }
        }
    }

    /// The configured AMI, else the OS's default SSM parameter for `arch` (also the base
    /// of `instance.ami = "baked"`).
    fn ami(&mut self, raw: Option<String>, os: Option<Os>, arch: Arch) -> Option<AmiRef> {
        match raw {
            Some(a) => {
                let parsed = parse_ami(&a);
                if parsed.is_none() {
                    self.err(
                        "instance.ami",
                        format!("{a:?} is neither an AMI id (ami-...), an SSM parameter (ssm:/path or resolve:ssm:/path) nor \"{BAKED}\""),
                    );
                }
                parsed
            }
            None => os.map(|os| AmiRef::Ssm(default_ami_parameter(os, arch))),
        }
    }

    fn kms(&mut self, raw: RawKms, fleet: &str) -> KmsConfig {
        let key = raw.key.unwrap_or_else(|| names::default_key_alias(fleet));
        self.check_value("kms.key", check_kms_key(&key));
        KmsConfig { key }
    }
}
