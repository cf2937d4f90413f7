//! The EC2 Fleet backend: `CreateFleet` with type `maintain`, one fleet per
//! configuration, found again by its `bbfleet:fleet` tag. It needs no fleet role: EC2
//! launches with the service-linked role AWSServiceRoleForEC2Fleet (EC2 User Guide, "EC2
//! Fleet prerequisites"), which must exist in the account.

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetExcessCapacityTerminationPolicy,
    FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetReplacementStrategy,
    FleetSpotCapacityRebalanceRequest, FleetSpotMaintenanceStrategiesRequest, FleetStateCode,
    FleetType, OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy,
    SpotInstanceInterruptionBehavior, SpotOptionsRequest, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};

use super::ec2::tag_value;
use super::fleet::{self, DryRun, FleetApi};
use super::AwsError;
use crate::config::{AllocationStrategy, FleetApiKind};
use crate::names::{CONFIG_TAG, FLEET_TAG, TARGET_AT_TAG};
use crate::world::{FleetPhase, FleetSpec, FleetState, FleetTarget};

/// EC2 Fleet.
#[derive(Debug, Clone)]
pub struct Ec2Fleet {
    ec2: aws_sdk_ec2::Client,
}

impl Ec2Fleet {
    /// On this EC2 client.
    pub fn new(ec2: aws_sdk_ec2::Client) -> Self {
        Ec2Fleet { ec2 }
    }

    async fn instances(&self, id: &str) -> Result<Vec<String>, AwsError> {
        // 1000 instances a page.
        let mut ids = fleet::paged(|token| async move {
            let out = self
                .ec2
                .describe_fleet_instances()
                .fleet_id(id)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:DescribeFleetInstances", e))?;
            let ids = out
                .active_instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect();
            Ok((ids, out.next_token().map(str::to_owned)))
        })
        .await?;
        ids.sort();
        Ok(ids)
    }
}

/// The config's strategies with EC2 Fleet's names for them (SpotOptionsRequest,
/// AllocationStrategy: lowest-price | diversified | capacity-optimized |
/// capacity-optimized-prioritized | price-capacity-optimized).
const STRATEGIES: [(AllocationStrategy, SpotAllocationStrategy); 4] = [
    (
        AllocationStrategy::Diversified,
        SpotAllocationStrategy::Diversified,
    ),
    (
        AllocationStrategy::PriceCapacityOptimized,
        SpotAllocationStrategy::PriceCapacityOptimized,
    ),
    (
        AllocationStrategy::CapacityOptimized,
        SpotAllocationStrategy::CapacityOptimized,
    ),
    (
        AllocationStrategy::LowestPrice,
        SpotAllocationStrategy::LowestPrice,
    ),
];

fn strategy(s: AllocationStrategy) -> SpotAllocationStrategy {
    STRATEGIES
        .iter()
        .find(|(c, _)| *c == s)
        .map_or(SpotAllocationStrategy::Diversified, |(_, e)| e.clone())
}

fn strategy_of(s: &SpotAllocationStrategy) -> Option<AllocationStrategy> {
    STRATEGIES.iter().find(|(_, e)| e == s).map(|(c, _)| *c)
}

/// The launch template and its overrides (instance types x subnets).
fn launch_template_config(
    spec: &FleetSpec,
    launch_template_id: &str,
    version: i64,
) -> FleetLaunchTemplateConfigRequest {
    let overrides = spec
        .instance_types
        .iter()
        .flat_map(|t| {
            spec.subnets.iter().map(move |s| {
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(t.as_str().into())
                    .subnet_id(s)
                    .weighted_capacity(1.0)
                    .build()
            })
        })
        .collect();
    FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_id(launch_template_id)
                .version(version.to_string())
                .build(),
        )
        .set_overrides(Some(overrides))
        .build()
}

/// The target: the on-demand part, the rest spot ("DefaultTargetCapacityType ... the
/// purchasing option for the capacity not given as OnDemandTargetCapacity or
/// SpotTargetCapacity", TargetCapacitySpecificationRequest).
fn capacity(target: FleetTarget) -> TargetCapacitySpecificationRequest {
    TargetCapacitySpecificationRequest::builder()
        .total_target_capacity(target.total as i32)
        .on_demand_target_capacity(target.on_demand as i32)
        .spot_target_capacity(target.spot_part() as i32)
        .default_target_capacity_type(DefaultTargetCapacityType::Spot)
        .build()
}

/// The CreateFleet request bbfleet sends (also the pre-flight's DryRun).
fn create_fleet(
    ec2: &aws_sdk_ec2::Client,
    spec: &FleetSpec,
    launch_template_id: &str,
    version: i64,
    target: FleetTarget,
) -> aws_sdk_ec2::operation::create_fleet::builders::CreateFleetFluentBuilder {
    let spot = SpotOptionsRequest::builder()
        .allocation_strategy(strategy(spec.strategy))
        .instance_interruption_behavior(SpotInstanceInterruptionBehavior::Terminate)
        .maintenance_strategies(
            FleetSpotMaintenanceStrategiesRequest::builder()
                .capacity_rebalance(
                    FleetSpotCapacityRebalanceRequest::builder()
                        .replacement_strategy(FleetReplacementStrategy::Launch)
                        .build(),
                )
                .build(),
        )
        .build();
    ec2.create_fleet()
        .r#type(FleetType::Maintain)
        .launch_template_configs(launch_template_config(spec, launch_template_id, version))
        .target_capacity_specification(capacity(target))
        .spot_options(spot)
        // lowest-price is the on-demand default; said for the reader.
        .on_demand_options(
            OnDemandOptionsRequest::builder()
                .allocation_strategy(
                    aws_sdk_ec2::types::FleetOnDemandAllocationStrategy::LowestPrice,
                )
                .build(),
        )
        .replace_unhealthy_instances(true)
        // bbfleet chooses which hosts go (idle ones); the fleet never terminates on a
        // lower target.
        .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Fleet)
                .set_tags(Some(fleet::request_tags(spec)))
                .build(),
        )
        .client_token(super::spot_fleet::client_token())
}

/// A fleet's state as the world's fleet phase (FleetStateCode: submitted, active,
/// deleted, failed, deleted_running, deleted_terminating, modifying).
fn phase(state: Option<&FleetStateCode>) -> FleetPhase {
    match state {
        Some(FleetStateCode::Submitted) => FleetPhase::Submitted,
        Some(FleetStateCode::Active) => FleetPhase::Active,
        Some(FleetStateCode::Modifying) => FleetPhase::Modifying,
        Some(FleetStateCode::DeletedRunning) => FleetPhase::CancelledRunning,
        Some(FleetStateCode::DeletedTerminatingInstances) => FleetPhase::CancelledTerminating,
        Some(FleetStateCode::Deleted) => FleetPhase::Cancelled,
        Some(FleetStateCode::Failed) => FleetPhase::Failed,
        _ => FleetPhase::Unknown,
    }
}

fn state_of(f: &aws_sdk_ec2::types::FleetData) -> FleetState {
    let tag = |k: &str| tag_value(f.tags(), k).map(str::to_owned);
    let capacity = f.target_capacity_specification();
    let on_demand_target = capacity
        .and_then(|c| c.on_demand_target_capacity())
        .unwrap_or(0);
    FleetState {
        id: f.fleet_id().unwrap_or_default().to_owned(),
        state: phase(f.fleet_state()),
        target: capacity
            .and_then(|c| c.total_target_capacity())
            .unwrap_or(0),
        fingerprint: tag(CONFIG_TAG),
        instance_ids: Vec::new(),
        role: None,
        strategy: f
            .spot_options()
            .and_then(|s| s.allocation_strategy())
            .and_then(strategy_of),
        api: FleetApiKind::Ec2Fleet,
        on_demand_target,
        fulfilled: f.fulfilled_capacity().map(|all| all as i32),
        spot_fulfilled: f
            .fulfilled_capacity()
            .map(|all| (all - f.fulfilled_on_demand_capacity().unwrap_or(0.0)).max(0.0) as i32),
        target_at: tag(TARGET_AT_TAG)
            .and_then(|t| t.parse().ok())
            .or_else(|| fleet::timestamp(f.create_time())),
        capacity_errors: Vec::new(),
    }
}

#[async_trait::async_trait]
impl FleetApi for Ec2Fleet {
    fn label(&self) -> &'static str {
        FleetApiKind::Ec2Fleet.label()
    }

    fn request_operation(&self) -> &'static str {
        "CreateFleet"
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &[
            "ec2:CreateFleet",
            "ec2:CreateTags",
            "ec2:DeleteFleets",
            "ec2:DescribeFleetHistory",
            "ec2:DescribeFleetInstances",
            "ec2:DescribeFleets",
            "ec2:ModifyFleet",
        ]
    }

    async fn dry_run(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<DryRun, AwsError> {
        let result = create_fleet(&self.ec2, spec, launch_template_id, version, target)
            .dry_run(true)
            .send()
            .await;
        DryRun::from_result("ec2:CreateFleet", result)
    }

    async fn list(&self, fleet: &str, with_instances: bool) -> Result<Vec<FleetState>, AwsError> {
        // DescribeFleets filters by state and type, not by tag: list all, match the tag here.
        let mut found = Vec::new();
        let mut pages = self
            .ec2
            .describe_fleets()
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::call("ec2:DescribeFleets", e))?;
            for f in page.fleets() {
                let state = state_of(f);
                if tag_value(f.tags(), FLEET_TAG) != Some(fleet)
                    || f.r#type() != Some(&FleetType::Maintain)
                    || matches!(
                        state.state,
                        FleetPhase::Cancelled
                            | FleetPhase::CancelledTerminating
                            | FleetPhase::Failed
                    )
                {
                    continue;
                }
                found.push(state);
            }
        }
        if with_instances {
            for f in &mut found {
                f.instance_ids = self.instances(&f.id).await?;
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn request(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<String, AwsError> {
        let out = create_fleet(&self.ec2, spec, launch_template_id, version, target)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2:CreateFleet", e))?;
        out.fleet_id()
            .map(str::to_owned)
            .ok_or_else(|| AwsError::Answer {
                operation: "ec2:CreateFleet",
                problem: "returned no fleet id".to_owned(),
            })
    }

    async fn set_target(
        &self,
        id: &str,
        target: FleetTarget,
        terminate_excess: bool,
    ) -> Result<(), AwsError> {
        let policy = if terminate_excess {
            FleetExcessCapacityTerminationPolicy::Termination
        } else {
            FleetExcessCapacityTerminationPolicy::NoTermination
        };
        self.ec2
            .modify_fleet()
            .fleet_id(id)
            .target_capacity_specification(capacity(target))
            .excess_capacity_termination_policy(policy)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2:ModifyFleet", e))?;
        fleet::retag(&self.ec2, id, vec![fleet::target_at_tag()]).await
    }

    async fn capacity_errors(
        &self,
        id: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<String>, AwsError> {
        let records = fleet::paged(|token| async move {
            let out = self
                .ec2
                .describe_fleet_history()
                .fleet_id(id)
                .start_time(aws_smithy_types::DateTime::from_secs(since.as_second()))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:DescribeFleetHistory", e))?;
            Ok((
                out.history_records().to_vec(),
                out.next_token().map(str::to_owned),
            ))
        })
        .await?;
        Ok(fleet::capacity_errors(&records))
    }

    async fn modify(
        &self,
        id: &str,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<(), AwsError> {
        // As with Spot Fleet: the running instances stay; new launches use the new
        // launch template version and overrides.
        self.ec2
            .modify_fleet()
            .fleet_id(id)
            .launch_template_configs(launch_template_config(spec, launch_template_id, version))
            .target_capacity_specification(capacity(target))
            .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2:ModifyFleet", e))?;
        let config = Tag::builder()
            .key(CONFIG_TAG)
            .value(spec.fingerprint())
            .build();
        fleet::retag(&self.ec2, id, vec![config, fleet::target_at_tag()]).await
    }

    async fn cancel(&self, ids: &[String], terminate_instances: bool) -> Result<(), AwsError> {
        // "You can delete up to 25 fleets of type maintain or request in a single request"
        // (DeleteFleets); a fleet that could not be deleted is in the answer, not an error.
        for chunk in ids.chunks(25) {
            let out = self
                .ec2
                .delete_fleets()
                .set_fleet_ids(Some(chunk.to_vec()))
                .terminate_instances(terminate_instances)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:DeleteFleets", e))?;
            let failed: Vec<String> = out
                .unsuccessful_fleet_deletions()
                .iter()
                .filter_map(|u| {
                    let e = u.error()?;
                    let code = e.code().map_or("", |c| c.as_str());
                    // Gone already: what a re-run after a crash finds.
                    (code != "fleetIdDoesNotExist").then(|| {
                        format!(
                            "{}: {code} {}",
                            u.fleet_id().unwrap_or_default(),
                            e.message().unwrap_or_default()
                        )
                    })
                })
                .collect();
            if !failed.is_empty() {
                return Err(AwsError::Answer {
                    operation: "ec2:DeleteFleets",
                    problem: format!("did not delete {}", failed.join("; ")),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_is_one_ec2_fleet_offers() {
        for (config, api) in STRATEGIES {
            assert!(
                SpotAllocationStrategy::values().contains(&api.as_str()),
                "{} -> {}",
                config.as_str(),
                api.as_str()
            );
        }
        assert_eq!(
            STRATEGIES.len(),
            AllocationStrategy::ALL.len(),
            "every config strategy has an EC2 Fleet name"
        );
    }

    #[test]
    fn the_spot_part_is_what_the_on_demand_part_leaves() {
        let c = capacity(FleetTarget {
            total: 5,
            on_demand: 2,
        });
        assert_eq!(c.total_target_capacity(), Some(5));
        assert_eq!(c.on_demand_target_capacity(), Some(2));
        assert_eq!(c.spot_target_capacity(), Some(3));
        assert_eq!(
            c.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::Spot)
        );
    }
}
