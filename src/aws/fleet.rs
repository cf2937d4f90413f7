//! The fleet backend seam: one trait for the fleet API, so that the planner, the
//! executor and pre-flight never name one. Spot Fleet (`RequestSpotFleet`, type
//! `maintain`, in `spot_fleet.rs`) is the backend today; a second one (EC2 Fleet's
//! `CreateFleet`) is one more file implementing [`FleetApi`], one config value and one
//! policy statement.

use super::AwsError;

use crate::world::{FleetSpec, FleetState};

/// The operations bbfleet needs from a fleet API.
#[async_trait::async_trait]
pub trait FleetApi: Send + Sync {
    /// The API's name for people (`Spot Fleet`).
    fn label(&self) -> &'static str;
    /// The call that requests a fleet (`RequestSpotFleet`), as pre-flight names it.
    fn request_operation(&self) -> &'static str;
    /// Every IAM action the backend calls; each must be in [`super::actions::CALLED`]
    /// (a unit test checks it) and allowed by policies/operator.json.
    fn iam_actions(&self) -> &'static [&'static str];
    /// Requests tagged with the fleet (live and leftover), with their instances when
    /// `with_instances` (one more call per request).
    async fn list(&self, fleet: &str, with_instances: bool) -> Result<Vec<FleetState>, AwsError>;
    /// Requests a new fleet; returns its id.
    async fn request(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: u32,
    ) -> Result<String, AwsError>;
    /// Sets the target capacity; `terminate_excess` = false keeps every instance (bbfleet terminates the chosen ones).
    async fn set_target(
        &self,
        id: &str,
        target: u32,
        terminate_excess: bool,
    ) -> Result<(), AwsError>;
    /// Moves a request to `spec`'s launch template version and overrides (instance types x
    /// subnets) and `target`, in place: its running instances stay. Only what the API can
    /// modify may differ (the plan requests a new fleet when the role or strategy changed).
    async fn modify(
        &self,
        id: &str,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: u32,
    ) -> Result<(), AwsError>;
    /// Cancels requests.
    async fn cancel(&self, ids: &[String], terminate_instances: bool) -> Result<(), AwsError>;
    /// The request [`FleetApi::request`] would send, with `DryRun=true`: checks permissions
    /// (PassRole of a fleet role included) and the request, creates nothing.
    async fn dry_run(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: u32,
    ) -> Result<DryRun, AwsError>;
}

/// The configured fleet backend on this EC2 client (Spot Fleet, the one there is today).
pub fn backend(ec2: aws_sdk_ec2::Client) -> Box<dyn FleetApi> {
    Box::new(super::spot_fleet::SpotFleet::new(ec2))
}

/// Outcome of a DryRun call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    /// AWS answered `DryRunOperation`: the call would have succeeded.
    Allowed,
    /// AWS refused it (`UnauthorizedOperation`, a validation error, ...): code and message.
    Refused(String, String),
}

impl DryRun {
    /// Classifies the answer of a call sent with `DryRun=true`.
    pub fn from_result<T, E, R>(
        operation: &'static str,
        result: Result<T, aws_smithy_runtime_api::client::result::SdkError<E, R>>,
    ) -> Result<DryRun, AwsError>
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + super::HttpStatus,
    {
        use aws_smithy_types::error::metadata::ProvideErrorMetadata;
        match result {
            // The endpoint ignored DryRun and did the call: say so, loudly.
            Ok(_) => Err(AwsError::Answer {
                operation,
                problem: "with DryRun=true was executed by the endpoint instead of checked"
                    .to_owned(),
            }),
            Err(e) => match (e.code(), e.message()) {
                (Some("DryRunOperation"), _) => Ok(DryRun::Allowed),
                (Some(code), msg) => Ok(DryRun::Refused(
                    code.to_owned(),
                    msg.unwrap_or_default().to_owned(),
                )),
                _ => Err(AwsError::call(operation, e)),
            },
        }
    }
}
