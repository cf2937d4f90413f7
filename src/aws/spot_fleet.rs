//! The Spot Fleet backend: `RequestSpotFleet` with type `maintain`, one request per
//! configuration, found again by its `bbfleet:fleet` tag.

use aws_sdk_ec2::types::{
    AllocationStrategy as Ec2Strategy, ExcessCapacityTerminationPolicy,
    FleetLaunchTemplateSpecification, FleetType, InstanceInterruptionBehavior,
    LaunchTemplateConfig, LaunchTemplateOverrides, ReplacementStrategy, ResourceType,
    SpotCapacityRebalance, SpotFleetRequestConfigData, SpotMaintenanceStrategies, Tag,
    TagSpecification,
};

use super::ec2::tag_value;
use super::fleet::{self, DryRun, FleetApi};
use super::AwsError;
use crate::config::{AllocationStrategy, FleetApiKind};
use crate::names::{CONFIG_TAG, FLEET_TAG, TARGET_AT_TAG};
use crate::world::{FleetPhase, FleetSpec, FleetState, FleetTarget};

/// Spot Fleet.
#[derive(Debug, Clone)]
pub struct SpotFleet {
    ec2: aws_sdk_ec2::Client,
}

impl SpotFleet {
    /// On this EC2 client.
    pub fn new(ec2: aws_sdk_ec2::Client) -> Self {
        SpotFleet { ec2 }
    }

    async fn instances(&self, id: &str) -> Result<Vec<String>, AwsError> {
        // 1000 instances a page.
        let mut ids = fleet::paged(|token| async move {
            let out = self
                .ec2
                .describe_spot_fleet_instances()
                .spot_fleet_request_id(id)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:DescribeSpotFleetInstances", e))?;
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

/// Idempotency token of one request: new for every request, the same across the SDK's
/// retries of it (they resend the serialized input). EC2 returns the first request's
/// result for a token it has seen, even after that fleet was cancelled ("Ensuring
/// idempotency in Amazon EC2 API requests"), so a token derived from the configuration
/// would bring a dead fleet back instead of a new one. At most 64 ASCII characters.
pub(super) fn client_token() -> String {
    let mut rng = fastrand::Rng::new();
    format!("bbfleet-{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

/// The config's strategies with the API's names for them.
const STRATEGIES: [(AllocationStrategy, Ec2Strategy); 4] = [
    (AllocationStrategy::Diversified, Ec2Strategy::Diversified),
    (
        AllocationStrategy::PriceCapacityOptimized,
        Ec2Strategy::PriceCapacityOptimized,
    ),
    (
        AllocationStrategy::CapacityOptimized,
        Ec2Strategy::CapacityOptimized,
    ),
    (AllocationStrategy::LowestPrice, Ec2Strategy::LowestPrice),
];

fn strategy(s: AllocationStrategy) -> Ec2Strategy {
    STRATEGIES
        .iter()
        .find(|(c, _)| *c == s)
        .map_or(Ec2Strategy::Diversified, |(_, e)| e.clone())
}

/// The config's name for a strategy a request reports (`None`: one bbfleet does not send).
fn strategy_of(s: &Ec2Strategy) -> Option<AllocationStrategy> {
    STRATEGIES.iter().find(|(_, e)| e == s).map(|(c, _)| *c)
}

/// The launch template and its overrides (instance types x subnets): the part of a
/// request that ModifySpotFleetRequest can change in place (`LaunchTemplateConfigs`, EC2
/// API Reference, ModifySpotFleetRequest).
fn launch_template_config(
    spec: &FleetSpec,
    launch_template_id: &str,
    version: i64,
) -> LaunchTemplateConfig {
    let mut overrides = Vec::new();
    for t in &spec.instance_types {
        for s in &spec.subnets {
            overrides.push(
                LaunchTemplateOverrides::builder()
                    .instance_type(t.as_str().into())
                    .subnet_id(s)
                    .weighted_capacity(1.0)
                    .build(),
            );
        }
    }
    LaunchTemplateConfig::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecification::builder()
                .launch_template_id(launch_template_id)
                .version(version.to_string())
                .build(),
        )
        .set_overrides(Some(overrides))
        .build()
}

/// The Spot Fleet request bbfleet sends (also the pre-flight's DryRun).
fn request_config(
    spec: &FleetSpec,
    launch_template_id: &str,
    version: i64,
    target: FleetTarget,
) -> SpotFleetRequestConfigData {
    let config = launch_template_config(spec, launch_template_id, version);
    SpotFleetRequestConfigData::builder()
        .iam_fleet_role(&spec.role)
        .allocation_strategy(strategy(spec.strategy))
        .target_capacity(target.total as i32)
        // "The number of On-Demand units to request ... you can specify a target capacity of
        // 0 and add capacity later" (SpotFleetRequestConfigData, OnDemandTargetCapacity);
        // lowestPrice is its default on-demand strategy.
        .on_demand_target_capacity(target.on_demand as i32)
        .r#type(FleetType::Maintain)
        .launch_template_configs(config)
        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
        .replace_unhealthy_instances(true)
        .spot_maintenance_strategies(
            SpotMaintenanceStrategies::builder()
                .capacity_rebalance(
                    SpotCapacityRebalance::builder()
                        .replacement_strategy(ReplacementStrategy::Launch)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SpotFleetRequest)
                .set_tags(Some(fleet::request_tags(spec)))
                .build(),
        )
        .client_token(client_token())
        .build()
}

#[async_trait::async_trait]
impl FleetApi for SpotFleet {
    fn label(&self) -> &'static str {
        FleetApiKind::SpotFleet.label()
    }

    fn request_operation(&self) -> &'static str {
        "RequestSpotFleet"
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &[
            "ec2:CancelSpotFleetRequests",
            "ec2:CreateTags",
            "ec2:DescribeSpotFleetInstances",
            "ec2:DescribeSpotFleetRequestHistory",
            "ec2:DescribeSpotFleetRequests",
            "ec2:ModifySpotFleetRequest",
            "ec2:RequestSpotFleet",
        ]
    }

    async fn dry_run(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<DryRun, AwsError> {
        let result = self
            .ec2
            .request_spot_fleet()
            .dry_run(true)
            .spot_fleet_request_config(request_config(spec, launch_template_id, version, target))
            .send()
            .await;
        DryRun::from_result("ec2:RequestSpotFleet", result)
    }

    async fn list(&self, fleet: &str, with_instances: bool) -> Result<Vec<FleetState>, AwsError> {
        // No server-side tag filter exists: list all and match the tag here.
        let mut found = Vec::new();
        let mut pages = self
            .ec2
            .describe_spot_fleet_requests()
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::call("ec2:DescribeSpotFleetRequests", e))?;
            for r in page.spot_fleet_request_configs() {
                let tag = |k: &str| tag_value(r.tags(), k).map(str::to_owned);
                let state = spot_fleet_phase(r.spot_fleet_request_state());
                if tag(FLEET_TAG).as_deref() != Some(fleet)
                    || matches!(
                        state,
                        FleetPhase::Cancelled
                            | FleetPhase::CancelledTerminating
                            | FleetPhase::Failed
                    )
                {
                    continue;
                }
                let config = r.spot_fleet_request_config();
                let on_demand_target =
                    config.map_or(0, |c| c.on_demand_target_capacity().unwrap_or(0));
                found.push(FleetState {
                    id: r.spot_fleet_request_id().unwrap_or_default().to_owned(),
                    state,
                    target: config.map_or(0, |c| c.target_capacity().unwrap_or(0)),
                    fingerprint: tag(CONFIG_TAG),
                    instance_ids: Vec::new(),
                    role: config.and_then(|c| c.iam_fleet_role()).map(str::to_owned),
                    strategy: config
                        .and_then(|c| c.allocation_strategy())
                        .and_then(strategy_of),
                    api: FleetApiKind::SpotFleet,
                    on_demand_target,
                    // FulfilledCapacity counts both parts; OnDemandFulfilledCapacity the
                    // on-demand one (SpotFleetRequestConfigData).
                    fulfilled: config
                        .and_then(|c| c.fulfilled_capacity())
                        .map(|f| f as i32),
                    spot_fulfilled: config.and_then(|c| {
                        let all = c.fulfilled_capacity()?;
                        let od = c.on_demand_fulfilled_capacity().unwrap_or(0.0);
                        Some((all - od).max(0.0) as i32)
                    }),
                    target_at: tag(TARGET_AT_TAG)
                        .and_then(|t| t.parse().ok())
                        .or_else(|| fleet::timestamp(r.create_time())),
                    capacity_errors: Vec::new(),
                });
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
        let data = request_config(spec, launch_template_id, version, target);
        let out = self
            .ec2
            .request_spot_fleet()
            .spot_fleet_request_config(data)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2:RequestSpotFleet", e))?;
        out.spot_fleet_request_id()
            .map(str::to_owned)
            .ok_or_else(|| AwsError::Answer {
                operation: "ec2:RequestSpotFleet",
                problem: "returned no request id".to_owned(),
            })
    }

    async fn set_target(
        &self,
        id: &str,
        target: FleetTarget,
        terminate_excess: bool,
    ) -> Result<(), AwsError> {
        let mut req = self
            .ec2
            .modify_spot_fleet_request()
            .spot_fleet_request_id(id)
            .target_capacity(target.total as i32)
            .on_demand_target_capacity(target.on_demand as i32);
        if !terminate_excess {
            req = req
                .excess_capacity_termination_policy(ExcessCapacityTerminationPolicy::NoTermination);
        }
        req.send()
            .await
            .map_err(|e| AwsError::call("ec2:ModifySpotFleetRequest", e))?;
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
                .describe_spot_fleet_request_history()
                .spot_fleet_request_id(id)
                .start_time(aws_smithy_types::DateTime::from_secs(since.as_second()))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:DescribeSpotFleetRequestHistory", e))?;
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
        // The running instances stay (noTermination): bbfleet replaces outdated hosts itself,
        // idle ones only. New launches use the new launch template version and overrides.
        self.ec2
            .modify_spot_fleet_request()
            .spot_fleet_request_id(id)
            .launch_template_configs(launch_template_config(spec, launch_template_id, version))
            .target_capacity(target.total as i32)
            .on_demand_target_capacity(target.on_demand as i32)
            .excess_capacity_termination_policy(ExcessCapacityTerminationPolicy::NoTermination)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2:ModifySpotFleetRequest", e))?;
        // The tag says which configuration the request has now; the next plan compares it.
        let config = Tag::builder()
            .key(CONFIG_TAG)
            .value(spec.fingerprint())
            .build();
        fleet::retag(&self.ec2, id, vec![config, fleet::target_at_tag()]).await
    }

    async fn cancel(&self, ids: &[String], terminate_instances: bool) -> Result<(), AwsError> {
        for chunk in ids.chunks(100) {
            self.ec2
                .cancel_spot_fleet_requests()
                .set_spot_fleet_request_ids(Some(chunk.to_vec()))
                .terminate_instances(terminate_instances)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2:CancelSpotFleetRequests", e))?;
        }
        Ok(())
    }
}

/// A Spot Fleet request's state as the world's fleet phase (`BatchState` in the EC2 API
/// Reference: submitted, active, cancelled, failed, cancelled_running,
/// cancelled_terminating, modifying).
fn spot_fleet_phase(state: Option<&aws_sdk_ec2::types::BatchState>) -> FleetPhase {
    use aws_sdk_ec2::types::BatchState;
    match state {
        Some(BatchState::Submitted) => FleetPhase::Submitted,
        Some(BatchState::Active) => FleetPhase::Active,
        Some(BatchState::Modifying) => FleetPhase::Modifying,
        Some(BatchState::CancelledRunning) => FleetPhase::CancelledRunning,
        Some(BatchState::CancelledTerminatingInstances) => FleetPhase::CancelledTerminating,
        Some(BatchState::Cancelled) => FleetPhase::Cancelled,
        Some(BatchState::Failed) => FleetPhase::Failed,
        _ => FleetPhase::Unknown,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_strategy_is_one_spot_fleet_offers() {
        for (config, api) in super::STRATEGIES {
            assert!(
                super::Ec2Strategy::values().contains(&api.as_str()),
                "{} -> {}",
                config.as_str(),
                api.as_str()
            );
        }
        assert_eq!(
            super::STRATEGIES.len(),
            crate::config::AllocationStrategy::ALL.len(),
            "every config strategy has a Spot Fleet name"
        );
    }

    #[test]
    fn client_tokens_fit_ec2s_limit_and_are_never_reused() {
        let t = super::client_token();
        assert!(t.len() <= 64 && t.is_ascii(), "{t}");
        assert_ne!(t, super::client_token());
    }
}
