//! SSM Parameter Store: runner commands (SecureString), claims, AMI parameters.

use aws_sdk_ssm::types::{
    ParameterStringFilter, ParameterTier, ParameterType, ResourceTypeForTagging, Tag,
};
use secrecy::{ExposeSecret, SecretString};

use super::AwsError;
use crate::names::{self, FLEET_TAG};
use crate::runner_command::{FORMAT, MAX_PARAMETER_BYTES};

use crate::world::{Claim, ClaimHolder, RunnerParameter};

/// The fleet's runner parameters (one level under `/bbfleet/{fleet}/runners`).
pub async fn list_runner_parameters(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
) -> Result<Vec<RunnerParameter>, AwsError> {
    let path = names::runners_path(fleet);
    let filter = ParameterStringFilter::builder()
        .key("Path")
        .option("OneLevel")
        .values(&path)
        .build()
        .map_err(|e| AwsError::build("ssm:DescribeParameters", e))?;
    let mut out = Vec::new();
    let mut pages = ssm
        .describe_parameters()
        .parameter_filters(filter)
        .max_results(50)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ssm:DescribeParameters", e))?;
        for p in page.parameters() {
            let Some(name) = p.name() else { continue };
            let Some(uuid) = name.strip_prefix(&path).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if uuid.is_empty() || uuid.contains('/') {
                continue;
            }
            out.push(RunnerParameter {
                name: name.to_owned(),
                runner_uuid: uuid.to_owned(),
                kind: p.r#type().map_or("unknown", |t| t.as_str()).to_owned(),
                key_id: p.key_id().map(str::to_owned),
                current_format: p
                    .description()
                    .is_some_and(|d| d.ends_with(&format!("({FORMAT})"))),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A plain parameter found by [`list_path`].
#[derive(Debug, Clone)]
pub struct PathParameter {
    /// Full name.
    pub name: String,
    /// Value (plain `String` parameters only: never call this on SecureStrings).
    pub value: String,
    /// When it was written, if SSM says.
    pub last_modified: Option<jiff::Timestamp>,
}

/// Every parameter under `path` (one `GetParametersByPath` call per page of ten, the API's
/// maximum; a page may hold fewer with a token, so pages are followed to the end).
pub async fn list_path(
    ssm: &aws_sdk_ssm::Client,
    path: &str,
    recursive: bool,
) -> Result<Vec<PathParameter>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ssm
        .get_parameters_by_path()
        .path(path)
        .recursive(recursive)
        .max_results(10)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("ssm:GetParametersByPath", e))?;
        for p in page.parameters() {
            let Some(name) = p.name() else { continue };
            out.push(PathParameter {
                name: name.to_owned(),
                value: p.value().unwrap_or_default().to_owned(),
                last_modified: p
                    .last_modified_date()
                    .and_then(|d| jiff::Timestamp::from_second(d.secs()).ok()),
            });
        }
    }
    Ok(out)
}

/// Every claim generation of the fleet.
pub async fn list_claims(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Vec<Claim>, AwsError> {
    let path = names::claims_path(fleet);
    let mut out = Vec::new();
    for p in list_path(ssm, &path, true).await? {
        let Some(rest) = p.name.strip_prefix(&path).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let Some((uuid, generation)) = rest.split_once('/') else {
            continue;
        };
        let Ok(generation) = generation.parse() else {
            continue;
        };
        out.push(Claim {
            runner_uuid: uuid.to_owned(),
            generation,
            name: p.name,
            holder: ClaimHolder::parse(&p.value),
            written_at: p.last_modified,
        });
    }
    out.sort_by(|a, b| (&a.runner_uuid, a.generation).cmp(&(&b.runner_uuid, b.generation)));
    Ok(out)
}

/// Stores a new runner's command as a SecureString under the fleet's key.
pub async fn put_runner_command(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    runner_uuid: &str,
    command: &SecretString,
    key_id: &str,
) -> Result<String, AwsError> {
    let name = names::runner_parameter(fleet, runner_uuid);
    let value = command.expose_secret();
    if value.len() > MAX_PARAMETER_BYTES {
        return Err(AwsError::TooLarge {
            name,
            bytes: value.len(),
            max: MAX_PARAMETER_BYTES,
        });
    }
    let fleet_tag = tag("ssm:PutParameter", FLEET_TAG, fleet)?;
    ssm.put_parameter()
        .name(&name)
        .description(description(fleet, runner_uuid))
        .value(value)
        .r#type(ParameterType::SecureString)
        .key_id(key_id)
        .tier(ParameterTier::Standard)
        .overwrite(false)
        .tags(fleet_tag)
        .tags(tag(
            "ssm:PutParameter",
            names::HOLDER_TAG,
            names::HOLDER_FREE,
        )?)
        .send()
        .await
        .map_err(|e| AwsError::call("ssm:PutParameter", e))?;
    Ok(name)
}

/// A runner command's description; it names the format of the value (DescribeParameters
/// shows descriptions, never values, so the planner tells an old format apart by it).
fn description(fleet: &str, runner_uuid: &str) -> String {
    format!(
        "bbfleet {fleet}: command of Bitbucket runner {} ({FORMAT})",
        names::braced_uuid(runner_uuid)
    )
}

/// An SSM tag for `operation` (parameters are tagged at PutParameter, or by
/// AddTagsToResource).
fn tag(operation: &'static str, key: &str, value: &str) -> Result<Tag, AwsError> {
    Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| AwsError::build(operation, e))
}

/// Unbinds a runner's stored command from the instance that held it (tag
/// [`names::HOLDER_TAG`] = free), so the next instance to claim the runner may bind it:
/// AddTagsToResource overwrites a tag whose key exists (SSM API Reference,
/// AddTagsToResource). `Ok(false)` when the parameter does not exist
/// (`InvalidResourceId`).
pub async fn unbind_runner(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    runner_uuid: &str,
) -> Result<bool, AwsError> {
    let r = ssm
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::Parameter)
        .resource_id(names::runner_parameter(fleet, runner_uuid))
        .tags(tag(
            "ssm:AddTagsToResource",
            names::HOLDER_TAG,
            names::HOLDER_FREE,
        )?)
        .send()
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_invalid_resource_id()) =>
        {
            Ok(false)
        }
        Err(e) => Err(AwsError::call("ssm:AddTagsToResource", e)),
    }
}

/// Writes a claim generation only if it does not exist yet (`Overwrite=false`, as the
/// instances do): `Ok(false)` when it exists, i.e. someone moved the claim on first.
pub async fn put_claim_if_absent(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    runner_uuid: &str,
    generation: u64,
    value: &str,
) -> Result<bool, AwsError> {
    create_string(
        ssm,
        fleet,
        &names::claim(fleet, runner_uuid, generation),
        None,
        value,
    )
    .await
}

/// Creates a plain `String` parameter tagged with the fleet, only if the name is new
/// (`Overwrite=false`: SSM's one conditional write, which claims and the lock are built on).
/// `Ok(false)` when the name exists: someone else wrote it first.
pub async fn create_string(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    name: &str,
    description: Option<String>,
    value: &str,
) -> Result<bool, AwsError> {
    let fleet_tag = tag("ssm:PutParameter", FLEET_TAG, fleet)?;
    let result = ssm
        .put_parameter()
        .name(name)
        .set_description(description)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(false)
        .tags(fleet_tag)
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_already_exists()) =>
        {
            Ok(false)
        }
        Err(e) => Err(AwsError::call("ssm:PutParameter", e)),
    }
}

/// Deletes parameters, ten names a call (the API's limit); missing names are fine.
pub async fn delete(ssm: &aws_sdk_ssm::Client, names: &[String]) -> Result<(), AwsError> {
    for chunk in names.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::call("ssm:DeleteParameters", e))?;
    }
    Ok(())
}

/// The value of a plain parameter (e.g. a public AMI parameter).
pub async fn get_string(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<Option<String>, AwsError> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_owned)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(AwsError::call("ssm:GetParameter", e)),
    }
}

/// Writes a plain String parameter, replacing its value.
pub async fn put_string(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
    value: &str,
) -> Result<(), AwsError> {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| AwsError::call("ssm:PutParameter", e))?;
    Ok(())
}
