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
    pub(crate) created_on: String,
    pub(crate) updated_on: String,
    pub(crate) client_id: String,
}

impl Runner {
    pub(crate) fn in_scope(&self, scope: &Scope) -> bool {
        self.scope == *scope
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
        // Not response-replacing; never selected as terminal.
        Fault::Delay { .. } | Fault::LoopingNext { .. } => {
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

    /// Consumes the faults matching a request: at most one delay, and at most
    /// one response-replacing fault (scripted first, else random).
    pub(crate) fn take_faults(
        &mut self,
        raw_path: &str,
        decoded_path: &str,
    ) -> (Option<Duration>, Option<Response>) {
        let matches = |f: &Fault| {
            f.count() > 0
                && f.path_filter()
                    .is_none_or(|p| raw_path.contains(p) || decoded_path.contains(p))
        };
        let mut delay = None;
        let mut terminal = None;
        for fault in self.faults.iter_mut() {
            if !matches(fault) {
                continue;
            }
            match fault {
                Fault::LoopingNext { .. } => {}
                Fault::Delay {
                    duration, count, ..
                } => {
                    if delay.is_none() {
                        *count -= 1;
                        delay = Some(*duration);
                    }
                }
                other => {
                    if terminal.is_none() {
                        *other.count_mut() -= 1;
                        terminal = Some(fault_response(other));
                    }
                }
            }
        }
        self.faults.retain(|f| f.count() > 0);
        if terminal.is_none() {
            if let Some(r) = self.random {
                if r.rate_429 > 0.0 && fastrand::f64() < r.rate_429 {
                    terminal = Some(rate_limit_response(r.retry_after));
                } else if r.rate_500 > 0.0 && fastrand::f64() < r.rate_500 {
                    terminal = Some(server_error_response(500));
                }
            }
        }
        (delay, terminal)
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
