//! Reads the world (Bitbucket, SSM, KMS, EC2) into one `Observed` value. Read-only.

use crate::aws::ec2::{self, ImageInfo};
use crate::aws::fleet::FleetApi;
use crate::aws::kms;
use crate::aws::ssm;
use crate::aws::{Aws, AwsError};
use crate::bitbucket::{Bitbucket, BitbucketError, Scope};
use crate::config::{AmiRef, Config};
use crate::names;
use crate::world::Runner;

pub use crate::world::Observed;

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
    let bb = async {
        let (workspace, repository, runners) = tokio::try_join!(
            bitbucket.workspace(&scope.workspace),
            async {
                match &scope.repository {
                    Some(r) => bitbucket.repository(&scope.workspace, r).await.map(Some),
                    None => Ok(None),
                }
            },
            bitbucket.list_runners(&scope),
        )?;
        Ok::<_, ObserveError>((workspace, repository, runners))
    };
    let lt_name = names::launch_template(fleet);
    let aws_existing = async {
        let (parameters, claims, launch_template, fleets, instances, autoscale_state) = tokio::try_join!(
            ssm::list_runner_parameters(&aws.ssm, fleet),
            ssm::list_claims(&aws.ssm, fleet),
            ec2::find_launch_template(&aws.ec2, &lt_name),
            fleet_api.list(fleet, true),
            ec2::fleet_instances(&aws.ec2, fleet),
            async {
                // Only destroy deletes the autoscaler's state; plan and apply never read it.
                if depth == Depth::ForApply {
                    return Ok(None);
                }
                let name = names::autoscale_state(fleet);
                Ok(ssm::get_string(&aws.ssm, &name).await?.map(|_| name))
            },
        )?;
        Ok::<_, ObserveError>((
            parameters,
            claims,
            launch_template,
            fleets,
            instances,
            autoscale_state,
        ))
    };
    let aws_desired = async {
        if depth == Depth::Existing {
            return Ok::<_, ObserveError>((None, Vec::new(), Vec::new(), None));
        }
        let (key, subnets, security_groups, image) = tokio::try_join!(
            kms::describe(&aws.kms, &config.kms.key),
            ec2::describe_subnets(&aws.ec2, &config.spot.subnets),
            ec2::describe_security_groups(&aws.ec2, &config.instance.security_groups),
            resolve_image(config, aws),
        )?;
        Ok((Some(key), subnets, security_groups, Some(image)))
    };
    let (
        (workspace, repository, all_runners),
        (parameters, claims, launch_template, fleets, instances, autoscale_state),
        (key, subnets, security_groups, image),
    ) = tokio::try_join!(bb, aws_existing, aws_desired)?;
    let scope_runner_count = all_runners.len();
    let mut runners: Vec<Runner> = all_runners
        .iter()
        .filter(|r| names::runner_slot(fleet, &r.name).is_some())
        .map(Runner::from)
        .collect();
    runners.sort_by_key(|r| names::runner_slot(fleet, &r.name));
    Ok(Observed {
        scope_name: scope.to_string(),
        account_uuid: workspace.uuid,
        repository_uuid: repository.map(|r| r.uuid),
        scope_runner_count,
        runners,
        parameters,
        claims,
        key,
        subnets,
        security_groups,
        image,
        launch_template,
        fleets,
        instances,
        autoscale_state,
        observed_at,
    })
}

/// Resolves the configured AMI (an SSM parameter is read here: Spot Fleet needs a concrete id).
async fn resolve_image(config: &Config, aws: &Aws) -> Result<ImageInfo, AwsError> {
    let id = match &config.instance.ami {
        AmiRef::Id(id) => id.clone(),
        AmiRef::Ssm(path) => ssm::get_string(&aws.ssm, path).await?.ok_or_else(|| {
            AwsError::Invalid(format!(
                "instance.ami: SSM parameter {path} does not exist in {}",
                aws.region
            ))
        })?,
    };
    let image = ec2::describe_image(&aws.ec2, &id).await?;
    let wanted = match config.instance.arch {
        crate::config::Arch::X86_64 => "x86_64",
        crate::config::Arch::Arm64 => "arm64",
    };
    if image.architecture != wanted {
        return Err(AwsError::Invalid(format!(
            "instance.ami: {id} is an {} image but the instance types are {wanted}",
            image.architecture
        )));
    }
    Ok(image)
}
