//! SSM Parameter Store: runner commands (SecureString), claims, AMI parameters.

use aws_sdk_ssm::operation::describe_parameters::builders::DescribeParametersFluentBuilder;
use aws_sdk_ssm::operation::put_parameter::builders::PutParameterFluentBuilder;
use aws_sdk_ssm::operation::put_parameter::{PutParameterError, PutParameterOutput};
use aws_sdk_ssm::types::{
    ParameterMetadata, ParameterStringFilter, ParameterTier, ParameterType, ResourceTypeForTagging,
    Tag,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use secrecy::{ExposeSecret, SecretString};

use super::AwsError;
use crate::names::{self, FLEET_TAG};
use crate::runner_command::{FORMAT, MAX_PARAMETER_BYTES};

use crate::world::{Claim, ClaimHolder, RunnerParameter};

mod meter;
pub use meter::{no_retries, Meter};

/// The fleet's runner parameters (one level under `/bbfleet/{fleet}/runners`).
pub async fn list_runner_parameters(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
) -> Result<Vec<RunnerParameter>, AwsError> {
    let path = names::runners_path(fleet);
    let mut out = Vec::new();
    for p in &describe_all(ssm, &path, "OneLevel").await? {
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
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// DescribeParameters of the parameters under `path` (`option`: `OneLevel` or
/// `Recursive`) whose names begin with one of `prefixes` (all when empty), 50 a page: the
/// API's maximum (SSM API Reference, DescribeParameters: MaxResults 1-50; filter keys
/// `Path`, options `OneLevel` and `Recursive`, and `Name`, option `BeginsWith`, 1-50 values).
fn describe_path(
    ssm: &aws_sdk_ssm::Client,
    path: &str,
    option: &str,
    prefixes: &[String],
) -> Result<DescribeParametersFluentBuilder, AwsError> {
    let filter = |key: &str, option: &str, values: Vec<String>| {
        ParameterStringFilter::builder()
            .key(key)
            .option(option)
            .set_values(Some(values))
            .build()
            .map_err(|e| AwsError::build("ssm:DescribeParameters", e))
    };
    let mut request = ssm
        .describe_parameters()
        .parameter_filters(filter("Path", option, vec![path.to_owned()])?)
        .max_results(50);
    if !prefixes.is_empty() {
        request = request.parameter_filters(filter("Name", "BeginsWith", prefixes.to_vec())?);
    }
    Ok(request)
}

/// The characters a parameter name's level may begin with (SSM User Guide, "Requirements
/// and constraints for parameter names": `a-zA-Z0-9_.-`), hex digits first: bbfleet's
/// names below a path are runner uuids.
const NAME_STARTS: &str = "0123456789abcdefABCDEFGHIJKLMNOPQRSTUVWXYZghijklmnopqrstuvwxyz_.-";
/// Listings that a listing longer than one page is split into, by the first character
/// below the path: four hex digits each (and a share of the other characters, at most 50
/// values a filter), so 200 names still come in one page each.
const SHARDS: usize = 4;

/// The name prefixes of shard `k` of the listing under `path`.
fn shard_prefixes(path: &str, k: usize) -> Vec<String> {
    NAME_STARTS
        .chars()
        .enumerate()
        .filter(|(i, _)| if *i < 16 { i / 4 == k } else { i % SHARDS == k })
        .map(|(_, c)| format!("{path}/{c}"))
        .collect()
}

/// Everything DescribeParameters lists under `path`, about two round trips deep however
/// long the listing: one page, and when it says there is more, the listing again in
/// [`SHARDS`] parallel parts by the first character of the name below `path` (pages follow
/// each other through NextToken; the parts do not wait for one another).
async fn describe_all(
    ssm: &aws_sdk_ssm::Client,
    path: &str,
    option: &str,
) -> Result<Vec<ParameterMetadata>, AwsError> {
    let first = describe_path(ssm, path, option, &[])?
        .send()
        .await
        .map_err(|e| AwsError::call("ssm:DescribeParameters", e))?;
    if first.next_token().is_none() {
        return Ok(first.parameters().to_vec());
    }
    let shards = (0..SHARDS).map(|k| async move {
        let prefixes = shard_prefixes(path, k);
        let mut pages = describe_path(ssm, path, option, &prefixes)?
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::call("ssm:DescribeParameters", e))?;
            out.extend_from_slice(page.parameters());
        }
        Ok::<_, AwsError>(out)
    });
    Ok(futures::future::try_join_all(shards).await?.concat())
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
        out.extend(page.parameters().iter().filter_map(path_parameter));
    }
    Ok(out)
}

/// Every claim generation of the fleet, about three round trips deep however many there
/// are: the names from DescribeParameters ([`describe_all`]), the values from GetParameters
/// in parallel (10 names a call, its maximum: SSM API Reference, GetParameters `Names`,
/// 1-10 items). (GetParametersByPath answers at most 10 a page, each page waiting for the
/// last: 10 round trips for 100 runners.) A claim deleted between the two calls is left
/// out (GetParameters lists it under `InvalidParameters`).
pub async fn list_claims(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Vec<Claim>, AwsError> {
    let path = names::claims_path(fleet);
    let names: Vec<String> = describe_all(ssm, &path, "Recursive")
        .await?
        .iter()
        .filter_map(|p| p.name().map(str::to_owned))
        .collect();
    let reads = names
        .chunks(10)
        .map(|chunk| get_values(ssm, chunk.to_vec()));
    let found = futures::future::try_join_all(reads).await?;
    let mut out: Vec<Claim> = found
        .into_iter()
        .flatten()
        .filter_map(|p| claim(&path, p))
        .collect();
    out.sort_by(|a, b| (&a.runner_uuid, a.generation).cmp(&(&b.runner_uuid, b.generation)));
    Ok(out)
}

/// The claim a parameter under the claims path is (`{path}/{runner}/{generation}`).
fn claim(path: &str, p: PathParameter) -> Option<Claim> {
    let rest = p.name.strip_prefix(path)?.strip_prefix('/')?;
    let (uuid, generation) = rest.split_once('/')?;
    Some(Claim {
        runner_uuid: uuid.to_owned(),
        generation: generation.parse().ok()?,
        holder: ClaimHolder::parse(&p.value),
        written_at: p.last_modified,
        name: p.name,
    })
}

/// The values of up to ten plain parameters (one GetParameters call).
async fn get_values(
    ssm: &aws_sdk_ssm::Client,
    names: Vec<String>,
) -> Result<Vec<PathParameter>, AwsError> {
    let out = ssm
        .get_parameters()
        .set_names(Some(names))
        .send()
        .await
        .map_err(|e| AwsError::call("ssm:GetParameters", e))?;
    Ok(out.parameters().iter().filter_map(path_parameter).collect())
}

/// A parameter of a GetParameters or GetParametersByPath answer.
fn path_parameter(p: &aws_sdk_ssm::types::Parameter) -> Option<PathParameter> {
    Some(PathParameter {
        name: p.name()?.to_owned(),
        value: p.value().unwrap_or_default().to_owned(),
        last_modified: p
            .last_modified_date()
            .and_then(|d| jiff::Timestamp::from_second(d.secs()).ok()),
    })
}

/// Stores a new runner's command as a SecureString under the fleet's key, at the
/// [`Meter`]'s pace.
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
    let request = ssm
        .put_parameter()
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
        )?);
    put_metered(request)
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
/// instances do): `Ok(false)` when it exists, i.e. someone moved the claim on first. At
/// the [`Meter`]'s pace.
pub async fn put_claim_if_absent(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    runner_uuid: &str,
    generation: u64,
    value: &str,
) -> Result<bool, AwsError> {
    let name = names::claim(fleet, runner_uuid, generation);
    let request = string_if_absent(ssm, fleet, &name, None, value)?;
    written(put_metered(request).await)
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
    let result = string_if_absent(ssm, fleet, name, description, value)?
        .send()
        .await;
    written(result)
}

/// Sends a PutParameter at the [`Meter`]'s pace (which retries it; the SDK does not).
async fn put_metered(
    request: PutParameterFluentBuilder,
) -> Result<PutParameterOutput, SdkError<PutParameterError, HttpResponse>> {
    let send = || {
        let request = request.clone();
        async move {
            let request = request.customize().config_override(no_retries());
            request.send().await
        }
    };
    Meter::shared().send("PutParameter", send).await
}

/// A PutParameter of a plain `String` parameter tagged with the fleet, `Overwrite=false`.
fn string_if_absent(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    name: &str,
    description: Option<String>,
    value: &str,
) -> Result<PutParameterFluentBuilder, AwsError> {
    Ok(ssm
        .put_parameter()
        .name(name)
        .set_description(description)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(false)
        .tags(tag("ssm:PutParameter", FLEET_TAG, fleet)?))
}

/// A conditional write's outcome: `Ok(false)` when the name existed.
fn written<T>(
    result: Result<T, SdkError<PutParameterError, HttpResponse>>,
) -> Result<bool, AwsError> {
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
