//! EC2 for `bbfleet bake`: the builder instance, the fleet's baked images and their
//! snapshots.
//!
//! References (EC2 API Reference): RunInstances (`ClientToken`, `TagSpecification.N` for
//! `instance` and `volume`, `UserData` "must be base64-encoded"), CreateImage (`Name`:
//! 3-128 characters of letters, numbers, `( ) [ ] . / - ' @ _` and spaces;
//! `TagSpecification.N` with `ResourceType` `image` and `snapshot`: "The same tag is applied
//! to all of the snapshots that are created"), DescribeImages (`Owner.N = self`,
//! `Filter.N tag:KEY`, `Image.State`, `BlockDeviceMapping.Ebs.SnapshotId`),
//! DeregisterImage ("By default, deregistering an AMI also has no effect on any snapshots
//! that were created during the AMI creation process": its snapshots are deleted with
//! DeleteSnapshot afterwards), DescribeLaunchTemplateVersions.

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceType, ResourceType, Tag,
    TagSpecification, VolumeType,
};

use super::AwsError;
use crate::names::FLEET_TAG;

/// The tag naming the build on the builder instance and its volume.
pub const BAKE_TAG: &str = "bbfleet:bake";
/// The tag naming the base AMI on a baked image and its snapshots.
pub const SOURCE_AMI_TAG: &str = "bbfleet:source-ami";
/// The tag with the instant (RFC 3339) a baked image was made.
pub const BAKED_AT_TAG: &str = "bbfleet:baked-at";

/// One builder instance to launch.
#[derive(Debug, Clone)]
pub struct BuilderSpec {
    /// Fleet name.
    pub fleet: String,
    /// Build id (also the `ClientToken` and the value of [`BAKE_TAG`]).
    pub build: String,
    /// The base AMI.
    pub image_id: String,
    /// Root device name of the base AMI.
    pub root_device: String,
    /// Root volume size in GiB.
    pub root_volume_gb: u32,
    /// Instance type.
    pub instance_type: String,
    /// Subnet.
    pub subnet: String,
    /// Instance profile name or ARN.
    pub instance_profile: String,
    /// Security groups (empty: the VPC's default group).
    pub security_groups: Vec<String>,
    /// User data, base64-encoded.
    pub user_data: String,
}

/// A baked image of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakedImage {
    /// `ami-...`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `available`, `pending`, `failed`, ...
    pub state: String,
    /// [`BAKED_AT_TAG`], else the creation date (RFC 3339; sorts by time).
    pub baked_at: String,
    /// Snapshot ids of its block device mappings.
    pub snapshots: Vec<String>,
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tags_on(rt: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
        .build()
}

fn fleet_filter(fleet: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{FLEET_TAG}"))
        .values(fleet)
        .build()
}

fn profile(name_or_arn: &str) -> IamInstanceProfileSpecification {
    if name_or_arn.starts_with("arn:") {
        IamInstanceProfileSpecification::builder().arn(name_or_arn)
    } else {
        IamInstanceProfileSpecification::builder().name(name_or_arn)
    }
    .build()
}

/// The root volume as the launch template has it: encrypted gp3, gone with the instance.
fn root_volume(spec: &BuilderSpec) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name(&spec.root_device)
        .ebs(
            EbsBlockDevice::builder()
                .volume_size(spec.root_volume_gb as i32)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .encrypted(true)
                .build(),
        )
        .build()
}

/// Instances not terminated nor shutting down.
fn not_terminated() -> Filter {
    let states = ["pending", "running", "stopping", "stopped"];
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(states.map(String::from).to_vec()))
        .build()
}

/// Launches the builder; returns its instance id. The same `build` (ClientToken) launches
/// at most one instance ("Ensuring idempotency in Amazon EC2 API requests").
pub async fn run_builder(
    ec2: &aws_sdk_ec2::Client,
    spec: &BuilderSpec,
) -> Result<String, AwsError> {
    const OP: &str = "ec2:RunInstances";
    let tags = [
        (FLEET_TAG, spec.fleet.as_str()),
        (BAKE_TAG, spec.build.as_str()),
    ];
    let out = ec2
        .run_instances()
        .image_id(&spec.image_id)
        .instance_type(InstanceType::from(spec.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .subnet_id(&spec.subnet)
        .iam_instance_profile(profile(&spec.instance_profile))
        .set_security_group_ids(
            (!spec.security_groups.is_empty()).then(|| spec.security_groups.clone()),
        )
        .user_data(&spec.user_data)
        .client_token(&spec.build)
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(root_volume(spec))
        .tag_specifications(tags_on(ResourceType::Instance, &tags))
        .tag_specifications(tags_on(ResourceType::Volume, &tags))
        .send()
        .await
        .map_err(|e| AwsError::call(OP, e))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_owned)
        .ok_or_else(|| AwsError::Answer {
            operation: OP,
            problem: "launched no instance".to_owned(),
        })
}

/// The fleet's builder instances (tagged [`BAKE_TAG`]) that are not terminated, with
/// their build ids.
pub async fn builders(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
) -> Result<Vec<(String, String)>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .filters(fleet_filter(fleet))
        .filters(Filter::builder().name("tag-key").values(BAKE_TAG).build())
        .filters(not_terminated())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ec2:DescribeInstances", e))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let build = super::ec2::tag_value(i.tags(), BAKE_TAG).unwrap_or_default();
            out.push((
                i.instance_id().unwrap_or_default().to_owned(),
                build.to_owned(),
            ));
        }
    }
    Ok(out)
}

/// Creates the image of `instance`, tagged on create (image and snapshots) with the
/// fleet, the base AMI and the bake time; returns the image id.
pub async fn create_image(
    ec2: &aws_sdk_ec2::Client,
    instance: &str,
    name: &str,
    tags: &[(&str, &str)],
) -> Result<String, AwsError> {
    const OP: &str = "ec2:CreateImage";
    let out = ec2
        .create_image()
        .instance_id(instance)
        .name(name)
        .description("bbfleet bake: a fleet host image with Docker and the runner image")
        .tag_specifications(tags_on(ResourceType::Image, tags))
        .tag_specifications(tags_on(ResourceType::Snapshot, tags))
        .send()
        .await
        .map_err(|e| AwsError::call(OP, e))?;
    out.image_id()
        .map(str::to_owned)
        .ok_or_else(|| AwsError::Answer {
            operation: OP,
            problem: "returned no image id".to_owned(),
        })
}

/// Waits up to `max` for `image` to be `available` (the SDK's `image_available` waiter:
/// DescribeImages until `State` is `available`; `failed` ends the wait).
pub async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    image: &str,
    max: std::time::Duration,
) -> Result<(), String> {
    ec2.wait_until_image_available()
        .image_ids(image)
        .wait(max)
        .await
        .map(|_| ())
        .map_err(|e| {
            aws_smithy_types::error::display::DisplayErrorContext(&e)
                .to_string()
                .chars()
                .take(300)
                .collect()
        })
}

/// The fleet's images (owned by the account, tagged with the fleet), oldest first.
pub async fn baked_images(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
) -> Result<Vec<BakedImage>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_images()
        .owners("self")
        .filters(fleet_filter(fleet))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ec2:DescribeImages", e))?;
        for i in page.images() {
            let baked_at = super::ec2::tag_value(i.tags(), BAKED_AT_TAG)
                .or(i.creation_date())
                .unwrap_or_default();
            out.push(BakedImage {
                id: i.image_id().unwrap_or_default().to_owned(),
                name: i.name().unwrap_or_default().to_owned(),
                state: i.state().map_or("", |s| s.as_str()).to_owned(),
                baked_at: baked_at.to_owned(),
                snapshots: i
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(str::to_owned)
                    .collect(),
            });
        }
    }
    out.sort_by(|a, b| (&a.baked_at, &a.name).cmp(&(&b.baked_at, &b.name)));
    Ok(out)
}

/// Of `ids`, the snapshots tagged with the fleet (only those are deleted).
pub async fn fleet_snapshots(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    ids: &[String],
) -> Result<Vec<String>, AwsError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = ec2
        .describe_snapshots()
        .set_snapshot_ids(Some(ids.to_vec()))
        .filters(fleet_filter(fleet))
        .send()
        .await;
    match out {
        Ok(o) => Ok(o
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(str::to_owned))
            .collect()),
        // One of them is gone already: none is deleted by this run, the next one retries.
        Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(Vec::new()),
        Err(e) => Err(AwsError::call("ec2:DescribeSnapshots", e)),
    }
}

/// Deregisters `image`; `Ok(false)` if it was gone already.
pub async fn deregister(ec2: &aws_sdk_ec2::Client, image: &str) -> Result<bool, AwsError> {
    match ec2.deregister_image().image_id(image).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("InvalidAMIID.NotFound") => Ok(false),
        Err(e) => Err(AwsError::call("ec2:DeregisterImage", e)),
    }
}

/// Deletes `snapshot`; a snapshot already gone is fine.
pub async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, snapshot: &str) -> Result<(), AwsError> {
    match ec2.delete_snapshot().snapshot_id(snapshot).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
        Err(e) => Err(AwsError::call("ec2:DeleteSnapshot", e)),
    }
}

/// The image ids every version of the launch template `id` names (a roll-out may still
/// launch from an older version): retention never deregisters them.
pub async fn template_images(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Vec<String>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ec2:DescribeLaunchTemplateVersions", e))?;
        out.extend(
            page.launch_template_versions()
                .iter()
                .filter_map(|v| v.launch_template_data().and_then(|d| d.image_id()))
                .map(str::to_owned),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}
