//! Why a command failed, and the failure as JSON for `--output json`.

use serde_json::{json, Value};

use crate::aws::AwsError;
use crate::bitbucket::{BitbucketError, CredentialsError};
use crate::config::{ConfigError, FieldError};
use crate::execute::ExecuteError;
use crate::lock::LockError;
use crate::observe::ObserveError;
use crate::plan::PlanError;
use crate::planfile::PlanfileError;
use crate::userdata::UserdataError;

/// Why a command failed. Messages name the cause; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line value.
    #[error("{0}")]
    Argument(FieldError),
    /// Credentials.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Bitbucket set-up.
    #[error(transparent)]
    Bitbucket(#[from] BitbucketError),
    /// AWS set-up.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Reading the world.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Planning.
    #[error("cannot plan: {0}")]
    Plan(#[from] PlanError),
    /// A saved plan.
    #[error(transparent)]
    Planfile(#[from] PlanfileError),
    /// Executing.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// Userdata.
    #[error(transparent)]
    Userdata(#[from] UserdataError),
    /// `bbfleet policy`.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The fleet lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Refused to act.
    #[error("{0}")]
    Refused(String),
    /// Terminal I/O.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// `config`, `argument`, `plan`, ...: which part of bbfleet refused.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Config(_) => "config",
            CliError::Argument(_) => "argument",
            CliError::Credentials(_) => "credentials",
            CliError::Bitbucket(_) | CliError::Observe(ObserveError::Bitbucket(_)) => "bitbucket",
            CliError::Aws(_) | CliError::Observe(ObserveError::Aws(_)) => "aws",
            CliError::Plan(_) => "plan",
            CliError::Planfile(_) => "planfile",
            CliError::Execute(_) => "execute",
            CliError::Userdata(_) => "userdata",
            CliError::Policy(_) => "policy",
            CliError::Lock(_) => "lock",
            CliError::Refused(_) => "refused",
            CliError::Io(_) => "io",
        }
    }

    /// `{"error": {"kind", "message", "fields"?, "operation"?, "plan"?}}`: the config
    /// fields at fault, the AWS call that failed and the planner's typed error, for tools.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({"kind": self.kind(), "message": self.to_string()});
        let fields: Vec<Value> = match self {
            CliError::Config(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(field).collect()
            }
            CliError::Argument(e) => vec![field(e)],
            CliError::Plan(e) => vec![json!({"field": e.field(), "message": e.to_string()})],
            _ => match self.aws() {
                Some(AwsError::Reference { field, message }) => {
                    vec![json!({"field": field, "message": message})]
                }
                _ => Vec::new(),
            },
        };
        if let Some(AwsError::Call { operation, .. } | AwsError::Answer { operation, .. }) =
            self.aws()
        {
            doc["operation"] = (*operation).into();
        }
        if !fields.is_empty() {
            doc["fields"] = fields.into();
        }
        if let CliError::Plan(e) = self {
            doc["plan"] = serde_json::to_value(e).unwrap_or_default();
        }
        json!({ "error": doc })
    }
}

impl CliError {
    fn aws(&self) -> Option<&AwsError> {
        match self {
            CliError::Aws(e) | CliError::Observe(ObserveError::Aws(e)) => Some(e),
            _ => None,
        }
    }
}

fn field(e: &FieldError) -> Value {
    json!({"field": e.field, "message": e.message})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field_and_keep_the_planners_fields() {
        let e = CliError::Plan(PlanError::KeyMissing {
            key: "alias/x".into(),
        });
        let doc = e.to_json();
        assert_eq!(doc["error"]["kind"], "plan");
        assert_eq!(doc["error"]["message"], e.to_string());
        assert_eq!(doc["error"]["fields"][0]["field"], "kms.key");
        assert_eq!(doc["error"]["plan"]["error"], "key_missing");
        assert_eq!(doc["error"]["plan"]["key"], "alias/x");

        let e = CliError::Observe(ObserveError::Aws(AwsError::Reference {
            field: "spot.subnets[1]".into(),
            message: "subnet-1 does not exist in us-east-1".into(),
        }));
        let doc = e.to_json();
        assert_eq!(doc["error"]["kind"], "aws");
        assert_eq!(doc["error"]["fields"][0]["field"], "spot.subnets[1]");
        assert_eq!(
            doc["error"]["message"],
            "spot.subnets[1]: subnet-1 does not exist in us-east-1"
        );

        let e = CliError::Aws(AwsError::Answer {
            operation: "ec2:RequestSpotFleet",
            problem: "returned no request id".into(),
        });
        assert_eq!(e.to_json()["error"]["operation"], "ec2:RequestSpotFleet");
    }
}
