//! The AWS-rules layer of the recording proxy: where moto accepts or answers what AWS
//! would refuse or answer otherwise, the proxy answers as AWS does. Every test, the
//! benchmark and the demo reach moto through it. Each rule names the AWS document it
//! follows; README ("What the tests emulate") lists them, and what only a real account shows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::recorder::{ec2_error, json_error, Answer, AwsCall, Upstream};

/// The tag AWS puts on every instance a Spot Fleet launches (EC2 User Guide, "Tag a Spot
/// Fleet": "Amazon EC2 adds the tag aws:ec2spot:fleet-request-id to instances launched by
/// a Spot Fleet"); moto does not, so the layer adds it.
pub const FLEET_REQUEST_TAG: &str = "aws:ec2spot:fleet-request-id";

/// Parameter Store's documented standard throughput: 40 transactions per second, shared
/// by GetParameter, GetParameters, GetParametersByPath and PutParameter in an account and
/// Region ("Changing Parameter Store throughput"; "AWS Systems Manager endpoints and
/// quotas").
pub const SSM_STANDARD_TPS: f64 = 40.0;

/// The layer's settings and memory.
#[derive(Debug, Default)]
pub struct Rules {
    /// Throttle the Parameter Store calls AWS meters ([`SSM_METERED`]) above this many
    /// per second, with a burst of one second's worth (off when `None`).
    pub ssm_rate: Option<f64>,
    /// How long a new fleet instance stays out of DescribeSpotFleetInstances answers.
    pub fleet_listing_delay: Duration,
    ssm_bucket: Option<(f64, Instant)>,
    /// Successful answers to requests with a ClientToken: (operation, token) ->
    /// (digest of the other parameters, the answer).
    tokens: HashMap<(String, String), (String, Answer)>,
    /// When the layer first saw each instance id.
    first_seen: HashMap<String, Instant>,
    /// The launch template (id, version) each Spot Fleet request launches from now.
    fleet_templates: HashMap<String, (String, String)>,
    /// Instances the layer gave their launch template tags.
    template_tagged: BTreeSet<String>,
    /// Tags written with CreateTags on Spot Fleet requests, by request id.
    fleet_tags: HashMap<String, BTreeMap<String, String>>,
    /// Calls the layer answered itself, by rule (for the rule tests).
    pub refused: BTreeMap<&'static str, u32>,
}

/// EC2 operations on which moto ignores DryRun and executes the request (AWS_NOTES.md B3),
/// or has no DryRun handling at all. (ModifySpotFleetRequest takes no DryRun parameter.)
const FLEET_DRY_RUNS: [&str; 4] = [
    "ec2:RequestSpotFleet",
    "ec2:CancelSpotFleetRequests",
    "ec2:CreateFleet",
    "ec2:DeleteFleets",
];

/// Parameter Store calls that count against its throughput quota.
const SSM_METERED: [&str; 4] = [
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:PutParameter",
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
    if let Some(answer) = ssm_throttle(up, op) {
        return Some(answer);
    }
    if let Some(answer) = ssm_names(up, call) {
        return Some(answer);
    }
    if op.starts_with("ec2:") {
        let q = query(&call.body);
        if let Some(answer) = user_data_size(up, op, &q) {
            return Some(answer);
        }
        if let Some(answer) = idempotent_replay(up, op, &q) {
            return Some(answer);
        }
        if let Some(answer) = fleet_subnets(up, op, &q).await {
            return Some(answer);
        }
    }
    None
}

/// moto's answer, changed where AWS answers otherwise.
pub async fn after(up: &Upstream, call: &AwsCall, answer: Answer) -> Answer {
    let op = call.operation.as_str();
    if !answer.0.is_success() || !op.starts_with("ec2:") {
        return answer;
    }
    let q = query(&call.body);
    remember_token(up, op, &q, &answer);
    match op {
        "ec2:RequestSpotFleet" | "ec2:ModifySpotFleetRequest" => {
            let id = if op == "ec2:RequestSpotFleet" {
                xml_values(&answer.2, "spotFleetRequestId")
                    .into_iter()
                    .next()
            } else {
                values(&q, |k| k == "SpotFleetRequestId")
                    .first()
                    .map(|s| s.to_string())
            };
            if let Some(id) = id {
                remember_fleet_template(up, op, &id, &q);
                tag_fleet_instances(up, &id).await;
            }
            answer
        }
        "ec2:DescribeSpotFleetInstances" => hide_new_instances(up, answer),
        "ec2:CreateTags" => {
            remember_fleet_tags(up, &q);
            answer
        }
        "ec2:DescribeSpotFleetRequests" => show_fleet_tags(up, answer),
        _ => answer,
    }
}

/// EC2 API Reference, CreateTags: "Adds or overwrites only the specified tags for the
/// specified Amazon EC2 resource", a Spot Fleet request included (EC2 User Guide, "Tag a
/// Spot Fleet"), and DescribeSpotFleetRequests then shows them. moto accepts the call but
/// keeps a request's tags from its creation only, so the layer remembers them.
fn remember_fleet_tags(up: &Upstream, q: &[(String, String)]) {
    let ids: Vec<&str> = values(q, |k| k.starts_with("ResourceId."))
        .into_iter()
        .filter(|id| id.starts_with("sfr-"))
        .collect();
    if ids.is_empty() {
        return;
    }
    let tags: BTreeMap<String, String> = crate::iam::query::q_tag_list(q, "").into_iter().collect();
    let mut shared = up.shared.lock().unwrap();
    for id in ids {
        let known = shared.rules.fleet_tags.entry(id.to_owned()).or_default();
        known.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// DescribeSpotFleetRequests with the tags [`remember_fleet_tags`] kept: each request's
/// remembered tag replaces the value of the same key in its `tagSet`, or is added.
fn show_fleet_tags(up: &Upstream, answer: Answer) -> Answer {
    let remembered = up.shared.lock().unwrap().rules.fleet_tags.clone();
    if remembered.is_empty() {
        return answer;
    }
    let (status, headers, body) = answer;
    let xml = String::from_utf8_lossy(&body).into_owned();
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml.as_str();
    // Each request is one top-level <item> of spotFleetRequestConfigSet.
    while let Some((before, item, after)) = top_level_item(rest) {
        out.push_str(before);
        let id = xml_values(item.as_bytes(), "spotFleetRequestId")
            .into_iter()
            .next()
            .unwrap_or_default();
        match remembered.get(&id) {
            Some(tags) => out.push_str(&retag(item, tags)),
            None => out.push_str(item),
        }
        rest = after;
    }
    out.push_str(rest);
    (status, headers, Bytes::from(out))
}

/// The first `<item>...</item>` of `xml` with its nested items, and what is around it.
fn top_level_item(xml: &str) -> Option<(&str, &str, &str)> {
    let start = xml.find("<item>")?;
    let mut depth = 0usize;
    let mut at = start;
    while at < xml.len() {
        let open = xml[at..].find("<item>").map(|i| i + at);
        let close = xml[at..].find("</item>").map(|i| i + at)?;
        match open {
            Some(o) if o < close => {
                depth += 1;
                at = o + "<item>".len();
            }
            _ => {
                depth -= 1;
                at = close + "</item>".len();
                if depth == 0 {
                    return Some((&xml[..start], &xml[start..at], &xml[at..]));
                }
            }
        }
    }
    None
}

/// `item` with each of `tags` set in its `tagSet`.
fn retag(item: &str, tags: &BTreeMap<String, String>) -> String {
    let mut item = item.to_owned();
    for (k, v) in tags {
        let key = format!("<key>{k}</key>");
        match item.find(&key) {
            Some(at) => {
                let after = at + key.len();
                if let (Some(vs), Some(ve)) = (
                    item[after..].find("<value>"),
                    item[after..].find("</value>"),
                ) {
                    item.replace_range(after + vs + "<value>".len()..after + ve, v);
                }
            }
            None => {
                if let Some(at) = item.find("<tagSet>") {
                    item.insert_str(
                        at + "<tagSet>".len(),
                        &format!("<item><key>{k}</key><value>{v}</value></item>"),
                    );
                }
            }
        }
    }
    item
}

// ---- SSM ----

/// "Changing Parameter Store throughput": above the account's rate AWS answers
/// `ThrottlingException: Rate exceeded`. A token bucket of one second's burst.
fn ssm_throttle(up: &Upstream, op: &str) -> Option<Answer> {
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

fn ssm_names(up: &Upstream, call: &AwsCall) -> Option<Answer> {
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

// ---- EC2 ----

/// EC2 User Guide, "Run commands when you launch an EC2 instance with user data input":
/// "User data is limited to 16 KB, in raw form, before it is base64-encoded" (gzip counts
/// compressed); AWS answers `InvalidUserData.Malformed: User data is limited to 16384
/// bytes`. moto accepts any size.
pub const USER_DATA_LIMIT: usize = 16_384;

fn user_data_size(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
    let key = match op {
        "ec2:CreateLaunchTemplate" | "ec2:CreateLaunchTemplateVersion" => {
            "LaunchTemplateData.UserData"
        }
        "ec2:RunInstances" => "UserData",
        _ => return None,
    };
    let encoded = values(q, |k| k == key).into_iter().next()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_or(encoded.len(), |b| b.len());
    if raw <= USER_DATA_LIMIT {
        return None;
    }
    count(&mut up.shared.lock().unwrap().rules, "user-data-size");
    Some(ec2_error(
        StatusCode::BAD_REQUEST,
        "InvalidUserData.Malformed",
        &format!("User data is limited to {USER_DATA_LIMIT} bytes"),
    ))
}

/// Operations whose ClientToken AWS honours (EC2 API Reference, "Ensuring idempotency in
/// Amazon EC2 API requests"); moto ignores the token.
const IDEMPOTENT: [&str; 3] = [
    "ec2:RequestSpotFleet",
    "ec2:CreateFleet",
    "ec2:RunInstances",
];

/// The token of an idempotent request and a digest of its other parameters.
fn token_and_digest(op: &str, q: &[(String, String)]) -> Option<(String, String)> {
    if !IDEMPOTENT.contains(&op) {
        return None;
    }
    let token = q
        .iter()
        .find(|(k, _)| k == "ClientToken" || k.ends_with(".ClientToken"))?
        .1
        .clone();
    let mut rest: Vec<&(String, String)> = q
        .iter()
        .filter(|(k, _)| k != "ClientToken" && !k.ends_with(".ClientToken"))
        .collect();
    rest.sort();
    let digest = Sha256::digest(format!("{rest:?}"));
    Some((token, format!("{digest:x}")))
}

/// "Ensuring idempotency": a repeated token with the same parameters returns the first
/// request's result, even if that resource is gone since; with other parameters,
/// `IdempotentParameterMismatch`.
fn idempotent_replay(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
    let (token, digest) = token_and_digest(op, q)?;
    let mut shared = up.shared.lock().unwrap();
    let (first, answer) = shared.rules.tokens.get(&(op.to_owned(), token.clone()))?;
    if *first == digest {
        let answer = answer.clone();
        count(&mut shared.rules, "client-token-replay");
        return Some(answer);
    }
    count(&mut shared.rules, "client-token-mismatch");
    Some(ec2_error(
        StatusCode::BAD_REQUEST,
        "IdempotentParameterMismatch",
        &format!("The client token {token} was used with different parameters"),
    ))
}

fn remember_token(up: &Upstream, op: &str, q: &[(String, String)], answer: &Answer) {
    if let Some((token, digest)) = token_and_digest(op, q) {
        up.shared
            .lock()
            .unwrap()
            .rules
            .tokens
            .entry((op.to_owned(), token))
            .or_insert_with(|| (digest, answer.clone()));
    }
}

/// A fleet's pools are (instance type, subnet): two subnets of one AZ make duplicate
/// pools (CreateFleet answers `InvalidFleetConfig: The fleet configuration contains
/// duplicate instance pools`; AWS_NOTES.md A1: "One fleet can't ... use two subnets of the
/// same AZ"), and a fleet's subnets share one VPC. moto accepts both.
async fn fleet_subnets(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
    let code = match op {
        "ec2:RequestSpotFleet" => "InvalidSpotFleetRequestConfig",
        "ec2:CreateFleet" => "InvalidFleetConfig",
        _ => return None,
    };
    let subnets: BTreeSet<&str> =
        values(q, |k| k.contains(".Overrides.") && k.ends_with(".SubnetId"))
            .into_iter()
            .collect();
    if subnets.len() < 2 {
        return None;
    }
    let found = describe_subnets(up, &subnets).await;
    let mut zones = BTreeMap::new();
    let mut vpcs = BTreeSet::new();
    let mut problem = None;
    for (subnet, az, vpc) in &found {
        vpcs.insert(vpc.clone());
        if let Some(other) = zones.insert(az.clone(), subnet.clone()) {
            problem = Some(format!(
                "The fleet configuration contains duplicate instance pools: subnets {other} and {subnet} are both in {az}"
            ));
        }
    }
    if problem.is_none() && vpcs.len() > 1 {
        problem = Some(format!(
            "The fleet's subnets are in more than one VPC: {}",
            vpcs.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let problem = problem?;
    count(&mut up.shared.lock().unwrap().rules, "fleet-subnets");
    Some(ec2_error(StatusCode::BAD_REQUEST, code, &problem))
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

/// (subnet, AZ, VPC) of each subnet moto knows.
async fn describe_subnets(up: &Upstream, ids: &BTreeSet<&str>) -> Vec<(String, String, String)> {
    let mut params = vec![("Action", "DescribeSubnets"), ("Version", "2016-11-15")];
    let keys: Vec<String> = (1..=ids.len()).map(|i| format!("SubnetId.{i}")).collect();
    params.extend(keys.iter().map(String::as_str).zip(ids.iter().copied()));
    let xml = moto_ec2(up, &params).await;
    xml.split("<item>")
        .skip(1)
        .filter_map(|item| {
            let one = |n: &str| xml_values(item.as_bytes(), n).into_iter().next();
            Some((one("subnetId")?, one("availabilityZone")?, one("vpcId")?))
        })
        .collect()
}

/// The launch template version a request names (RequestSpotFleet, or a
/// ModifySpotFleetRequest that changes LaunchTemplateConfigs): new instances launch from it.
fn remember_fleet_template(up: &Upstream, op: &str, id: &str, q: &[(String, String)]) {
    let spec = if op == "ec2:RequestSpotFleet" {
        "SpotFleetRequestConfig.LaunchTemplateConfigs.1.LaunchTemplateSpecification"
    } else {
        "LaunchTemplateConfig.1.LaunchTemplateSpecification"
    };
    let lt = values(q, |k| k == format!("{spec}.LaunchTemplateId"));
    let version = values(q, |k| k == format!("{spec}.Version"));
    if let (Some(lt), Some(version)) = (lt.first(), version.first()) {
        up.shared
            .lock()
            .unwrap()
            .rules
            .fleet_templates
            .insert(id.to_owned(), (lt.to_string(), version.to_string()));
    }
}

/// EC2 User Guide, "Launch EC2 instances using a launch template": instances launched
/// from a launch template carry the tags `aws:ec2launchtemplate:id` and
/// `aws:ec2launchtemplate:version`. moto's Spot Fleet copies the newest version's data and
/// tags neither, so the layer tags each new instance of a request with the version the
/// request names (AWS launches from that version).
async fn tag_template_versions(up: &Upstream, id: &str, instances: &[String]) {
    let (template, fresh) = {
        let mut shared = up.shared.lock().unwrap();
        let template = shared.rules.fleet_templates.get(id).cloned();
        let fresh: Vec<String> = instances
            .iter()
            .filter(|i| shared.rules.template_tagged.insert((*i).clone()))
            .cloned()
            .collect();
        (template, fresh)
    };
    let Some((lt, version)) = template else {
        return;
    };
    for instance in fresh {
        moto_ec2(
            up,
            &[
                ("Action", "CreateTags"),
                ("Version", "2016-11-15"),
                ("ResourceId.1", &instance),
                ("Tag.1.Key", "aws:ec2launchtemplate:id"),
                ("Tag.1.Value", &lt),
                ("Tag.2.Key", "aws:ec2launchtemplate:version"),
                ("Tag.2.Value", &version),
            ],
        )
        .await;
    }
}

/// Tags the fleet's instances with [`FLEET_REQUEST_TAG`], as AWS does at launch.
async fn tag_fleet_instances(up: &Upstream, id: &str) {
    let xml = moto_ec2(
        up,
        &[
            ("Action", "DescribeSpotFleetInstances"),
            ("Version", "2016-11-15"),
            ("SpotFleetRequestId", id),
        ],
    )
    .await;
    let instances = xml_values(xml.as_bytes(), "instanceId");
    if instances.is_empty() {
        return;
    }
    tag_template_versions(up, id, &instances).await;
    let keys: Vec<String> = (1..=instances.len())
        .map(|i| format!("ResourceId.{i}"))
        .collect();
    let mut params = vec![
        ("Action", "CreateTags"),
        ("Version", "2016-11-15"),
        ("Tag.1.Key", FLEET_REQUEST_TAG),
        ("Tag.1.Value", id),
    ];
    params.extend(
        keys.iter()
            .map(String::as_str)
            .zip(instances.iter().map(String::as_str)),
    );
    moto_ec2(up, &params).await;
}

/// EC2 API Reference, DescribeSpotFleetInstances: the list "is refreshed periodically
/// and might be out of date". With `fleet_listing_delay`, an instance stays unlisted for
/// that long after the layer first saw it.
fn hide_new_instances(up: &Upstream, answer: Answer) -> Answer {
    let (status, headers, body) = answer;
    let mut shared = up.shared.lock().unwrap();
    let delay = shared.rules.fleet_listing_delay;
    let now = Instant::now();
    let xml = String::from_utf8_lossy(&body).into_owned();
    let mut parts = xml.split("<item>");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for item in parts {
        let id = xml_values(item.as_bytes(), "instanceId")
            .into_iter()
            .next()
            .unwrap_or_default();
        let seen = *shared.rules.first_seen.entry(id).or_insert(now);
        if now.duration_since(seen) >= delay {
            out.push_str("<item>");
            out.push_str(item);
        } else {
            // Keep what follows the item's end (the closing of the list).
            let tail = item.split_once("</item>").map_or("", |(_, t)| t);
            out.push_str(tail);
        }
    }
    (status, headers, Bytes::from(out))
}
