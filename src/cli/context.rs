//! What every command runs with: the config, the output, the call statistics, and (for
//! the commands that go online) the remote clients.

use std::path::Path;

use super::output::Output;
use super::CliError;
use crate::aws::fleet::{self, FleetApi};
use crate::aws::{Aws, AwsError};
use crate::bitbucket::{Bitbucket, Credentials, RetryPolicy, DEFAULT_API_URL};
use crate::config::{Config, FieldError};
use crate::observe::{observe, Depth, ObserveError};
use crate::stats::CallStats;
use crate::userdata;
use crate::world::Observed;

/// A command's settings.
pub(super) struct Context<'a> {
    /// The validated config.
    pub config: &'a Config,
    /// Where it was read from.
    pub config_path: &'a Path,
    /// How results are printed.
    pub out: Output,
    /// Counts every remote call.
    pub stats: &'a CallStats,
}

impl<'a> Context<'a> {
    /// The settings of one run.
    pub fn new(
        config: &'a Config,
        config_path: &'a Path,
        out: Output,
        stats: &'a CallStats,
    ) -> Context<'a> {
        Context {
            config,
            config_path,
            out,
            stats,
        }
    }

    /// Credentials and endpoints first (no network), then the clients.
    pub async fn connect(&self) -> Result<Remote, CliError> {
        let credentials = Credentials::from_env(|k| std::env::var(k).ok())?;
        let base = match std::env::var("BITBUCKET_API_URL") {
            Ok(url) if !url.trim().is_empty() => {
                crate::config::check_api_url(url.trim()).map_err(|m| {
                    CliError::Argument(FieldError {
                        field: "BITBUCKET_API_URL".to_owned(),
                        message: m,
                    })
                })?;
                url.trim().to_owned()
            }
            _ => self
                .config
                .bitbucket
                .api_url
                .clone()
                .unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
        };
        let bitbucket = Bitbucket::new(
            &base,
            credentials,
            RetryPolicy::default(),
            self.stats.clone(),
        )?;
        let aws = Aws::connect(self.config.region.as_deref(), self.stats).await?;
        // The launch template's user data must fit, in the region in use: checked before any call.
        userdata::check_config_fits(self.config, &aws.region)?;
        let fleet_api = fleet::backend(aws.ec2.clone(), self.config.spot.fleet_api);
        Ok(Remote {
            aws,
            fleet_api,
            bitbucket,
        })
    }

    /// The region without the SDK (no profile, no instance metadata): the config's
    /// `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`; checked to be a region name,
    /// the error naming where it came from.
    pub fn region_offline(&self) -> Result<String, CliError> {
        let (source, region) = match &self.config.region {
            Some(r) => ("region", r.clone()),
            None => crate::aws::REGION_ENV_VARS
                .into_iter()
                .find_map(|var| std::env::var(var).ok().map(|r| (var, r)))
                .ok_or(CliError::Aws(AwsError::NoRegion))?,
        };
        if region.is_empty() {
            return Err(CliError::Aws(AwsError::NoRegion));
        }
        crate::config::check_region(&region).map_err(|message| {
            CliError::Aws(AwsError::BadRegion {
                origin: source.to_owned(),
                message,
            })
        })?;
        Ok(region)
    }
}

/// The remote clients of a run.
pub(super) struct Remote {
    /// AWS.
    pub aws: Aws,
    /// The configured fleet backend.
    pub fleet_api: Box<dyn FleetApi>,
    /// Bitbucket.
    pub bitbucket: Bitbucket,
}

impl Remote {
    /// Reads the fleet's world at `depth` (read-only).
    pub async fn observe(&self, config: &Config, depth: Depth) -> Result<Observed, ObserveError> {
        observe(
            config,
            &self.aws,
            self.fleet_api.as_ref(),
            &self.bitbucket,
            depth,
        )
        .await
    }
}
