//! The AWS-rules layer of the recording proxy: where moto accepts or answers what AWS
//! would refuse or answer otherwise, the proxy answers as AWS does. Every test, the
//! benchmark and the demo reach moto through it. Each rule names the AWS document it
//! follows; README ("What the tests emulate") lists them, and what only a real account shows.
//!
//! - [`ssm`]: Parameter Store names and throughput;
//! - [`ec2`]: user data size, ClientToken idempotency, a fleet's subnets;
//! - [`fleet`]: what AWS does to a fleet's instances and listings (Spot Fleet and EC2 Fleet);
//! - [`capacity`]: a spot capacity shortage, and the fleets' event history.
//!
//! What moto lacks entirely (ModifyFleet, a Spot Fleet's on-demand part) is added to moto
//! itself, by `testkit/moto_ext` ([`crate::moto`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

use crate::recorder::{ec2_error, Answer, AwsCall, Upstream};

pub mod capacity;
mod ec2;
pub mod fleet;
mod ssm;

pub use capacity::Clip;
pub use ec2::USER_DATA_LIMIT;
pub use fleet::{EC2_FLEET_TAG, FLEET_REQUEST_TAG};
pub use ssm::{ssm_name_problem, SSM_STANDARD_TPS};

/// The layer's settings and memory.
#[derive(Debug, Default)]
pub struct Rules {
    /// Throttle the Parameter Store calls AWS meters above this many per second, with a
    /// burst of one second's worth (off when `None`).
    pub ssm_rate: Option<f64>,
    /// How long a new fleet instance stays out of DescribeSpotFleetInstances and
    /// DescribeFleetInstances answers.
    pub fleet_listing_delay: Duration,
    /// The Spot capacity of the pools of this proxy's fleets: at most this many Spot
    /// instances run in all the fleets (EC2 Fleet and Spot Fleet) this proxy launched
    /// ([`capacity`]); unlimited when `None`.
    pub spot_capacity: Option<u32>,
    ssm_bucket: Option<(f64, Instant)>,
    /// Successful answers to requests with a ClientToken: (operation, token) ->
    /// (digest of the other parameters, the answer).
    tokens: HashMap<(String, String), (String, Answer)>,
    /// When the layer first saw each instance id.
    first_seen: HashMap<String, Instant>,
    /// The launch template (id, version) each fleet launches from now, by fleet id.
    fleet_templates: HashMap<String, (String, String)>,
    /// Instances the layer has seen launched by a fleet (and tagged).
    template_tagged: BTreeSet<String>,
    /// Tags written with CreateTags on Spot Fleet requests, by request id.
    fleet_tags: HashMap<String, BTreeMap<String, String>>,
    /// Every fleet this proxy created, by id: what was asked, and its history.
    fleets: BTreeMap<String, capacity::Fleet>,
    /// Calls the layer answered itself, by rule (for the rule tests).
    pub refused: BTreeMap<&'static str, u32>,
}

/// EC2 operations on which moto ignores DryRun and executes the request (AWS_NOTES.md B3),
/// or has no DryRun handling at all. (ModifySpotFleetRequest takes no DryRun parameter.)
const FLEET_DRY_RUNS: [&str; 5] = [
    "ec2:RequestSpotFleet",
    "ec2:CancelSpotFleetRequests",
    "ec2:CreateFleet",
    "ec2:ModifyFleet",
    "ec2:DeleteFleets",
];

/// The query parameters of an EC2 request, decoded.
fn query(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Values of the query parameters whose name satisfies `name`.
fn values<'a>(q: &'a [(String, String)], name: impl Fn(&str) -> bool + 'a) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| name(k))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The value of the query parameter `name`.
fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn count(rules: &mut Rules, rule: &'static str) {
    *rules.refused.entry(rule).or_default() += 1;
}

/// An answer in place of moto's, or `None` to forward the request.
pub async fn before(up: &Upstream, call: &AwsCall) -> Option<Answer> {
    let op = call.operation.as_str();
    // EC2 API Reference, "Common query parameters" (DryRun): "If you have the required
    // permissions, the error response is DryRunOperation"; HTTP 412 on EC2's query API.
    // Nothing is created. moto executes these requests for real.
    if call.is_dry_run() && FLEET_DRY_RUNS.contains(&op) {
        count(&mut up.shared.lock().unwrap().rules, "dry-run");
        return Some(ec2_error(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    if let Some(answer) = ssm::ssm_throttle(up, op) {
        return Some(answer);
    }
    if let Some(answer) = ssm::ssm_names(up, call) {
        return Some(answer);
    }
    if op.starts_with("ec2:") {
        let q = query(&call.body);
        if let Some(answer) = ec2::user_data_size(up, op, &q) {
            return Some(answer);
        }
        if let Some(answer) = ec2::idempotent_replay(up, op, &q) {
            return Some(answer);
        }
        if let Some(answer) = ec2::fleet_subnets(up, op, &q).await {
            return Some(answer);
        }
        if let Some(answer) = capacity::history(up, op, &q) {
            return Some(answer);
        }
    }
    None
}

/// The request as it goes to moto, where the layer changes it ([`capacity`]); `None`:
/// as the client sent it.
pub async fn rewrite(up: &Upstream, call: &AwsCall) -> Option<Clip> {
    if !call.operation.starts_with("ec2:") {
        return None;
    }
    capacity::clip(up, &call.operation, &query(&call.body)).await
}

/// moto's answer, changed where AWS answers otherwise. `clip`: what [`rewrite`] changed.
pub async fn after(up: &Upstream, call: &AwsCall, clip: Option<&Clip>, answer: Answer) -> Answer {
    let op = call.operation.as_str();
    if !answer.0.is_success() || !op.starts_with("ec2:") {
        return answer;
    }
    let q = query(&call.body);
    ec2::remember_token(up, op, &q, &answer);
    match op {
        "ec2:RequestSpotFleet"
        | "ec2:ModifySpotFleetRequest"
        | "ec2:CreateFleet"
        | "ec2:ModifyFleet" => {
            if let Some(id) = fleet::fleet_id(op, &q, &answer) {
                capacity::remember(up, op, &id, &q, clip);
                fleet::remember_fleet_template(up, &id, &q);
                fleet::tag_fleet_instances(up, &id).await;
            }
            answer
        }
        "ec2:DescribeSpotFleetInstances" | "ec2:DescribeFleetInstances" => {
            fleet::hide_new_instances(up, answer)
        }
        "ec2:CreateTags" => {
            fleet::remember_fleet_tags(up, &q);
            answer
        }
        "ec2:DescribeSpotFleetRequests" | "ec2:DescribeFleets" => {
            fleet::show_fleets(up, op, answer)
        }
        _ => answer,
    }
}

/// One EC2 query call straight to moto (not recorded), returning the answer's XML.
async fn moto_ec2(up: &Upstream, params: &[(&str, &str)]) -> String {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let sent = up
        .http
        .post(format!("{}/", up.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=rules/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A successful EC2 (query protocol) answer with this XML body.
fn ec2_ok(xml: String) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/xml;charset=UTF-8".parse().unwrap());
    (StatusCode::OK, headers, Bytes::from(xml))
}

/// `text` escaped for an XML element.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The texts of every `<name>...</name>` element of an XML answer, in order.
pub fn xml_values(xml: &[u8], name: &str) -> Vec<String> {
    let xml = String::from_utf8_lossy(xml);
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(str::to_owned)
        .collect()
}
