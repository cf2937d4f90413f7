//! The unauthenticated admin interface under `/_fake`.
//!
//! - `GET  /_fake/requests`                 recorded requests (JSON array)
//! - `POST /_fake/requests/clear`, `DELETE /_fake/requests`
//! - `GET  /_fake/stats`                    `{"requests": n, "writes": n}`
//! - `GET  /_fake/runners?workspace=&repository=`   runners (no secrets)
//! - `POST /_fake/runners/{uuid}/status`    `{"status": "ONLINE"}`
//! - `POST /_fake/runners/{uuid}/busy`      `{"busy": true}`
//! - `POST /_fake/runners/{uuid}/step_on_disable` `{"busy": true}` arms (`false` disarms) the
//!   drain race: the next API `PUT …/state {"status":"DISABLED"}` gives the runner a step first
//! - `POST /_fake/runners/{uuid}/cordoned`  `{"cordoned": true}`
//! - `POST /_fake/runners/{uuid}/version`   `{"version": "3.10.0", "current": "3.10.0"}` or `{"version": null}`
//! - `POST /_fake/faults`                   see [`parse_fault`]
//! - `DELETE /_fake/faults`                 drop queued and random faults
//! - `POST /_fake/shutdown`

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::api::json_response;
use crate::state::STATUSES;
use crate::util::{decode_segment, parse_query, query_value, resolve_scope};
use crate::{App, Fault};

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": message.into()}))
}

fn ok() -> Response {
    json_response(StatusCode::OK, json!({"ok": true}))
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("body must be a JSON object"),
    }
}

pub(crate) fn handle(
    app: &App,
    method: &Method,
    raw_path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let rest = raw_path.strip_prefix("/_fake").unwrap_or_default();
    let rest = rest.trim_matches('/');
    let mut segs = Vec::new();
    for s in rest.split('/').filter(|s| !s.is_empty()) {
        match decode_segment(s) {
            Some(d) => segs.push(d),
            None => return admin_error(StatusCode::BAD_REQUEST, "bad path encoding"),
        }
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let body = match body_object(body) {
        Ok(b) => b,
        Err(msg) => return admin_error(StatusCode::BAD_REQUEST, msg),
    };

    match (method.clone(), s.as_slice()) {
        (Method::GET, ["requests"]) => {
            let recs: Vec<_> = app.lock().records.iter().cloned().collect();
            match serde_json::to_value(recs) {
                Ok(v) => json_response(StatusCode::OK, v),
                Err(e) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (Method::DELETE, ["requests"]) | (Method::POST, ["requests", "clear"]) => {
            app.lock().clear_records();
            ok()
        }
        (Method::GET, ["stats"]) => {
            let st = app.lock();
            json_response(
                StatusCode::OK,
                json!({
                    "requests": st.total_requests,
                    "writes": st.total_writes,
                    "runners": st.runners.len(),
                    "queued_faults": st.faults.len(),
                }),
            )
        }
        (Method::GET, ["runners"]) => {
            let pairs = query.map(parse_query).unwrap_or_default();
            let default_ws = app
                .cfg
                .workspaces
                .first()
                .map(|w| w.slug.clone())
                .unwrap_or_default();
            let ws = query_value(&pairs, "workspace").unwrap_or(&default_ws);
            let repo = query_value(&pairs, "repository").filter(|r| !r.is_empty());
            let Some(scope) = resolve_scope(&app.cfg, ws, repo) else {
                return admin_error(StatusCode::NOT_FOUND, "unknown workspace or repository");
            };
            let list: Vec<Value> = app
                .lock()
                .runners
                .iter()
                .filter(|r| r.in_scope(&scope))
                .map(|r| r.to_json(None))
                .collect();
            json_response(StatusCode::OK, Value::Array(list))
        }
        (Method::POST, ["runners", uuid, what]) => runner_hook(app, uuid, what, &body),
        (Method::POST, ["faults"]) => match parse_fault(&body) {
            Ok(FaultSpec::Scripted(f)) => {
                app.lock().inject(f);
                ok()
            }
            Ok(FaultSpec::Random {
                rate_429,
                rate_500,
                retry_after,
            }) => {
                app.lock().set_random(rate_429, rate_500, retry_after);
                ok()
            }
            Ok(FaultSpec::Clear) => {
                app.lock().clear_faults();
                ok()
            }
            Err(msg) => admin_error(StatusCode::BAD_REQUEST, msg),
        },
        (Method::DELETE, ["faults"]) => {
            app.lock().clear_faults();
            ok()
        }
        (Method::POST, ["shutdown"]) => {
            app.trigger_shutdown();
            ok()
        }
        _ => admin_error(StatusCode::NOT_FOUND, "unknown admin endpoint"),
    }
}

fn runner_hook(app: &App, uuid: &str, what: &str, body: &Map<String, Value>) -> Response {
    let result = match what {
        "status" => {
            let Some(Value::String(status)) = body.get("status") else {
                return admin_error(StatusCode::BAD_REQUEST, "body needs a string 'status'");
            };
            if !STATUSES
                .iter()
                .any(|s| s.eq_ignore_ascii_case(status.trim()))
            {
                return admin_error(
                    StatusCode::BAD_REQUEST,
                    format!("status must be one of {}", STATUSES.join(", ")),
                );
            }
            app.lock().set_status(uuid, status)
        }
        "busy" => {
            let Some(Value::Bool(busy)) = body.get("busy") else {
                return admin_error(StatusCode::BAD_REQUEST, "body needs a boolean 'busy'");
            };
            app.lock().set_busy(uuid, *busy)
        }
        "step_on_disable" => {
            let Some(Value::Bool(busy)) = body.get("busy") else {
                return admin_error(StatusCode::BAD_REQUEST, "body needs a boolean 'busy'");
            };
            app.lock().set_step_on_disable(uuid, *busy)
        }
        "cordoned" => {
            let Some(Value::Bool(c)) = body.get("cordoned") else {
                return admin_error(StatusCode::BAD_REQUEST, "body needs a boolean 'cordoned'");
            };
            app.lock().set_cordoned(uuid, *c)
        }
        "version" => {
            let version = match (body.get("version"), body.get("current")) {
                (None | Some(Value::Null), _) => None,
                (Some(Value::String(v)), None | Some(Value::Null)) => Some((v.clone(), v.clone())),
                (Some(Value::String(v)), Some(Value::String(c))) => Some((v.clone(), c.clone())),
                _ => {
                    return admin_error(
                        StatusCode::BAD_REQUEST,
                        "body needs 'version' (string or null) and optional 'current'",
                    )
                }
            };
            app.lock().set_version(uuid, version)
        }
        _ => return admin_error(StatusCode::NOT_FOUND, "unknown admin endpoint"),
    };
    match result {
        Some(runner) => json_response(StatusCode::OK, runner),
        None => admin_error(StatusCode::NOT_FOUND, format!("no runner {uuid}")),
    }
}

pub(crate) enum FaultSpec {
    Scripted(Fault),
    Random {
        rate_429: f64,
        rate_500: f64,
        retry_after: Option<u64>,
    },
    Clear,
}

/// Parses `{"kind": …}`: `rate_limit` (`retry_after`, `count`, `path_contains`),
/// `server_error` (`status`), `delay` (`ms`), `malformed_json`, `html_error`,
/// `looping_next`, `client_error` (`status`, `message`), `huge_body` (`bytes`),
/// `truncated_answer`, `processed_server_error` (`status`: handled, then answered 5xx),
/// `processed_drop` (handled, then the connection closed without an answer),
/// `missing_field` (`field`), `wrong_type` (`field`, `value`),
/// `oversized_page` (`values`), `next_link` (`url`), `random` (`rate_429`, `rate_500`, `retry_after`), `clear`.
/// `count` defaults to 1. With `method` (and `skip`), a scripted fault applies only to
/// requests of that method, after `skip` of them.
pub(crate) fn parse_fault(body: &Map<String, Value>) -> Result<FaultSpec, String> {
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("body needs a string 'kind'")?;
    let count = match body.get("count") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("'count' must be a non-negative integer")?,
    };
    let path_contains = match body.get("path_contains") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("'path_contains' must be a string".into()),
    };
    let retry_after = match body.get("retry_after") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("'retry_after' must be a non-negative integer")?,
        ),
    };
    let rate = |key: &str| -> Result<f64, String> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(0.0),
            Some(v) => v
                .as_f64()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(format!("'{key}' must be a number between 0 and 1")),
        }
    };
    let string = |key: &str| -> Result<String, String> {
        body.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(format!("body needs a non-empty string '{key}'"))
    };
    let fault = match kind {
        "rate_limit" => Fault::RateLimit {
            retry_after,
            count,
            path_contains,
        },
        "server_error" => {
            let status = match body.get("status") {
                None | Some(Value::Null) => 500,
                Some(v) => v
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (500..=599).contains(s))
                    .ok_or("'status' must be 500..=599")?,
            };
            Fault::ServerError {
                status,
                count,
                path_contains,
            }
        }
        "delay" => {
            let ms = body
                .get("ms")
                .or_else(|| body.get("duration_ms"))
                .and_then(Value::as_u64)
                .ok_or("'ms' must be a non-negative integer")?;
            Fault::Delay {
                duration: Duration::from_millis(ms.min(600_000)),
                count,
                path_contains,
            }
        }
        "malformed_json" => Fault::MalformedJson {
            count,
            path_contains,
        },
        "html_error" => Fault::HtmlError {
            count,
            path_contains,
        },
        "looping_next" => Fault::LoopingNext { count },
        "client_error" => Fault::ClientError {
            status: body
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..=499).contains(s))
                .ok_or("'status' must be 400..=499")?,
            message: match body.get("message") {
                None | Some(Value::Null) => "Access denied.".to_owned(),
                Some(Value::String(m)) => m.clone(),
                Some(_) => return Err("'message' must be a string".into()),
            },
            count,
            path_contains,
        },
        "huge_body" => Fault::HugeBody {
            bytes: body
                .get("bytes")
                .and_then(Value::as_u64)
                .and_then(|b| usize::try_from(b).ok())
                .filter(|b| *b <= 1 << 32)
                .ok_or("'bytes' must be an integer up to 4 GiB")?,
            count,
            path_contains,
        },
        "processed_server_error" => Fault::ProcessedThenServerError {
            status: match body.get("status") {
                None | Some(Value::Null) => 500,
                Some(v) => v
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (500..=599).contains(s))
                    .ok_or("'status' must be 500..=599")?,
            },
            count,
            path_contains,
        },
        "processed_drop" => Fault::ProcessedThenDrop {
            count,
            path_contains,
        },
        "truncated_answer" => Fault::TruncatedAnswer {
            count,
            path_contains,
        },
        "missing_field" => Fault::MissingField {
            field: string("field")?,
            count,
            path_contains,
        },
        "wrong_type" => Fault::WrongType {
            field: string("field")?,
            value: body.get("value").cloned().ok_or("body needs a 'value'")?,
            count,
            path_contains,
        },
        "oversized_page" => Fault::OversizedPage {
            values: body
                .get("values")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= 1_000_000)
                .ok_or("'values' must be an integer up to 1000000")?,
            count,
            path_contains,
        },
        "next_link" => Fault::NextLink {
            url: string("url")?,
            count,
        },
        "random" => {
            return Ok(FaultSpec::Random {
                rate_429: rate("rate_429")?,
                rate_500: rate("rate_500")?,
                retry_after,
            })
        }
        "clear" => return Ok(FaultSpec::Clear),
        other => return Err(format!("unknown fault kind '{other}'")),
    };
    let fault = match body.get("method") {
        None | Some(Value::Null) => fault,
        Some(Value::String(method))
            if !matches!(fault, Fault::LoopingNext { .. } | Fault::NextLink { .. }) =>
        {
            Fault::OnMethod {
                method: method.to_ascii_uppercase(),
                skip: match body.get("skip") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or("'skip' must be a non-negative integer")?,
                },
                fault: Box::new(fault),
            }
        }
        Some(_) => {
            return Err("'method' must be a string, and not with looping_next or next_link".into())
        }
    };
    Ok(FaultSpec::Scripted(fault))
}
