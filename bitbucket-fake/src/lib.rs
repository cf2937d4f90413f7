//! An in-memory fake of the Bitbucket Cloud REST API for self-hosted
//! Pipelines runners, following Atlassian's Bitbucket Cloud REST API reference
//! (<https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/>).
//!
//! Start one with [`FakeBitbucket::start`], point the client under test at
//! [`FakeBitbucket::base_url`], and inspect or script it through the handle
//! (or over HTTP under [`FakeBitbucket::admin_url`]).

mod admin;
mod api;
mod conn;
mod state;
mod util;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::State;
pub use crate::util::stable_uuid;
use crate::util::LabelPattern;

/// A repository known to the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub slug: String,
    /// UUID with braces.
    pub uuid: String,
}

/// A workspace known to the fake, with its repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSpec {
    pub slug: String,
    /// UUID with braces.
    pub uuid: String,
    pub repositories: Vec<RepoSpec>,
}

/// Configuration of a fake server.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub workspaces: Vec<WorkspaceSpec>,
    /// `(email, api_token)` pairs accepted as Basic auth.
    pub basic_users: Vec<(String, String)>,
    /// Tokens accepted as Bearer auth.
    pub bearer_tokens: Vec<String>,
    /// `(client_id, client_secret)` pairs for `POST /site/oauth2/access_token`.
    pub oauth_clients: Vec<(String, String)>,
    /// Lifetime of issued OAuth access tokens, in seconds.
    pub oauth_expires_in: u64,
    /// Runners per scope (workspace-level, and each repository separately).
    pub runner_limit: usize,
    /// Label pattern; a single character class such as `^[a-z0-9.]+$`.
    pub label_pattern: String,
    /// Custom labels per runner, not counting `self.hosted` and platform labels.
    pub max_custom_labels: usize,
    /// Added to every non-admin request.
    pub latency: Duration,
    /// Requests allowed per hour (the fake's lifetime counts as the hour), as Bitbucket's
    /// scaled limits: every `/2.0` answer then carries `X-RateLimit-Limit`,
    /// `X-RateLimit-Resource` and, from 80 % used, `X-RateLimit-NearLimit: true`; requests
    /// over the limit get 429 (without `Retry-After`). `None`: no limit, no headers.
    pub hourly_limit: Option<usize>,
    /// Schedules per repository.
    pub schedule_limit: usize,
    /// Prefix of every issued runner OAuth secret.
    pub secret_prefix: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            workspaces: vec![WorkspaceSpec {
                slug: "acme".to_owned(),
                uuid: "{11111111-2222-4333-8444-555555555555}".to_owned(),
                repositories: vec![RepoSpec {
                    slug: "app".to_owned(),
                    uuid: "{66666666-7777-4888-9999-000000000000}".to_owned(),
                }],
            }],
            basic_users: vec![("dev@example.com".to_owned(), "fake-api-token".to_owned())],
            bearer_tokens: vec!["fake-access-token".to_owned()],
            oauth_clients: vec![("fake-client-id".to_owned(), "fake-client-secret".to_owned())],
            oauth_expires_in: 7200,
            runner_limit: 100,
            label_pattern: "^[a-z0-9.]+$".to_owned(),
            max_custom_labels: 10,
            latency: Duration::ZERO,
            hourly_limit: None,
            schedule_limit: 100,
            secret_prefix: "fake-secret-".to_owned(),
        }
    }
}

/// How a recorded request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthKind {
    /// No `Authorization` header.
    None,
    /// Accepted Basic credentials.
    Basic,
    /// Accepted Bearer token.
    Bearer,
    /// An `Authorization` header that was rejected.
    Invalid,
}

/// One request the fake received (admin requests under `/_fake` are not recorded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Percent-decoded path.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    pub auth: AuthKind,
    /// The status answered; 0 when the connection was closed without an answer.
    pub status: u16,
    /// The request body as JSON (a JSON string if it was not JSON); `None` when
    /// empty, and always `None` for the OAuth token endpoint.
    pub body: Option<serde_json::Value>,
    /// When the request arrived (before its body was read), so a test can order it
    /// against calls recorded elsewhere in the process; in JSON, `at_us`: microseconds
    /// since the Unix epoch. Requests are listed in the order their answers were
    /// recorded, which a slow request can make differ from this order.
    #[serde(rename = "at_us", with = "at_us", default = "at_us::epoch")]
    pub at: std::time::SystemTime,
}

/// `RecordedRequest::at` as microseconds since the Unix epoch.
mod at_us {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let us = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        s.serialize_u64(u64::try_from(us).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_micros(u64::deserialize(d)?))
    }

    pub(crate) fn epoch() -> SystemTime {
        UNIX_EPOCH
    }
}

/// A scripted fault; applies to the next matching `/2.0` request(s). `path_contains`
/// matches a part of the path, or its end when it ends in `$` (`/workspaces/acme$`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 `text/plain` "Rate limit for this resource has been exceeded";
    /// `Retry-After` only when `retry_after` is `Some`.
    RateLimit {
        retry_after: Option<u64>,
        count: usize,
        path_contains: Option<String>,
    },
    /// 500 or 503 with the error envelope.
    ServerError {
        status: u16,
        count: usize,
        path_contains: Option<String>,
    },
    /// Sleeps before handling the request normally (combines with other faults).
    Delay {
        duration: Duration,
        count: usize,
        path_contains: Option<String>,
    },
    /// 200 with body `{"values": [` and `application/json`.
    MalformedJson {
        count: usize,
        path_contains: Option<String>,
    },
    /// 502 `text/html` "<html><body>Bad gateway</body></html>".
    HtmlError {
        count: usize,
        path_contains: Option<String>,
    },
    /// The next list response(s) carry a `next` link to the same page.
    LoopingNext { count: usize },
    /// 4xx (400..=499) with the error envelope and `message`, e.g. 403 on the workspace.
    ClientError {
        status: u16,
        message: String,
        count: usize,
        path_contains: Option<String>,
    },
    /// 200 `application/json` of about `bytes` bytes (`{"values": [], "padding": "xx..."}`),
    /// streamed without `Content-Length`, so a client must bound what it reads itself.
    HugeBody {
        bytes: usize,
        count: usize,
        path_contains: Option<String>,
    },
    /// The request is handled (a write takes effect), then the answer is cut in half:
    /// the client sees broken JSON for a change that happened.
    TruncatedAnswer {
        count: usize,
        path_contains: Option<String>,
    },
    /// The request is handled (a write takes effect), then answered `status` (500..=599)
    /// with the error envelope instead: Bitbucket did the work and the client cannot know.
    ProcessedThenServerError {
        status: u16,
        count: usize,
        path_contains: Option<String>,
    },
    /// The request is handled (a write takes effect), then the connection is closed
    /// without a byte of the answer: the client sees a connection lost after sending.
    /// Recorded with status 0.
    ProcessedThenDrop {
        count: usize,
        path_contains: Option<String>,
    },
    /// The real answer with `field` (dotted, e.g. `uuid` or `state.status`) removed from
    /// the object, or from each of a page's `values`.
    MissingField {
        field: String,
        count: usize,
        path_contains: Option<String>,
    },
    /// The real answer with `field` (dotted) set to `value`, e.g. `labels` = `"linux"`.
    WrongType {
        field: String,
        value: serde_json::Value,
        count: usize,
        path_contains: Option<String>,
    },
    /// The real page with its `values` repeated up to `values` entries (Bitbucket never
    /// sends more than the `pagelen` asked for, at most 100).
    OversizedPage {
        values: usize,
        count: usize,
        path_contains: Option<String>,
    },
    /// The next list response(s) carry `next` = `url` (e.g. another origin).
    NextLink { url: String, count: usize },
    /// `fault` applies only to requests with `method`, once `skip` of them passed untouched
    /// (e.g. the second `POST`). Wraps faults other than `LoopingNext`, `NextLink` and itself.
    OnMethod {
        method: String,
        skip: usize,
        fault: Box<Fault>,
    },
}

impl Fault {
    pub(crate) fn count_mut(&mut self) -> &mut usize {
        match self {
            Fault::RateLimit { count, .. }
            | Fault::ServerError { count, .. }
            | Fault::Delay { count, .. }
            | Fault::MalformedJson { count, .. }
            | Fault::HtmlError { count, .. }
            | Fault::ClientError { count, .. }
            | Fault::HugeBody { count, .. }
            | Fault::TruncatedAnswer { count, .. }
            | Fault::ProcessedThenServerError { count, .. }
            | Fault::ProcessedThenDrop { count, .. }
            | Fault::MissingField { count, .. }
            | Fault::WrongType { count, .. }
            | Fault::OversizedPage { count, .. }
            | Fault::NextLink { count, .. }
            | Fault::LoopingNext { count } => count,
            Fault::OnMethod { fault, .. } => fault.count_mut(),
        }
    }

    pub(crate) fn count(&self) -> usize {
        match self {
            Fault::RateLimit { count, .. }
            | Fault::ServerError { count, .. }
            | Fault::Delay { count, .. }
            | Fault::MalformedJson { count, .. }
            | Fault::HtmlError { count, .. }
            | Fault::ClientError { count, .. }
            | Fault::HugeBody { count, .. }
            | Fault::TruncatedAnswer { count, .. }
            | Fault::ProcessedThenServerError { count, .. }
            | Fault::ProcessedThenDrop { count, .. }
            | Fault::MissingField { count, .. }
            | Fault::WrongType { count, .. }
            | Fault::OversizedPage { count, .. }
            | Fault::NextLink { count, .. }
            | Fault::LoopingNext { count } => *count,
            Fault::OnMethod { fault, .. } => fault.count(),
        }
    }

    pub(crate) fn path_filter(&self) -> Option<&str> {
        match self {
            Fault::RateLimit { path_contains, .. }
            | Fault::ServerError { path_contains, .. }
            | Fault::Delay { path_contains, .. }
            | Fault::MalformedJson { path_contains, .. }
            | Fault::HtmlError { path_contains, .. }
            | Fault::ClientError { path_contains, .. }
            | Fault::HugeBody { path_contains, .. }
            | Fault::TruncatedAnswer { path_contains, .. }
            | Fault::ProcessedThenServerError { path_contains, .. }
            | Fault::ProcessedThenDrop { path_contains, .. }
            | Fault::MissingField { path_contains, .. }
            | Fault::WrongType { path_contains, .. }
            | Fault::OversizedPage { path_contains, .. } => path_contains.as_deref(),
            Fault::LoopingNext { .. } | Fault::NextLink { .. } => None,
            Fault::OnMethod { fault, .. } => fault.path_filter(),
        }
    }

    /// Faults that change the real answer after the request was handled.
    pub(crate) fn rewrites_answer(&self) -> bool {
        matches!(
            self,
            Fault::TruncatedAnswer { .. }
                | Fault::ProcessedThenServerError { .. }
                | Fault::ProcessedThenDrop { .. }
                | Fault::MissingField { .. }
                | Fault::WrongType { .. }
                | Fault::OversizedPage { .. }
        )
    }
}

/// Shared server state behind the handle.
pub(crate) struct App {
    pub(crate) cfg: FakeConfig,
    pub(crate) labels: LabelPattern,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Mutex<State>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    /// `/2.0` requests counted against `cfg.hourly_limit`.
    pub(crate) rate_used: std::sync::atomic::AtomicUsize,
}

impl App {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address to advertise: the bound one, with an unspecified IP
    /// replaced by loopback.
    pub(crate) fn public_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        addr
    }

    pub(crate) fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// A running fake server. Cloning gives another handle to the same server.
#[derive(Clone)]
pub struct FakeBitbucket {
    app: Arc<App>,
}

impl std::fmt::Debug for FakeBitbucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBitbucket")
            .field("addr", &self.app.addr)
            .finish_non_exhaustive()
    }
}

impl FakeBitbucket {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeBitbucket> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn start_on(config: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeBitbucket> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let config = util::normalize_config(config);
        let labels = LabelPattern::parse(&config.label_pattern).unwrap_or_default();
        let (tx, mut rx) = watch::channel(false);
        let app = Arc::new(App {
            cfg: config,
            labels,
            addr: local,
            state: Mutex::new(State::default()),
            shutdown: tx,
            task: Mutex::new(None),
            rate_used: std::sync::atomic::AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .fallback(api::handle)
            .with_state(Arc::clone(&app))
            .into_make_service_with_connect_info::<conn::KillSwitch>();
        let signal = async move {
            // An error means every sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(conn::DroppableListener(listener), router)
                .with_graceful_shutdown(signal)
                .await;
        });
        *app.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(FakeBitbucket { app })
    }

    /// `http://127.0.0.1:PORT/2.0`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}/2.0", self.app.public_addr())
    }

    /// `http://127.0.0.1:PORT/site/oauth2/access_token`.
    pub fn oauth_token_url(&self) -> String {
        format!("http://{}/site/oauth2/access_token", self.app.public_addr())
    }

    /// `http://127.0.0.1:PORT/_fake`.
    pub fn admin_url(&self) -> String {
        format!("http://{}/_fake", self.app.public_addr())
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.app.addr
    }

    /// Every recorded request, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.app.lock().records.iter().cloned().collect()
    }

    /// POST/PUT/PATCH/DELETE requests recorded since the last clear, excluding
    /// `/_fake` admin calls and the OAuth token endpoint.
    pub fn write_count(&self) -> usize {
        self.app.lock().total_writes
    }

    /// Forgets recorded requests and resets the counters.
    pub fn clear_requests(&self) {
        self.app.lock().clear_records();
    }

    /// Runner objects (without secret) of one scope, in creation order.
    /// `workspace` and `repository` may be slugs or braced UUIDs.
    pub fn runners(&self, workspace: &str, repository: Option<&str>) -> Vec<serde_json::Value> {
        let Some(scope) = util::resolve_scope(&self.app.cfg, workspace, repository) else {
            return Vec::new();
        };
        self.app
            .lock()
            .runners
            .iter()
            .filter(|r| r.in_scope(&scope))
            .map(|r| r.to_json(None))
            .collect()
    }

    /// Every `oauth_client.secret` ever returned by a create.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.app.lock().secrets.clone()
    }

    /// Sets `state.status` (one of UNREGISTERED, ONLINE, OFFLINE, DISABLED,
    /// ENABLED, UNHEALTHY) and `state.updated_on`. False if the runner or the
    /// status is unknown.
    pub fn set_status(&self, runner_uuid: &str, status: &str) -> bool {
        self.app.lock().set_status(runner_uuid, status).is_some()
    }

    /// Sets (`busy`) or clears `state.step`.
    pub fn set_busy(&self, runner_uuid: &str, busy: bool) -> bool {
        self.app.lock().set_busy(runner_uuid, busy).is_some()
    }

    /// Arms (`busy`) or disarms the drain race for one runner: the next
    /// `PUT /internal/…/runners/{uuid}/state` with `{"status": "DISABLED"}` first gives
    /// the runner a step (as if Bitbucket handed it one just before the disable landed),
    /// then disables it, and disarms. Setting the status through [`Self::set_status`]
    /// does not fire it. False if the runner is unknown.
    pub fn set_step_on_disable(&self, runner_uuid: &str, busy: bool) -> bool {
        self.app
            .lock()
            .set_step_on_disable(runner_uuid, busy)
            .is_some()
    }

    /// Sets `state.cordoned`.
    pub fn set_cordoned(&self, runner_uuid: &str, cordoned: bool) -> bool {
        self.app
            .lock()
            .set_cordoned(runner_uuid, cordoned)
            .is_some()
    }

    /// Sets `state.version` to `{version, current}`, or removes it.
    pub fn set_version(&self, runner_uuid: &str, version: Option<(String, String)>) -> bool {
        self.app.lock().set_version(runner_uuid, version).is_some()
    }

    /// Queues a scripted fault. Faults with `count == 0` are ignored.
    pub fn inject(&self, fault: Fault) {
        self.app.lock().inject(fault);
    }

    /// Probabilistic faults on `/2.0` requests that no scripted fault matched
    /// (0.0 disables each).
    pub fn set_random_faults(&self, rate_429: f64, rate_500: f64, retry_after: Option<u64>) {
        self.app.lock().set_random(rate_429, rate_500, retry_after);
    }

    /// Drops queued faults and disables random faults.
    pub fn clear_faults(&self) {
        self.app.lock().clear_faults();
    }

    /// Makes every issued OAuth access token expired.
    pub fn expire_oauth_tokens(&self) {
        self.app.lock().expire_tokens();
    }

    /// Stops the server (in-flight requests finish).
    pub fn shutdown(&self) {
        self.app.trigger_shutdown();
    }

    /// True once shutdown was requested (by [`Self::shutdown`] or `POST /_fake/shutdown`).
    pub fn is_shut_down(&self) -> bool {
        *self.app.shutdown.borrow()
    }

    /// Waits until shutdown is requested, then until the server stopped
    /// (at most `grace` for in-flight connections; then it is aborted).
    pub async fn wait_stopped(&self, grace: Duration) {
        let mut rx = self.app.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
        let task = self
            .app
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}
