//! Bitbucket Cloud REST client for Pipelines runners (see shared/BITBUCKET_API.md).
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

mod budget;
mod credentials;
mod model;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

pub use budget::DEFAULT_HOURLY_BUDGET;
pub use credentials::{Credentials, CredentialsError, DEFAULT_OAUTH_TOKEN_URL};
pub use model::{CreatedRunner, Runner, RunnerState};

use crate::stats::{CallKind, CallStats};

/// The public API base.
pub const DEFAULT_API_URL: &str = "https://api.bitbucket.org/2.0";
/// Pages followed at most in one listing (100 runners per page: far above the 100-runner limit).
const MAX_PAGES: usize = 50;
/// Longest body excerpt quoted in an error.
const MAX_EXCERPT: usize = 300;
/// Largest answer read: a page of 100 runners is about 100 KB, so this only stops a
/// broken or hostile server from filling memory.
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Runners per page asked for (Bitbucket's maximum `pagelen`).
const PAGELEN: usize = 100;

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

impl RetryPolicy {
    /// Full-jitter exponential back-off before retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(fastrand::f64().max(0.1))
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

#[derive(Debug, Deserialize)]
struct Page<T> {
    values: Vec<T>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

/// The client.
pub struct Bitbucket {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    token: tokio::sync::Mutex<Option<CachedToken>>,
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

enum Body<'a> {
    None,
    Json(&'a serde_json::Value),
}

/// Whether a request may be sent again when it may have reached Bitbucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// GET, PUT, DELETE: the same request twice has the effect of one (RFC 9110, 9.2.2
    /// "Idempotent Methods").
    Safe,
    /// POST: RFC 9110 9.2.2 says a client should not retry a non-idempotent request
    /// automatically unless it can detect that the original request was never applied.
    Unsafe,
}

/// Why [`Bitbucket::exchange`] returned without a 2xx answer.
enum Failure {
    /// A definite failure.
    Failed(BitbucketError),
    /// A `Replay::Unsafe` request may have taken effect without its answer arriving;
    /// `attempts` attempts are used and the back-off before the next one is done.
    Unanswered {
        /// Attempts used, the first included.
        attempts: u32,
        /// What was lost: the status or the transport error.
        lost: String,
    },
}

impl From<BitbucketError> for Failure {
    fn from(e: BitbucketError) -> Self {
        Failure::Failed(e)
    }
}

/// A runner registered by a create whose answer was lost: it never connected (nobody has
/// its secret, so it stays `UNREGISTERED`, BITBUCKET_API.md section 3), runs no step, and
/// was not there before the create.
fn is_unanswered_create(r: &Runner, name: &str, existing: &[Runner]) -> bool {
    let bare = crate::names::bare_uuid(&r.uuid);
    r.name == name
        && !r.is_busy()
        && matches!(r.status(), "UNREGISTERED" | "UNKNOWN")
        && !existing
            .iter()
            .any(|e| crate::names::bare_uuid(&e.uuid) == bare)
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
            token: tokio::sync::Mutex::new(None),
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

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            // The base always has a path, so this cannot fail; the fallback keeps the base.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty();
                path.extend(segments);
            }
        }
        url
    }

    fn runners_segments(scope: &Scope) -> Vec<&str> {
        match &scope.repository {
            Some(repo) => vec![
                "repositories",
                &scope.workspace,
                repo,
                "pipelines-config",
                "runners",
            ],
            None => vec![
                "workspaces",
                &scope.workspace,
                "pipelines-config",
                "runners",
            ],
        }
    }

    /// Looks up a workspace (slug or `{uuid}`).
    pub async fn workspace(&self, workspace: &str) -> Result<Owner, BitbucketError> {
        let url = self.url(&["workspaces", workspace]);
        self.json(
            Method::GET,
            url,
            Body::None,
            &format!("workspace {workspace}"),
            "GET workspace",
        )
        .await
    }

    /// Looks up a repository.
    pub async fn repository(
        &self,
        workspace: &str,
        repository: &str,
    ) -> Result<Owner, BitbucketError> {
        let url = self.url(&["repositories", workspace, repository]);
        self.json(
            Method::GET,
            url,
            Body::None,
            &format!("repository {workspace}/{repository}"),
            "GET repository",
        )
        .await
    }

    /// Every runner of the scope, following `next` links.
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<Runner>, BitbucketError> {
        let mut url = self.url(&Self::runners_segments(scope));
        url.query_pairs_mut()
            .append_pair("pagelen", &PAGELEN.to_string());
        let mut seen = std::collections::HashSet::new();
        let mut runners = Vec::new();
        for _ in 0..MAX_PAGES {
            if !seen.insert(url.to_string()) {
                return Err(BitbucketError::InvalidResponse {
                    call: format!("GET {}", url.path()),
                    message: "the `next` link points to a page already read (pagination loop)"
                        .to_owned(),
                });
            }
            let page: Page<Runner> = self
                .json(
                    Method::GET,
                    url.clone(),
                    Body::None,
                    &scope.to_string(),
                    "GET runners",
                )
                .await?;
            if page.values.len() > PAGELEN {
                return Err(BitbucketError::InvalidResponse {
                    call: format!("GET {}", url.path()),
                    message: format!(
                        "a page holds {} runners, more than the {PAGELEN} asked for",
                        page.values.len()
                    ),
                });
            }
            runners.extend(page.values);
            match page.next {
                None => return Ok(runners),
                Some(next) => url = self.same_origin(&next, &url)?,
            }
        }
        Err(BitbucketError::InvalidResponse {
            call: format!("GET {}", url.path()),
            message: format!("more than {MAX_PAGES} pages of runners"),
        })
    }

    /// A `next` link, only if it stays on the API's origin (credentials go with it).
    fn same_origin(&self, next: &str, current: &Url) -> Result<Url, BitbucketError> {
        let parsed = current
            .join(next)
            .map_err(|e| BitbucketError::InvalidResponse {
                call: format!("GET {}", current.path()),
                message: format!("the `next` link is not a URL: {e}"),
            })?;
        if parsed.origin() != self.base.origin() {
            return Err(BitbucketError::InvalidResponse {
                call: format!("GET {}", current.path()),
                message: format!(
                    "the `next` link leaves the API's origin ({}); not following it with credentials",
                    parsed.origin().ascii_serialization()
                ),
            });
        }
        Ok(parsed)
    }

    /// Registers a runner. The returned secret exists only here: store it at once.
    ///
    /// When an attempt may have registered the runner without its answer arriving (a
    /// 5xx, a timeout, a connection lost after sending), the scope's runners are listed and
    /// every runner named `name` that such an attempt registered is deleted before the
    /// next attempt, so at most one runner of the name is left, the one returned. Runners
    /// in `existing` (the caller's listing from before), busy or connected runners are
    /// never taken for one. Names need not be unique at Bitbucket (BITBUCKET_API.md
    /// section 2.4), which is why the name alone cannot prevent a duplicate.
    pub async fn create_runner(
        &self,
        scope: &Scope,
        name: &str,
        labels: &[String],
        existing: &[Runner],
    ) -> Result<CreatedRunner, BitbucketError> {
        let url = self.url(&Self::runners_segments(scope));
        let call = format!("POST {}", url.path());
        let body = serde_json::json!({ "name": name, "labels": labels });
        let unconfirmed = |lost: &str, source: BitbucketError| BitbucketError::Unconfirmed {
            name: name.to_owned(),
            scope: scope.to_string(),
            lost: lost.to_owned(),
            source: Box::new(source),
        };
        let mut used = 0;
        // Bounded: every pass uses at least one more of `max_attempts` attempts.
        loop {
            let sent = self
                .exchange(
                    Method::POST,
                    url.clone(),
                    Body::Json(&body),
                    &scope.to_string(),
                    "POST runner",
                    used,
                    Replay::Unsafe,
                )
                .await;
            match sent {
                Ok(bytes) => {
                    return Self::parse::<model::CreatedRaw>(&call, false, &bytes)?.into_created()
                }
                Err(Failure::Failed(BitbucketError::BadRequest { message, .. }))
                    if message.to_ascii_lowercase().contains("limit") =>
                {
                    return Err(BitbucketError::RunnerLimit {
                        scope: scope.to_string(),
                        message,
                    })
                }
                Err(Failure::Failed(e)) => return Err(e),
                Err(Failure::Unanswered { attempts, lost }) => {
                    // Also after the last attempt: no runner without its secret is left.
                    self.delete_unanswered(scope, name, existing)
                        .await
                        .map_err(|e| unconfirmed(&lost, e))?;
                    if attempts >= self.retry.max_attempts {
                        return Err(BitbucketError::Exhausted {
                            call,
                            attempts,
                            last: lost,
                        });
                    }
                    used = attempts;
                }
            }
        }
    }

    /// Deletes the runners named `name` that a create registered without its answer
    /// arriving (see [`is_unanswered_create`]); returns how many.
    async fn delete_unanswered(
        &self,
        scope: &Scope,
        name: &str,
        existing: &[Runner],
    ) -> Result<usize, BitbucketError> {
        let runners = self.list_runners(scope).await?;
        let mut deleted = 0;
        for r in runners
            .iter()
            .filter(|r| is_unanswered_create(r, name, existing))
        {
            if self.delete_runner(scope, &r.uuid).await? {
                deleted += 1;
                tracing::warn!(runner = %r.uuid, %name, "Bitbucket registered a runner but its answer was lost (nobody has its secret): deleted it before registering again");
            }
        }
        Ok(deleted)
    }

    /// Changes a runner's name and labels.
    pub async fn update_runner(
        &self,
        scope: &Scope,
        uuid: &str,
        name: &str,
        labels: &[String],
    ) -> Result<Runner, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let mut segments = Self::runners_segments(scope);
        segments.push(&braced);
        let body = serde_json::json!({ "name": name, "labels": labels });
        self.json(
            Method::PUT,
            self.url(&segments),
            Body::Json(&body),
            &format!("runner {braced}"),
            "PUT runner",
        )
        .await
    }

    /// Deletes a runner; `Ok(false)` if it was already gone.
    pub async fn delete_runner(&self, scope: &Scope, uuid: &str) -> Result<bool, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let mut segments = Self::runners_segments(scope);
        segments.push(&braced);
        let url = self.url(&segments);
        match self
            .send(
                Method::DELETE,
                url,
                Body::None,
                &format!("runner {braced}"),
                "DELETE runner",
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(BitbucketError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
    ) -> Result<T, BitbucketError> {
        let call = format!("{method} {}", url.path());
        // Answers to writes may hold a runner's OAuth secret: never quote them.
        let quotable = method == Method::GET;
        let bytes = self.send(method, url, body, what, op).await?;
        Self::parse(&call, quotable, &bytes)
    }

    /// Reads an answer as `T`, naming the field that does not fit; the body is quoted in
    /// the error only when `quotable`.
    fn parse<T: DeserializeOwned>(
        call: &str,
        quotable: bool,
        bytes: &[u8],
    ) -> Result<T, BitbucketError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = match (path.as_str(), inner.is_data()) {
                // A field of the right JSON, but missing or of the wrong type: name it.
                (p, true) if p != "." => format!("{p}: {inner}"),
                (_, true) => inner.to_string(),
                _ if quotable => format!("not JSON: {inner} (body starts: {})", excerpt(bytes)),
                _ => format!(
                    "not JSON: {inner} (body of {} bytes not quoted: it may hold a secret)",
                    bytes.len()
                ),
            };
            BitbucketError::InvalidResponse {
                call: call.to_owned(),
                message,
            }
        })
    }

    async fn auth(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, BitbucketError> {
        Ok(match &self.credentials {
            Credentials::ApiToken { email, token } => {
                req.basic_auth(email, Some(token.expose_secret()))
            }
            Credentials::AccessToken(token) => req.bearer_auth(token.expose_secret()),
            Credentials::OAuth { .. } => {
                let token = self.oauth_token().await?;
                req.bearer_auth(token.expose_secret())
            }
        })
    }

    async fn oauth_token(&self) -> Result<SecretString, BitbucketError> {
        let Credentials::OAuth {
            client_id,
            client_secret,
            token_url,
        } = &self.credentials
        else {
            return Err(BitbucketError::Client("not an OAuth client".to_owned()));
        };
        let mut cached = self.token.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(c.token.clone());
        }
        let call = format!("POST {token_url}");
        for attempt in 1..=self.retry.max_attempts {
            self.stats
                .record("bitbucket", "POST oauth2/access_token", CallKind::Read);
            let sent = self
                .http
                .post(token_url)
                .basic_auth(client_id, Some(client_secret.expose_secret()))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) if attempt < self.retry.max_attempts => {
                    tracing::debug!(error = %e, attempt, "OAuth token request failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(BitbucketError::Exhausted {
                        call,
                        attempts: attempt,
                        last: e.without_url().to_string(),
                    })
                }
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                if attempt < self.retry.max_attempts {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                return Err(BitbucketError::Exhausted {
                    call,
                    attempts: attempt,
                    last: format!("status {status}"),
                });
            }
            let bytes = read_limited(response).await.map_err(|message| {
                BitbucketError::InvalidResponse {
                    call: call.clone(),
                    message,
                }
            })?;
            if !status.is_success() {
                return Err(BitbucketError::Unauthorized {
                    kind: self.credentials.kind(),
                    call,
                    message: format!(
                        "the OAuth consumer was refused ({status}): {}",
                        excerpt(&bytes)
                    ),
                });
            }
            let parsed: TokenResponse =
                serde_json::from_slice(&bytes).map_err(|e| BitbucketError::InvalidResponse {
                    call: call.clone(),
                    message: format!("token response without access_token: {e}"),
                })?;
            // Renew a minute early, and never trust a lifetime below two minutes.
            let lifetime = parsed.expires_in.unwrap_or(3600).max(120);
            *cached = Some(CachedToken {
                token: parsed.access_token.clone(),
                renew_at: Instant::now() + Duration::from_secs(lifetime - 60),
            });
            return Ok(parsed.access_token);
        }
        Err(BitbucketError::Exhausted {
            call,
            attempts: self.retry.max_attempts,
            last: "no attempt left".to_owned(),
        })
    }

    /// Sends an idempotent request with retries; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
    ) -> Result<Vec<u8>, BitbucketError> {
        let call = format!("{method} {}", url.path());
        match self
            .exchange(method, url, body, what, op, 0, Replay::Safe)
            .await
        {
            Ok(bytes) => Ok(bytes),
            Err(Failure::Failed(e)) => Err(e),
            // Not returned for `Replay::Safe`; kept as a plain failure all the same.
            Err(Failure::Unanswered { attempts, lost }) => Err(BitbucketError::Exhausted {
                call,
                attempts,
                last: lost,
            }),
        }
    }

    /// Sends with retries, `used` of the attempts already spent; returns the body of a
    /// 2xx answer. With `Replay::Unsafe`, a failure that may have reached Bitbucket (5xx,
    /// timeout, connection lost after connecting) is not retried but returned as
    /// `Failure::Unanswered`, after its back-off; 429s and refused connections are retried.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
        used: u32,
        replay: Replay,
    ) -> Result<Vec<u8>, Failure> {
        let call = format!("{method} {}", url.path());
        let kind = if method == Method::GET {
            CallKind::Read
        } else {
            CallKind::Write
        };
        let mut last = String::new();
        let mut renewed_token = false;
        let mut attempt = used;
        while attempt < self.retry.max_attempts {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("Accept", "application/json");
            if let Body::Json(v) = body {
                req = req.json(v);
            }
            let req = self.auth(req).await?;
            if let Err(over) = self.budget.acquire().await {
                return Err(Failure::Failed(BitbucketError::OverBudget {
                    call,
                    message: over.to_string(),
                }));
            }
            self.stats.record("bitbucket", op, kind);
            let started = Instant::now();
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // A connect error (refused, DNS, connect timeout) sent nothing; anything
                    // later (a timeout, a connection closed before the answer) may have
                    // been processed.
                    let sent = !e.is_connect();
                    last = e.without_url().to_string();
                    tracing::debug!(%call, attempt, error = %last, "Bitbucket request failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    if replay == Replay::Unsafe && sent {
                        return Err(Failure::Unanswered {
                            attempts: attempt,
                            lost: last,
                        });
                    }
                    continue;
                }
            };
            let status = response.status();
            tracing::debug!(%call, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "bitbucket");
            self.budget.observe(response.headers());
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let bytes = match read_limited(response).await {
                Ok(b) => b,
                Err(message) => {
                    return Err(Failure::Failed(BitbucketError::InvalidResponse {
                        call,
                        message,
                    }))
                }
            };
            if status.is_success() {
                return Ok(bytes);
            }
            let message = error_message(&bytes);
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = match retry_after {
                        Some(d) if d > self.retry.max_retry_after => {
                            return Err(Failure::Failed(BitbucketError::Exhausted {
                                call,
                                attempts: attempt,
                                last: format!(
                                    "rate limited; Bitbucket asks to wait {} s",
                                    d.as_secs()
                                ),
                            }))
                        }
                        Some(d) => d,
                        None => self.retry.backoff(attempt),
                    };
                    last = "rate limited (429)".to_owned();
                    tracing::debug!(%call, attempt, wait_ms = wait.as_millis() as u64, "rate limited; every request backs off");
                    // Every request of this client waits (in `acquire`), not just this one.
                    self.budget.pause(wait);
                }
                s if s.is_server_error() => {
                    last = format!("status {s}: {message}");
                    let wait = retry_after
                        .unwrap_or_else(|| self.retry.backoff(attempt))
                        .min(self.retry.max_retry_after);
                    tracing::debug!(%call, attempt, status = s.as_u16(), "server error; retrying");
                    tokio::time::sleep(wait).await;
                    // Bitbucket may have done the work before failing to answer.
                    if replay == Replay::Unsafe {
                        return Err(Failure::Unanswered {
                            attempts: attempt,
                            lost: last,
                        });
                    }
                }
                StatusCode::UNAUTHORIZED
                    if matches!(self.credentials, Credentials::OAuth { .. }) && !renewed_token =>
                {
                    // The access token may have expired early: get a new one, once.
                    renewed_token = true;
                    attempt -= 1;
                    *self.token.lock().await = None;
                }
                StatusCode::BAD_REQUEST => {
                    return Err(BitbucketError::BadRequest { call, message }.into())
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(BitbucketError::Unauthorized {
                        kind: self.credentials.kind(),
                        call,
                        message,
                    }
                    .into())
                }
                StatusCode::FORBIDDEN => {
                    return Err(BitbucketError::Forbidden { call, message }.into())
                }
                StatusCode::NOT_FOUND => {
                    return Err(BitbucketError::NotFound {
                        what: what.to_owned(),
                        call,
                    }
                    .into())
                }
                StatusCode::CONFLICT => {
                    return Err(BitbucketError::Conflict { call, message }.into())
                }
                s => {
                    return Err(BitbucketError::Unexpected {
                        call,
                        status: s.as_u16(),
                        message,
                    }
                    .into())
                }
            }
        }
        Err(BitbucketError::Exhausted {
            call,
            attempts: attempt,
            last,
        }
        .into())
    }
}

/// The body, at most `MAX_RESPONSE_BYTES` of it; a body cut short by the connection
/// reads as what arrived (it then fails to parse, naming the cause).
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "response larger than {} MB; not reading further (a page of runners is far smaller)",
            MAX_RESPONSE_BYTES >> 20
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut out = Vec::new();
    // Bounded: every chunk adds bytes, and more than the limit ends the loop.
    while let Ok(Some(chunk)) = response.chunk().await {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The error envelope's message (and scope detail), or a body excerpt.
fn error_message(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
        detail: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(Envelope { error }) => {
            let mut msg = error.message.unwrap_or_else(|| "(no message)".to_owned());
            match error.detail {
                Some(serde_json::Value::String(s)) if !s.is_empty() => msg = format!("{msg} ({s})"),
                Some(serde_json::Value::Object(o)) => {
                    let scopes = |k: &str| o.get(k).map(|v| v.to_string()).unwrap_or_default();
                    if o.contains_key("required") {
                        msg = format!(
                            "{msg} (required scopes {}, granted {})",
                            scopes("required"),
                            scopes("granted")
                        );
                    }
                }
                _ => {}
            }
            truncate(&msg)
        }
        Err(_) if looks_like_html(bytes) => format!(
            "an HTML page, not the API's JSON (a proxy or outage page?): {}",
            excerpt(bytes)
        ),
        Err(_) => excerpt(bytes),
    }
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_EXCERPT {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(MAX_EXCERPT).collect::<String>())
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        "(empty body)".to_owned()
    } else {
        format!("{:?}", truncate(&flat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        for attempt in 1..40 {
            assert!(p.backoff(attempt) <= p.cap);
        }
    }

    #[test]
    fn error_messages_come_from_the_envelope() {
        let body = br#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"required":["runner:write"],"granted":["runner"]}}}"#;
        let m = error_message(body);
        assert!(
            m.contains("lack one or more") && m.contains("runner:write"),
            "{m}"
        );
        assert_eq!(
            error_message(b"<html><body>Bad gateway</body></html>"),
            "an HTML page, not the API's JSON (a proxy or outage page?): \"<html><body>Bad gateway</body></html>\""
        );
    }

    #[test]
    fn urls_encode_braces() {
        let bb = Bitbucket::new(
            "http://127.0.0.1:9/2.0",
            Credentials::AccessToken("t".to_owned().into()),
            RetryPolicy::default(),
            CallStats::default(),
        )
        .unwrap();
        let url = bb.url(&[
            "workspaces",
            "acme",
            "pipelines-config",
            "runners",
            "{ab-1}",
        ]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/2.0/workspaces/acme/pipelines-config/runners/%7Bab-1%7D"
        );
    }

    fn client(fake: &bitbucket_fake::FakeBitbucket, max_retry_after: Duration) -> Bitbucket {
        Bitbucket::new(
            &fake.base_url(),
            Credentials::AccessToken("fake-access-token".to_owned().into()),
            RetryPolicy {
                base: Duration::from_millis(10),
                max_retry_after,
                ..RetryPolicy::default()
            },
            CallStats::default(),
        )
        .unwrap()
    }

    fn acme() -> Scope {
        Scope {
            workspace: "acme".to_owned(),
            repository: None,
        }
    }

    async fn fake(hourly_limit: Option<usize>) -> bitbucket_fake::FakeBitbucket {
        bitbucket_fake::FakeBitbucket::start(bitbucket_fake::FakeConfig {
            hourly_limit,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_that_fits_the_budget_is_not_held_back() {
        let fake = fake(Some(1000)).await;
        let bb = client(&fake, Duration::from_secs(1));
        let scope = acme();
        let calls = (0..40).map(|_| bb.list_runners(&scope));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(bb.budget_waits(), 0);
        assert_eq!(fake.requests().len(), 40);
        fake.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_beyond_the_hourly_budget_are_not_sent() {
        // The limit comes from Bitbucket's X-RateLimit-Limit header.
        let fake = fake(Some(3)).await;
        let bb = client(&fake, Duration::from_secs(1));
        for _ in 0..3 {
            bb.list_runners(&acme()).await.unwrap();
        }
        let err = bb.list_runners(&acme()).await.unwrap_err();
        assert!(matches!(err, BitbucketError::OverBudget { .. }), "{err}");
        assert!(err.to_string().contains("3 of 3 requests"), "{err}");
        assert_eq!(fake.requests().len(), 3, "the fourth request was sent");
        assert!(fake.requests().iter().all(|r| r.status == 200));
        fake.shutdown();

        // Without headers, the configured budget counts.
        let fake = self::fake(None).await;
        let bb = client(&fake, Duration::from_secs(1)).with_hourly_budget(2);
        bb.list_runners(&acme()).await.unwrap();
        bb.workspace("acme").await.unwrap();
        let err = bb.workspace("acme").await.unwrap_err();
        assert!(err.to_string().contains("budget is used up"), "{err}");
        assert_eq!(fake.requests().len(), 2);
        fake.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_429_pauses_the_client_through_the_budget() {
        let fake = fake(None).await;
        fake.inject(bitbucket_fake::Fault::RateLimit {
            retry_after: Some(1),
            count: 1,
            path_contains: None,
        });
        let bb = client(&fake, Duration::from_secs(5));
        bb.list_runners(&acme()).await.unwrap();
        assert!(bb.budget_waits() >= 1);
        let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 200]);
        fake.shutdown();
    }

    fn labels() -> Vec<String> {
        vec!["self.hosted".to_owned(), "linux".to_owned()]
    }

    /// (method, status) of every request the fake recorded.
    fn calls(fake: &bitbucket_fake::FakeBitbucket) -> Vec<(String, u16)> {
        fake.requests()
            .into_iter()
            .map(|r| (r.method, r.status))
            .collect()
    }

    fn on_post(fault: bitbucket_fake::Fault) -> bitbucket_fake::Fault {
        bitbucket_fake::Fault::OnMethod {
            method: "POST".to_owned(),
            skip: 0,
            fault: Box::new(fault),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_that_may_have_reached_bitbucket_is_checked_before_it_is_sent_again() {
        use bitbucket_fake::Fault;
        let owned = |c: &[(&str, u16)]| -> Vec<(String, u16)> {
            c.iter().map(|(m, s)| ((*m).to_owned(), *s)).collect()
        };
        let cases = [
            (
                "processed, then 500",
                Fault::ProcessedThenServerError {
                    status: 500,
                    count: 1,
                    path_contains: None,
                },
                owned(&[("POST", 500), ("GET", 200), ("DELETE", 204), ("POST", 200)]),
            ),
            (
                "processed, then the connection dropped",
                Fault::ProcessedThenDrop {
                    count: 1,
                    path_contains: None,
                },
                owned(&[("POST", 0), ("GET", 200), ("DELETE", 204), ("POST", 200)]),
            ),
            (
                "500 before processing",
                Fault::ServerError {
                    status: 500,
                    count: 1,
                    path_contains: None,
                },
                owned(&[("POST", 500), ("GET", 200), ("POST", 200)]),
            ),
            (
                "429: never processed, retried without a listing",
                Fault::RateLimit {
                    retry_after: None,
                    count: 1,
                    path_contains: None,
                },
                owned(&[("POST", 429), ("POST", 200)]),
            ),
        ];
        for (case, fault, expected) in cases {
            let fake = fake(None).await;
            let bb = client(&fake, Duration::from_secs(1));
            fake.inject(on_post(fault));
            let created = bb
                .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(calls(&fake), expected, "{case}");
            let runners = fake.runners("acme", None);
            assert_eq!(runners.len(), 1, "{case}: {runners:#?}");
            assert_eq!(runners[0]["uuid"], created.runner.uuid.as_str(), "{case}");
            fake.shutdown();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_runner_the_lost_create_registered_is_deleted() {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(1));
        let scope = acme();
        let name = "bbfleet-x-1";
        // Same name: one known before, one busy, one online; another name.
        let mut keep = Vec::new();
        for n in [name, name, name, "bbfleet-x-2"] {
            keep.push(bb.create_runner(&scope, n, &labels(), &[]).await.unwrap());
        }
        assert!(fake.set_busy(&keep[1].runner.uuid, true));
        assert!(fake.set_status(&keep[2].runner.uuid, "ONLINE"));
        let existing = vec![keep[0].runner.clone()];
        fake.inject(on_post(bitbucket_fake::Fault::ProcessedThenServerError {
            status: 502,
            count: 1,
            path_contains: None,
        }));
        let created = bb
            .create_runner(&scope, name, &labels(), &existing)
            .await
            .unwrap();
        let left: Vec<String> = fake
            .runners("acme", None)
            .iter()
            .map(|r| r["uuid"].as_str().unwrap_or_default().to_owned())
            .collect();
        let mut wanted: Vec<String> = keep.iter().map(|c| c.runner.uuid.clone()).collect();
        wanted.push(created.runner.uuid.clone());
        assert_eq!(left, wanted, "only the lost runner was deleted");
        fake.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_creates_are_bounded_and_leave_no_runner() {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(1));
        fake.inject(on_post(bitbucket_fake::Fault::ProcessedThenServerError {
            status: 500,
            count: 1000,
            path_contains: None,
        }));
        let err = bb
            .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap_err();
        let max = RetryPolicy::default().max_attempts as usize;
        assert!(
            matches!(err, BitbucketError::Exhausted { attempts, .. } if attempts as usize == max),
            "{err}"
        );
        let posts = calls(&fake).iter().filter(|(m, _)| m == "POST").count();
        let deletes = calls(&fake).iter().filter(|(m, _)| m == "DELETE").count();
        assert_eq!((posts, deletes), (max, max));
        assert!(
            fake.runners("acme", None).is_empty(),
            "the last lost runner was deleted too"
        );
        fake.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_is_not_sent_again_while_the_runners_cannot_be_listed() {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(1));
        fake.inject(on_post(bitbucket_fake::Fault::ServerError {
            status: 503,
            count: 1,
            path_contains: None,
        }));
        fake.inject(bitbucket_fake::Fault::OnMethod {
            method: "GET".to_owned(),
            skip: 0,
            fault: Box::new(bitbucket_fake::Fault::ServerError {
                status: 500,
                count: 1000,
                path_contains: None,
            }),
        });
        let err = bb
            .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, BitbucketError::Unconfirmed { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("registering runner bbfleet-x-1 in workspace acme may have succeeded")
                && text.contains("still failed after 6 attempts"),
            "{text}"
        );
        let posts = calls(&fake).iter().filter(|(m, _)| m == "POST").count();
        assert_eq!(posts, 1, "sent once");
        fake.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_retried_without_a_listing() {
        // A port nobody listens on: every attempt is refused before anything is sent.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let bb = Bitbucket::new(
            &format!("http://127.0.0.1:{port}/2.0"),
            Credentials::AccessToken("fake-access-token".to_owned().into()),
            RetryPolicy {
                base: Duration::from_millis(10),
                ..RetryPolicy::default()
            },
            CallStats::default(),
        )
        .unwrap();
        let err = bb
            .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap_err();
        // A listing would have been refused too, giving `Unconfirmed`.
        assert!(
            matches!(err, BitbucketError::Exhausted { ref call, attempts: 6, .. } if call.starts_with("POST ")),
            "{err}"
        );
    }
}
