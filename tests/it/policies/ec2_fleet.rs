//! operator.json and the EC2 Fleet backend (spot.fleet_api = "ec2-fleet"), and the Spot
//! Fleet history and placement-score calls: synthetic transcripts of every call, as the
//! recording proxy dumps them, translated by `testkit::iam` into the IAM requests AWS
//! authorizes (resource ARNs `fleet/fleet-…` with their tags) and evaluated. Allowed on the
//! fleet's own resources; denied on another fleet's, on untagged ones, and for creations
//! without the fleet tag.

use serde_json::json;
use testkit::iam::{evaluate, iam_requests, Fill, IamRequest, Recorded};

use crate::iam::{body, call, policy};

const FLEET: &str = "ec2fleet";
const LT: &str = "lt-0ccccccccccccccc0";
const OWN: &str = "fleet-11111111-2222-3333-4444-555555555555";
const OTHER: &str = "fleet-22222222-2222-3333-4444-555555555555";
const UNTAGGED: &str = "fleet-33333333-2222-3333-4444-555555555555";
const OWN_SFR: &str = "sfr-11111111-2222-3333-4444-555555555555";
const OTHER_SFR: &str = "sfr-22222222-2222-3333-4444-555555555555";

fn arn(kind: &str, id: &str) -> String {
    format!("arn:aws:ec2:us-east-1:123456789012:{kind}/{id}")
}

fn ec2(operation: &str, pairs: &[(&str, &str)], response: &str) -> Recorded {
    let mut all = vec![("Action", operation)];
    all.extend_from_slice(pairs);
    call(
        &format!("ec2:{operation}"),
        &body(&all),
        response,
        "testing",
    )
}

/// The launch template (tagged `template_fleet`) and a DescribeFleets / DescribeSpotFleetRequests
/// answer naming the fleet's own, another fleet's and an untagged fleet.
fn world(template_fleet: &str) -> Vec<Recorded> {
    let tagged = |id: &str, f: &str| {
        format!("<item><fleetId>{id}</fleetId><tagSet><item><key>bbfleet:fleet</key><value>{f}</value></item></tagSet></item>")
    };
    let sfr = |id: &str, f: &str| {
        format!("<item><spotFleetRequestId>{id}</spotFleetRequestId><tagSet><item><key>bbfleet:fleet</key><value>{f}</value></item></tagSet></item>")
    };
    vec![
        ec2(
            "CreateLaunchTemplate",
            &[
                ("LaunchTemplateName", &format!("bbfleet-{template_fleet}")),
                ("LaunchTemplateData.ImageId", "ami-0aaaaaaaaaaaaaaaa"),
                ("LaunchTemplateData.SecurityGroupId.1", "sg-0bbbbbbbbbbbbbbbb"),
                ("LaunchTemplateData.IamInstanceProfile.Name", "bbfleet-runner"),
                ("TagSpecification.1.ResourceType", "launch-template"),
                ("TagSpecification.1.Tag.1.Key", "bbfleet:fleet"),
                ("TagSpecification.1.Tag.1.Value", template_fleet),
            ],
            &format!("<CreateLaunchTemplateResponse><launchTemplate><launchTemplateId>{LT}</launchTemplateId><launchTemplateName>bbfleet-{template_fleet}</launchTemplateName><latestVersionNumber>1</latestVersionNumber></launchTemplate></CreateLaunchTemplateResponse>"),
        ),
        ec2(
            "DescribeFleets",
            &[],
            &format!(
                "<DescribeFleetsResponse><fleetSet>{}{}<item><fleetId>{UNTAGGED}</fleetId></item></fleetSet></DescribeFleetsResponse>",
                tagged(OWN, FLEET),
                tagged(OTHER, "other")
            ),
        ),
        ec2(
            "DescribeSpotFleetRequests",
            &[],
            &format!(
                "<DescribeSpotFleetRequestsResponse><spotFleetRequestConfigSet>{}{}</spotFleetRequestConfigSet></DescribeSpotFleetRequestsResponse>",
                sfr(OWN_SFR, FLEET),
                sfr(OTHER_SFR, "other")
            ),
        ),
    ]
}

/// CreateFleet as the EC2 Fleet backend sends it (type maintain, the fleet's template in two
/// subnets, the fleet tags on the fleet).
fn create_fleet(tags: &[(&str, &str)], dry_run: bool) -> Recorded {
    let mut pairs: Vec<(String, String)> = [
        ("Type", "maintain"),
        ("ClientToken", "bbfleet-token"),
        (
            "LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId",
            LT,
        ),
        (
            "LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version",
            "1",
        ),
        (
            "LaunchTemplateConfigs.1.Overrides.1.InstanceType",
            "m5.large",
        ),
        (
            "LaunchTemplateConfigs.1.Overrides.1.SubnetId",
            "subnet-0ddddddddddddddd0",
        ),
        (
            "LaunchTemplateConfigs.1.Overrides.2.InstanceType",
            "m5.large",
        ),
        (
            "LaunchTemplateConfigs.1.Overrides.2.SubnetId",
            "subnet-0eeeeeeeeeeeeeee0",
        ),
        ("TargetCapacitySpecification.TotalTargetCapacity", "2"),
        ("TargetCapacitySpecification.OnDemandTargetCapacity", "1"),
        ("TargetCapacitySpecification.SpotTargetCapacity", "1"),
        (
            "TargetCapacitySpecification.DefaultTargetCapacityType",
            "spot",
        ),
        ("SpotOptions.AllocationStrategy", "price-capacity-optimized"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    if !tags.is_empty() {
        pairs.push(("TagSpecification.1.ResourceType".into(), "fleet".into()));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        pairs.push((format!("TagSpecification.1.Tag.{}.Key", i + 1), (*k).into()));
        pairs.push((
            format!("TagSpecification.1.Tag.{}.Value", i + 1),
            (*v).into(),
        ));
    }
    if dry_run {
        pairs.push(("DryRun".into(), "true".into()));
    }
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut c = ec2(
        "CreateFleet",
        &refs,
        &format!("<CreateFleetResponse><fleetId>{OWN}</fleetId></CreateFleetResponse>"),
    );
    if dry_run {
        c.status = 412;
        c.response =
            "<Response><Errors><Error><Code>DryRunOperation</Code></Error></Errors></Response>"
                .into();
    }
    c
}

/// The calls the backends make on one existing fleet `id` (EC2 Fleet) or `sfr` (Spot Fleet).
fn on_fleet(id: &str, sfr: &str) -> Vec<Recorded> {
    vec![
        ec2(
            "ModifyFleet",
            &[
                ("FleetId", id),
                ("ExcessCapacityTerminationPolicy", "no-termination"),
                ("TargetCapacitySpecification.TotalTargetCapacity", "3"),
                (
                    "LaunchTemplateConfig.1.LaunchTemplateSpecification.LaunchTemplateId",
                    LT,
                ),
                (
                    "LaunchTemplateConfig.1.LaunchTemplateSpecification.Version",
                    "1",
                ),
                (
                    "LaunchTemplateConfig.1.Overrides.1.SubnetId",
                    "subnet-0ddddddddddddddd0",
                ),
            ],
            "<ModifyFleetResponse><return>true</return></ModifyFleetResponse>",
        ),
        ec2(
            "CreateTags",
            &[
                ("ResourceId.1", id),
                ("Tag.1.Key", "bbfleet:config"),
                ("Tag.1.Value", "abc"),
                ("Tag.2.Key", "bbfleet:target-at"),
                ("Tag.2.Value", "2026-12-01T00:00:00Z"),
            ],
            "<CreateTagsResponse><return>true</return></CreateTagsResponse>",
        ),
        ec2(
            "DescribeFleetInstances",
            &[("FleetId", id)],
            "<DescribeFleetInstancesResponse/>",
        ),
        ec2(
            "DescribeFleetHistory",
            &[("FleetId", id), ("StartTime", "2026-12-01T00:00:00Z")],
            "<DescribeFleetHistoryResponse/>",
        ),
        ec2(
            "DescribeSpotFleetRequestHistory",
            &[
                ("SpotFleetRequestId", sfr),
                ("StartTime", "2026-12-01T00:00:00Z"),
            ],
            "<DescribeSpotFleetRequestHistoryResponse/>",
        ),
        ec2(
            "DeleteFleets",
            &[("FleetId.1", id), ("TerminateInstances", "true")],
            "<DeleteFleetsResponse/>",
        ),
    ]
}

/// Every IAM request of `calls` with whether operator.json (filled for FLEET) allows it.
fn judged(calls: &[Recorded]) -> Vec<(IamRequest, bool, String)> {
    let operator = policy("operator", &Fill::harness(FLEET));
    let reqs = iam_requests(calls);
    let items: Vec<_> = reqs.iter().map(|r| (operator.clone(), r)).collect();
    let decisions = evaluate(&items);
    reqs.into_iter()
        .zip(decisions)
        .map(|(r, d)| (r, d.allowed(), d.reason))
        .collect()
}

fn find<'a>(
    got: &'a [(IamRequest, bool, String)],
    action: &str,
    resource: &str,
) -> &'a (IamRequest, bool, String) {
    got.iter()
        .find(|(r, _, _)| r.action == action && r.resource == resource)
        .unwrap_or_else(|| {
            panic!(
                "no {action} on {resource} in {:#?}",
                got.iter()
                    .map(|(r, _, _)| (&r.action, &r.resource))
                    .collect::<Vec<_>>()
            )
        })
}

#[test]
fn every_ec2_fleet_call_on_the_fleets_own_resources_is_translated_and_allowed() {
    let tags = [("bbfleet:fleet", FLEET), ("bbfleet:config", "abc")];
    let mut calls = world(FLEET);
    calls.push(create_fleet(&tags, true));
    calls.push(create_fleet(&tags, false));
    calls.push(ec2(
        "GetSpotPlacementScores",
        &[
            ("InstanceType.1", "m5.large"),
            ("TargetCapacity", "2"),
            ("SingleAvailabilityZone", "true"),
            ("RegionName.1", "us-east-1"),
        ],
        "<GetSpotPlacementScoresResponse/>",
    ));
    calls.extend(on_fleet(OWN, OWN_SFR));
    let got = judged(&calls);
    let fleet = arn("fleet", OWN);
    let lt = arn("launch-template", LT);
    let subnet = arn("subnet", "subnet-0ddddddddddddddd0");
    for (action, resource) in [
        ("ec2:CreateFleet", arn("fleet", "new")),
        ("ec2:CreateFleet", fleet.clone()),
        ("ec2:CreateTags", fleet.clone()),
        ("ec2:CreateFleet", arn("instance", "*")),
        ("ec2:CreateFleet", lt.clone()),
        ("ec2:CreateFleet", subnet.clone()),
        ("ec2:CreateFleet", arn("subnet", "subnet-0eeeeeeeeeeeeeee0")),
        ("ec2:RunInstances", lt.clone()),
        (
            "ec2:RunInstances",
            "arn:aws:ec2:us-east-1::image/ami-0aaaaaaaaaaaaaaaa".into(),
        ),
        (
            "ec2:RunInstances",
            arn("security-group", "sg-0bbbbbbbbbbbbbbbb"),
        ),
        ("ec2:RunInstances", subnet.clone()),
        ("ec2:RunInstances", arn("instance", "*")),
        ("ec2:RunInstances", arn("volume", "*")),
        ("ec2:RunInstances", arn("network-interface", "*")),
        (
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/bbfleet-runner".into(),
        ),
        ("ec2:DescribeFleets", "*".into()),
        ("ec2:GetSpotPlacementScores", "*".into()),
        ("ec2:ModifyFleet", fleet.clone()),
        ("ec2:ModifyFleet", lt.clone()),
        ("ec2:ModifyFleet", subnet.clone()),
        ("ec2:DescribeFleetInstances", fleet.clone()),
        ("ec2:DescribeFleetHistory", fleet.clone()),
        (
            "ec2:DescribeSpotFleetRequestHistory",
            arn("spot-fleet-request", OWN_SFR),
        ),
        ("ec2:DeleteFleets", fleet.clone()),
    ] {
        find(&got, action, &resource);
    }
    let tag_on_create = find(&got, "ec2:CreateTags", &fleet);
    assert_eq!(
        tag_on_create.0.context.get("ec2:CreateAction"),
        Some(&json!("CreateFleet"))
    );
    let modify = find(&got, "ec2:ModifyFleet", &fleet);
    assert_eq!(
        modify.0.context.get("aws:ResourceTag/bbfleet:fleet"),
        Some(&json!(FLEET)),
        "the fleet's tag, learned from DescribeFleets"
    );
    // Every call that names a resource names the fleet (the list calls name none).
    assert!(got
        .iter()
        .filter(|(r, _, _)| r.resource != "*")
        .all(|(r, _, _)| r.fleet.as_deref() == Some(FLEET)));
    let denied: Vec<String> = got
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(r, _, why)| format!("{} {}: {why}", r.action, r.resource))
        .collect();
    assert!(denied.is_empty(), "{denied:#?}");
}

#[test]
fn ec2_fleet_calls_on_another_fleets_or_untagged_fleets_are_denied() {
    let mut calls = world(FLEET);
    calls.extend(on_fleet(OTHER, OTHER_SFR));
    calls.extend(on_fleet(UNTAGGED, OTHER_SFR));
    // Re-tagging the fleet's own fleet with its fleet tag (or any key but the two).
    calls.push(ec2(
        "CreateTags",
        &[
            ("ResourceId.1", OWN),
            ("Tag.1.Key", "bbfleet:fleet"),
            ("Tag.1.Value", "x"),
        ],
        "<CreateTagsResponse><return>true</return></CreateTagsResponse>",
    ));
    let got = judged(&calls);
    for id in [OTHER, UNTAGGED] {
        for action in [
            "ec2:ModifyFleet",
            "ec2:CreateTags",
            "ec2:DescribeFleetInstances",
            "ec2:DescribeFleetHistory",
            "ec2:DeleteFleets",
        ] {
            let (_, ok, _) = find(&got, action, &arn("fleet", id));
            assert!(!ok, "{action} on {id} allowed");
        }
    }
    let (_, ok, _) = find(
        &got,
        "ec2:DescribeSpotFleetRequestHistory",
        &arn("spot-fleet-request", OTHER_SFR),
    );
    assert!(!ok, "another fleet's Spot Fleet history");
    let (_, ok, why) = find(&got, "ec2:CreateTags", &arn("fleet", OWN));
    assert!(!ok, "re-tagging bbfleet:fleet");
    assert!(why.contains("aws:TagKeys"), "{why}");
}

#[test]
fn create_fleet_without_the_fleet_tag_or_from_another_fleets_template_is_denied() {
    // Creations: without the fleet tag, with another fleet's, or from another fleet's
    // launch template.
    for (tags, template) in [
        (vec![], FLEET),
        (vec![("bbfleet:fleet", "other")], FLEET),
        (vec![("bbfleet:fleet", FLEET)], "other"),
    ] {
        let mut calls = world(template);
        calls.push(create_fleet(&tags, false));
        let got = judged(&calls);
        let denied: Vec<&str> = got
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(r, _, _)| r.resource.as_str())
            .collect();
        let expected = if template == FLEET {
            arn("fleet", OWN)
        } else {
            arn("launch-template", LT)
        };
        assert!(
            denied.contains(&expected.as_str()),
            "tags {tags:?}, template of {template}: denied only {denied:?}"
        );
    }
}
