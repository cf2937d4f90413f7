//! The AWS-rules layer (testkit/src/aws_rules.rs): each rule answers as AWS does where
//! moto does not, shown here through the SDK; then the defects it exposed, each fixed and
//! tested through the layer with the real binary.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    FleetLaunchTemplateSpecification, FleetType, LaunchTemplateConfig, LaunchTemplateOverrides,
    RequestLaunchTemplateData, SpotFleetRequestConfigData,
};
use base64::Engine;
use testkit::aws_rules::{FLEET_REQUEST_TAG, SSM_STANDARD_TPS, USER_DATA_LIMIT};
use testkit::harness::Harness;
use testkit::moto::harness_sdk;
use testkit::world::{
    cancel_fleet, convergence_problems, create_subnet, create_vpc, fleet_requests, vpc_of,
};

use crate::KIT;

mod ec2_fleet;

/// SDK config through the proxy (and so the rules layer), signed as the harness.
async fn through_layer(h: &Harness) -> aws_config::SdkConfig {
    harness_sdk(&h.recorder.endpoint).await
}

fn user_data(bytes: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode("#".repeat(bytes))
}

/// A launch template through the layer; returns its id.
async fn launch_template(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-0d27e0fb3bac4d724")
                .instance_type("m6i.large".into())
                .user_data(user_data(100))
                .build(),
        )
        .send()
        .await
        .expect("create a launch template")
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .unwrap()
        .to_owned()
}

fn fleet_config(
    lt: &str,
    subnets: &[&str],
    token: &str,
    target: i32,
) -> SpotFleetRequestConfigData {
    let mut config = LaunchTemplateConfig::builder().launch_template_specification(
        FleetLaunchTemplateSpecification::builder()
            .launch_template_id(lt)
            .version("1")
            .build(),
    );
    for s in subnets {
        config = config.overrides(
            LaunchTemplateOverrides::builder()
                .instance_type("m6i.large".into())
                .subnet_id(*s)
                .build(),
        );
    }
    SpotFleetRequestConfigData::builder()
        // The role is named after the token, so a test can find its own request in moto.
        .iam_fleet_role(format!("arn:aws:iam::123456789012:role/{token}"))
        .allocation_strategy(aws_sdk_ec2::types::AllocationStrategy::Diversified)
        .r#type(FleetType::Maintain)
        .target_capacity(target)
        .launch_template_configs(config.build())
        .client_token(token)
        .build()
}

async fn request_fleet(
    ec2: &aws_sdk_ec2::Client,
    config: SpotFleetRequestConfigData,
) -> Result<String, (String, String)> {
    ec2.request_spot_fleet()
        .spot_fleet_request_config(config)
        .send()
        .await
        .map(|o| o.spot_fleet_request_id().unwrap().to_owned())
        .map_err(|e| {
            (
                e.code().unwrap_or("?").to_owned(),
                e.message().unwrap_or("").to_owned(),
            )
        })
}

// ---- each rule ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_over_16_kib_is_refused_as_aws_does() {
    let h = Harness::new(KIT, "r-userdata").await;
    let ec2 = aws_sdk_ec2::Client::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-userdata").await;
    let too_big = RequestLaunchTemplateData::builder()
        .image_id("ami-0d27e0fb3bac4d724")
        .user_data(user_data(USER_DATA_LIMIT + 1))
        .build();
    let create = ec2
        .create_launch_template()
        .launch_template_name("r-userdata-2")
        .launch_template_data(too_big.clone())
        .send()
        .await
        .unwrap_err();
    let version = ec2
        .create_launch_template_version()
        .launch_template_id(&lt)
        .launch_template_data(too_big)
        .send()
        .await
        .unwrap_err();
    let run = ec2
        .run_instances()
        .image_id("ami-0d27e0fb3bac4d724")
        .min_count(1)
        .max_count(1)
        .user_data(user_data(USER_DATA_LIMIT + 1))
        .send()
        .await
        .unwrap_err();
    for e in [create.code(), version.code(), run.code()] {
        assert_eq!(e, Some("InvalidUserData.Malformed"));
    }
    assert_eq!(
        run.message(),
        Some(format!("User data is limited to {USER_DATA_LIMIT} bytes").as_str())
    );
    // At the limit it passes.
    ec2.create_launch_template_version()
        .launch_template_id(&lt)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-0d27e0fb3bac4d724")
                .user_data(user_data(USER_DATA_LIMIT))
                .build(),
        )
        .send()
        .await
        .expect("16384 bytes are allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_fleet_calls_answer_412_and_reach_nothing() {
    let h = Harness::new(KIT, "r-dryrun").await;
    let ec2 = aws_sdk_ec2::Client::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-dryrun").await;
    let subnet = h.subnets[0].0.as_str();
    let request = ec2
        .request_spot_fleet()
        .dry_run(true)
        .spot_fleet_request_config(fleet_config(&lt, &[subnet], "r-dryrun-1", 1))
        .send()
        .await
        .unwrap_err();
    let cancel = ec2
        .cancel_spot_fleet_requests()
        .dry_run(true)
        .spot_fleet_request_ids("sfr-00000000-0000-0000-0000-000000000000")
        .terminate_instances(true)
        .send()
        .await
        .unwrap_err();
    let delete = ec2
        .delete_fleets()
        .dry_run(true)
        .fleet_ids("fleet-00000000-0000-0000-0000-000000000000")
        .terminate_instances(true)
        .send()
        .await
        .unwrap_err();
    for (name, e) in [
        ("RequestSpotFleet", request.code()),
        ("CancelSpotFleetRequests", cancel.code()),
        ("DeleteFleets", delete.code()),
    ] {
        assert_eq!(e, Some("DryRunOperation"), "{name}");
    }
    let status = request
        .raw_response()
        .map(|r| r.status().as_u16())
        .unwrap_or_default();
    assert_eq!(status, 412);
    // moto saw nothing: no request with the dry run's role (other tests of this binary
    // make fleets in the same moto meanwhile, so counting all would race).
    let after = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let made = after
        .spot_fleet_request_configs()
        .iter()
        .filter_map(|c| c.spot_fleet_request_config())
        .filter(|c| {
            c.iam_fleet_role()
                .is_some_and(|r| r.ends_with("/r-dryrun-1"))
        })
        .count();
    assert_eq!(made, 0, "a DryRun created a fleet");
    assert!(h
        .recorder
        .calls()
        .iter()
        .filter(|c| c.is_dry_run())
        .all(|c| c.status == 412));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_returns_the_first_answer_even_after_a_cancel() {
    let h = Harness::new(KIT, "r-token").await;
    let ec2 = aws_sdk_ec2::Client::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-token").await;
    let subnet = h.subnets[0].0.as_str();
    let first = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-token-1", 1))
        .await
        .unwrap();
    let again = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-token-1", 1))
        .await
        .unwrap();
    assert_eq!(
        first, again,
        "same token, same parameters: the first answer"
    );
    cancel_fleet(&ec2, &first).await;
    let after_cancel = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-token-1", 1))
        .await
        .unwrap();
    assert_eq!(after_cancel, first, "the cancelled request's id comes back");
    let mismatch = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-token-1", 2))
        .await
        .unwrap_err();
    assert_eq!(mismatch.0, "IdempotentParameterMismatch");
    let other = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-token-2", 1))
        .await
        .unwrap();
    assert_ne!(other, first);
    // RunInstances too.
    let run = |token: &'static str| {
        let ec2 = ec2.clone();
        async move {
            ec2.run_instances()
                .image_id("ami-0d27e0fb3bac4d724")
                .min_count(1)
                .max_count(1)
                .client_token(token)
                .send()
                .await
                .unwrap()
                .instances()[0]
                .instance_id()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(run("r-token-run").await, run("r-token-run").await);
    cancel_fleet(&ec2, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_names_outside_awss_rules_are_refused() {
    let h = Harness::new(KIT, "r-names").await;
    let ssm = aws_sdk_ssm::Client::new(&through_layer(&h).await);
    let put = |name: String| {
        let ssm = ssm.clone();
        async move {
            ssm.put_parameter()
                .name(name)
                .value("v")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.code().unwrap_or("?").to_owned())
        }
    };
    assert_eq!(
        put("/bbfleet/r-names/runners/{uuid}".into()).await,
        Err("ValidationException".to_owned()),
        "braces"
    );
    let deep = (1..=16).map(|i| format!("/l{i}")).collect::<String>();
    assert_eq!(
        put(deep).await,
        Err("ValidationException".to_owned()),
        "16 levels"
    );
    let fine = (1..=15).map(|i| format!("/l{i}")).collect::<String>();
    assert_eq!(put(fine.clone()).await, Ok(()));
    assert_eq!(
        put("/bbfleet/r-names/ok_name-1.x".into()).await,
        Ok(()),
        "a-zA-Z0-9_.-/"
    );
    ssm.delete_parameters()
        .names(fine)
        .names("/bbfleet/r-names/ok_name-1.x")
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_two_subnets_of_one_zone_or_two_vpcs_is_refused() {
    let h = Harness::new(KIT, "r-subnets").await;
    let ec2 = aws_sdk_ec2::Client::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-subnets").await;
    // A second subnet in us-east-1a of the default VPC, and a subnet of another VPC.
    let default_vpc = vpc_of(&ec2, &h.subnets[0].0).await;
    let twin = create_subnet(&ec2, &default_vpc, "172.31.200.0/24", "us-east-1a").await;
    // CIDRs no other test of this binary uses (they share one moto).
    let vpc = create_vpc(&ec2, "10.78.0.0/16").await;
    let foreign = create_subnet(&ec2, &vpc, "10.78.1.0/24", "us-east-1b").await;
    let a = h.subnets[0].0.as_str();
    let same_zone = request_fleet(&ec2, fleet_config(&lt, &[a, &twin], "r-subnets-1", 1))
        .await
        .unwrap_err();
    assert_eq!(same_zone.0, "InvalidSpotFleetRequestConfig");
    assert!(
        same_zone.1.contains("duplicate instance pools"),
        "{}",
        same_zone.1
    );
    let two_vpcs = request_fleet(&ec2, fleet_config(&lt, &[a, &foreign], "r-subnets-2", 1))
        .await
        .unwrap_err();
    assert_eq!(two_vpcs.0, "InvalidSpotFleetRequestConfig");
    assert!(two_vpcs.1.contains("more than one VPC"), "{}", two_vpcs.1);
    // One subnet per zone of one VPC passes.
    let b = h.subnets[1].0.as_str();
    let ok = request_fleet(&ec2, fleet_config(&lt, &[a, b], "r-subnets-3", 1))
        .await
        .unwrap();
    cancel_fleet(&ec2, &ok).await;
    for s in [twin, foreign] {
        ec2.delete_subnet().subnet_id(s).send().await.unwrap();
    }
    ec2.delete_vpc().vpc_id(vpc).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_store_throttles_above_its_rate_only_when_asked() {
    let h = Harness::new(KIT, "r-throttle").await;
    let ssm = aws_sdk_ssm::Client::new(&through_layer(&h).await);
    let burst = |n: usize| {
        let ssm = ssm.clone();
        async move {
            let calls = (0..n).map(|_| {
                let ssm = ssm.clone();
                async move {
                    ssm.get_parameter()
                        .name(
                            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
                        )
                        .send()
                        .await
                        .err()
                        .and_then(|e| e.code().map(str::to_owned))
                }
            });
            futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(burst(30).await, Vec::<String>::new(), "off by default");
    h.recorder.rules(|r| r.ssm_rate = Some(5.0));
    let refused = burst(30).await;
    assert!(
        refused.len() >= 20 && refused.iter().all(|c| c == "ThrottlingException"),
        "{refused:?}"
    );
    // The bucket refills at the rate.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(burst(5).await.len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_instances_carry_their_request_tag_and_are_listed_late_when_asked() {
    let h = Harness::new(KIT, "r-lag").await;
    let ec2 = aws_sdk_ec2::Client::new(&through_layer(&h).await);
    let lt = launch_template(&ec2, "r-lag").await;
    h.recorder
        .rules(|r| r.fleet_listing_delay = Duration::from_secs(600));
    let subnet = h.subnets[0].0.as_str();
    let id = request_fleet(&ec2, fleet_config(&lt, &[subnet], "r-lag-1", 2))
        .await
        .unwrap();
    let listed = ec2
        .describe_spot_fleet_instances()
        .spot_fleet_request_id(&id)
        .send()
        .await
        .unwrap();
    assert!(listed.active_instances().is_empty(), "{listed:?}");
    let tagged = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{FLEET_REQUEST_TAG}"))
                .values(&id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let n: usize = tagged
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum();
    assert_eq!(n, 2, "both launches carry {FLEET_REQUEST_TAG}={id}");
    h.recorder.rules(|r| r.fleet_listing_delay = Duration::ZERO);
    let listed = ec2
        .describe_spot_fleet_instances()
        .spot_fleet_request_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.active_instances().len(), 2);
    cancel_fleet(&ec2, &id).await;
}

// ---- the defects, fixed ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_cancelled_out_of_band_is_replaced() {
    let h = Harness::new(KIT, "x-cancelled").await;
    let path = h.write_config(&h.config(2, None));
    let cfg = path.to_str().unwrap();
    h.apply(cfg, &[]).await;
    let fleets = fleet_requests(&h, &h.fleet).await;
    let [(first, _, _)] = fleets.as_slice() else {
        panic!("{fleets:?}")
    };
    // Someone cancels it (console, another tool), terminating its instances.
    cancel_fleet(&aws_sdk_ec2::Client::new(&h.sdk), first).await;
    let run = h.apply(cfg, &[]).await;
    assert!(
        run.stdout.contains("no fleet request yet"),
        "{}",
        run.stdout
    );
    let problems = convergence_problems(&h, cfg, 2).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let live: Vec<String> = fleet_requests(&h, &h.fleet)
        .await
        .into_iter()
        .filter(|(_, state, _)| state == "active")
        .map(|(id, _, _)| id)
        .collect();
    assert!(live.len() == 1 && live[0] != *first, "{live:?}");
    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_rebalance_launch_not_yet_listed_is_not_a_stray() {
    let h = Harness::new(KIT, "x-rebalance").await;
    let path = h.write_config(&h.config(2, None));
    let cfg = path.to_str().unwrap();
    h.apply(cfg, &[]).await;
    let fleets = fleet_requests(&h, &h.fleet).await;
    let [(id, _, _)] = fleets.as_slice() else {
        panic!("{fleets:?}")
    };
    // The fleet launches a replacement for a host that got a rebalance recommendation
    // ("launch" strategy: the old one keeps running); the listing has not caught up.
    h.recorder
        .rules(|r| r.fleet_listing_delay = Duration::from_secs(600));
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let out = ec2
        .run_instances()
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_name(format!("bbfleet-{}", h.fleet))
                .version("$Latest")
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(FLEET_REQUEST_TAG)
                        .value(id)
                        .build(),
                )
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("bbfleet:fleet")
                        .value(&h.fleet)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let fresh = out.instances()[0].instance_id().unwrap().to_owned();
    let plan = h
        .run(
            &[
                "--config",
                cfg,
                "plan",
                "--no-preflight",
                "--detailed-exitcode",
            ],
            &Harness::token(),
        )
        .await;
    assert!(
        !plan.stdout.contains(&fresh),
        "the fleet's own fresh launch is planned away:\n{}",
        plan.stdout
    );
    plan.expect_code(0);
    h.recorder.rules(|r| r.fleet_listing_delay = Duration::ZERO);
    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runners_converge_at_parameter_stores_standard_throughput() {
    let h = Harness::new(KIT, "x-tps").await;
    h.recorder.rules(|r| r.ssm_rate = Some(SSM_STANDARD_TPS));
    let text = h.config(50, None).replace("max = 20", "max = 60");
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    // The AWS clients retry as in production (the harness's 2 attempts are for speed).
    let run = h
        .run(
            &["--config", cfg, "apply", "--auto-approve"],
            &[
                ("BITBUCKET_ACCESS_TOKEN", "fake-access-token"),
                ("AWS_MAX_ATTEMPTS", "6"),
            ],
        )
        .await;
    run.expect_code(0);
    let throttled = h
        .recorder
        .calls()
        .iter()
        .filter(|c| c.status == 400 && c.response.contains("ThrottlingException"))
        .count();
    assert!(
        throttled > 0,
        "the apply never met the rate; the test proves nothing"
    );
    let problems = convergence_problems(&h, cfg, 50).await;
    assert!(problems.is_empty(), "{problems:#?}");
    h.destroy(cfg).await;
}
