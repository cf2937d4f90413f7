//! Pre-flight checks of `plan` (skipped with `--no-preflight`): read-only calls and
//! EC2 DryRun requests that tell, before the first apply, whether the account can run
//! the fleet. Each check reports; none changes anything, none stops the plan. The DryRun
//! checks are in [`permissions`], the Spot placement scores in [`placement`].
//!
//! The spot vCPU quota lives in Service Quotas, which bbfleet does not link (one more
//! SDK crate and one more permission for a single number): the check reports the vCPUs
//! the capacity needs and the command that reads the quota.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::aws::fleet::FleetApi;
use crate::aws::offerings::{self, Pool};
use crate::aws::{ec2, Aws, AwsError};
use crate::config::{AllocationStrategy, Config};
use crate::plan::Desired;
use crate::world::Observed;

pub mod permissions;
pub mod placement;

/// The quota that limits spot instances of the standard families (A, C, D, H, I, M, R, T, Z).
pub const SPOT_QUOTA_CODE: &str = "L-34B43A08";
/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As needed.
    Ok,
    /// Works, but look at it.
    Warn,
    /// Apply would fail.
    Fail,
    /// Could not be checked.
    Unknown,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name (`subnets`, `instance types`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, with the numbers.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
        }
    }

    fn from_error(name: &'static str, err: AwsError) -> Check {
        Check::new(name, Status::Unknown, err.to_string())
    }
}

/// Renders the section printed before the plan.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::from("Pre-flight (read-only; skip with --no-preflight):\n");
    for c in checks {
        let label = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Unknown => "?",
        };
        out.push_str(&format!("  {label:<4} {}: {}\n", c.name, c.detail));
    }
    out.push('\n');
    out
}

/// Runs every check; independent calls in parallel. The calls are the providers'
/// (`aws::offerings`, `aws::ec2`, the fleet backend); the checks judge their answers.
pub async fn run(
    config: &Config,
    aws: &Aws,
    fleet_api: &dyn FleetApi,
    observed: &Observed,
    desired: &Desired,
) -> Vec<Check> {
    let azs: Vec<String> = observed
        .subnets
        .iter()
        .map(|s| s.az.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let types = &config.spot.instance_types;
    let capacity = desired.capacity.desired;
    let subnet_ids: Vec<String> = observed.subnets.iter().map(|s| s.id.clone()).collect();
    let scored = placement::scored_capacity(capacity, config.capacity.max);
    let (offered, scores, zones, launch_template, fleet_request, vcpus, prices) = tokio::join!(
        offerings::offered_pools(&aws.ec2, types, &azs),
        offerings::placement_scores(&aws.ec2, &aws.region, types, scored),
        offerings::zone_ids(&aws.ec2, &subnet_ids),
        ec2::dry_run_create_launch_template(&aws.ec2, &desired.launch_template),
        permissions::fleet_request(fleet_api, desired, observed.launch_template.as_ref()),
        offerings::vcpus(&aws.ec2, types),
        offerings::spot_prices(&aws.ec2, types, &azs),
    );
    vec![
        subnets(observed),
        offered.map_or_else(
            |e| Check::from_error(OFFERINGS, e),
            |o| missing_offerings(types, &azs, &o),
        ),
        placement::check(scores, zones, &azs, types.len(), scored),
        ami(config, observed),
        permissions::launch_template_check(launch_template),
        fleet_request,
        vcpus.map_or_else(|e| Check::from_error(QUOTA, e), |v| quota(&v, capacity)),
        prices.map_or_else(
            |e| Check::from_error(COST, e),
            |p| cost(&p, capacity, config.spot.allocation_strategy),
        ),
    ]
}

fn subnets(observed: &Observed) -> Check {
    let azs: BTreeSet<&str> = observed.subnets.iter().map(|s| s.az.as_str()).collect();
    let list: Vec<String> = observed
        .subnets
        .iter()
        .map(|s| format!("{} ({})", s.id, s.az))
        .collect();
    // The planner refused any other network (one subnet per zone, one VPC, the security
    // groups in it: plan/zones.rs) before the pre-flight runs.
    let vpcs: BTreeSet<&str> = observed.subnets.iter().map(|s| s.vpc.as_str()).collect();
    let vpcs: Vec<&str> = vpcs.into_iter().collect();
    let groups = if observed.security_groups.is_empty() {
        String::new()
    } else {
        let ids: Vec<&str> = observed
            .security_groups
            .iter()
            .map(|g| g.id.as_str())
            .collect();
        format!("; security groups {} in the same VPC", ids.join(", "))
    };
    Check::new(
        "subnets",
        Status::Ok,
        format!(
            "{} in {} availability zones of {}: {}{groups}",
            observed.subnets.len(),
            azs.len(),
            vpcs.join(", "),
            list.join(", ")
        ),
    )
}

fn ami(config: &Config, observed: &Observed) -> Check {
    match &observed.image {
        Some(i) => {
            let from = match &config.instance.ami {
                crate::config::AmiRef::Id(_) => String::new(),
                crate::config::AmiRef::Ssm(p) => format!(" from {p}"),
            };
            Check::new(
                "AMI",
                Status::Ok,
                format!(
                    "{} ({}, root {}){from}",
                    i.id, i.architecture, i.root_device
                ),
            )
        }
        None => Check::new("AMI", Status::Fail, "instance.ami did not resolve"),
    }
}

const OFFERINGS: &str = "instance types";
const QUOTA: &str = "spot vCPU quota";
const COST: &str = "cost";

/// Which configured types are not offered in which zones: FAIL naming each type no
/// configured zone offers (and the other gaps with it), WARN for a type missing in some
/// zones only (those pools stay empty), ok when every pool is offered.
pub fn missing_offerings(types: &[String], azs: &[String], offered: &BTreeSet<Pool>) -> Check {
    if azs.is_empty() {
        return Check::new(OFFERINGS, Status::Unknown, "no configured zone to look in");
    }
    let mut none = Vec::new();
    let mut partial = Vec::new();
    for t in types {
        let missing: Vec<&str> = azs
            .iter()
            .filter(|az| !offered.contains(&(t.clone(), (*az).clone())))
            .map(String::as_str)
            .collect();
        if missing.len() == azs.len() {
            none.push(t.as_str());
        } else if !missing.is_empty() {
            partial.push(format!("{t} not in {}", missing.join(", ")));
        }
    }
    let pools = types.len() * azs.len();
    let usable = offered.len();
    if !none.is_empty() {
        let also = if partial.is_empty() {
            String::new()
        } else {
            format!("; also {}", partial.join("; "))
        };
        Check::new(
            OFFERINGS,
            Status::Fail,
            format!(
                "not offered in any configured zone: {} (remove them from spot.instance_types){also}",
                none.join(", ")
            ),
        )
    } else if !partial.is_empty() {
        Check::new(
            OFFERINGS,
            Status::Warn,
            format!(
                "{usable} of {pools} pools offered; {} (those pools stay empty)",
                partial.join("; ")
            ),
        )
    } else {
        Check::new(
            OFFERINGS,
            Status::Ok,
            format!(
                "all {} offered in all {} zones ({pools} pools)",
                types.len(),
                azs.len()
            ),
        )
    }
}

/// vCPUs the capacity needs at most: every runner on the largest configured type.
pub fn vcpus_needed(vcpus: &BTreeMap<String, i32>, capacity: u32) -> Option<(String, i64)> {
    vcpus
        .iter()
        .max_by_key(|(_, v)| **v)
        .map(|(t, v)| (t.clone(), i64::from(*v) * i64::from(capacity)))
}

fn quota(vcpus: &BTreeMap<String, i32>, capacity: u32) -> Check {
    let need = match vcpus_needed(vcpus, capacity) {
        Some((t, n)) => format!("{capacity} runner(s) need up to {n} vCPUs ({t})"),
        None => "the instance types' vCPUs are unknown".to_owned(),
    };
    Check::new(
        QUOTA,
        Status::Unknown,
        format!(
            "{need}; compare with `aws service-quotas get-service-quota --service-code ec2 --quota-code {SPOT_QUOTA_CODE}` (new accounts may have as little as 5)"
        ),
    )
}

/// An hourly cost estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Dollars per hour for the whole capacity.
    pub per_hour: f64,
    /// Pools priced.
    pub pools: usize,
    /// Cheapest pool, $/h.
    pub min: f64,
    /// Dearest pool, $/h.
    pub max: f64,
}

/// The estimate from the latest price per pool: the mean pool price per runner (the
/// cheapest with `lowest-price`), times the capacity.
pub fn estimate(
    prices: &BTreeMap<(String, String), f64>,
    capacity: u32,
    strategy: AllocationStrategy,
) -> Option<Estimate> {
    if prices.is_empty() {
        return None;
    }
    let values: Vec<f64> = prices.values().copied().collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let per_runner = match strategy {
        AllocationStrategy::LowestPrice => min,
        _ => mean,
    };
    Some(Estimate {
        per_hour: per_runner * f64::from(capacity),
        pools: values.len(),
        min,
        max,
    })
}

/// `$0.43`, or more digits below a cent.
pub fn dollars(v: f64) -> String {
    if v == 0.0 || v >= 0.01 {
        format!("${v:.2}")
    } else {
        format!("${v:.5}")
    }
}

fn cost(prices: &BTreeMap<Pool, f64>, capacity: u32, strategy: AllocationStrategy) -> Check {
    match estimate(prices, capacity, strategy) {
        Some(e) => Check::new(
            COST,
            Status::Ok,
            format!(
                "~{}/h for {capacity} runner(s) (spot price history: {} pools, {}-{}/h per instance; EBS and data transfer extra)",
                dollars(e.per_hour),
                e.pools,
                dollars(e.min),
                dollars(e.max)
            ),
        ),
        None => Check::new(
            COST,
            Status::Unknown,
            "no spot price for the configured types in these zones",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(v: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
        v.iter()
            .map(|(t, az, p)| (((*t).to_owned(), (*az).to_owned()), *p))
            .collect()
    }

    #[test]
    fn the_estimate_is_the_mean_pool_price_times_the_capacity() {
        let p = prices(&[
            ("m6i.large", "a", 0.04),
            ("m6i.large", "b", 0.06),
            ("c6i.xlarge", "a", 0.0575),
            ("c6i.xlarge", "b", 0.0575),
        ]);
        let e = estimate(&p, 8, AllocationStrategy::Diversified).unwrap();
        assert!((e.per_hour - 0.43).abs() < 1e-9, "{e:?}");
        assert_eq!((e.pools, e.min, e.max), (4, 0.04, 0.06));
        assert_eq!(dollars(e.per_hour), "$0.43");
        let low = estimate(&p, 8, AllocationStrategy::LowestPrice).unwrap();
        assert!((low.per_hour - 0.32).abs() < 1e-9);
        assert_eq!(
            estimate(&BTreeMap::new(), 8, AllocationStrategy::Diversified),
            None
        );
        assert_eq!(dollars(0.00008), "$0.00008");
    }

    #[test]
    fn offerings_fail_for_a_type_offered_nowhere_and_warn_for_gaps() {
        let types = vec!["m6i.large".to_owned(), "x9.huge".to_owned()];
        let azs = vec!["a".to_owned(), "b".to_owned()];
        let mut offered: BTreeSet<(String, String)> = [("m6i.large", "a"), ("m6i.large", "b")]
            .iter()
            .map(|(t, a)| ((*t).to_owned(), (*a).to_owned()))
            .collect();
        let c = missing_offerings(&types, &azs, &offered);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("x9.huge"), "{}", c.detail);
        offered.insert(("x9.huge".to_owned(), "b".to_owned()));
        let c = missing_offerings(&types, &azs, &offered);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("x9.huge not in a"), "{}", c.detail);
        offered.insert(("x9.huge".to_owned(), "a".to_owned()));
        assert_eq!(missing_offerings(&types, &azs, &offered).status, Status::Ok);
    }

    #[test]
    fn a_type_offered_nowhere_fails_naming_it_with_the_other_gaps() {
        let types: Vec<String> = ["m6i.large", "c6i.large", "x9.huge", "y9.huge"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let azs = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let offered: BTreeSet<(String, String)> = [
            ("m6i.large", "a"),
            ("m6i.large", "b"),
            ("m6i.large", "c"),
            ("c6i.large", "a"),
        ]
        .iter()
        .map(|(t, a)| ((*t).to_owned(), (*a).to_owned()))
        .collect();
        let c = missing_offerings(&types, &azs, &offered);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.detail,
            "not offered in any configured zone: x9.huge, y9.huge (remove them from spot.instance_types); also c6i.large not in b, c"
        );
        // No zone to look in: nothing is judged offered nowhere.
        assert_eq!(
            missing_offerings(&types, &[], &offered).status,
            Status::Unknown
        );
    }

    #[test]
    fn the_vcpu_need_uses_the_largest_type() {
        let v: BTreeMap<String, i32> = [("m6i.large".to_owned(), 2), ("c6i.xlarge".to_owned(), 4)]
            .into_iter()
            .collect();
        assert_eq!(vcpus_needed(&v, 8), Some(("c6i.xlarge".to_owned(), 32)));
        assert_eq!(vcpus_needed(&BTreeMap::new(), 8), None);
    }
}
