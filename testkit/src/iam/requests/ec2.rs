//! EC2 calls (query protocol) -> IAM requests.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{ec2_arn, request_tag_context, resource_context, Builder, NEW};
use crate::iam::query::{q, q_list, q_tag_list, q_tags, query};
use crate::iam::world::World;
use crate::iam::xml::Xml;
use crate::iam::{Recorded, ACCOUNT};

pub(super) fn ec2_requests(world: &World, c: &Recorded, b: &mut Builder) {
    let params = query(&c.body);
    let x = Xml::parse(&c.response);
    let answered = |name: &str| x.all().into_iter().find_map(|e| e.text_of(name));
    let op = c.operation.as_str();
    let action = op;
    match op {
        // Service Authorization Reference, EC2: the Describe* actions bbfleet calls have no
        // resource types (Resource "*"), but for those in DESCRIBE_ON_A_FLEET.
        _ if op.starts_with("ec2:Describe") && !DESCRIBE_ON_A_FLEET.contains(&op) => {
            b.push(action, "*".into(), BTreeMap::new());
        }
        // GetSpotPlacementScores: no resource types either (same reference).
        "ec2:GetSpotPlacementScores" => b.push(action, "*".into(), BTreeMap::new()),
        "ec2:CreateLaunchTemplate" => {
            // CreateLaunchTemplate: resource type launch-template (aws:RequestTag,
            // aws:TagKeys). Tags given in TagSpecification also need ec2:CreateTags with
            // ec2:CreateAction (EC2 User Guide, "Grant permission to tag Amazon EC2
            // resources during creation").
            let id = answered("launchTemplateId").unwrap_or_else(|| NEW.into());
            if let Some(n) = q(&params, "LaunchTemplateName") {
                b.name_fleet(n);
            }
            let tags = q_tags(&params, "", "launch-template");
            b.tag_fleet(&tags);
            let arn = ec2_arn("launch-template", &id);
            b.push(action, arn.clone(), request_tag_context(&tags));
            if !tags.is_empty() {
                let mut ctx = request_tag_context(&tags);
                ctx.insert("ec2:CreateAction".into(), json!("CreateLaunchTemplate"));
                b.push("ec2:CreateTags", arn, ctx);
            }
        }
        "ec2:CreateLaunchTemplateVersion" | "ec2:DeleteLaunchTemplate" => {
            let id = world.template_id(
                q(&params, "LaunchTemplateId"),
                q(&params, "LaunchTemplateName"),
            );
            let id = id.unwrap_or_else(|| NEW.into());
            b.tag_fleet(&tags_vec(world, &id));
            b.push(
                action,
                ec2_arn("launch-template", &id),
                resource_context(world, &id),
            );
        }
        "ec2:RequestSpotFleet" | "ec2:ModifySpotFleetRequest" => {
            fleet_requests(world, c, &params, b);
        }
        "ec2:CreateFleet" | "ec2:ModifyFleet" => {
            super::ec2_fleet::ec2_fleet_requests(world, c, &params, b);
        }
        // Each has the one resource type spot-fleet-request (required), with
        // aws:ResourceTag (Service Authorization Reference, EC2).
        "ec2:CancelSpotFleetRequests"
        | "ec2:DescribeSpotFleetInstances"
        | "ec2:DescribeSpotFleetRequestHistory" => {
            on_each(
                world,
                b,
                action,
                "spot-fleet-request",
                &params,
                "SpotFleetRequestId",
            );
        }
        // Each has the one resource type fleet (required), with aws:ResourceTag (same
        // reference): DeleteFleets names FleetId.N, the others one FleetId.
        "ec2:DeleteFleets" | "ec2:DescribeFleetInstances" | "ec2:DescribeFleetHistory" => {
            on_each(world, b, action, "fleet", &params, "FleetId");
        }
        "ec2:CreateTags" => create_tags(world, &params, b),
        _ if super::images::handles(op) => {
            super::images::image_requests(world, op, &params, &c.response, b);
        }
        "ec2:TerminateInstances" => {
            for id in q_list(&params, "InstanceId.", "") {
                b.tag_fleet(&tags_vec(world, &id));
                let mut ctx = resource_context(world, &id);
                // Service Authorization Reference, TerminateInstances: resource type
                // instance, with condition key ec2:InstanceID.
                ctx.insert("ec2:InstanceID".into(), json!(id));
                b.push(action, ec2_arn("instance", &id), ctx);
            }
        }
        _ => {
            // An operation this translation does not know: evaluated on "*", so that a
            // new call shows up (denied) instead of passing unseen.
            b.push(action, "*".into(), BTreeMap::new());
        }
    }
}

/// CreateTags on existing resources (a roll-out re-tags the modified fleet request): each
/// resource with its own tags, plus aws:RequestTag and aws:TagKeys for the tags given
/// (Service Authorization Reference, CreateTags).
fn create_tags(world: &World, params: &[(String, String)], b: &mut Builder) {
    let tags = q_tag_list(params, "");
    for id in q_list(params, "ResourceId.", "") {
        b.tag_fleet(&tags_vec(world, &id));
        let mut ctx = resource_context(world, &id);
        ctx.extend(request_tag_context(&tags));
        let kind = if id.starts_with("sfr-") {
            "spot-fleet-request"
        } else if id.starts_with("fleet-") {
            "fleet"
        } else if id.starts_with("lt-") {
            "launch-template"
        } else if id.starts_with("ami-") {
            "image"
        } else if id.starts_with("snap-") {
            "snapshot"
        } else {
            "instance"
        };
        b.push("ec2:CreateTags", ec2_arn(kind, &id), ctx);
    }
}

/// The Describe* actions that have a resource type (Service Authorization Reference, EC2:
/// spot-fleet-request or fleet, required): authorized on each fleet they name.
const DESCRIBE_ON_A_FLEET: &[&str] = &[
    "ec2:DescribeFleetHistory",
    "ec2:DescribeFleetInstances",
    "ec2:DescribeSpotFleetInstances",
    "ec2:DescribeSpotFleetRequestHistory",
];

/// `action` on each resource of `kind` the query names as `{param}.N` or `{param}`, with
/// that resource's tags.
fn on_each(
    world: &World,
    b: &mut Builder,
    action: &str,
    kind: &str,
    params: &[(String, String)],
    param: &str,
) {
    let mut ids = q_list(params, &format!("{param}."), "");
    ids.extend(q(params, param).map(str::to_owned));
    for id in ids {
        b.tag_fleet(&tags_vec(world, &id));
        b.push(action, ec2_arn(kind, &id), resource_context(world, &id));
    }
}

pub(super) fn tags_vec(world: &World, id: &str) -> Vec<(String, String)> {
    world
        .tags
        .get(id)
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// RequestSpotFleet / ModifySpotFleetRequest: the Service Authorization Reference lists
/// for RequestSpotFleet the resource types spot-fleet-request (required), launch-template,
/// image, subnet, security-group, snapshot, key-pair and placement-group; for
/// ModifySpotFleetRequest spot-fleet-request (required), launch-template and subnet. Every
/// such resource the request names (directly, or through the launch template version it
/// names) is authorized too. Snapshots (the AMI's) are not named by the request and are
/// not evaluated here.
fn fleet_requests(world: &World, c: &Recorded, params: &[(String, String)], b: &mut Builder) {
    let op = c.operation.as_str();
    let request = op == "ec2:RequestSpotFleet";
    let x = Xml::parse(&c.response);
    let pre = if request {
        "SpotFleetRequestConfig."
    } else {
        ""
    };
    let id = if request {
        x.all()
            .into_iter()
            .find_map(|e| e.text_of("spotFleetRequestId"))
            .unwrap_or_else(|| NEW.into())
    } else {
        q(params, "SpotFleetRequestId").unwrap_or(NEW).to_owned()
    };
    let arn = ec2_arn("spot-fleet-request", &id);
    if request {
        let tags = q_tags(params, pre, "spot-fleet-request");
        b.tag_fleet(&tags);
        b.push(op, arn.clone(), request_tag_context(&tags));
        if !tags.is_empty() {
            // EC2 User Guide, "Grant permission to tag Amazon EC2 resources during creation".
            let mut ctx = request_tag_context(&tags);
            ctx.insert("ec2:CreateAction".into(), json!("RequestSpotFleet"));
            b.push("ec2:CreateTags", arn, ctx);
        }
        if let Some(role) = q(params, &format!("{pre}IamFleetRole")) {
            // EC2 User Guide, "Spot Fleet permissions": the user needs iam:PassRole for
            // the Spot Fleet role; IAM User Guide, iam:PassedToService.
            b.push(
                "iam:PassRole",
                role.to_owned(),
                BTreeMap::from([(
                    "iam:PassedToService".into(),
                    json!("spotfleet.amazonaws.com"),
                )]),
            );
        }
    } else {
        b.tag_fleet(&tags_vec(world, &id));
        b.push(op, arn, resource_context(world, &id));
        // A capacity-only modify names no template; evaluated on the fleet's own template
        // too, conservatively (the Service Authorization Reference lists launch-template
        // for ModifySpotFleetRequest without saying when AWS checks it).
        for lt in world.fleet_templates.get(&id).into_iter().flatten() {
            b.push(
                op,
                ec2_arn("launch-template", lt),
                resource_context(world, lt),
            );
        }
    }
    let mut profiles = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut groups = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for i in 1..=20 {
        // The EC2 query names: SpotFleetRequestConfig.LaunchTemplateConfigs.N (request),
        // LaunchTemplateConfig.N (modify), as the SDK serializes them.
        let cfg = if request {
            format!("{pre}LaunchTemplateConfigs.{i}")
        } else {
            format!("LaunchTemplateConfig.{i}")
        };
        let spec = format!("{cfg}.LaunchTemplateSpecification");
        let lt_id = q(params, &format!("{spec}.LaunchTemplateId"));
        let lt_name = q(params, &format!("{spec}.LaunchTemplateName"));
        if lt_id.is_none() && lt_name.is_none() {
            break;
        }
        let lt = world
            .template_id(lt_id, lt_name)
            .unwrap_or_else(|| NEW.into());
        b.tag_fleet(&tags_vec(world, &lt));
        b.push(
            op,
            ec2_arn("launch-template", &lt),
            resource_context(world, &lt),
        );
        let data = world.data(&lt, q(params, &format!("{spec}.Version")));
        if request {
            images.extend(data.image.clone());
            groups.extend(data.security_groups.iter().cloned());
            profiles.extend(data.instance_profile.clone());
        }
        for s in q_list(params, &format!("{cfg}.Overrides."), ".SubnetId") {
            for s in s.split(',') {
                subnets.insert(s.trim().to_owned());
            }
        }
    }
    for s in subnets {
        b.push(op, ec2_arn("subnet", &s), BTreeMap::new());
    }
    for i in images {
        b.push(op, ec2_arn("image", &i), BTreeMap::new());
    }
    for g in groups {
        b.push(op, ec2_arn("security-group", &g), BTreeMap::new());
    }
    for p in profiles {
        // EC2 User Guide, "Spot Fleet permissions": a launch specification with an
        // instance profile needs iam:PassRole of its role; the role of a bbfleet profile
        // has the profile's name (policies/README.md).
        b.push(
            "iam:PassRole",
            format!("arn:aws:iam::{ACCOUNT}:role/{p}"),
            BTreeMap::from([("iam:PassedToService".into(), json!("ec2.amazonaws.com"))]),
        );
    }
}
