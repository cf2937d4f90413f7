//! The request handler: recording, latency, faults, auth, and the `/2.0`,
//! `/internal` and OAuth routes.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use crate::conn::KillSwitch;
use crate::state::{Runner, Schedule, TokenCheck, STATUSES};
use crate::util::{
    alnum, braced_uuid, decode_segment, find_repo, find_workspace, now, parse_query, query_value,
    random_uuid, Scope, BUILTIN_LABELS,
};
use crate::{App, AuthKind, RecordedRequest, WorkspaceSpec};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
const DEFAULT_PAGELEN: usize = 10;
const MAX_PAGELEN: usize = 100;
const OAUTH_PATH: &str = "/site/oauth2/access_token";
const INVALID_TOKEN: &str = "Token is invalid, expired, or not supported for this endpoint.";

pub(crate) fn json_response(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

/// The common error envelope (§8).
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(
        status,
        json!({"type": "error", "error": {"message": message.into()}}),
    )
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

/// A 4xx error, rendered as the envelope.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, message)
}

fn method_not_allowed(method: &Method) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} is not allowed on this resource."),
    )
}

fn unauthorized(message: &str, basic_challenge: bool) -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, message);
    if basic_challenge {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Bitbucket.org HTTP\""),
        );
    }
    resp
}

/// What the handlers need from a request.
pub(crate) struct Req<'a> {
    pub(crate) method: &'a Method,
    pub(crate) raw_path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) host: String,
    pub(crate) body: &'a [u8],
}

impl Req<'_> {
    /// The body as a JSON object, or a 400 response.
    fn json_object(&self) -> Result<Map<String, Value>, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(bad("A JSON request body is required."));
        }
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(bad("The request body must be a JSON object.")),
            Err(e) => Err(bad(format!("Malformed JSON request body: {e}"))),
        }
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        self.query.map(parse_query).unwrap_or_default()
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The body as recorded: JSON, or a JSON string for other text.
fn recorded_body(body: &[u8]) -> Option<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
    )
}

/// Entry point for every request.
pub(crate) async fn handle(AxState(app): AxState<Arc<App>>, req: Request) -> Response {
    let at = std::time::SystemTime::now();
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let body = axum::body::to_bytes(body, MAX_BODY).await;

    if raw_path == "/_fake" || raw_path.starts_with("/_fake/") {
        return match body {
            Ok(bytes) => {
                crate::admin::handle(&app, &parts.method, &raw_path, query.as_deref(), &bytes)
            }
            Err(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
        };
    }

    if !app.cfg.latency.is_zero() {
        tokio::time::sleep(app.cfg.latency).await;
    }

    let decoded = percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let is_oauth = raw_path.trim_end_matches('/') == OAUTH_PATH;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| app.public_addr().to_string());

    let (auth, resp, rec_body) = match body {
        Err(_) => (
            AuthKind::None,
            error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
            None,
        ),
        Ok(bytes) if is_oauth => {
            let (auth, resp) = oauth(&app, &parts.method, &parts.headers, &bytes);
            (auth, resp, None)
        }
        Ok(bytes) => {
            let req = Req {
                method: &parts.method,
                raw_path: &raw_path,
                query: query.as_deref(),
                host,
                body: &bytes,
            };
            let (auth, resp) = api(&app, &parts.headers, &req, &decoded).await;
            (auth, resp, recorded_body(&bytes))
        }
    };

    // A handled request whose connection is closed without an answer.
    let drop_switch = resp
        .extensions()
        .get::<DropConnection>()
        .and_then(|_| parts.extensions.get::<ConnectInfo<KillSwitch>>())
        .map(|ConnectInfo(switch)| switch.clone());
    let rec = RecordedRequest {
        method: parts.method.to_string(),
        path: decoded,
        query,
        auth,
        status: if drop_switch.is_some() {
            0
        } else {
            resp.status().as_u16()
        },
        body: rec_body,
        at,
    };
    app.lock().record(rec, !is_oauth && is_write(&parts.method));
    if let Some(switch) = drop_switch {
        switch.trip();
    }
    resp
}

/// Checks the `Authorization` header of an API request.
fn authenticate(app: &App, headers: &HeaderMap) -> (AuthKind, Result<(), Response>) {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return (
            AuthKind::None,
            Err(unauthorized("Authentication required.", true)),
        );
    };
    let invalid = |basic: bool| (AuthKind::Invalid, Err(unauthorized(INVALID_TOKEN, basic)));
    let Ok(value) = value.to_str() else {
        return invalid(true);
    };
    let (scheme, cred) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        match decode_basic(cred) {
            Some((user, pass))
                if app
                    .cfg
                    .basic_users
                    .iter()
                    .any(|(u, p)| *u == user && *p == pass) =>
            {
                (AuthKind::Basic, Ok(()))
            }
            _ => invalid(true),
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if !cred.is_empty() && app.cfg.bearer_tokens.iter().any(|t| t == cred) {
            return (AuthKind::Bearer, Ok(()));
        }
        match app.lock().check_token(cred) {
            TokenCheck::Valid => (AuthKind::Bearer, Ok(())),
            TokenCheck::Expired => (
                AuthKind::Invalid,
                Err(unauthorized("Access token expired.", false)),
            ),
            TokenCheck::Unknown => invalid(false),
        }
    } else {
        invalid(true)
    }
}

fn decode_basic(cred: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cred)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// `/2.0` and `/internal` requests: faults, then auth, then routing.
async fn api(app: &App, headers: &HeaderMap, req: &Req<'_>, decoded: &str) -> (AuthKind, Response) {
    let (auth, auth_result) = authenticate(app, headers);
    let is_api = req.raw_path.starts_with("/2.0/") || req.raw_path.starts_with("/internal/");
    if is_api {
        let taken = app
            .lock()
            .take_faults(req.method.as_str(), req.raw_path, decoded);
        if let Some(d) = taken.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(resp) = taken.terminal {
            return (auth, resp);
        }
        if let Some(fault) = taken.rewrite {
            let (auth, resp) = authorized(app, auth, auth_result, req, is_api).await;
            return (auth, rewrite(&fault, resp).await);
        }
    }
    authorized(app, auth, auth_result, req, is_api).await
}

/// The answer after faults: the auth error, or the routed answer under the rate limit.
async fn authorized(
    app: &App,
    auth: AuthKind,
    auth_result: Result<(), Response>,
    req: &Req<'_>,
    is_api: bool,
) -> (AuthKind, Response) {
    if let Err(resp) = auth_result {
        return (auth, resp);
    }
    match app.cfg.hourly_limit.filter(|_| is_api) {
        None => (auth, route(app, req)),
        Some(limit) => {
            let used = app
                .rate_used
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            let mut resp = if used > limit {
                crate::state::rate_limit_response(None)
            } else {
                route(app, req)
            };
            let h = resp.headers_mut();
            h.insert("X-RateLimit-Limit", HeaderValue::from(limit));
            h.insert("X-RateLimit-Resource", HeaderValue::from_static("api"));
            if used * 5 >= limit * 4 {
                h.insert("X-RateLimit-NearLimit", HeaderValue::from_static("true"));
            }
            (auth, resp)
        }
    }
}

/// Marks an answer the connection must not carry: the client gets no answer at all.
#[derive(Debug, Clone, Copy)]
struct DropConnection;

/// Applies a rewriting fault to a handled answer, keeping its status and content type
/// (but for the faults that replace the answer of a handled request).
async fn rewrite(fault: &crate::Fault, resp: Response) -> Response {
    match fault {
        crate::Fault::ProcessedThenServerError { status, .. } => {
            return crate::state::server_error_response(*status)
        }
        crate::Fault::ProcessedThenDrop { .. } => {
            let mut resp = resp;
            resp.extensions_mut().insert(DropConnection);
            return resp;
        }
        _ => {}
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY * 16).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "answer too large to rewrite",
        );
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = crate::state::rewrite_answer(fault, &bytes);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Splits a path remainder into decoded segments, ignoring one trailing slash.
fn segments(rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(ApiError(StatusCode::NOT_FOUND, "Resource not found".into()));
        }
        match decode_segment(seg) {
            Some(s) => out.push(s),
            None => return Err(bad("Invalid percent-encoding in path.")),
        }
    }
    Ok(out)
}

fn route(app: &App, req: &Req<'_>) -> Response {
    let (internal, rest) = if let Some(rest) = req.raw_path.strip_prefix("/2.0/") {
        (false, rest)
    } else if let Some(rest) = req.raw_path.strip_prefix("/internal/") {
        (true, rest)
    } else {
        return not_found("Resource not found");
    };
    let segs = match segments(rest) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();

    if internal {
        return match s.as_slice() {
            ["workspaces", ws, "pipelines-config", "runners", r, "state"] => {
                with_scope(app, ws, None, |scope| runner_state(app, req, scope, r))
            }
            ["repositories", ws, repo, "pipelines-config", "runners", r, "state"] => {
                with_scope(app, ws, Some(*repo), |scope| {
                    runner_state(app, req, scope, r)
                })
            }
            _ => not_found("Resource not found"),
        };
    }

    match s.as_slice() {
        ["workspaces", ws] => match find_workspace(&app.cfg, ws) {
            None => workspace_not_found(ws),
            Some(w) if *req.method == Method::GET => {
                json_response(StatusCode::OK, workspace_json(w))
            }
            Some(_) => method_not_allowed(req.method),
        },
        ["workspaces", ws, "pipelines-config", "runners"] => {
            with_scope(app, ws, None, |scope| runners_collection(app, req, scope))
        }
        ["workspaces", ws, "pipelines-config", "runners", r] => {
            with_scope(app, ws, None, |scope| runner_item(app, req, scope, r))
        }
        ["repositories", ws, repo] => {
            let Some(w) = find_workspace(&app.cfg, ws) else {
                return workspace_not_found(ws);
            };
            match find_repo(w, repo) {
                None => repo_not_found(ws, repo),
                Some(r) if *req.method == Method::GET => {
                    json_response(StatusCode::OK, repo_json(w, r))
                }
                Some(_) => method_not_allowed(req.method),
            }
        }
        ["repositories", ws, repo, "pipelines-config", "runners"] => {
            with_scope(app, ws, Some(*repo), |scope| {
                runners_collection(app, req, scope)
            })
        }
        ["repositories", ws, repo, "pipelines-config", "runners", r] => {
            with_scope(app, ws, Some(*repo), |scope| {
                runner_item(app, req, scope, r)
            })
        }
        ["repositories", ws, repo, "pipelines_config", "schedules"] => {
            with_scope(app, ws, Some(*repo), |scope| {
                schedules_collection(app, req, scope)
            })
        }
        ["repositories", ws, repo, "pipelines_config", "schedules", id] => {
            with_scope(app, ws, Some(*repo), |scope| {
                schedule_item(app, req, scope, id)
            })
        }
        ["repositories", ws, repo, "pipelines_config", "schedules", id, "executions"] => {
            with_scope(app, ws, Some(*repo), |scope| {
                schedule_executions(app, req, scope, id)
            })
        }
        ["repositories", ws, repo, "pipelines"] => {
            with_scope(app, ws, Some(*repo), |_| trigger_pipeline(app, req))
        }
        _ => not_found("Resource not found"),
    }
}

fn workspace_not_found(ws: &str) -> Response {
    not_found(format!("No workspace with identifier '{ws}'."))
}

fn repo_not_found(ws: &str, repo: &str) -> Response {
    not_found(format!("Repository {ws}/{repo} not found"))
}

fn with_scope(
    app: &App,
    ws: &str,
    repo: Option<&str>,
    f: impl FnOnce(Scope) -> Response,
) -> Response {
    let Some(w) = find_workspace(&app.cfg, ws) else {
        return workspace_not_found(ws);
    };
    let repo_uuid = match repo {
        None => None,
        Some(r) => match find_repo(w, r) {
            Some(spec) => Some(spec.uuid.clone()),
            None => return repo_not_found(ws, r),
        },
    };
    f(Scope {
        ws_uuid: w.uuid.clone(),
        repo_uuid,
    })
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn workspace_json(w: &WorkspaceSpec) -> Value {
    json!({
        "type": "workspace",
        "uuid": w.uuid,
        "slug": w.slug,
        "name": capitalize(&w.slug),
        "is_private": true,
        "links": {
            "html": {"href": format!("https://bitbucket.org/{}/", w.slug)},
        },
    })
}

fn repo_json(w: &WorkspaceSpec, r: &crate::RepoSpec) -> Value {
    json!({
        "type": "repository",
        "uuid": r.uuid,
        "full_name": format!("{}/{}", w.slug, r.slug),
        "name": r.slug,
        "slug": r.slug,
        "is_private": true,
        "workspace": {
            "type": "workspace",
            "uuid": w.uuid,
            "slug": w.slug,
            "name": capitalize(&w.slug),
        },
    })
}

/// Builds a page of `items` (§2.5), or a 400 for bad `page`/`pagelen`.
fn paginate(app: &App, req: &Req<'_>, items: Vec<Value>) -> Response {
    let pairs = req.query_pairs();
    let page = match query_value(&pairs, "page") {
        None => 1,
        Some(p) => match p.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return bad_request(format!("Invalid page '{p}': must be an integer >= 1.")),
        },
    };
    let pagelen = match query_value(&pairs, "pagelen") {
        None => DEFAULT_PAGELEN,
        Some(p) => match p.trim().parse::<i64>() {
            Ok(n) if n >= 1 => usize::try_from(n).unwrap_or(MAX_PAGELEN).min(MAX_PAGELEN),
            _ => {
                return bad_request(format!(
                    "Invalid pagelen '{p}': must be an integer between 1 and {MAX_PAGELEN}."
                ))
            }
        },
    };
    let size = items.len();
    let start = (page - 1).saturating_mul(pagelen);
    let values: Vec<Value> = items.into_iter().skip(start).take(pagelen).collect();
    let url = |p: usize| {
        format!(
            "http://{}{}?page={p}&pagelen={pagelen}",
            req.host, req.raw_path
        )
    };
    let mut body = Map::new();
    body.insert("page".into(), json!(page));
    body.insert("pagelen".into(), json!(pagelen));
    body.insert("size".into(), json!(size));
    body.insert("values".into(), Value::Array(values));
    let next_link = app.lock().take_next_link();
    if let Some(next) = next_link {
        body.insert("next".into(), json!(next));
    } else if app.lock().take_looping_next() {
        body.insert("next".into(), json!(url(page)));
    } else if page.saturating_mul(pagelen) < size {
        body.insert("next".into(), json!(url(page + 1)));
    }
    if page > 1 {
        body.insert("previous".into(), json!(url(page - 1)));
    }
    json_response(StatusCode::OK, Value::Object(body))
}

/// Validates `labels`; `None` when the key is absent.
fn validate_labels(app: &App, v: Option<&Value>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(bad("labels: must be an array of strings."));
    };
    let mut labels = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(label) = item else {
            return Err(bad("labels: must be an array of strings."));
        };
        if !app.labels.matches(label) {
            return Err(bad(format!(
                "labels: invalid label '{label}': labels may only contain lowercase letters, digits and dots (must match {}).",
                app.labels.source()
            )));
        }
        if !labels.contains(label) {
            labels.push(label.clone());
        }
    }
    let custom = labels
        .iter()
        .filter(|l| !BUILTIN_LABELS.contains(&l.as_str()))
        .count();
    if custom > app.cfg.max_custom_labels {
        return Err(bad(format!(
            "labels: at most {} custom labels are allowed besides self.hosted and the platform label (got {custom}).",
            app.cfg.max_custom_labels
        )));
    }
    Ok(Some(labels))
}

fn validate_name(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad("name: must not be empty.")),
        Some(_) => Err(bad("name: must be a string.")),
    }
}

fn runners_collection(app: &App, req: &Req<'_>, scope: Scope) -> Response {
    match *req.method {
        Method::GET => {
            let items: Vec<Value> = app
                .lock()
                .runners
                .iter()
                .filter(|r| r.in_scope(&scope))
                .map(|r| r.to_json(None))
                .collect();
            paginate(app, req, items)
        }
        Method::POST => create_runner(app, req, scope),
        _ => method_not_allowed(req.method),
    }
}

fn create_runner(app: &App, req: &Req<'_>, scope: Scope) -> Response {
    let body = match req.json_object() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let name = match validate_name(body.get("name")) {
        Ok(Some(n)) => n,
        Ok(None) => return bad_request("name: this field is required."),
        Err(e) => return e.into_response(),
    };
    let labels = match validate_labels(app, body.get("labels")) {
        Ok(Some(l)) => l,
        Ok(None) => vec!["self.hosted".to_owned(), "linux".to_owned()],
        Err(e) => return e.into_response(),
    };
    let requested_uuid = match body.get("uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => match braced_uuid(u.trim()) {
            Some(u) => Some(u),
            None => return bad_request("uuid: must be a UUID in braces."),
        },
        Some(_) => return bad_request("uuid: must be a UUID in braces."),
    };

    let mut st = app.lock();
    if let Some(u) = &requested_uuid {
        if st.runners.iter().any(|r| r.uuid == *u) {
            return error(
                StatusCode::CONFLICT,
                format!("A runner with UUID {u} already exists."),
            );
        }
    }
    let in_scope = st.runners.iter().filter(|r| r.in_scope(&scope)).count();
    if in_scope >= app.cfg.runner_limit {
        return bad_request(format!(
            "Runner limit exceeded: a {} may have at most {} runners",
            scope.noun(),
            app.cfg.runner_limit
        ));
    }
    let uuid = requested_uuid.unwrap_or_else(|| {
        // Bounded retry against the (astronomically unlikely) collision.
        let mut u = random_uuid(5);
        for _ in 0..8 {
            if !st.runners.iter().any(|r| r.uuid == u) {
                break;
            }
            u = random_uuid(5);
        }
        u
    });
    let ts = now();
    let secret = format!("{}{}", app.cfg.secret_prefix, alnum(40));
    let runner = Runner {
        uuid,
        scope,
        name,
        labels,
        status: "UNREGISTERED".to_owned(),
        state_updated_on: ts.clone(),
        cordoned: false,
        version: None,
        step: None,
        step_on_disable: false,
        created_on: ts.clone(),
        updated_on: ts,
        client_id: alnum(32),
    };
    let out = runner.to_json(Some(&secret));
    st.runners.push(runner);
    st.secrets.push(secret);
    json_response(StatusCode::OK, out)
}

fn runner_not_found(uuid: &str) -> Response {
    not_found(format!("Runner {uuid} not found."))
}

fn runner_index(st: &crate::state::State, scope: &Scope, uuid: &str) -> Option<usize> {
    let uuid = braced_uuid(uuid)?;
    st.runners
        .iter()
        .position(|r| r.uuid == uuid && r.in_scope(scope))
}

fn runner_item(app: &App, req: &Req<'_>, scope: Scope, uuid: &str) -> Response {
    match *req.method {
        Method::GET => {
            let st = app.lock();
            match runner_index(&st, &scope, uuid) {
                Some(i) => json_response(StatusCode::OK, st.runners[i].to_json(None)),
                None => runner_not_found(uuid),
            }
        }
        Method::PUT => {
            if runner_index(&app.lock(), &scope, uuid).is_none() {
                return runner_not_found(uuid);
            }
            let body = match req.json_object() {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let name = match validate_name(body.get("name")) {
                Ok(n) => n,
                Err(e) => return e.into_response(),
            };
            let labels = match validate_labels(app, body.get("labels")) {
                Ok(l) => l,
                Err(e) => return e.into_response(),
            };
            let mut st = app.lock();
            let Some(i) = runner_index(&st, &scope, uuid) else {
                return runner_not_found(uuid);
            };
            let r = &mut st.runners[i];
            if let Some(n) = name {
                r.name = n;
            }
            if let Some(l) = labels {
                r.labels = l;
            }
            r.updated_on = now();
            json_response(StatusCode::OK, r.to_json(None))
        }
        Method::DELETE => {
            let mut st = app.lock();
            match runner_index(&st, &scope, uuid) {
                Some(i) => {
                    st.runners.remove(i);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => runner_not_found(uuid),
            }
        }
        _ => method_not_allowed(req.method),
    }
}

/// `PUT /internal/…/runners/{uuid}/state` with `{"status": …}`.
fn runner_state(app: &App, req: &Req<'_>, scope: Scope, uuid: &str) -> Response {
    if *req.method != Method::PUT {
        return method_not_allowed(req.method);
    }
    if runner_index(&app.lock(), &scope, uuid).is_none() {
        return runner_not_found(uuid);
    }
    let body = match req.json_object() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Some(Value::String(status)) = body.get("status") else {
        return bad_request("status: this field is required.");
    };
    let Some(status) = STATUSES.iter().find(|s| **s == status.as_str()) else {
        return bad_request(format!("status: '{status}' is not a valid runner status."));
    };
    let mut st = app.lock();
    let Some(i) = runner_index(&st, &scope, uuid) else {
        return runner_not_found(uuid);
    };
    let r = &mut st.runners[i];
    r.put_state(status);
    json_response(StatusCode::OK, r.to_json(None))
}

const SELECTOR_TYPES: [&str; 5] = ["branches", "tags", "bookmarks", "default", "custom"];

/// Validates a pipeline target (§7.1/§7.2).
fn validate_target(v: Option<&Value>) -> Result<Value, ApiError> {
    let Some(Value::Object(target)) = v else {
        return Err(bad("target: this field is required and must be an object."));
    };
    match target.get("ref_type") {
        Some(Value::String(t)) if t == "branch" => {}
        Some(_) => return Err(bad("target.ref_type: must be 'branch'.")),
        None => return Err(bad("target.ref_type: this field is required.")),
    }
    match target.get("ref_name") {
        Some(Value::String(n)) if !n.trim().is_empty() => {}
        _ => return Err(bad("target.ref_name: this field is required.")),
    }
    let Some(Value::Object(selector)) = target.get("selector") else {
        return Err(bad("target.selector: this field is required."));
    };
    match selector.get("type") {
        None => {}
        Some(Value::String(t)) if SELECTOR_TYPES.contains(&t.as_str()) => {}
        Some(_) => {
            return Err(bad(format!(
                "target.selector.type: must be one of {}.",
                SELECTOR_TYPES.join(", ")
            )))
        }
    }
    if let Some(p) = selector.get("pattern") {
        if !p.is_string() {
            return Err(bad("target.selector.pattern: must be a string."));
        }
    }
    Ok(Value::Object(target.clone()))
}

fn schedules_collection(app: &App, req: &Req<'_>, scope: Scope) -> Response {
    let repo_uuid = scope.repo_uuid.unwrap_or_default();
    match *req.method {
        Method::GET => {
            let items: Vec<Value> = app
                .lock()
                .schedules
                .iter()
                .filter(|s| s.repo_uuid == repo_uuid)
                .map(Schedule::to_json)
                .collect();
            paginate(app, req, items)
        }
        Method::POST => {
            let body = match req.json_object() {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let target = match validate_target(body.get("target")) {
                Ok(t) => t,
                Err(e) => return e.into_response(),
            };
            let cron = match body.get("cron_pattern") {
                Some(Value::String(c)) if c.split_whitespace().count() == 7 => c.clone(),
                Some(Value::String(_)) => {
                    return bad_request(
                        "cron_pattern: must have 7 fields (seconds minutes hours day-of-month month day-of-week year).",
                    )
                }
                _ => return bad_request("cron_pattern: this field is required."),
            };
            let enabled = match body.get("enabled") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return bad_request("enabled: must be a boolean."),
            };
            let mut st = app.lock();
            let count = st
                .schedules
                .iter()
                .filter(|s| s.repo_uuid == repo_uuid)
                .count();
            if count >= app.cfg.schedule_limit {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "The maximum limit of schedules for this repository was reached.",
                );
            }
            let ts = now();
            let sched = Schedule {
                uuid: random_uuid(4),
                repo_uuid,
                enabled,
                target,
                cron_pattern: cron,
                created_on: ts.clone(),
                updated_on: ts,
            };
            let out = sched.to_json();
            st.schedules.push(sched);
            json_response(StatusCode::CREATED, out)
        }
        _ => method_not_allowed(req.method),
    }
}

fn schedule_index(st: &crate::state::State, repo_uuid: &str, id: &str) -> Option<usize> {
    let id = braced_uuid(id)?;
    st.schedules
        .iter()
        .position(|s| s.uuid == id && s.repo_uuid == repo_uuid)
}

fn schedule_not_found(id: &str) -> Response {
    not_found(format!("Schedule {id} not found."))
}

fn schedule_item(app: &App, req: &Req<'_>, scope: Scope, id: &str) -> Response {
    let repo_uuid = scope.repo_uuid.unwrap_or_default();
    match *req.method {
        Method::GET => {
            let st = app.lock();
            match schedule_index(&st, &repo_uuid, id) {
                Some(i) => json_response(StatusCode::OK, st.schedules[i].to_json()),
                None => schedule_not_found(id),
            }
        }
        Method::PUT => {
            if schedule_index(&app.lock(), &repo_uuid, id).is_none() {
                return schedule_not_found(id);
            }
            let body = match req.json_object() {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            let Some(Value::Bool(enabled)) = body.get("enabled") else {
                return bad_request("enabled: this field is required and must be a boolean.");
            };
            let mut st = app.lock();
            let Some(i) = schedule_index(&st, &repo_uuid, id) else {
                return schedule_not_found(id);
            };
            let s = &mut st.schedules[i];
            s.enabled = *enabled;
            s.updated_on = now();
            json_response(StatusCode::OK, s.to_json())
        }
        Method::DELETE => {
            let mut st = app.lock();
            match schedule_index(&st, &repo_uuid, id) {
                Some(i) => {
                    st.schedules.remove(i);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => schedule_not_found(id),
            }
        }
        _ => method_not_allowed(req.method),
    }
}

fn schedule_executions(app: &App, req: &Req<'_>, scope: Scope, id: &str) -> Response {
    if *req.method != Method::GET {
        return method_not_allowed(req.method);
    }
    let repo_uuid = scope.repo_uuid.unwrap_or_default();
    if schedule_index(&app.lock(), &repo_uuid, id).is_none() {
        return schedule_not_found(id);
    }
    paginate(app, req, Vec::new())
}

/// `POST /2.0/repositories/{ws}/{repo}/pipelines` (§7.2).
fn trigger_pipeline(app: &App, req: &Req<'_>) -> Response {
    if *req.method != Method::POST {
        return method_not_allowed(req.method);
    }
    let body = match req.json_object() {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let target = match validate_target(body.get("target")) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match body.get("variables") {
        None | Some(Value::Null) => {}
        Some(Value::Array(vars)) => {
            for v in vars {
                let ok = v.get("key").is_some_and(Value::is_string)
                    && v.get("value").is_some_and(Value::is_string);
                if !ok {
                    return bad_request("variables: each entry needs string 'key' and 'value'.");
                }
            }
        }
        Some(_) => return bad_request("variables: must be an array."),
    }
    let build_number = {
        let mut st = app.lock();
        st.pipeline_counter += 1;
        st.pipeline_counter
    };
    json_response(
        StatusCode::CREATED,
        json!({
            "type": "pipeline",
            "uuid": random_uuid(4),
            "build_number": build_number,
            "state": {"type": "pipeline_state_pending", "name": "PENDING"},
            "target": target,
            "created_on": now(),
        }),
    )
}

/// `POST /site/oauth2/access_token` (client credentials grant).
fn oauth(app: &App, method: &Method, headers: &HeaderMap, body: &[u8]) -> (AuthKind, Response) {
    let oauth_error = |status: StatusCode, code: &str, desc: &str| {
        json_response(status, json!({"error": code, "error_description": desc}))
    };
    if *method != Method::POST {
        return (
            AuthKind::None,
            oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "Use POST.",
            ),
        );
    }
    let form = parse_query(&String::from_utf8_lossy(body));
    let (auth, creds) = match headers.get(header::AUTHORIZATION) {
        Some(v) => {
            let creds = v.to_str().ok().and_then(|v| {
                let (scheme, cred) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("basic")
                    .then(|| decode_basic(cred.trim()))
                    .flatten()
            });
            (AuthKind::Invalid, creds)
        }
        None => {
            let creds = query_value(&form, "client_id")
                .zip(query_value(&form, "client_secret"))
                .map(|(i, s)| (i.to_owned(), s.to_owned()));
            (AuthKind::None, creds)
        }
    };
    let Some((id, secret)) = creds else {
        return (
            auth,
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client credentials missing; use HTTP Basic auth with client_id:client_secret.",
            ),
        );
    };
    if !app
        .cfg
        .oauth_clients
        .iter()
        .any(|(i, s)| *i == id && *s == secret)
    {
        return (
            auth,
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Invalid client_id or client_secret.",
            ),
        );
    }
    let auth = if auth == AuthKind::Invalid {
        AuthKind::Basic
    } else {
        auth
    };
    match query_value(&form, "grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return (
                auth,
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("Unsupported grant type: {other}"),
                ),
            )
        }
        None => {
            return (
                auth,
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing grant_type.",
                ),
            )
        }
    }
    let token = alnum(64);
    app.lock()
        .issue_token(token.clone(), app.cfg.oauth_expires_in);
    (
        auth,
        json_response(
            StatusCode::OK,
            json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": app.cfg.oauth_expires_in,
                "scopes": "pipeline runner account",
                "refresh_token": alnum(32),
                "state": "client_credentials",
            }),
        ),
    )
}
