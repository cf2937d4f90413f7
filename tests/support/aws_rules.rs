//! The AWS-rules layer of the recording proxy: where moto accepts or answers what AWS
//! would refuse or answer otherwise, the proxy answers as AWS does. Every test reaches
//! moto through it. Each rule names the AWS document it follows; README ("What the tests
//! emulate") lists them, and what only a real account shows.

use axum::http::StatusCode;

use super::recorder::{ec2_error, Answer, AwsCall, Upstream};

/// The layer's settings and memory.
#[derive(Debug, Default)]
pub struct Rules {}

/// EC2 operations on which moto ignores DryRun and executes the request (AWS_NOTES.md B3),
/// or has no DryRun handling at all.
const FLEET_DRY_RUNS: [&str; 5] = [
    "ec2:RequestSpotFleet",
    "ec2:ModifySpotFleetRequest",
    "ec2:CancelSpotFleetRequests",
    "ec2:CreateFleet",
    "ec2:DeleteFleets",
];

/// An answer in place of moto's, or `None` to forward the request.
pub async fn before(_up: &Upstream, call: &AwsCall) -> Option<Answer> {
    // EC2 API Reference, "Common parameters" (DryRun): "If you have the required
    // permissions, the error response is DryRunOperation"; with HTTP 412 on EC2's query
    // API. Nothing is created. moto executes these requests for real.
    if call.is_dry_run() && FLEET_DRY_RUNS.contains(&call.operation.as_str()) {
        return Some(ec2_error(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    None
}

/// moto's answer, changed where AWS answers otherwise.
pub async fn after(_up: &Upstream, _call: &AwsCall, answer: Answer) -> Answer {
    answer
}
