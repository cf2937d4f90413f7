//! The runner object, as far as bbfleet reads it. Unknown fields are ignored.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::BitbucketError;

/// A registered runner (never holds its secret).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Runner {
    /// `{uuid}` with braces.
    pub uuid: String,
    /// Name; bbfleet's are `bbfleet-{fleet}-{n}`.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Connection state.
    #[serde(default)]
    pub state: RunnerState,
}

/// `state` of a runner.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RunnerState {
    /// `UNREGISTERED`, `ONLINE`, `OFFLINE`, `DISABLED`, `ENABLED`, `UNHEALTHY`.
    #[serde(default)]
    pub status: Option<String>,
    /// Present only while the runner executes a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<serde_json::Value>,
    /// The runner takes no new steps.
    #[serde(default)]
    pub cordoned: Option<bool>,
    /// Last state change, RFC 3339 in UTC (see [`Runner::state_updated_on`]).
    #[serde(default)]
    pub updated_on: Option<String>,
}

impl Runner {
    /// `state.status`, or `UNKNOWN`.
    pub fn status(&self) -> &str {
        self.state.status.as_deref().unwrap_or("UNKNOWN")
    }

    /// Busy = executing a step.
    pub fn is_busy(&self) -> bool {
        self.state.step.as_ref().is_some_and(|s| !s.is_null())
    }

    /// `state.updated_on`: when the status last changed (for an `OFFLINE` runner, about
    /// when its heartbeats stopped). `None` when absent or not an RFC 3339 time.
    pub fn state_updated_on(&self) -> Option<jiff::Timestamp> {
        self.state.updated_on.as_deref()?.parse().ok()
    }
}

impl From<&Runner> for crate::world::Runner {
    fn from(r: &Runner) -> Self {
        crate::world::Runner {
            uuid: r.uuid.clone(),
            name: r.name.clone(),
            labels: r.labels.clone(),
            status: crate::world::RunnerStatus::from_api(r.state.status.as_deref().unwrap_or("")),
            busy: r.is_busy(),
            status_since: r.state_updated_on(),
        }
    }
}

/// A runner just registered, with the only copy of its OAuth secret.
#[derive(Debug)]
pub struct CreatedRunner {
    /// The runner.
    pub runner: Runner,
    /// `oauth_client.id`.
    pub client_id: String,
    /// `oauth_client.secret`: returned once, on create.
    pub client_secret: SecretString,
}

#[derive(Deserialize)]
pub(super) struct CreatedRaw {
    uuid: String,
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    state: RunnerState,
    oauth_client: Option<CreatedClient>,
}

#[derive(Deserialize)]
struct CreatedClient {
    id: Option<String>,
    secret: Option<SecretString>,
}

impl CreatedRaw {
    pub(super) fn into_created(self) -> Result<CreatedRunner, BitbucketError> {
        let invalid = |message: &str| BitbucketError::InvalidResponse {
            call: "POST runners".to_owned(),
            message: format!("runner {} ({}): {message}", self.name, self.uuid),
        };
        let client = self
            .oauth_client
            .as_ref()
            .ok_or_else(|| invalid("no oauth_client in the create response"))?;
        let client_id = client
            .id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("no oauth_client.id"))?;
        let client_secret = client
            .secret
            .clone()
            .ok_or_else(|| invalid("no oauth_client.secret"))?;
        if !is_braced_uuid(&self.uuid) {
            return Err(invalid("uuid is not a {uuid}"));
        }
        Ok(CreatedRunner {
            runner: Runner {
                uuid: self.uuid,
                name: self.name,
                labels: self.labels,
                state: self.state,
            },
            client_id,
            client_secret,
        })
    }
}

fn is_braced_uuid(s: &str) -> bool {
    s.strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|inner| {
            inner.len() == 36 && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
}
