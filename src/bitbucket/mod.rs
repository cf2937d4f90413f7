//! Bitbucket Cloud REST client for Pipelines runners (see shared/BITBUCKET_API.md).
//!
//! Retries: 429 honours `Retry-After` (seconds or HTTP date) and otherwise backs off
//! exponentially with full jitter; 5xx and transport errors are retried the same way,
//! a bounded number of times. Nothing sleeps a fixed time per call. Every request is
//! counted against Bitbucket's hourly budget (see [`budget`]): a burst that fits goes at
//! once, a 429 pauses the whole client, and rate-limit headers correct the count.

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
    pub async fn create_runner(
        &self,
        scope: &Scope,
        name: &str,
        labels: &[String],
    ) -> Result<CreatedRunner, BitbucketError> {
        let url = self.url(&Self::runners_segments(scope));
        let body = serde_json::json!({ "name": name, "labels": labels });
        let result = self
            .json::<model::CreatedRaw>(
                Method::POST,
                url,
                Body::Json(&body),
                &scope.to_string(),
                "POST runner",
            )
            .await;
        match result {
            Ok(raw) => raw.into_created(),
            Err(BitbucketError::BadRequest { message, .. })
                if message.to_ascii_lowercase().contains("limit") =>
            {
                Err(BitbucketError::RunnerLimit {
                    scope: scope.to_string(),
                    message,
                })
            }
            Err(e) => Err(e),
        }
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
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = match (path.as_str(), inner.is_data()) {
                // A field of the right JSON, but missing or of the wrong type: name it.
                (p, true) if p != "." => format!("{p}: {inner}"),
                (_, true) => inner.to_string(),
                _ if quotable => format!("not JSON: {inner} (body starts: {})", excerpt(&bytes)),
                _ => format!(
                    "not JSON: {inner} (body of {} bytes not quoted: it may hold a secret)",
                    bytes.len()
                ),
            };
            BitbucketError::InvalidResponse { call, message }
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

    /// Sends with retries; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
    ) -> Result<Vec<u8>, BitbucketError> {
        let call = format!("{method} {}", url.path());
        let kind = if method == Method::GET {
            CallKind::Read
        } else {
            CallKind::Write
        };
        let mut last = String::new();
        let mut renewed_token = false;
        let mut attempt = 0;
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
                return Err(BitbucketError::OverBudget {
                    call,
                    message: over.to_string(),
                });
            }
            self.stats.record("bitbucket", op, kind);
            let started = Instant::now();
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.without_url().to_string();
                    tracing::debug!(%call, attempt, error = %last, "Bitbucket request failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
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
                Err(message) => return Err(BitbucketError::InvalidResponse { call, message }),
            };
            if status.is_success() {
                return Ok(bytes);
            }
            let message = error_message(&bytes);
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = match retry_after {
                        Some(d) if d > self.retry.max_retry_after => {
                            return Err(BitbucketError::Exhausted {
                                call,
                                attempts: attempt,
                                last: format!(
                                    "rate limited; Bitbucket asks to wait {} s",
                                    d.as_secs()
                                ),
                            })
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
                    return Err(BitbucketError::BadRequest { call, message })
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(BitbucketError::Unauthorized {
                        kind: self.credentials.kind(),
                        call,
                        message,
                    })
                }
                StatusCode::FORBIDDEN => return Err(BitbucketError::Forbidden { call, message }),
                StatusCode::NOT_FOUND => {
                    return Err(BitbucketError::NotFound {
                        what: what.to_owned(),
                        call,
                    })
                }
                StatusCode::CONFLICT => return Err(BitbucketError::Conflict { call, message }),
                s => {
                    return Err(BitbucketError::Unexpected {
                        call,
                        status: s.as_u16(),
                        message,
                    })
                }
            }
        }
        Err(BitbucketError::Exhausted {
            call,
            attempts: attempt,
            last,
        })
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
}
