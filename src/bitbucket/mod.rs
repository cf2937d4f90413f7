//! Bitbucket Cloud REST client for Pipelines runners: the workspace, repository and
//! runner endpoints of the Bitbucket Cloud REST API 2.0 (Atlassian's reference:
//! <https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/>,
//! <https://developer.atlassian.com/cloud/bitbucket/rest/api-group-workspaces/> and
//! <https://developer.atlassian.com/cloud/bitbucket/rest/api-group-repositories/>).
//!
//! Retries: 429 honours `Retry-After` (seconds or HTTP date) and otherwise backs off
//! exponentially with full jitter; 5xx and transport errors are retried the same way,
//! a bounded number of times. Nothing sleeps a fixed time per call. Every request is
//! counted against Bitbucket's hourly budget (see [`budget`]): a burst that fits goes at
//! once, a 429 pauses the whole client, and rate-limit headers correct the count.
//!
//! Registering a runner (POST) is not idempotent, and its answer holds the runner's only
//! secret. A 429 or a refused connection never reached Bitbucket and is retried like any
//! call; after a 5xx, a timeout or a connection lost once the request was sent, Bitbucket
//! may have registered the runner, and sending the POST again would add a second one. So
//! the scope's runners are listed first, a runner of that name registered by the lost
//! request (nobody has its secret) is deleted, and only then is the POST sent again,
//! within the same bounded attempts (see [`Bitbucket::create_runner`]).
//!
//! Disabling and enabling a runner (the drain before a scale-down) has no `/2.0` call:
//! it goes to the undocumented `internal` API beside it, as Atlassian's own autoscaler does
//! (see [`Bitbucket::set_runner_enabled`]), through the same transport, retries and budget.
//!
//! Layout: `transport` builds, sends and reads one request and words its errors;
//! `retry` is the one retry loop every request goes through; `auth` signs requests and
//! keeps the OAuth access token; `endpoints` holds the calls themselves.

mod auth;
mod budget;
mod credentials;
mod endpoints;
mod model;
mod retry;
mod transport;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Deserialize;
use url::Url;

pub use budget::DEFAULT_HOURLY_BUDGET;
pub use credentials::{Credentials, CredentialsError, DEFAULT_OAUTH_TOKEN_URL};
pub use model::{CreatedRunner, Runner, RunnerState};

use crate::stats::CallStats;

/// The public API base.
pub const DEFAULT_API_URL: &str = "https://api.bitbucket.org/2.0";

/// Where runners live: a workspace, or one repository in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Workspace slug or `{uuid}`.
    pub workspace: String,
    /// Repository slug or `{uuid}`, for repository runners.
    pub repository: Option<String>,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.repository {
            Some(r) => write!(f, "repository {}/{}", self.workspace, r),
            None => write!(f, "workspace {}", self.workspace),
        }
    }
}

/// A Bitbucket call failed.
#[derive(Debug, thiserror::Error)]
pub enum BitbucketError {
    /// 400: Bitbucket rejected the request.
    #[error("Bitbucket rejected {call}: {message}")]
    BadRequest {
        /// Method and path.
        call: String,
        /// Bitbucket's message.
        message: String,
    },
    /// 400 on create: the scope already has as many runners as Bitbucket allows.
    #[error("Bitbucket refused to register another runner in {scope} (runner limit, 100 per workspace or repository): {message}")]
    RunnerLimit {
        /// The scope.
        scope: String,
        /// Bitbucket's message.
        message: String,
    },
    /// 401: credentials missing, invalid or expired.
    #[error("Bitbucket did not accept the {kind} credentials for {call} (401): {message}")]
    Unauthorized {
        /// Credential kind.
        kind: &'static str,
        /// Method and path.
        call: String,
        /// Bitbucket's message.
        message: String,
    },
    /// 403: valid credentials without the needed scope or permission.
    #[error("Bitbucket refused {call} (403): {message}; runners need the runner read and write scopes (API tokens: read:runner:bitbucket, write:runner:bitbucket) and admin rights on the workspace or repository")]
    Forbidden {
        /// Method and path.
        call: String,
        /// Bitbucket's message and scope detail.
        message: String,
    },
    /// 404.
    #[error("Bitbucket has no {what} ({call}: 404)")]
    NotFound {
        /// What was looked up.
        what: String,
        /// Method and path.
        call: String,
    },
    /// 409.
    #[error("Bitbucket reported a conflict for {call} (409): {message}")]
    Conflict {
        /// Method and path.
        call: String,
        /// Bitbucket's message.
        message: String,
    },
    /// Still rate limited or failing after every retry.
    #[error("Bitbucket {call} still failed after {attempts} attempts: {last}")]
    Exhausted {
        /// Method and path.
        call: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A create may have registered a runner whose answer was lost, and checking for it
    /// failed: the create is not sent again, so no second runner can appear.
    #[error("registering runner {name} in {scope} may have succeeded without the answer reaching bbfleet ({lost}), and looking for a runner registered without its secret failed, so it was not registered again: {source}. The next apply deletes such a runner")]
    Unconfirmed {
        /// Runner name.
        name: String,
        /// The scope.
        scope: String,
        /// How the answer was lost.
        lost: String,
        /// Why the check failed.
        source: Box<BitbucketError>,
    },
    /// Not sent: the hourly request budget is used up for longer than a retry waits.
    #[error("Bitbucket {call} was not sent: {message}")]
    OverBudget {
        /// Method and path.
        call: String,
        /// How much was used, and when the next request may go.
        message: String,
    },
    /// Another status.
    #[error("Bitbucket answered {call} with unexpected status {status}: {message}")]
    Unexpected {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// Body excerpt.
        message: String,
    },
    /// A response that is not what the API documents.
    #[error("Bitbucket returned an invalid response to {call}: {message}")]
    InvalidResponse {
        /// Method and path.
        call: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// Retry bounds.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First back-off.
    pub base: Duration,
    /// Longest back-off.
    pub cap: Duration,
    /// Longest `Retry-After` honoured; a longer one fails at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// A workspace or repository as Bitbucket names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Owner {
    /// `{uuid}` with braces.
    pub uuid: String,
    /// Slug.
    #[serde(default)]
    pub slug: String,
}

/// The client.
pub struct Bitbucket {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    /// The OAuth access token, for OAuth credentials.
    token: auth::TokenCache,
    retry: RetryPolicy,
    stats: CallStats,
    budget: budget::RateBudget,
}

impl std::fmt::Debug for Bitbucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitbucket")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials.kind())
            .finish_non_exhaustive()
    }
}

impl Bitbucket {
    /// A client for `base_url` (e.g. `https://api.bitbucket.org/2.0`).
    pub fn new(
        base_url: &str,
        credentials: Credentials,
        retry: RetryPolicy,
        stats: CallStats,
    ) -> Result<Self, BitbucketError> {
        crate::config::check_api_url(base_url).map_err(BitbucketError::Client)?;
        let mut base = Url::parse(base_url).map_err(|e| BitbucketError::Client(e.to_string()))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("bbfleet/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            // Credentials must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BitbucketError::Client(e.to_string()))?;
        Ok(Bitbucket {
            http,
            base,
            credentials,
            token: auth::TokenCache::default(),
            retry,
            stats,
            budget: budget::RateBudget::new(DEFAULT_HOURLY_BUDGET, retry.max_retry_after),
        })
    }

    /// Counts requests against `per_hour` instead of Bitbucket's default of 1,000 per hour.
    pub fn with_hourly_budget(mut self, per_hour: u32) -> Self {
        self.budget = budget::RateBudget::new(per_hour, self.retry.max_retry_after);
        self
    }

    /// How many times a request waited for the hourly budget or a 429 pause.
    pub fn budget_waits(&self) -> u64 {
        self.budget.waits()
    }
}
