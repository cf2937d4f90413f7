//! The DryRun checks of pre-flight: the launch template and the fleet request, as the
//! caller's permissions (and any policy above them) let them through.

use super::{Check, Status};
use crate::aws::fleet::{DryRun, FleetApi};
use crate::aws::AwsError;
use crate::plan::Desired;
use crate::world::LaunchTemplateState;

/// The check's name.
const FLEET_REQUEST: &str = "fleet request";

/// The Spot Fleet request. AWS Control Tower's control CT.EC2.PV.6 ("Disallow the use of
/// deprecated Amazon EC2 RequestSpotFleet and RequestSpotInstances API actions", a service
/// control policy) denies it to every principal of a governed account; EC2 Fleet's
/// CreateFleet stays allowed.
const REQUEST_SPOT_FLEET: &str = "RequestSpotFleet";

/// Whether AWS refused a call because a policy denies it explicitly (an identity, resource
/// or session policy, a permissions boundary) or because of a service control policy.
///
/// The IAM User Guide ("Troubleshoot access denied error messages"): an explicit denial
/// puts the phrase "with an explicit deny in a *type* policy" in the message (an implicit
/// one "because no *type* policy allows the *action* action"), and when an SCP denies, the
/// message can say "due to an explicit deny in a Service Control Policy" even if the denial
/// is implicit. EC2 answers a refused DryRun with `UnauthorizedOperation` and that message.
pub fn denied_by_policy(code: &str, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    code == "UnauthorizedOperation"
        && (message.contains("explicit deny") || message.contains("service control policy"))
}

/// A DryRun's check: allowed, refused (with AWS's code and message), or unknown.
pub(super) fn dry_run_check(
    name: &'static str,
    what: &str,
    result: Result<DryRun, AwsError>,
) -> Check {
    match result {
        Ok(DryRun::Allowed) => Check::new(name, Status::Ok, format!("DryRun {what}: allowed")),
        Ok(DryRun::Refused(code, message)) => {
            let hint = if code == "UnauthorizedOperation" {
                " (see policies/operator.json; decode with `aws sts decode-authorization-message`)"
            } else {
                ""
            };
            Check::new(
                name,
                Status::Fail,
                format!("DryRun {what}: {code}: {message}{hint}"),
            )
        }
        Err(e) => Check::from_error(name, e),
    }
}

/// The launch template's DryRun: an existing template is fine (apply adds a version).
pub(super) fn launch_template_check(result: Result<DryRun, AwsError>) -> Check {
    if let Ok(DryRun::Refused(code, _)) = &result {
        if code == "InvalidLaunchTemplateName.AlreadyExistsException" {
            return Check::new(
                "launch template",
                Status::Ok,
                "exists; apply adds a version when it changes",
            );
        }
    }
    dry_run_check(
        "launch template",
        "CreateLaunchTemplate (instance profile included)",
        result,
    )
}

/// The fleet request's DryRun, judged: a RequestSpotFleet that a policy denies explicitly
/// (or an SCP) FAILs with the way around it, the EC2 Fleet backend; any other answer as
/// [`dry_run_check`] judges it.
pub fn fleet_request_check(operation: &str, result: Result<DryRun, AwsError>) -> Check {
    let what = if operation == REQUEST_SPOT_FLEET {
        format!("{operation} (iam:PassRole of spot.fleet_role included)")
    } else {
        operation.to_owned()
    };
    match &result {
        Ok(DryRun::Refused(code, message))
            if operation == REQUEST_SPOT_FLEET && denied_by_policy(code, message) =>
        {
            Check::new(
                FLEET_REQUEST,
                Status::Fail,
                format!(
                    "DryRun {what}: {code}: {message} (an explicit deny or a service control policy refuses {operation}, as AWS Control Tower's control CT.EC2.PV.6 does: set spot.fleet_api = \"ec2-fleet\" to request the fleet with CreateFleet instead; decode with `aws sts decode-authorization-message`)"
                ),
            )
        }
        _ => dry_run_check(FLEET_REQUEST, &what, result),
    }
}

/// Sends the fleet backend's DryRun once the launch template exists.
pub(super) async fn fleet_request(
    fleet_api: &dyn FleetApi,
    desired: &Desired,
    lt: Option<&LaunchTemplateState>,
) -> Check {
    let operation = fleet_api.request_operation();
    let Some(lt) = lt else {
        return Check::new(
            FLEET_REQUEST,
            Status::Unknown,
            format!("DryRun {operation} needs the launch template, which apply creates first; plan again after the first apply"),
        );
    };
    let result = fleet_api
        .dry_run(
            &desired.fleet,
            &lt.id,
            lt.latest_version,
            crate::world::FleetTarget::spot(desired.capacity.desired.max(1)),
        )
        .await;
    fleet_request_check(operation, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::operation::request_spot_fleet::{
        RequestSpotFleetError, RequestSpotFleetOutput,
    };
    use aws_smithy_runtime_api::client::result::SdkError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    /// EC2's answer to a DryRun RequestSpotFleet with `code` and `message`, as the SDK
    /// hands it over, classified as the backend classifies it.
    fn refused(code: &str, message: &str) -> Result<DryRun, AwsError> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = Response::new(StatusCode::try_from(403).unwrap(), SdkBody::from(""));
        let answer: Result<RequestSpotFleetOutput, _> = Err(SdkError::service_error(
            RequestSpotFleetError::generic(meta),
            raw,
        ));
        DryRun::from_result("ec2:RequestSpotFleet", answer)
    }

    const SCP: &str = "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/bbfleet-ci-operator/bbfleet-42 is not authorized to perform: ec2:RequestSpotFleet on resource: arn:aws:ec2:eu-west-1:123456789012:spot-fleet-request/* with an explicit deny in a service control policy. Encoded authorization failure message: AbCdEf0123";
    const IMPLICIT: &str = "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/bbfleet-ci-operator/bbfleet-42 is not authorized to perform: ec2:RequestSpotFleet on resource: arn:aws:ec2:eu-west-1:123456789012:spot-fleet-request/* because no identity-based policy allows the ec2:RequestSpotFleet action. Encoded authorization failure message: AbCdEf0123";

    #[test]
    fn an_explicit_deny_of_request_spot_fleet_fails_and_suggests_ec2_fleet() {
        let c = fleet_request_check("RequestSpotFleet", refused("UnauthorizedOperation", SCP));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.starts_with("DryRun RequestSpotFleet (iam:PassRole of spot.fleet_role included): UnauthorizedOperation: You are not authorized"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("CT.EC2.PV.6")
                && c.detail.contains(r#"set spot.fleet_api = "ec2-fleet""#),
            "{}",
            c.detail
        );
        // An identity policy's Deny statement words it the same way, for its own type.
        let identity = SCP.replace("a service control policy", "an identity-based policy");
        let c = fleet_request_check(
            "RequestSpotFleet",
            refused("UnauthorizedOperation", &identity),
        );
        assert!(c.detail.contains("ec2-fleet"), "{}", c.detail);
        // "due to an explicit deny in a Service Control Policy", in any case.
        assert!(denied_by_policy(
            "UnauthorizedOperation",
            "... due to an explicit deny in a Service Control Policy"
        ));
    }

    #[test]
    fn other_refusals_keep_their_hint_and_name_no_other_backend() {
        // An implicit deny: a missing Allow, which policies/operator.json gives.
        let c = fleet_request_check(
            "RequestSpotFleet",
            refused("UnauthorizedOperation", IMPLICIT),
        );
        assert_eq!(c.status, Status::Fail);
        assert!(!c.detail.contains("ec2-fleet"), "{}", c.detail);
        assert!(
            c.detail.contains("see policies/operator.json"),
            "{}",
            c.detail
        );
        // Not an authorization error.
        let c = fleet_request_check(
            "RequestSpotFleet",
            refused("InvalidSpotFleetRequestConfig", "explicit deny"),
        );
        assert!(!c.detail.contains("ec2-fleet"), "{}", c.detail);
        // EC2 Fleet denied: no advice to switch to itself, and no fleet role to pass.
        let c = fleet_request_check("CreateFleet", refused("UnauthorizedOperation", SCP));
        assert_eq!(c.status, Status::Fail);
        assert!(!c.detail.contains("ec2-fleet"), "{}", c.detail);
        assert!(c.detail.starts_with("DryRun CreateFleet: "), "{}", c.detail);
        // Allowed.
        let c = fleet_request_check("RequestSpotFleet", Ok(DryRun::Allowed));
        assert_eq!(
            (c.status, c.detail.as_str()),
            (
                Status::Ok,
                "DryRun RequestSpotFleet (iam:PassRole of spot.fleet_role included): allowed"
            )
        );
    }
}
