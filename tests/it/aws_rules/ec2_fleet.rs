//! EC2 Fleet through the layer and the kit's moto extension (testkit/moto_ext): ModifyFleet,
//! the on-demand part of a Spot Fleet, the EC2 Fleet rules mirroring the Spot Fleet ones,
//! and a spot capacity shortage with the fleets' history.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, EventType, FleetEventType, FleetExcessCapacityTerminationPolicy,
    FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetType, Instance, InstanceLifecycleType,
    TargetCapacitySpecificationRequest,
};
use testkit::aws_rules::capacity::SHORTAGE_SUB_TYPE;
use testkit::aws_rules::EC2_FLEET_TAG;
use testkit::harness::Harness;

use super::{fleet_config, launch_template, request_fleet, through_layer};
use crate::KIT;

type Ec2 = aws_sdk_ec2::Client;

fn targets(total: i32, on_demand: i32) -> TargetCapacitySpecificationRequest {
    TargetCapacitySpecificationRequest::builder()
        .total_target_capacity(total)
        .on_demand_target_capacity(on_demand)
        .default_target_capacity_type(DefaultTargetCapacityType::Spot)
        .build()
}

fn lt_config(lt: &str, subnet: &str) -> FleetLaunchTemplateConfigRequest {
    FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_id(lt)
                .version("1")
                .build(),
        )
        .overrides(
            FleetLaunchTemplateOverridesRequest::builder()
                .instance_type("m6i.large".into())
                .subnet_id(subnet)
                .build(),
        )
        .build()
}

async fn create_fleet(ec2: &Ec2, lt: &str, subnet: &str, kind: FleetType, t: (i32, i32)) -> String {
    ec2.create_fleet()
        .r#type(kind)
        .launch_template_configs(lt_config(lt, subnet))
        .target_capacity_specification(targets(t.0, t.1))
        .send()
        .await
        .expect("create a fleet")
        .fleet_id()
        .unwrap()
        .to_owned()
}

async fn modify(ec2: &Ec2, id: &str, t: (i32, i32), keep: bool) -> Result<bool, String> {
    let mut call = ec2
        .modify_fleet()
        .fleet_id(id)
        .target_capacity_specification(targets(t.0, t.1));
    if keep {
        call = call.excess_capacity_termination_policy(
            FleetExcessCapacityTerminationPolicy::NoTermination,
        );
    }
    call.send()
        .await
        .map(|o| o.r#return().unwrap_or(false))
        .map_err(|e| e.code().unwrap_or("?").to_owned())
}

/// (total asked, on-demand asked, fulfilled, fulfilled on-demand) of an EC2 Fleet.
async fn fleet_state(ec2: &Ec2, id: &str) -> (i32, i32, f64, f64) {
    let out = ec2.describe_fleets().fleet_ids(id).send().await.unwrap();
    let f = &out.fleets()[0];
    let t = f.target_capacity_specification().unwrap();
    (
        t.total_target_capacity().unwrap_or(-1),
        t.on_demand_target_capacity().unwrap_or(-1),
        f.fulfilled_capacity().unwrap_or(-1.0),
        f.fulfilled_on_demand_capacity().unwrap_or(-1.0),
    )
}

/// The live instances tagged `key=value`.
async fn tagged(ec2: &Ec2, key: &str, value: &str) -> Vec<Instance> {
    let out = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

fn spot_count(instances: &[Instance]) -> usize {
    instances
        .iter()
        .filter(|i| i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot))
        .count()
}

async fn delete_fleet(ec2: &Ec2, id: &str) {
    ec2.delete_fleets()
        .fleet_ids(id)
        .terminate_instances(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_fleet_scales_an_ec2_fleet_up_and_down() {
    let h = Harness::new(KIT, "r-modfleet").await;
    let ec2 = Ec2::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-modfleet").await;
    let subnet = h.subnets[0].0.as_str();
    let id = create_fleet(&ec2, &lt, subnet, FleetType::Maintain, (2, 1)).await;
    assert_eq!(fleet_state(&ec2, &id).await, (2, 1, 2.0, 1.0));
    assert_eq!(modify(&ec2, &id, (4, 2), false).await, Ok(true));
    assert_eq!(fleet_state(&ec2, &id).await, (4, 2, 4.0, 2.0));
    let live = tagged(&ec2, EC2_FLEET_TAG, &id).await;
    assert_eq!(
        (live.len(), spot_count(&live)),
        (4, 2),
        "2 on-demand and 2 Spot"
    );
    let listed = ec2
        .describe_fleet_instances()
        .fleet_id(&id)
        .send()
        .await
        .unwrap();
    let with_request = listed
        .active_instances()
        .iter()
        .filter(|i| i.spot_instance_request_id().is_some())
        .count();
    assert_eq!((listed.active_instances().len(), with_request), (4, 2));
    // Down with the default policy (termination): the excess of each part goes.
    assert_eq!(modify(&ec2, &id, (1, 1), false).await, Ok(true));
    assert_eq!(fleet_state(&ec2, &id).await, (1, 1, 1.0, 1.0));
    // no-termination keeps the instance running.
    assert_eq!(modify(&ec2, &id, (0, 0), true).await, Ok(true));
    assert_eq!(fleet_state(&ec2, &id).await, (0, 0, 1.0, 1.0));
    let unknown = modify(
        &ec2,
        "fleet-00000000-0000-0000-0000-000000000000",
        (1, 0),
        false,
    )
    .await;
    assert_eq!(unknown, Err("InvalidFleetId.NotFound".to_owned()));
    let instant = create_fleet(&ec2, &lt, subnet, FleetType::Instant, (1, 1)).await;
    assert_eq!(
        modify(&ec2, &instant, (2, 1), false).await,
        Err("UnsupportedOperation".to_owned())
    );
    delete_fleet(&ec2, &id).await;
    delete_fleet(&ec2, &instant).await;
}

/// (TargetCapacity, OnDemandTargetCapacity, FulfilledCapacity, OnDemandFulfilledCapacity).
async fn spot_fleet_state(ec2: &Ec2, id: &str) -> (i32, i32, f64, f64) {
    let out = ec2
        .describe_spot_fleet_requests()
        .spot_fleet_request_ids(id)
        .send()
        .await
        .unwrap();
    let c = out.spot_fleet_request_configs()[0]
        .spot_fleet_request_config()
        .unwrap();
    (
        c.target_capacity().unwrap_or(-1),
        c.on_demand_target_capacity().unwrap_or(-1),
        c.fulfilled_capacity().unwrap_or(-1.0),
        c.on_demand_fulfilled_capacity().unwrap_or(-1.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_fleet_launches_its_on_demand_part() {
    let h = Harness::new(KIT, "r-sfod").await;
    let ec2 = Ec2::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-sfod").await;
    let subnet = h.subnets[0].0.as_str();
    let mut config = fleet_config(&lt, &[subnet], "r-sfod-1", 3);
    config.on_demand_target_capacity = Some(1);
    let id = request_fleet(&ec2, config).await.unwrap();
    assert_eq!(spot_fleet_state(&ec2, &id).await, (3, 1, 3.0, 1.0));
    let live = tagged(&ec2, testkit::aws_rules::FLEET_REQUEST_TAG, &id).await;
    assert_eq!(
        (live.len(), spot_count(&live)),
        (3, 2),
        "1 on-demand and 2 Spot"
    );
    ec2.modify_spot_fleet_request()
        .spot_fleet_request_id(&id)
        .target_capacity(5)
        .on_demand_target_capacity(2)
        .send()
        .await
        .unwrap();
    assert_eq!(spot_fleet_state(&ec2, &id).await, (5, 2, 5.0, 2.0));
    let listed = ec2
        .describe_spot_fleet_instances()
        .spot_fleet_request_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.active_instances().len(),
        5,
        "the on-demand ones are listed too"
    );
    testkit::world::cancel_fleet(&ec2, &id).await;
    assert!(tagged(&ec2, testkit::aws_rules::FLEET_REQUEST_TAG, &id)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_ec2_fleet_calls_answer_412() {
    let h = Harness::new(KIT, "r-ec2dry").await;
    let ec2 = Ec2::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-ec2dry").await;
    let subnet = h.subnets[0].0.as_str();
    let dry_create = ec2
        .create_fleet()
        .dry_run(true)
        .launch_template_configs(lt_config(&lt, subnet))
        .target_capacity_specification(targets(1, 0))
        .send()
        .await
        .unwrap_err();
    let dry_modify = ec2
        .modify_fleet()
        .dry_run(true)
        .fleet_id("fleet-00000000-0000-0000-0000-000000000000")
        .target_capacity_specification(targets(1, 0))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (dry_create.code(), dry_modify.code()),
        (Some("DryRunOperation"), Some("DryRunOperation"))
    );
}

async fn create_with_token(ec2: &Ec2, lt: &str, subnet: &str, token: &str) -> String {
    ec2.create_fleet()
        .client_token(token)
        .launch_template_configs(lt_config(lt, subnet))
        .target_capacity_specification(targets(2, 1))
        .send()
        .await
        .unwrap()
        .fleet_id()
        .unwrap()
        .to_owned()
}

fn tag(i: &Instance, key: &str) -> Option<String> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_fleet_calls_meet_the_spot_fleet_rules() {
    let h = Harness::new(KIT, "r-ec2rules").await;
    let ec2 = Ec2::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-ec2rules").await;
    let subnet = h.subnets[0].0.as_str();
    h.recorder
        .rules(|r| r.fleet_listing_delay = Duration::from_secs(600));
    let id = create_with_token(&ec2, &lt, subnet, "r-ec2rules-1").await;
    let again = create_with_token(&ec2, &lt, subnet, "r-ec2rules-1").await;
    assert_eq!(again, id, "same token: the first answer");
    let listed = ec2
        .describe_fleet_instances()
        .fleet_id(&id)
        .send()
        .await
        .unwrap();
    assert!(
        listed.active_instances().is_empty(),
        "listed late: {listed:?}"
    );
    let live = tagged(&ec2, EC2_FLEET_TAG, &id).await;
    assert_eq!(
        (live.len(), spot_count(&live)),
        (2, 1),
        "instanceLifecycle shows the Spot one"
    );
    for i in &live {
        assert_eq!(tag(i, "aws:ec2launchtemplate:id"), Some(lt.clone()));
        assert_eq!(
            tag(i, "aws:ec2launchtemplate:version").as_deref(),
            Some("1")
        );
    }
    h.recorder.rules(|r| r.fleet_listing_delay = Duration::ZERO);
    let listed = ec2
        .describe_fleet_instances()
        .fleet_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.active_instances().len(), 2);
    ec2.create_tags()
        .resources(&id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("k")
                .value("v")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let out = ec2.describe_fleets().fleet_ids(&id).send().await.unwrap();
    assert!(out.fleets()[0]
        .tags()
        .iter()
        .any(|t| t.key() == Some("k") && t.value() == Some("v")));
    delete_fleet(&ec2, &id).await;
}

/// Each fleet's history holds one capacity shortage event: for the EC2 Fleet `service-error`
/// with the shortage sub-type and a description naming InsufficientInstanceCapacity, for
/// the Spot Fleet `error`.
async fn assert_one_shortage_each(ec2: &Ec2, id: &str, sfr: &str) {
    let start = DateTime::from_secs(0);
    let history = ec2
        .describe_fleet_history()
        .fleet_id(id)
        .start_time(start)
        .send()
        .await
        .unwrap();
    let shortage: Vec<_> = history
        .history_records()
        .iter()
        .filter(|r| r.event_type() == Some(&FleetEventType::ServiceError))
        .filter_map(|r| r.event_information())
        .collect();
    assert_eq!(shortage.len(), 1, "{history:?}");
    assert_eq!(shortage[0].event_sub_type(), Some(SHORTAGE_SUB_TYPE));
    assert!(shortage[0]
        .event_description()
        .unwrap()
        .contains("InsufficientInstanceCapacity"));
    let history = ec2
        .describe_spot_fleet_request_history()
        .spot_fleet_request_id(sfr)
        .start_time(start)
        .send()
        .await
        .unwrap();
    let errors = history
        .history_records()
        .iter()
        .filter(|r| r.event_type() == Some(&EventType::Error))
        .count();
    assert_eq!(errors, 1, "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_spot_capacity_clips_fleets_and_is_in_their_history() {
    let h = Harness::new(KIT, "r-capacity").await;
    let ec2 = Ec2::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-capacity").await;
    let subnet = h.subnets[0].0.as_str();
    h.recorder.rules(|r| r.spot_capacity = Some(1));
    let id = create_fleet(&ec2, &lt, subnet, FleetType::Maintain, (3, 1)).await;
    assert_eq!(
        fleet_state(&ec2, &id).await,
        (3, 1, 2.0, 1.0),
        "asked 3, got 1 + 1 Spot"
    );
    let sfr = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-capacity-1", 2))
        .await
        .unwrap();
    assert_eq!(
        spot_fleet_state(&ec2, &sfr).await,
        (2, 0, 0.0, 0.0),
        "no Spot left"
    );
    assert_one_shortage_each(&ec2, &id, &sfr).await;
    // Capacity comes back: the next modifications are fulfilled.
    h.recorder.rules(|r| r.spot_capacity = None);
    assert_eq!(modify(&ec2, &id, (3, 1), false).await, Ok(true));
    assert_eq!(fleet_state(&ec2, &id).await, (3, 1, 3.0, 1.0));
    ec2.modify_spot_fleet_request()
        .spot_fleet_request_id(&sfr)
        .target_capacity(2)
        .send()
        .await
        .unwrap();
    assert_eq!(spot_fleet_state(&ec2, &sfr).await.2, 2.0);
    delete_fleet(&ec2, &id).await;
    testkit::world::cancel_fleet(&ec2, &sfr).await;
}
