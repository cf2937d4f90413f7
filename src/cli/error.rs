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

    /// `{"error": {"kind", "message", "fields"?, "plan"?}}`: the config fields at fault
    /// and the planner's typed error, for tools.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({"kind": self.kind(), "message": self.to_string()});
        let fields: Vec<Value> = match self {
            CliError::Config(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(field).collect()
            }
            CliError::Argument(e) => vec![field(e)],
            CliError::Plan(e) => vec![json!({"field": e.field(), "message": e.to_string()})],
            _ => Vec::new(),
        };
        if !fields.is_empty() {
            doc["fields"] = fields.into();
        }
        if let CliError::Plan(e) = self {
            doc["plan"] = serde_json::to_value(e).unwrap_or_default();
        }
        json!({ "error": doc })
    }
}

fn field(e: &FieldError) -> Value {
    json!({"field": e.field, "message": e.message})
}
