//! Parameter Store rules.

use std::time::Instant;

use axum::http::StatusCode;

use super::count;
use crate::recorder::{json_error, Answer, AwsCall, Upstream};

/// Parameter Store's documented standard throughput: 40 transactions per second, shared
/// by GetParameter, GetParameters, GetParametersByPath and PutParameter in an account and
/// Region ("Changing Parameter Store throughput"; "AWS Systems Manager endpoints and
/// quotas").
pub const SSM_STANDARD_TPS: f64 = 40.0;

/// Parameter Store calls that count against its throughput quota.
const SSM_METERED: [&str; 4] = [
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:PutParameter",
];

/// "Changing Parameter Store throughput": above the account's rate AWS answers
/// `ThrottlingException: Rate exceeded`. A token bucket of one second's burst.
pub(super) fn ssm_throttle(up: &Upstream, op: &str) -> Option<Answer> {
    if !SSM_METERED.contains(&op) {
        return None;
    }
    let mut shared = up.shared.lock().unwrap();
    let rules = &mut shared.rules;
    let rate = rules.ssm_rate?;
    let now = Instant::now();
    let (tokens, at) = rules.ssm_bucket.unwrap_or((rate, now));
    let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate);
    if tokens >= 1.0 {
        rules.ssm_bucket = Some((tokens - 1.0, now));
        return None;
    }
    rules.ssm_bucket = Some((tokens, now));
    count(rules, "ssm-throttle");
    Some(json_error(
        StatusCode::BAD_REQUEST,
        "ThrottlingException",
        "Rate exceeded",
    ))
}

/// SSM User Guide, "Requirements and constraints for parameter names": names consist of
/// `a-zA-Z0-9_.-` and `/` for hierarchies, at most 15 levels, at most 1011 characters
/// (AWS_NOTES.md A4). moto accepts braces and a 16th level.
pub fn ssm_name_problem(name: &str) -> Option<String> {
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)))
    {
        return Some(format!(
            "Parameter name: {name:?} contains {c:?}; names may contain only a-zA-Z0-9_.-/"
        ));
    }
    if name.len() > 1011 {
        return Some("Parameter name is longer than 1011 characters".to_owned());
    }
    if name.trim_start_matches('/').split('/').count() > 15 {
        return Some(format!(
            "Parameter name {name:?} has more than 15 hierarchy levels"
        ));
    }
    None
}

pub(super) fn ssm_names(up: &Upstream, call: &AwsCall) -> Option<Answer> {
    if !call.operation.starts_with("ssm:") {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(&call.body).ok()?;
    let mut names: Vec<&str> = ["Name", "Path"]
        .iter()
        .filter_map(|k| body[k].as_str())
        .collect();
    names.extend(
        body["Names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str()),
    );
    // ListTagsForResource / AddTagsToResource name a parameter by ResourceId.
    if body["ResourceType"] == "Parameter" {
        names.extend(body["ResourceId"].as_str());
    }
    let problem = names.iter().find_map(|n| ssm_name_problem(n))?;
    count(&mut up.shared.lock().unwrap().rules, "ssm-name");
    Some(json_error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        &problem,
    ))
}
