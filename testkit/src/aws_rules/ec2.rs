//! EC2 request rules: user data size, ClientToken idempotency, a fleet's subnets.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{count, moto_ec2, values, xml_values};
use crate::recorder::{ec2_error, Answer, Upstream};

/// EC2 User Guide, "Run commands when you launch an EC2 instance with user data input":
/// "User data is limited to 16 KB, in raw form, before it is base64-encoded" (gzip counts
/// compressed); AWS answers `InvalidUserData.Malformed: User data is limited to 16384
/// bytes`. moto accepts any size.
pub const USER_DATA_LIMIT: usize = 16_384;

pub(super) fn user_data_size(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
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
pub(super) fn idempotent_replay(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
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

pub(super) fn remember_token(up: &Upstream, op: &str, q: &[(String, String)], answer: &Answer) {
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
pub(super) async fn fleet_subnets(
    up: &Upstream,
    op: &str,
    q: &[(String, String)],
) -> Option<Answer> {
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
