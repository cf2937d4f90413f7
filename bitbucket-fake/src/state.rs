//! In-memory state: runners, schedules, recorded requests, tokens, faults.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::util::{lenient_uuid, now, random_uuid, Scope};
use crate::{Fault, RecordedRequest};

/// Recorded requests kept (oldest dropped first); counters are not capped.
const MAX_RECORDS: usize = 100_000;
/// Issued OAuth tokens kept (oldest dropped first).
const MAX_TOKENS: usize = 10_000;

pub(crate) const STATUSES: [&str; 6] = [
    "UNREGISTERED",
    "ONLINE",
    "OFFLINE",
    "DISABLED",
    "ENABLED",
    "UNHEALTHY",
];

pub(crate) const TOKEN_ENDPOINT: &str = "https://auth.atlassian.com/oauth/token";
pub(crate) const AUDIENCE: &str = "api.atlassian.com";

#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) uuid: String,
    pub(crate) scope: Scope,
    pub(crate) name: String,
    pub(crate) labels: Vec<String>,
    pub(crate) status: String,
    pub(crate) state_updated_on: String,
    pub(crate) cordoned: bool,
    pub(crate) version: Option<(String, String)>,
    pub(crate) step: Option<String>,
    /// The next API disable gives the runner a step first (the drain race).
    pub(crate) step_on_disable: bool,
    pub(crate) created_on: String,
    pub(crate) updated_on: String,
    pub(crate) client_id: String,
}

impl Runner {
    pub(crate) fn in_scope(&self, scope: &Scope) -> bool {
        self.scope == *scope
    }

    /// A `PUT …/state` of the API: a `DISABLED` one armed by `step_on_disable` first
    /// gives the runner a step. The step is kept either way: a disabled runner finishes
    /// its step (BITBUCKET_API.md §3), and only a test hook clears it.
    pub(crate) fn put_state(&mut self, status: &str) {
        if status == "DISABLED" && std::mem::take(&mut self.step_on_disable) {
            self.step.get_or_insert_with(|| random_uuid(4));
        }
        self.status = status.to_owned();
        self.state_updated_on = now();
    }

    /// The runner object; `secret` is only ever passed by the create handler.
    pub(crate) fn to_json(&self, secret: Option<&str>) -> Value {
        let mut state = Map::new();
        state.insert("status".into(), json!(self.status));
        state.insert("updated_on".into(), json!(self.state_updated_on));
        state.insert("cordoned".into(), json!(self.cordoned));
        if let Some((version, current)) = &self.version {
            state.insert(
                "version".into(),
                json!({"version": version, "current": current}),
            );
        }
        if let Some(step) = &self.step {
            state.insert(
                "step".into(),
                json!({"type": "PIPELINE_STEP", "uuid": step}),
            );
        }
        let mut oauth = Map::new();
        oauth.insert("id".into(), json!(self.client_id));
        if let Some(secret) = secret {
            oauth.insert("secret".into(), json!(secret));
        }
        oauth.insert("token_endpoint".into(), json!(TOKEN_ENDPOINT));
        oauth.insert("audience".into(), json!(AUDIENCE));
        json!({
            "uuid": self.uuid,
            "name": self.name,
            "labels": self.labels,
            "state": state,
            "created_on": self.created_on,
            "updated_on": self.updated_on,
            "oauth_client": oauth,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) uuid: String,
    pub(crate) repo_uuid: String,
    pub(crate) enabled: bool,
    pub(crate) target: Value,
    pub(crate) cron_pattern: String,
    pub(crate) created_on: String,
    pub(crate) updated_on: String,
}

impl Schedule {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "type": "pipeline_schedule",
            "uuid": self.uuid,
            "enabled": self.enabled,
            "target": self.target,
            "cron_pattern": self.cron_pattern,
            "created_on": self.created_on,
            "updated_on": self.updated_on,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub(crate) token: String,
    pub(crate) expires_at: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RandomFaults {
    pub(crate) rate_429: f64,
    pub(crate) rate_500: f64,
    pub(crate) retry_after: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) runners: Vec<Runner>,
    pub(crate) schedules: Vec<Schedule>,
    pub(crate) records: VecDeque<RecordedRequest>,
    pub(crate) total_requests: usize,
    pub(crate) total_writes: usize,
    pub(crate) secrets: Vec<String>,
    pub(crate) tokens: VecDeque<IssuedToken>,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) random: Option<RandomFaults>,
    pub(crate) pipeline_counter: u64,
}

/// What a token lookup found.
pub(crate) enum TokenCheck {
    Valid,
    Expired,
    Unknown,
}

pub(crate) fn rate_limit_response(retry_after: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "text/plain")],
        "Rate limit for this resource has been exceeded",
    )
        .into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(crate) fn server_error_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = if status == StatusCode::SERVICE_UNAVAILABLE {
        "Service unavailable"
    } else {
        "Something went wrong"
    };
    crate::api::error(status, message)
}

/// What `take_faults` selected for one request.
#[derive(Default)]
pub(crate) struct TakenFaults {
    /// Sleep first.
    pub(crate) delay: Option<Duration>,
    /// Answer this instead of handling the request.
    pub(crate) terminal: Option<Response>,
    /// Handle the request, then rewrite the answer with this fault.
    pub(crate) rewrite: Option<Fault>,
}

/// `{"values": [], "padding": "xx..."}` of about `bytes` bytes, in 64 KiB chunks without
/// `Content-Length`, so the fake never holds the whole body.
fn huge_body_response(bytes: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunk = axum::body::Bytes::from(vec![b'x'; CHUNK]);
    let head = axum::body::Bytes::from_static(br#"{"values": [], "padding": ""#);
    let tail = axum::body::Bytes::from_static(br#""}"#);
    let chunks = bytes.div_ceil(CHUNK);
    let stream = futures::stream::iter(
        std::iter::once(head)
            .chain(std::iter::repeat_n(chunk, chunks))
            .chain(std::iter::once(tail))
            .map(Ok::<_, std::convert::Infallible>),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Applies a `rewrites_answer` fault to an answer's body.
pub(crate) fn rewrite_answer(fault: &Fault, body: &[u8]) -> Vec<u8> {
    if let Fault::TruncatedAnswer { .. } = fault {
        return body[..body.len() / 2].to_vec();
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    if let (Fault::OversizedPage { values, .. }, Some(Value::Array(items))) =
        (fault, v.get_mut("values"))
    {
        if let Some(first) = items.first().cloned() {
            let more = values.saturating_sub(items.len());
            items.extend(std::iter::repeat_n(first, more));
        }
    }
    let targets: Vec<&mut Value> = match v.get_mut("values") {
        Some(Value::Array(items)) => items.iter_mut().collect(),
        _ => vec![&mut v],
    };
    for target in targets {
        match fault {
            Fault::MissingField { field, .. } => {
                let (parent, last) = split_field(field);
                if let Some(Value::Object(o)) = walk(target, parent) {
                    o.remove(last);
                }
            }
            Fault::WrongType { field, value, .. } => {
                let (parent, last) = split_field(field);
                if let Some(Value::Object(o)) = walk(target, parent) {
                    o.insert(last.to_owned(), value.clone());
                }
            }
            _ => {}
        }
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

/// `filter` occurs in the path; a filter ending in `$` must end it (so
/// `/workspaces/acme$` picks the workspace, not its runners).
fn path_matches(filter: &str, raw_path: &str, decoded_path: &str) -> bool {
    match filter.strip_suffix('$') {
        Some(end) => raw_path.ends_with(end) || decoded_path.ends_with(end),
        None => raw_path.contains(filter) || decoded_path.contains(filter),
    }
}

fn split_field(field: &str) -> (&str, &str) {
    field.rsplit_once('.').unwrap_or(("", field))
}

fn walk<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .filter(|k| !k.is_empty())
        .try_fold(v, |v, k| v.get_mut(k))
}

fn fault_response(fault: &Fault) -> Response {
    match fault {
        Fault::RateLimit { retry_after, .. } => rate_limit_response(*retry_after),
        Fault::ServerError { status, .. } => server_error_response(*status),
        Fault::MalformedJson { .. } => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"values\": [",
        )
            .into_response(),
        Fault::HtmlError { .. } => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Bad gateway</body></html>",
        )
            .into_response(),
        Fault::ClientError {
            status, message, ..
        } => {
            let status = StatusCode::from_u16(*status)
                .ok()
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST);
            crate::api::error(status, message.clone())
        }
        Fault::HugeBody { bytes, .. } => huge_body_response(*bytes),
        // Not response-replacing; never selected as terminal.
        Fault::Delay { .. }
        | Fault::LoopingNext { .. }
        | Fault::NextLink { .. }
        | Fault::OnMethod { .. }
        | Fault::TruncatedAnswer { .. }
        | Fault::ProcessedThenServerError { .. }
        | Fault::ProcessedThenDrop { .. }
        | Fault::MissingField { .. }
        | Fault::WrongType { .. }
        | Fault::OversizedPage { .. } => {
            crate::api::error(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
        }
    }
}

impl State {
    pub(crate) fn record(&mut self, rec: RecordedRequest, counts_as_write: bool) {
        self.total_requests += 1;
        if counts_as_write {
            self.total_writes += 1;
        }
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(rec);
    }

    pub(crate) fn clear_records(&mut self) {
        self.records.clear();
        self.total_requests = 0;
        self.total_writes = 0;
    }

    pub(crate) fn inject(&mut self, fault: Fault) {
        if fault.count() > 0 {
            self.faults.push_back(fault);
        }
    }

    pub(crate) fn set_random(&mut self, rate_429: f64, rate_500: f64, retry_after: Option<u64>) {
        let clamp = |r: f64| {
            if r.is_finite() {
                r.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        let (rate_429, rate_500) = (clamp(rate_429), clamp(rate_500));
        self.random = (rate_429 > 0.0 || rate_500 > 0.0).then_some(RandomFaults {
            rate_429,
            rate_500,
            retry_after,
        });
    }

    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
        self.random = None;
    }

    /// Consumes the faults matching a request: at most one delay, at most one
    /// response-replacing fault (scripted first, else random), and at most one fault
    /// that rewrites the real answer.
    pub(crate) fn take_faults(
        &mut self,
        method: &str,
        raw_path: &str,
        decoded_path: &str,
    ) -> TakenFaults {
        let matches = |f: &Fault| {
            f.count() > 0
                && f.path_filter()
                    .is_none_or(|p| path_matches(p, raw_path, decoded_path))
        };
        let mut taken = TakenFaults::default();
        for fault in self.faults.iter_mut() {
            if !matches(fault) {
                continue;
            }
            let fault: &mut Fault = match fault {
                Fault::OnMethod {
                    method: only,
                    skip,
                    fault: inner,
                } => {
                    if !only.eq_ignore_ascii_case(method) {
                        continue;
                    }
                    if *skip > 0 {
                        *skip -= 1;
                        continue;
                    }
                    inner.as_mut()
                }
                other => other,
            };
            match fault {
                Fault::LoopingNext { .. } | Fault::NextLink { .. } | Fault::OnMethod { .. } => {}
                Fault::Delay {
                    duration, count, ..
                } => {
                    if taken.delay.is_none() {
                        *count -= 1;
                        taken.delay = Some(*duration);
                    }
                }
                f if f.rewrites_answer() => {
                    if taken.rewrite.is_none() {
                        *f.count_mut() -= 1;
                        taken.rewrite = Some(f.clone());
                    }
                }
                other => {
                    if taken.terminal.is_none() {
                        *other.count_mut() -= 1;
                        taken.terminal = Some(fault_response(other));
                    }
                }
            }
        }
        self.faults.retain(|f| f.count() > 0);
        if taken.terminal.is_none() {
            if let Some(r) = self.random {
                if r.rate_429 > 0.0 && fastrand::f64() < r.rate_429 {
                    taken.terminal = Some(rate_limit_response(r.retry_after));
                } else if r.rate_500 > 0.0 && fastrand::f64() < r.rate_500 {
                    taken.terminal = Some(server_error_response(500));
                }
            }
        }
        taken
    }

    /// Consumes one `NextLink`, if queued, and returns its URL.
    pub(crate) fn take_next_link(&mut self) -> Option<String> {
        let pos = self
            .faults
            .iter()
            .position(|f| matches!(f, Fault::NextLink { count, .. } if *count > 0))?;
        let url = match self.faults.get_mut(pos) {
            Some(Fault::NextLink { url, count }) => {
                *count -= 1;
                Some(url.clone())
            }
            _ => None,
        };
        self.faults.retain(|f| f.count() > 0);
        url
    }

    /// Consumes one `LoopingNext`, if queued.
    pub(crate) fn take_looping_next(&mut self) -> bool {
        let pos = self
            .faults
            .iter()
            .position(|f| matches!(f, Fault::LoopingNext { count } if *count > 0));
        let Some(pos) = pos else { return false };
        if let Some(f) = self.faults.get_mut(pos) {
            *f.count_mut() -= 1;
        }
        self.faults.retain(|f| f.count() > 0);
        true
    }

    pub(crate) fn issue_token(&mut self, token: String, expires_in: u64) {
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.pop_front();
        }
        let ttl = Duration::from_secs(expires_in.min(10 * 365 * 24 * 3600));
        self.tokens.push_back(IssuedToken {
            token,
            expires_at: Instant::now() + ttl,
        });
    }

    pub(crate) fn check_token(&self, token: &str) -> TokenCheck {
        match self.tokens.iter().find(|t| t.token == token) {
            Some(t) if Instant::now() < t.expires_at => TokenCheck::Valid,
            Some(_) => TokenCheck::Expired,
            None => TokenCheck::Unknown,
        }
    }

    pub(crate) fn expire_tokens(&mut self) {
        let now = Instant::now();
        for t in self.tokens.iter_mut() {
            t.expires_at = now;
        }
    }

    /// Any scope; uuid with or without braces.
    pub(crate) fn runner_mut(&mut self, uuid: &str) -> Option<&mut Runner> {
        let uuid = lenient_uuid(uuid)?;
        self.runners.iter_mut().find(|r| r.uuid == uuid)
    }

    pub(crate) fn set_status(&mut self, uuid: &str, status: &str) -> Option<Value> {
        let status = STATUSES
            .iter()
            .find(|s| s.eq_ignore_ascii_case(status.trim()))?;
        let r = self.runner_mut(uuid)?;
        r.status = (*status).to_owned();
        r.state_updated_on = now();
        Some(r.to_json(None))
    }

    pub(crate) fn set_busy(&mut self, uuid: &str, busy: bool) -> Option<Value> {
        let r = self.runner_mut(uuid)?;
        if busy {
            if r.step.is_none() {
                r.step = Some(random_uuid(4));
            }
        } else {
            r.step = None;
        }
        Some(r.to_json(None))
    }

    pub(crate) fn set_step_on_disable(&mut self, uuid: &str, armed: bool) -> Option<Value> {
        let r = self.runner_mut(uuid)?;
        r.step_on_disable = armed;
        Some(r.to_json(None))
    }

    pub(crate) fn set_cordoned(&mut self, uuid: &str, cordoned: bool) -> Option<Value> {
        let r = self.runner_mut(uuid)?;
        r.cordoned = cordoned;
        Some(r.to_json(None))
    }

    pub(crate) fn set_version(
        &mut self,
        uuid: &str,
        version: Option<(String, String)>,
    ) -> Option<Value> {
        let r = self.runner_mut(uuid)?;
        r.version = version;
        Some(r.to_json(None))
    }
}
