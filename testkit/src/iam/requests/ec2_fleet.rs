//! EC2 Fleet calls that name launch templates (CreateFleet, ModifyFleet) -> IAM requests.
//!
//! Service Authorization Reference, Amazon EC2 (Actions table): CreateFleet has the resource
//! types fleet (required; aws:RequestTag, aws:TagKeys), instance (required), launch-template,
//! image, subnet, volume and placement-group; ModifyFleet fleet (required; aws:ResourceTag),
//! launch-template, image and subnet. CreateFleet's "resource-level permissions ... do not
//! include the resources specified in a launch template. To specify resource-level
//! permissions for resources specified in a launch template, you must include the resources
//! in the RunInstances action statement": those are evaluated as ec2:RunInstances here.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::ec2::tags_vec;
use super::{ec2_arn, request_tag_context, resource_context, Builder, NEW};
use crate::iam::query::{q, q_list, q_tags};
use crate::iam::world::{TemplateData, World};
use crate::iam::xml::Xml;
use crate::iam::{Recorded, ACCOUNT};

pub(super) fn ec2_fleet_requests(
    world: &World,
    c: &Recorded,
    params: &[(String, String)],
    b: &mut Builder,
) {
    let op = c.operation.as_str();
    let create = op == "ec2:CreateFleet";
    let id = if create {
        Xml::parse(&c.response)
            .all()
            .into_iter()
            .find_map(|e| e.text_of("fleetId"))
            .unwrap_or_else(|| NEW.into())
    } else {
        q(params, "FleetId").unwrap_or(NEW).to_owned()
    };
    let arn = ec2_arn("fleet", &id);
    if create {
        created(params, b, arn);
    } else {
        modified(world, b, op, &id, arn);
    }
    named(world, params, b, op, create);
}

fn created(params: &[(String, String)], b: &mut Builder, arn: String) {
    let op = "ec2:CreateFleet";
    // The fleet with the tags asked for it (TagSpecification.N.ResourceType=fleet), and
    // the instances it launches (instance, required: `instance/*`, no id yet) with the
    // tags asked for them. Tags given also need ec2:CreateTags with ec2:CreateAction
    // (EC2 User Guide, "Grant permission to tag Amazon EC2 resources during creation").
    for (kind, resource) in [("fleet", arn), ("instance", ec2_arn("instance", "*"))] {
        let tags = q_tags(params, "", kind);
        b.tag_fleet(&tags);
        b.push(op, resource.clone(), request_tag_context(&tags));
        if !tags.is_empty() {
            let mut ctx = request_tag_context(&tags);
            ctx.insert("ec2:CreateAction".into(), json!("CreateFleet"));
            b.push("ec2:CreateTags", resource, ctx);
        }
    }
}

fn modified(world: &World, b: &mut Builder, op: &str, id: &str, arn: String) {
    b.tag_fleet(&tags_vec(world, id));
    b.push(op, arn, resource_context(world, id));
    // A capacity-only modify names no template; evaluated on the fleet's own templates
    // too, conservatively (as ModifySpotFleetRequest in ec2.rs).
    for lt in world.fleet_templates.get(id).into_iter().flatten() {
        b.push(
            op,
            ec2_arn("launch-template", lt),
            resource_context(world, lt),
        );
    }
}

/// The launch templates, subnets and images the request names; CreateFleet's RunInstances.
fn named(world: &World, params: &[(String, String)], b: &mut Builder, op: &str, create: bool) {
    // The EC2 query names, as the SDK serializes them: LaunchTemplateConfigs.N (CreateFleet),
    // LaunchTemplateConfig.N (ModifyFleet); Overrides.M.SubnetId / .ImageId in each.
    let configs = if create {
        "LaunchTemplateConfigs"
    } else {
        "LaunchTemplateConfig"
    };
    let mut subnets = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut launched = Vec::new();
    for i in 1..=20 {
        let cfg = format!("{configs}.{i}");
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
        for s in q_list(params, &format!("{cfg}.Overrides."), ".SubnetId") {
            subnets.extend(s.split(',').map(|s| s.trim().to_owned()));
        }
        images.extend(q_list(params, &format!("{cfg}.Overrides."), ".ImageId"));
        let data = world.data(&lt, q(params, &format!("{spec}.Version")));
        launched.push((lt, data));
    }
    for s in &subnets {
        b.push(op, ec2_arn("subnet", s), BTreeMap::new());
    }
    for i in &images {
        b.push(op, ec2_arn("image", i), BTreeMap::new());
    }
    if create {
        run_instances(world, b, &launched, &subnets);
    }
}

/// What CreateFleet authorizes as ec2:RunInstances (module doc): the launch template, and
/// the image, security groups, subnets, instances, network interfaces and volumes launched
/// from it (with `ec2:LaunchTemplate`, a condition key of RunInstances on each of them);
/// and iam:PassRole of the template's instance profile role to EC2 (EC2 User Guide, "Grant
/// permissions to attach an IAM role to an instance": launching with an IAM role needs
/// iam:PassRole; "EC2 Fleet prerequisites", permissions for EC2 Fleet users). A bbfleet
/// profile's role has the profile's name (policies/README.md). Snapshots (the AMI's) are not
/// named by the request and are not evaluated.
fn run_instances(
    world: &World,
    b: &mut Builder,
    launched: &[(String, TemplateData)],
    subnets: &BTreeSet<String>,
) {
    let run = "ec2:RunInstances";
    let mut profiles = BTreeSet::new();
    for (lt, data) in launched {
        let lt_arn = ec2_arn("launch-template", lt);
        let from = BTreeMap::from([("ec2:LaunchTemplate".to_owned(), json!(lt_arn))]);
        let mut on_template = resource_context(world, lt);
        on_template.extend(from.clone());
        b.push(run, lt_arn, on_template);
        let mut arns: Vec<String> = data.image.iter().map(|i| ec2_arn("image", i)).collect();
        arns.extend(
            data.security_groups
                .iter()
                .map(|g| ec2_arn("security-group", g)),
        );
        arns.extend(subnets.iter().map(|s| ec2_arn("subnet", s)));
        for kind in ["instance", "network-interface", "volume"] {
            arns.push(ec2_arn(kind, "*"));
        }
        for a in arns {
            b.push(run, a, from.clone());
        }
        profiles.extend(data.instance_profile.clone());
    }
    for p in profiles {
        b.push(
            "iam:PassRole",
            format!("arn:aws:iam::{ACCOUNT}:role/{p}"),
            BTreeMap::from([("iam:PassedToService".into(), json!("ec2.amazonaws.com"))]),
        );
    }
}
