//! AWS providers on aws-config: KMS key, SSM parameters, EC2 launch template, spot fleet.
//!
//! Endpoints, credentials and region come from the standard chain (profiles, web
//! identity for Bitbucket OIDC, `AWS_ENDPOINT_URL` for emulators). Every call is
//! counted by an interceptor, per attempt on the wire.
//!
//! Retries are the SDK's own (standard mode, [`AWS_MAX_ATTEMPTS`] attempts): its
//! classifier retries throttling codes (`ThrottlingException`, `RequestLimitExceeded`, ...),
//! 5xx and transport errors with back-off. The metered SSM writes (runner commands,
//! claims) are the exception: [`ssm::Meter`] paces and retries them at the rate AWS
//! lets through, with the SDK's retries off for them. The interceptor logs every retry
//! at debug level with the failure that caused it, so `-vv` shows how often AWS pushed
//! back.

pub mod actions;
pub mod ec2;
pub mod ec2_fleet;
pub mod fleet;
pub mod images;
pub mod kms;
pub mod offerings;
pub mod spot_fleet;
pub mod ssm;

use aws_config::BehaviorVersion;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::stats::{aws_kind, CallKind, CallStats};

/// The AWS clients of one run.
#[derive(Debug, Clone)]
pub struct Aws {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM.
    pub ssm: aws_sdk_ssm::Client,
    /// KMS.
    pub kms: aws_sdk_kms::Client,
    /// The region in use.
    pub region: String,
}

/// An AWS call failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region anywhere.
    #[error("no AWS region: set `region` in the config, or AWS_REGION in the environment")]
    NoRegion,
    /// The region in use is not an AWS region name.
    #[error("{origin}: {message}")]
    BadRegion {
        /// Where the region came from: `region`, `AWS_REGION`, ...
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A call failed; the message carries AWS's code and text.
    #[error("AWS {operation} failed: {message}")]
    Call {
        /// `service:Operation`.
        operation: &'static str,
        /// AWS's error, with its chain.
        message: String,
    },
    /// A configured reference (subnet, security group, AMI, key) that AWS does not know,
    /// or knows as something else.
    #[error("{field}: {message}")]
    Reference {
        /// The config field, e.g. `spot.subnets[1]`.
        field: String,
        /// What AWS has instead, for the user.
        message: String,
    },
    /// AWS answered a call without what the call promises.
    #[error("{operation} {problem}")]
    Answer {
        /// `service:Operation`.
        operation: &'static str,
        /// What is missing or wrong in the answer.
        problem: String,
    },
    /// A runner command larger than a Standard parameter holds.
    #[error("the runner command for {name} is {bytes} bytes; SSM Standard parameters hold at most {max}")]
    TooLarge {
        /// The parameter.
        name: String,
        /// The command's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A value bbfleet writes could not be encoded.
    #[error("{name}: {message}")]
    Encode {
        /// The parameter.
        name: String,
        /// Why.
        message: String,
    },
}

impl AwsError {
    /// Wraps an SDK error with the operation's name: AWS's code and message when the
    /// service sent one, else what went wrong on the way (never the raw response).
    pub fn call<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let message = match &err {
            SdkError::ServiceError(se) => match (se.err().code(), se.err().message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => format!(
                    "HTTP {} without an AWS error in the body",
                    se.raw().status_code()
                ),
            },
            SdkError::TimeoutError(_) => "the request timed out".to_owned(),
            SdkError::DispatchFailure(_) => format!(
                "could not reach the endpoint: {}",
                DisplayErrorContext(&err)
            ),
            _ => DisplayErrorContext(&err).to_string(),
        };
        AwsError::Call { operation, message }
    }

    /// A request could not be built (a missing required field: a bug, reported plainly).
    pub fn build(
        operation: &'static str,
        err: aws_smithy_types::error::operation::BuildError,
    ) -> Self {
        AwsError::Call {
            operation,
            message: err.to_string(),
        }
    }
}

/// The HTTP status of a raw response, for messages.
pub trait HttpStatus {
    /// Status code.
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Counts every attempt that goes on the wire, by `service:Operation`, and logs retries.
#[derive(Debug, Clone)]
struct CallCounter(CallStats);

/// Why the previous attempt of the call in progress failed (kept for the retry's log line).
#[derive(Debug, Clone)]
struct FailedAttempt(String);

impl Storable for FailedAttempt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "bbfleet-call-counter"
    }

    fn read_after_serialization(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Read here, once per call: later the body may be wrapped into a stream.
        if context.request().body().bytes().is_some_and(is_dry_run) {
            cfg.interceptor_state().store_put(DryRunCall);
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(std::time::Instant::now()));
        if let Some(md) = cfg.load::<Metadata>() {
            let service = service_name(md);
            let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
            if attempt > 1 {
                let cause = cfg
                    .load::<FailedAttempt>()
                    .map_or("unknown", |f| f.0.as_str());
                tracing::debug!(
                    service,
                    operation = md.name(),
                    attempt,
                    max_attempts = AWS_MAX_ATTEMPTS,
                    cause,
                    "AWS call failed; the SDK retries it"
                );
            }
            // A DryRun request (pre-flight) only checks permissions: it changes nothing, so
            // it counts as a read (a no-op plan makes no write, and the crash hook skips it).
            let kind = if cfg.load::<DryRunCall>().is_some() {
                CallKind::Read
            } else {
                aws_kind(md.name())
            };
            self.0.record(&service, md.name(), kind);
            // Tests run debug builds: a call missing from the IAM action table fails there,
            // so policies/operator.json cannot silently miss a permission.
            if cfg!(debug_assertions) && !actions::is_called(&service, md.name()) {
                return Err(format!(
                    "{service}:{} is not in src/aws/actions.rs (the IAM actions bbfleet calls); add it there and to policies/operator.json",
                    md.name()
                )
                .into());
            }
        }
        Ok(())
    }

    /// Remembers a failed attempt's cause for the retry line, and (`--debug`) logs one line
    /// per attempt with its status and time; never headers or bodies.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Only remembered here: the retry classifier decides after this hook, and the next
        // attempt (if any) logs it.
        if let Some(Err(err)) = context.output_or_error() {
            let status = context.response().map_or_else(
                || "no response".to_owned(),
                |r| format!("HTTP {}", r.status().as_u16()),
            );
            let what = match err.as_operation_error() {
                Some(e) => e.to_string(),
                None => err.to_string(),
            };
            cfg.interceptor_state()
                .store_put(FailedAttempt(format!("{status}: {what}")));
        }
        if let Some(md) = cfg.load::<Metadata>() {
            let status = context.response().map(|r| r.status().as_u16());
            let elapsed_ms = cfg
                .load::<AttemptStarted>()
                .map(|s| s.0.elapsed().as_millis() as u64);
            tracing::debug!(
                service = service_name(md),
                operation = md.name(),
                status,
                elapsed_ms,
                "aws"
            );
        }
        Ok(())
    }
}

/// `ec2`, `ssm`, `kms`: the first word of the SDK's service name, lower case.
fn service_name(md: &Metadata) -> String {
    md.service()
        .split_whitespace()
        .next()
        .unwrap_or("aws")
        .to_ascii_lowercase()
}

/// Whether an EC2 query-protocol body asks for a DryRun (`DryRun=true` among its fields).
fn is_dry_run(body: &[u8]) -> bool {
    body.split(|b| *b == b'&')
        .any(|field| field == b"DryRun=true")
}

/// The call in progress is a DryRun request.
#[derive(Debug, Clone)]
struct DryRunCall;

impl Storable for DryRunCall {
    type Storer = StoreReplace<Self>;
}

/// When the current attempt went on the wire, for the debug line.
#[derive(Debug, Clone)]
struct AttemptStarted(std::time::Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

/// Attempts per AWS call, the first included.
pub const AWS_MAX_ATTEMPTS: u32 = 6;

impl Aws {
    /// Loads the shared config (region from `region`, else the chain) and builds the clients.
    pub async fn connect(region: Option<&str>, stats: &CallStats) -> Result<Aws, AwsError> {
        // Standard retries: throttling and transient 5xx responses are retried with
        // jittered exponential back-off (each call waits on its own, so a wide fan-out of
        // 32 puts spreads out instead of failing); six attempts make a lost call rare.
        // Not adaptive mode: after one throttle its client-side limiter falls to 0.5
        // requests/s per service for the rest of the run (tests/it/flaky.rs measured an apply
        // of capacity 5 going from ~1 s to 94 s with six throttles).
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(AWS_MAX_ATTEMPTS),
        );
        let configured = region.is_some();
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_owned()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .ok_or(AwsError::NoRegion)?;
        // Before any client exists: the region goes into endpoints, ARNs and the userdata.
        crate::config::check_region(&region).map_err(|message| AwsError::BadRegion {
            origin: region_source(region.as_str(), configured, |k| std::env::var(k).ok()),
            message,
        })?;
        let counter = CallCounter(stats.clone());
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let ssm = aws_sdk_ssm::Client::from_conf(
            aws_sdk_ssm::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&shared)
                .interceptor(counter)
                .build(),
        );
        Ok(Aws {
            ec2,
            ssm,
            kms,
            region,
        })
    }
}

/// The environment variables the SDK reads a region from, in its order (aws-config's
/// `EnvironmentVariableRegionProvider`).
pub const REGION_ENV_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];

/// Where the SDK found `region`: the config's `region`, else its chain, which reads
/// `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile, then instance metadata
/// (aws-config's `EnvironmentVariableRegionProvider` and default region chain).
pub fn region_source(
    region: &str,
    configured: bool,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    if configured {
        return "region".to_owned();
    }
    for var in REGION_ENV_VARS {
        if env(var).is_some_and(|v| v == region) {
            return var.to_owned();
        }
    }
    "the region of the AWS profile (AWS_PROFILE, AWS_CONFIG_FILE) or of the instance metadata"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::{is_dry_run, region_source};

    #[test]
    fn a_region_error_names_where_the_region_came_from() {
        let env = |k: &str| match k {
            "AWS_REGION" => Some("us-east-1".to_owned()),
            "AWS_DEFAULT_REGION" => Some("x;y".to_owned()),
            _ => None,
        };
        assert_eq!(region_source("us-east-1", true, env), "region");
        assert_eq!(region_source("us-east-1", false, env), "AWS_REGION");
        assert_eq!(region_source("x;y", false, env), "AWS_DEFAULT_REGION");
        assert!(region_source("z", false, env).contains("AWS_PROFILE"));
    }

    #[test]
    fn dry_run_is_read_from_the_query_body() {
        assert!(is_dry_run(
            b"Action=RequestSpotFleet&Version=2016-11-15&DryRun=true"
        ));
        assert!(is_dry_run(b"DryRun=true&Action=CreateLaunchTemplate"));
        assert!(!is_dry_run(b"Action=RequestSpotFleet&DryRun=false"));
        assert!(!is_dry_run(b"Action=PutParameter&Value=NotDryRun=true"));
        assert!(!is_dry_run(b"{\"DryRun\": true}"));
    }
}
