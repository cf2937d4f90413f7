//! `bbfleet bake`'s EC2 calls (query protocol) -> IAM requests: the builder's RunInstances,
//! CreateImage, DeregisterImage, DeleteSnapshot.
//!
//! Service Authorization Reference, Amazon EC2: RunInstances has the resource types
//! image, instance, network-interface, security-group, subnet and volume (among others),
//! with aws:RequestTag / aws:TagKeys on instance and volume and ec2:MetadataHttpTokens on
//! instance; CreateImage has image (required; aws:RequestTag, aws:TagKeys), instance
//! (aws:ResourceTag) and snapshot (aws:RequestTag, aws:TagKeys); DeregisterImage has image
//! (aws:ResourceTag); DeleteSnapshot has snapshot (aws:ResourceTag). Tags given in a
//! TagSpecification also need ec2:CreateTags with ec2:CreateAction (EC2 User Guide,
//! "Grant permission to tag Amazon EC2 resources during creation").

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::ec2::tags_vec;
use super::{ec2_arn, request_tag_context, resource_context, Builder, NEW};
use crate::iam::query::{q, q_list, q_tags};
use crate::iam::world::World;
use crate::iam::xml::Xml;
use crate::iam::ACCOUNT;

/// Whether `op` is translated here.
pub(super) fn handles(op: &str) -> bool {
    matches!(
        op,
        "ec2:RunInstances" | "ec2:CreateImage" | "ec2:DeregisterImage" | "ec2:DeleteSnapshot"
    )
}

pub(super) fn image_requests(
    world: &World,
    c: &str,
    params: &[(String, String)],
    response: &str,
    b: &mut Builder,
) {
    let x = Xml::parse(response);
    let answered = |name: &str| x.all().into_iter().find_map(|e| e.text_of(name));
    match c {
        "ec2:RunInstances" => {
            let id = answered("instanceId").unwrap_or_else(|| NEW.into());
            run_instances(params, &id, b);
        }
        "ec2:CreateImage" => {
            let image = answered("imageId").unwrap_or_else(|| NEW.into());
            create_image(world, params, &image, b);
        }
        "ec2:DeregisterImage" => on_one(world, params, "ImageId", "image", c, b),
        _ => on_one(world, params, "SnapshotId", "snapshot", c, b),
    }
}

/// The created resources of `kind`, each with the request tags given for it (and the
/// extra context), plus the CreateTags of `create_action` when tags were given.
fn created(
    b: &mut Builder,
    (action, create_action): (&str, &str),
    kind: &str,
    id: &str,
    tags: &[(String, String)],
    extra: &BTreeMap<String, Value>,
) {
    b.tag_fleet(tags);
    let arn = ec2_arn(kind, id);
    let mut ctx = request_tag_context(tags);
    ctx.extend(extra.clone());
    b.push(action, arn.clone(), ctx);
    if !tags.is_empty() {
        let mut ctx = request_tag_context(tags);
        ctx.insert("ec2:CreateAction".into(), json!(create_action));
        b.push("ec2:CreateTags", arn, ctx);
    }
}

fn run_instances(params: &[(String, String)], id: &str, b: &mut Builder) {
    const OP: (&str, &str) = ("ec2:RunInstances", "RunInstances");
    let tokens = q(params, "MetadataOptions.HttpTokens").unwrap_or("optional");
    let imds = BTreeMap::from([("ec2:MetadataHttpTokens".to_owned(), json!(tokens))]);
    created(
        b,
        OP,
        "instance",
        id,
        &q_tags(params, "", "instance"),
        &imds,
    );
    let volume_tags = q_tags(params, "", "volume");
    created(b, OP, "volume", NEW, &volume_tags, &BTreeMap::new());
    let mut others: Vec<(&str, String)> = vec![("network-interface", NEW.to_owned())];
    others.extend(q(params, "ImageId").map(|i| ("image", i.to_owned())));
    others.extend(q(params, "SubnetId").map(|s| ("subnet", s.to_owned())));
    for g in q_list(params, "SecurityGroupId.", "") {
        others.push(("security-group", g));
    }
    for (kind, id) in others {
        b.push(OP.0, ec2_arn(kind, &id), BTreeMap::new());
    }
    let profile = q(params, "IamInstanceProfile.Name")
        .map(str::to_owned)
        .or_else(|| {
            q(params, "IamInstanceProfile.Arn")
                .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        });
    if let Some(p) = profile {
        // IAM User Guide, "Grant a user permissions to pass a role": launching with an
        // instance profile passes its role (a bbfleet profile's role has its name).
        b.push(
            "iam:PassRole",
            format!("arn:aws:iam::{ACCOUNT}:role/{p}"),
            BTreeMap::from([("iam:PassedToService".into(), json!("ec2.amazonaws.com"))]),
        );
    }
}

fn create_image(world: &World, params: &[(String, String)], image: &str, b: &mut Builder) {
    const OP: (&str, &str) = ("ec2:CreateImage", "CreateImage");
    if let Some(instance) = q(params, "InstanceId") {
        b.tag_fleet(&tags_vec(world, instance));
        b.push(
            OP.0,
            ec2_arn("instance", instance),
            resource_context(world, instance),
        );
    }
    let none = BTreeMap::new();
    created(b, OP, "image", image, &q_tags(params, "", "image"), &none);
    created(
        b,
        OP,
        "snapshot",
        NEW,
        &q_tags(params, "", "snapshot"),
        &none,
    );
}

fn on_one(
    world: &World,
    params: &[(String, String)],
    param: &str,
    kind: &str,
    action: &str,
    b: &mut Builder,
) {
    let id = q(params, param).unwrap_or(NEW);
    b.tag_fleet(&tags_vec(world, id));
    b.push(action, ec2_arn(kind, id), resource_context(world, id));
}
