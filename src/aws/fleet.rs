//! The fleet backend seam: one trait for the fleet API, so that the planner, the
//! executor and pre-flight never name one. Spot Fleet (`RequestSpotFleet`, type
//! `maintain`, in `spot_fleet.rs`) and EC2 Fleet (`CreateFleet`, type `maintain`, in
//! `ec2_fleet.rs`) implement [`FleetApi`]; [`Fleets`] holds both, requests with the
//! configured one and finds, changes and cancels every request of the fleet with the API
//! that made it, so that a switch of `spot.fleet_api` is a roll-out like any other.

use super::AwsError;

use crate::config::FleetApiKind;
use crate::world::{FleetSpec, FleetState, FleetTarget};

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
    /// The configured API's requests, without instances: what an autoscale tick reads
    /// (one call; a request of the other API is cancelled by the apply that switched).
    async fn list_targets(&self, fleet: &str) -> Result<Vec<FleetState>, AwsError> {
        self.list(fleet, false).await
    }
    /// Requests a new fleet; returns its id.
    async fn request(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<String, AwsError>;
    /// Sets the target capacity and its on-demand part; `terminate_excess` = false keeps
    /// every instance (bbfleet terminates the chosen ones).
    async fn set_target(
        &self,
        id: &str,
        target: FleetTarget,
        terminate_excess: bool,
    ) -> Result<(), AwsError>;
    /// The spot capacity errors in the request's history since `since`, newest first,
    /// each as `code: description`.
    async fn capacity_errors(
        &self,
        id: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<String>, AwsError>;
    /// Moves a request to `spec`'s launch template version and overrides (instance types x
    /// subnets) and `target`, in place: its running instances stay. Only what the API can
    /// modify may differ (the plan requests a new fleet when the role or strategy changed).
    async fn modify(
        &self,
        id: &str,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
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
        target: FleetTarget,
    ) -> Result<DryRun, AwsError>;
}

/// The fleet backend on this EC2 client: requests with `api`, sees both APIs' requests.
pub fn backend(ec2: aws_sdk_ec2::Client, api: FleetApiKind) -> Box<dyn FleetApi> {
    Box::new(Fleets {
        spot_fleet: super::spot_fleet::SpotFleet::new(ec2.clone()),
        ec2_fleet: super::ec2_fleet::Ec2Fleet::new(ec2),
        chosen: api,
    })
}

/// Both backends: new requests go to `chosen`; a request id goes to the API that made it
/// (`sfr-...` Spot Fleet, `fleet-...` EC2 Fleet).
struct Fleets {
    spot_fleet: super::spot_fleet::SpotFleet,
    ec2_fleet: super::ec2_fleet::Ec2Fleet,
    chosen: FleetApiKind,
}

impl Fleets {
    fn of(&self, api: FleetApiKind) -> &dyn FleetApi {
        match api {
            FleetApiKind::SpotFleet => &self.spot_fleet,
            FleetApiKind::Ec2Fleet => &self.ec2_fleet,
        }
    }

    fn chosen(&self) -> &dyn FleetApi {
        self.of(self.chosen)
    }

    fn owner(&self, id: &str) -> &dyn FleetApi {
        self.of(api_of(id))
    }
}

/// The API a request id belongs to.
pub fn api_of(id: &str) -> FleetApiKind {
    if id.starts_with("sfr-") {
        FleetApiKind::SpotFleet
    } else {
        FleetApiKind::Ec2Fleet
    }
}

#[async_trait::async_trait]
impl FleetApi for Fleets {
    fn label(&self) -> &'static str {
        self.chosen().label()
    }

    fn request_operation(&self) -> &'static str {
        self.chosen().request_operation()
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        self.chosen().iam_actions()
    }

    /// Both APIs' requests, listed in parallel: after a switch the old API's request is
    /// still the fleet's until the plan cancels it.
    async fn list(&self, fleet: &str, with_instances: bool) -> Result<Vec<FleetState>, AwsError> {
        let (a, b) = tokio::try_join!(
            self.spot_fleet.list(fleet, with_instances),
            self.ec2_fleet.list(fleet, with_instances)
        )?;
        let mut all: Vec<FleetState> = a.into_iter().chain(b).collect();
        all.sort_by(|x, y| x.id.cmp(&y.id));
        Ok(all)
    }

    async fn list_targets(&self, fleet: &str) -> Result<Vec<FleetState>, AwsError> {
        self.chosen().list(fleet, false).await
    }

    async fn request(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<String, AwsError> {
        self.of(spec.api)
            .request(spec, launch_template_id, version, target)
            .await
    }

    async fn set_target(
        &self,
        id: &str,
        target: FleetTarget,
        terminate_excess: bool,
    ) -> Result<(), AwsError> {
        self.owner(id)
            .set_target(id, target, terminate_excess)
            .await
    }

    async fn capacity_errors(
        &self,
        id: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<String>, AwsError> {
        self.owner(id).capacity_errors(id, since).await
    }

    async fn modify(
        &self,
        id: &str,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<(), AwsError> {
        self.owner(id)
            .modify(id, spec, launch_template_id, version, target)
            .await
    }

    async fn cancel(&self, ids: &[String], terminate_instances: bool) -> Result<(), AwsError> {
        for api in [FleetApiKind::SpotFleet, FleetApiKind::Ec2Fleet] {
            let mine: Vec<String> = ids.iter().filter(|i| api_of(i) == api).cloned().collect();
            if !mine.is_empty() {
                self.of(api).cancel(&mine, terminate_instances).await?;
            }
        }
        Ok(())
    }

    async fn dry_run(
        &self,
        spec: &FleetSpec,
        launch_template_id: &str,
        version: i64,
        target: FleetTarget,
    ) -> Result<DryRun, AwsError> {
        self.of(spec.api)
            .dry_run(spec, launch_template_id, version, target)
            .await
    }
}

/// The request's tags: fleet, configuration, and when its target was set.
pub(super) fn request_tags(spec: &FleetSpec) -> Vec<aws_sdk_ec2::types::Tag> {
    use crate::names::{CONFIG_TAG, FLEET_TAG};
    vec![
        tag(FLEET_TAG, &spec.fleet),
        tag(CONFIG_TAG, &spec.fingerprint()),
        target_at_tag(),
    ]
}

/// `bbfleet:target-at` = now.
pub(super) fn target_at_tag() -> aws_sdk_ec2::types::Tag {
    tag(
        crate::names::TARGET_AT_TAG,
        &jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string(),
    )
}

fn tag(key: &str, value: &str) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

/// Writes tags on a request (CreateTags "adds or overwrites only the specified tags").
pub(super) async fn retag(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    tags: Vec<aws_sdk_ec2::types::Tag>,
) -> Result<(), AwsError> {
    ec2.create_tags()
        .resources(id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:CreateTags", e))?;
    Ok(())
}

/// Everything a NextToken-paged call lists, 10 pages at most (every list bbfleet pages this
/// way is far shorter): `page(token)` gives a page's items and the next token.
pub(super) async fn paged<T, F, Fut>(mut page: F) -> Result<Vec<T>, AwsError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), AwsError>>,
{
    let mut all = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let (items, next) = page(token).await?;
        all.extend(items);
        token = next.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok(all)
}

/// An SDK timestamp as a jiff one.
pub(super) fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<jiff::Timestamp> {
    t.and_then(|t| jiff::Timestamp::from_second(t.secs()).ok())
}

/// A fleet history record of either API (Spot Fleet's `HistoryRecord`, EC2 Fleet's
/// `HistoryRecordEntry`): type, sub-type, description, time.
pub(super) trait HistoryRecord {
    /// The record's parts.
    fn parts(&self) -> (&str, &str, &str, Option<jiff::Timestamp>);
}

macro_rules! history_record {
    ($($t:ty),*) => {$(
        impl HistoryRecord for $t {
            fn parts(&self) -> (&str, &str, &str, Option<jiff::Timestamp>) {
                let info = self.event_information();
                (
                    self.event_type().map_or("", |t| t.as_str()),
                    info.and_then(|i| i.event_sub_type()).unwrap_or_default(),
                    info.and_then(|i| i.event_description()).unwrap_or_default(),
                    timestamp(self.timestamp()),
                )
            }
        }
    )*};
}

history_record!(
    aws_sdk_ec2::types::HistoryRecord,
    aws_sdk_ec2::types::HistoryRecordEntry
);

/// The spot capacity errors among history records, newest first, each `sub-type:
/// description`. A record counts when its type is an error (Spot Fleet `error`, EC2 Fleet
/// `service-error`: AWS logs "There is no Spot capacity available that matches your
/// request" as such, sub-type `spotFleetRequestConfigurationInvalid`), or its sub-type says
/// launches fail (EC2 User Guide, "Spot Fleet event types" / "EC2 Fleet event types").
pub(super) fn capacity_errors(records: &[impl HistoryRecord]) -> Vec<String> {
    const SUB_TYPES: [&str; 4] = [
        "allLaunchSpecsTemporarilyBlacklisted",
        "launchSpecTemporarilyBlacklisted",
        "launchSpecUnusable",
        "fleetProgressHalted",
    ];
    let mut found: Vec<(Option<jiff::Timestamp>, String)> = records
        .iter()
        .map(HistoryRecord::parts)
        .filter(|(kind, sub, _, _)| {
            matches!(*kind, "error" | "service-error") || SUB_TYPES.contains(sub)
        })
        .map(|(_, sub, description, at)| (at, format!("{sub}: {description}")))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, e)| e).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_actions_are_in_the_iam_table() {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .build();
        let ec2 = aws_sdk_ec2::Client::from_conf(conf);
        let apis: [Box<dyn FleetApi>; 2] = [
            Box::new(super::super::spot_fleet::SpotFleet::new(ec2.clone())),
            Box::new(super::super::ec2_fleet::Ec2Fleet::new(ec2)),
        ];
        for api in apis {
            for action in api.iam_actions() {
                assert!(
                    crate::aws::actions::CALLED.contains(action),
                    "{action} of {} is not in src/aws/actions.rs",
                    api.label()
                );
            }
        }
    }

    #[test]
    fn a_request_id_names_its_api() {
        assert_eq!(api_of("sfr-0123abcd"), FleetApiKind::SpotFleet);
        assert_eq!(
            api_of("fleet-598fb973-87b7-422d-be4d-6b0809bfff0a"),
            FleetApiKind::Ec2Fleet
        );
    }

    #[test]
    fn capacity_errors_are_errors_and_launch_failures_newest_first() {
        use aws_sdk_ec2::types::{EventInformation, HistoryRecordEntry};
        let record = |kind: &str, sub: &str, description: &str, at: i64| {
            HistoryRecordEntry::builder()
                .event_type(kind.into())
                .event_information(
                    EventInformation::builder()
                        .event_sub_type(sub)
                        .event_description(description)
                        .build(),
                )
                .timestamp(aws_smithy_types::DateTime::from_secs(at))
                .build()
        };
        let found = capacity_errors(&[
            record("instance-change", "launched", "i-1", 1),
            record("fleet-change", "launchSpecUnusable", "no Spot capacity", 2),
            record(
                "service-error",
                "spotInstanceCountLimitExceeded",
                "limit",
                3,
            ),
            record("fleet-change", "active", "", 4),
            record(
                "service-error",
                "allLaunchSpecsTemporarilyBlacklisted",
                "none",
                5,
            ),
        ]);
        assert_eq!(
            found,
            [
                "allLaunchSpecsTemporarilyBlacklisted: none",
                "spotInstanceCountLimitExceeded: limit",
                "launchSpecUnusable: no Spot capacity",
            ]
        );
    }
}
