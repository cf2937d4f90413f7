//! Reads the world (Bitbucket, SSM, KMS, EC2) into one `Observed` value. Read-only.

use crate::aws::ec2;
use crate::aws::fleet::FleetApi;
use crate::aws::kms;
use crate::aws::ssm;
use crate::aws::{Aws, AwsError};
use crate::bitbucket::{Bitbucket, BitbucketError, Scope};
use crate::config::{AmiRef, Config};
use crate::names;
use crate::world::{ImageInfo, Runner};

use crate::world::Observed;

/// Reading the world failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Bitbucket.
    #[error(transparent)]
    Bitbucket(#[from] BitbucketError),
    /// AWS.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// How much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// What exists (destroy, status).
    Existing,
    /// Also what `apply` needs to compute the desired state: key, subnets, security
    /// groups, AMI.
    ForApply,
}

/// The Bitbucket scope of a config.
pub fn scope(config: &Config) -> Scope {
    Scope {
        workspace: config.bitbucket.workspace.clone(),
        repository: config.bitbucket.repository.clone(),
    }
}

/// The Bitbucket side: the workspace, the repository, every runner of the scope.
struct BitbucketReads {
    account_uuid: String,
    repository_uuid: Option<String>,
    runners: Vec<crate::bitbucket::Runner>,
}

/// The AWS side of what exists.
struct Existing {
    parameters: Vec<crate::world::RunnerParameter>,
    claims: Vec<crate::world::Claim>,
    launch_template: Option<crate::world::LaunchTemplateState>,
    fleets: Vec<crate::world::FleetState>,
    instances: Vec<crate::world::InstanceInfo>,
    autoscale_state: Option<String>,
}

/// What `apply` also needs to compute the desired state.
#[derive(Default)]
struct ForApply {
    key: Option<crate::world::KeyStatus>,
    subnets: Vec<crate::world::SubnetInfo>,
    security_groups: Vec<crate::world::SecurityGroupInfo>,
    image: Option<ImageInfo>,
    /// The mean spot price of the configured pools (with `capacity.max_hourly_cost`).
    spot_price: Option<f64>,
}

/// Reads everything, with independent reads in parallel.
pub async fn observe(
    config: &Config,
    aws: &Aws,
    fleet_api: &dyn FleetApi,
    bitbucket: &Bitbucket,
    depth: Depth,
) -> Result<Observed, ObserveError> {
    let fleet = config.name.as_str();
    let observed_at = jiff::Timestamp::now();
    let scope = scope(config);
    // Every read starts at once; a read that needs another's answer (a request's history,
    // the spot prices of the subnets' zones) starts as soon as that answer is in.
    let (bb, existing, for_apply) = tokio::try_join!(
        read_bitbucket(bitbucket, &scope),
        read_existing(config, aws, fleet_api, depth, observed_at),
        read_for_apply(config, aws, depth),
    )?;
    let mut runners: Vec<Runner> = bb
        .runners
        .iter()
        .filter(|r| names::runner_slot(fleet, &r.name).is_some())
        .map(Runner::from)
        .collect();
    runners.sort_by_key(|r| names::runner_slot(fleet, &r.name));
    Ok(Observed {
        scope_name: scope.to_string(),
        account_uuid: bb.account_uuid,
        repository_uuid: bb.repository_uuid,
        scope_runner_count: bb.runners.len(),
        runners,
        parameters: existing.parameters,
        claims: existing.claims,
        key: for_apply.key,
        subnets: for_apply.subnets,
        security_groups: for_apply.security_groups,
        image: for_apply.image,
        launch_template: existing.launch_template,
        fleets: existing.fleets,
        instances: existing.instances,
        autoscale_state: existing.autoscale_state,
        observed_at,
        spot_price: for_apply.spot_price,
    })
}

/// The live requests' spot capacity errors within the grace (with `spot.fallback` on):
/// what the on-demand part is judged by. Nothing is read otherwise.
async fn read_capacity_errors(
    config: &Config,
    fleet_api: &dyn FleetApi,
    fleets: &mut [crate::world::FleetState],
    now: jiff::Timestamp,
) -> Result<(), AwsError> {
    if config.spot.fallback == crate::config::Fallback::None {
        return Ok(());
    }
    let since = now - jiff::SignedDuration::from_secs(config.spot.fallback_grace_seconds as i64);
    let live = fleets.iter().filter(|f| f.is_live());
    let errors =
        futures::future::try_join_all(live.map(|f| fleet_api.capacity_errors(&f.id, since)))
            .await?;
    for (f, e) in fleets.iter_mut().filter(|f| f.is_live()).zip(errors) {
        f.capacity_errors = e;
    }
    Ok(())
}

/// The subnets, and (with `capacity.max_hourly_cost`) the mean spot price of the configured
/// pools in their zones, read as soon as the subnets are in.
async fn read_subnets(
    config: &Config,
    aws: &Aws,
) -> Result<(Vec<crate::world::SubnetInfo>, Option<f64>), AwsError> {
    let subnets = ec2::describe_subnets(&aws.ec2, &config.spot.subnets).await?;
    if config.capacity.cost_cap.is_none() || subnets.is_empty() {
        return Ok((subnets, None));
    }
    let azs: Vec<String> = subnets.iter().map(|s| s.az.clone()).collect();
    let prices =
        crate::aws::offerings::spot_prices(&aws.ec2, &config.spot.instance_types, &azs).await?;
    let n = prices.len() as f64;
    Ok((subnets, (n > 0.0).then(|| prices.values().sum::<f64>() / n)))
}

async fn read_bitbucket(
    bitbucket: &Bitbucket,
    scope: &Scope,
) -> Result<BitbucketReads, ObserveError> {
    let (workspace, repository, runners) = tokio::try_join!(
        bitbucket.workspace(&scope.workspace),
        async {
            match &scope.repository {
                Some(r) => bitbucket.repository(&scope.workspace, r).await.map(Some),
                None => Ok(None),
            }
        },
        bitbucket.list_runners(scope),
    )?;
    Ok(BitbucketReads {
        account_uuid: workspace.uuid,
        repository_uuid: repository.map(|r| r.uuid),
        runners,
    })
}

async fn read_existing(
    config: &Config,
    aws: &Aws,
    fleet_api: &dyn FleetApi,
    depth: Depth,
    now: jiff::Timestamp,
) -> Result<Existing, ObserveError> {
    let fleet = config.name.as_str();
    let lt_name = names::launch_template(fleet);
    let (parameters, claims, launch_template, fleets, instances, autoscale_state) = tokio::try_join!(
        ssm::list_runner_parameters(&aws.ssm, fleet),
        ssm::list_claims(&aws.ssm, fleet),
        ec2::find_launch_template(&aws.ec2, &lt_name),
        async {
            let mut fleets = fleet_api.list(fleet, true).await?;
            read_capacity_errors(config, fleet_api, &mut fleets, now).await?;
            Ok(fleets)
        },
        ec2::fleet_instances(&aws.ec2, fleet, depth == Depth::Existing),
        async {
            // Only destroy deletes the autoscaler's state; plan and apply never read it.
            if depth == Depth::ForApply {
                return Ok(None);
            }
            let name = names::autoscale_state(fleet);
            Ok(ssm::get_string(&aws.ssm, &name).await?.map(|_| name))
        },
    )?;
    Ok(Existing {
        parameters,
        claims,
        launch_template,
        fleets,
        instances,
        autoscale_state,
    })
}

async fn read_for_apply(
    config: &Config,
    aws: &Aws,
    depth: Depth,
) -> Result<ForApply, ObserveError> {
    if depth == Depth::Existing {
        return Ok(ForApply::default());
    }
    let (key, (subnets, spot_price), security_groups, image) = tokio::try_join!(
        kms::describe(&aws.kms, &config.kms.key),
        read_subnets(config, aws),
        ec2::describe_security_groups(&aws.ec2, &config.instance.security_groups),
        resolve_image(config, aws),
    )?;
    Ok(ForApply {
        key: Some(key),
        subnets,
        security_groups,
        image: Some(image),
        spot_price,
    })
}

/// Resolves the configured AMI (an SSM parameter is read here: Spot Fleet needs a concrete
/// id); with `instance.ami = "baked"` the fleet's newest available baked image.
async fn resolve_image(config: &Config, aws: &Aws) -> Result<ImageInfo, AwsError> {
    if !config.instance.baked {
        return resolve_base_image(config, aws).await;
    }
    let images = crate::aws::images::baked_images(&aws.ec2, &config.name).await?;
    let newest = images.iter().rev().find(|i| i.state == "available");
    let Some(newest) = newest else {
        return Err(AwsError::Reference {
            field: "instance.ami".to_owned(),
            message: format!(
                "\"baked\" but fleet {} has no available baked image in {}; run `bbfleet bake` first",
                config.name, aws.region
            ),
        });
    };
    checked_image(config, &newest.id, aws).await
}

/// The base AMI `instance.ami` names (an id or an SSM parameter; for `"baked"` the OS's
/// default), described and checked against the instance types' architecture. `bbfleet
/// bake` builds on it.
pub async fn resolve_base_image(config: &Config, aws: &Aws) -> Result<ImageInfo, AwsError> {
    let id = match &config.instance.ami {
        AmiRef::Id(id) => id.clone(),
        AmiRef::Ssm(path) => {
            ssm::get_string(&aws.ssm, path)
                .await?
                .ok_or_else(|| AwsError::Reference {
                    field: "instance.ami".to_owned(),
                    message: format!("SSM parameter {path} does not exist in {}", aws.region),
                })?
        }
    };
    checked_image(config, &id, aws).await
}

/// `id` described, or an error naming `instance.ami` when its architecture is not the
/// instance types'.
async fn checked_image(config: &Config, id: &str, aws: &Aws) -> Result<ImageInfo, AwsError> {
    let image = ec2::describe_image(&aws.ec2, id).await?;
    let wanted = match config.instance.arch {
        crate::config::Arch::X86_64 => "x86_64",
        crate::config::Arch::Arm64 => "arm64",
    };
    if image.architecture != wanted {
        return Err(AwsError::Reference {
            field: "instance.ami".to_owned(),
            message: format!(
                "{id} is an {} image but the instance types are {wanted}",
                image.architecture
            ),
        });
    }
    Ok(image)
}
