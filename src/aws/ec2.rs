//! EC2: subnets, the AMI, the launch template, and the fleet's instances.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification, VolumeType,
};
use aws_smithy_runtime_api::client::result::SdkError;

use super::AwsError;
use crate::names::FLEET_TAG;

/// Prefix of the launch template version description that carries its fingerprint.
const FINGERPRINT_PREFIX: &str = "bbfleet:sha256=";

use crate::world::{
    ImageInfo, InstanceInfo, InstanceState, LaunchTemplateSpec, LaunchTemplateState,
    SecurityGroupInfo, SubnetInfo,
};

/// The tag EC2 puts on every instance a Spot Fleet launches, naming the request.
pub const FLEET_REQUEST_TAG: &str = "aws:ec2spot:fleet-request-id";
/// The tag EC2 puts on instances an EC2 Fleet launches (EC2 User Guide, "Tag an EC2
/// Fleet": instances are tagged `aws:ec2:fleet-id` with the fleet's id).
pub const EC2_FLEET_TAG: &str = "aws:ec2:fleet-id";
/// The launch template version an instance was launched from, tagged by EC2.
pub const TEMPLATE_VERSION_TAG: &str = "aws:ec2launchtemplate:version";

/// Subnets by id, in the order given; a missing one is a config error naming
/// `spot.subnets[i]`.
pub async fn describe_subnets(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Vec<SubnetInfo>, AwsError> {
    let describe = |ids: Vec<String>| async move {
        let out = ec2
            .describe_subnets()
            .set_subnet_ids(Some(ids))
            .send()
            .await?;
        Ok(out.subnets().iter().map(subnet_info).collect())
    };
    describe_ids(ec2, ids, &SUBNETS, describe, |s| &s.id).await
}

/// Security groups by id, in the order given; a missing one is a config error naming
/// `instance.security_groups[i]`. No call when `ids` is empty (the VPC's default group).
///
/// EC2 API Reference, DescribeSecurityGroups (`GroupId.N`, `SecurityGroup.VpcId`), and
/// "Error codes for the Amazon EC2 API": `InvalidGroup.NotFound`, "The specified security
/// group does not exist".
pub async fn describe_security_groups(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Vec<SecurityGroupInfo>, AwsError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let describe = |ids: Vec<String>| async move {
        let out = ec2
            .describe_security_groups()
            .set_group_ids(Some(ids))
            .send()
            .await?;
        Ok(out.security_groups().iter().map(group_info).collect())
    };
    describe_ids(ec2, ids, &SECURITY_GROUPS, describe, |g| &g.id).await
}

const SUBNETS: Lookup = Lookup {
    operation: "ec2:DescribeSubnets",
    not_found: "InvalidSubnetID.NotFound",
    field: "spot.subnets",
    what: "subnet",
};

const SECURITY_GROUPS: Lookup = Lookup {
    operation: "ec2:DescribeSecurityGroups",
    not_found: "InvalidGroup.NotFound",
    field: "instance.security_groups",
    what: "security group",
};

fn subnet_info(s: &aws_sdk_ec2::types::Subnet) -> SubnetInfo {
    SubnetInfo {
        id: s.subnet_id().unwrap_or_default().to_owned(),
        az: s.availability_zone().unwrap_or_default().to_owned(),
        vpc: s.vpc_id().unwrap_or_default().to_owned(),
    }
}

fn group_info(g: &aws_sdk_ec2::types::SecurityGroup) -> SecurityGroupInfo {
    SecurityGroupInfo {
        id: g.group_id().unwrap_or_default().to_owned(),
        vpc: g.vpc_id().unwrap_or_default().to_owned(),
    }
}

/// How configured ids of one kind are described.
struct Lookup {
    /// `ec2:DescribeX`.
    operation: &'static str,
    /// The error code of an id that does not exist.
    not_found: &'static str,
    /// The config field listing the ids.
    field: &'static str,
    /// The kind of resource, for messages.
    what: &'static str,
}

/// `describe` of all `ids` at once, in the order given; when one does not exist, which
/// one, as a config error (see [`missing_id`]).
async fn describe_ids<T, F, Fut, E, R>(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    lookup: &Lookup,
    describe: F,
    id_of: fn(&T) -> &String,
) -> Result<Vec<T>, AwsError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + super::HttpStatus,
{
    match describe(ids.to_vec()).await {
        Ok(mut found) => {
            found.sort_by_key(|t| ids.iter().position(|i| i == id_of(t)));
            Ok(found)
        }
        Err(e) if e.code() == Some(lookup.not_found) => {
            let exists = |id: String| {
                let one = describe(vec![id]);
                async move { !one.await.is_err_and(|e| e.code() == Some(lookup.not_found)) }
            };
            let message = e.message().unwrap_or_default().to_owned();
            let field = (lookup.field, lookup.what);
            Err(missing_id(ec2, field, ids, &message, exists).await)
        }
        Err(e) => Err(AwsError::call(lookup.operation, e)),
    }
}

/// Which configured id is missing, as `{field}[i]`: `exists` reads one id (`false` for
/// not found). One read per id, only on this error path (AWS's message may list several
/// ids, and moto's names any). `what` is the kind of resource, for the fallback message.
async fn missing_id<F, Fut>(
    ec2: &aws_sdk_ec2::Client,
    (field, what): (&str, &str),
    ids: &[String],
    message: &str,
    exists: F,
) -> AwsError
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let region = ec2
        .config()
        .region()
        .map_or("this region".to_owned(), ToString::to_string);
    for (i, id) in ids.iter().enumerate() {
        if !exists(id.clone()).await {
            return AwsError::Reference {
                field: format!("{field}[{i}]"),
                message: format!("{id} does not exist in {region}"),
            };
        }
    }
    AwsError::Reference {
        field: field.to_owned(),
        message: format!("a configured {what} does not exist in {region}: {message}"),
    }
}

/// The AMI, or an error naming `instance.ami`.
pub async fn describe_image(ec2: &aws_sdk_ec2::Client, ami: &str) -> Result<ImageInfo, AwsError> {
    let out = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some("InvalidAMIID.NotFound" | "InvalidAMIID.Malformed") => missing_ami(ami),
            _ => AwsError::call("ec2:DescribeImages", e),
        })?;
    let image = out.images().first().ok_or_else(|| missing_ami(ami))?;
    Ok(ImageInfo {
        id: ami.to_owned(),
        root_device: image.root_device_name().unwrap_or("/dev/xvda").to_owned(),
        architecture: image
            .architecture()
            .map_or("x86_64", |a| a.as_str())
            .to_owned(),
    })
}

/// The launch template named `name`, if any.
pub async fn find_launch_template(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
) -> Result<Option<LaunchTemplateState>, AwsError> {
    let out = match ec2
        .describe_launch_templates()
        .launch_template_names(name)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) if e.code() == Some("InvalidLaunchTemplateName.NotFoundException") => {
            return Ok(None)
        }
        Err(e) => return Err(AwsError::call("ec2:DescribeLaunchTemplates", e)),
    };
    let Some(lt) = out.launch_templates().first() else {
        return Ok(None);
    };
    let id = lt.launch_template_id().unwrap_or_default().to_owned();
    let latest_version = lt.latest_version_number().unwrap_or(1);
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_id(&id)
        .versions(latest_version.to_string())
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:DescribeLaunchTemplateVersions", e))?;
    let fingerprint = versions
        .launch_template_versions()
        .first()
        .and_then(|v| v.version_description())
        .and_then(|d| d.strip_prefix(FINGERPRINT_PREFIX))
        .map(str::to_owned);
    Ok(Some(LaunchTemplateState {
        id,
        name: name.to_owned(),
        latest_version,
        fingerprint,
    }))
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn template_data(spec: &LaunchTemplateSpec) -> RequestLaunchTemplateData {
    let profile = if spec.instance_profile.starts_with("arn:") {
        LaunchTemplateIamInstanceProfileSpecificationRequest::builder().arn(&spec.instance_profile)
    } else {
        LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(&spec.instance_profile)
    }
    .build();
    let tags = vec![tag(FLEET_TAG, &spec.fleet), tag("Name", &spec.name)];
    let tag_spec = |rt: ResourceType| {
        LaunchTemplateTagSpecificationRequest::builder()
            .resource_type(rt)
            .set_tags(Some(tags.clone()))
            .build()
    };
    RequestLaunchTemplateData::builder()
        .image_id(&spec.image_id)
        .iam_instance_profile(profile)
        .set_security_group_ids(
            (!spec.security_groups.is_empty()).then(|| spec.security_groups.clone()),
        )
        .user_data(crate::userdata::launch_template_user_data(&spec.userdata).base64())
        // IMDSv2 only, one hop: build containers on the host cannot reach the instance role.
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(&spec.root_device)
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .volume_size(spec.root_volume_gb as i32)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .encrypted(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Instance))
        .tag_specifications(tag_spec(ResourceType::Volume))
        .build()
}

fn create_launch_template_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchTemplateSpec,
) -> aws_sdk_ec2::operation::create_launch_template::builders::CreateLaunchTemplateFluentBuilder {
    ec2.create_launch_template()
        .launch_template_name(&spec.name)
        .version_description(format!("{FINGERPRINT_PREFIX}{}", spec.fingerprint()))
        .launch_template_data(template_data(spec))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(tag(FLEET_TAG, &spec.fleet))
                .build(),
        )
}

/// `CreateLaunchTemplate` with `DryRun=true`: checks permissions and the template data
/// (the instance profile's role included), creates nothing.
pub async fn dry_run_create_launch_template(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchTemplateSpec,
) -> Result<super::fleet::DryRun, AwsError> {
    let result = create_launch_template_request(ec2, spec)
        .dry_run(true)
        .send()
        .await;
    super::fleet::DryRun::from_result("ec2:CreateLaunchTemplate", result)
}

/// Creates the launch template (version 1); returns its id and version.
pub async fn create_launch_template(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchTemplateSpec,
) -> Result<(String, i64), AwsError> {
    let out = create_launch_template_request(ec2, spec)
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:CreateLaunchTemplate", e))?;
    let lt = out.launch_template().ok_or_else(|| AwsError::Answer {
        operation: "ec2:CreateLaunchTemplate",
        problem: "returned no template".to_owned(),
    })?;
    Ok((
        lt.launch_template_id().unwrap_or_default().to_owned(),
        lt.latest_version_number().unwrap_or(1),
    ))
}

/// Adds a complete new version (never relying on `SourceVersion`); returns its number.
pub async fn create_launch_template_version(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    spec: &LaunchTemplateSpec,
) -> Result<i64, AwsError> {
    let out = ec2
        .create_launch_template_version()
        .launch_template_id(id)
        .version_description(format!("{FINGERPRINT_PREFIX}{}", spec.fingerprint()))
        .launch_template_data(template_data(spec))
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:CreateLaunchTemplateVersion", e))?;
    out.launch_template_version()
        .and_then(|v| v.version_number())
        .ok_or_else(|| AwsError::Answer {
            operation: "ec2:CreateLaunchTemplateVersion",
            problem: "returned no version".to_owned(),
        })
}

/// Deletes the launch template; `Ok(false)` if it was already gone.
pub async fn delete_launch_template(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
) -> Result<bool, AwsError> {
    match ec2
        .delete_launch_template()
        .launch_template_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("InvalidLaunchTemplateName.NotFoundException") => Ok(false),
        Err(e) => Err(AwsError::call("ec2:DeleteLaunchTemplate", e)),
    }
}

/// A tag's value in an EC2 resource's tag list.
pub fn tag_value<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Instances tagged with the fleet that are not terminated (or terminating); `bbfleet
/// bake` builders (tagged `bbfleet:bake`) only with `builders` (destroy and status: a
/// builder a crashed bake left goes with the fleet).
pub async fn fleet_instances(
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    builders: bool,
) -> Result<Vec<InstanceInfo>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{FLEET_TAG}"))
                .values(fleet)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ec2:DescribeInstances", e))?;
        for r in page.reservations() {
            for i in r.instances() {
                let tag = |key: &str| tag_value(i.tags(), key);
                // A `bbfleet bake` builder carries the fleet tag but is no fleet host: the
                // bake (under the fleet lock) ends it, never apply's planner.
                if !builders && tag(super::images::BAKE_TAG).is_some() {
                    continue;
                }
                out.push(InstanceInfo {
                    id: i.instance_id().unwrap_or_default().to_owned(),
                    instance_type: i.instance_type().map_or("", |t| t.as_str()).to_owned(),
                    az: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_owned(),
                    state: InstanceState::from_api(
                        i.state().and_then(|s| s.name()).map_or("", |n| n.as_str()),
                    ),
                    fleet_request: tag(FLEET_REQUEST_TAG)
                        .or_else(|| tag(EC2_FLEET_TAG))
                        .map(str::to_owned),
                    template_version: tag(TEMPLATE_VERSION_TAG).and_then(|v| v.parse().ok()),
                    launched_at: i
                        .launch_time()
                        .and_then(|t| jiff::Timestamp::from_second(t.secs()).ok()),
                    on_demand: i.instance_lifecycle().is_none(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Terminates instances, 1000 a call; already-gone ones are fine.
pub async fn terminate(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<(), AwsError> {
    for chunk in ids.chunks(1000) {
        match ec2
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") && chunk.len() == 1 => {}
            Err(e) => return Err(AwsError::call("ec2:TerminateInstances", e)),
        }
    }
    Ok(())
}

fn missing_ami(ami: &str) -> AwsError {
    AwsError::Reference {
        field: "instance.ami".to_owned(),
        message: format!("AMI {ami} does not exist in this region"),
    }
}
