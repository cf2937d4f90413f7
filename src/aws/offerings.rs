//! What EC2 offers for the configured instance types and zones, for pre-flight: which
//! (type, zone) pools exist, each type's vCPUs, the latest spot price per pool, and the
//! Spot placement score of each zone.
//! Read-only; each listing uses the SDK's paginator, bounded to [`MAX_PAGES`] pages.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, LocationType, TargetCapacityUnitType};
use aws_smithy_runtime_api::client::result::SdkError;

use super::AwsError;

/// Pages read from one listing at most.
pub const MAX_PAGES: usize = 20;

/// An instance type in an availability zone.
pub type Pool = (String, String);

fn filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

/// The (type, zone) pools EC2 offers among `types` × `azs` (DescribeInstanceTypeOfferings).
pub async fn offered_pools(
    ec2: &aws_sdk_ec2::Client,
    types: &[String],
    azs: &[String],
) -> Result<BTreeSet<Pool>, AwsError> {
    let mut offered = BTreeSet::new();
    let mut pages = ec2
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(filter("instance-type", types))
        .filters(filter("location", azs))
        .into_paginator()
        .send();
    for _ in 0..MAX_PAGES {
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| AwsError::call("ec2:DescribeInstanceTypeOfferings", e))?;
        for o in page.instance_type_offerings() {
            if let (Some(t), Some(az)) = (o.instance_type(), o.location()) {
                if types.iter().any(|c| c == t.as_str()) && azs.iter().any(|a| a == az) {
                    offered.insert((t.as_str().to_owned(), az.to_owned()));
                }
            }
        }
    }
    Ok(offered)
}

/// Default vCPUs of each of `types` (DescribeInstanceTypes).
pub async fn vcpus(
    ec2: &aws_sdk_ec2::Client,
    types: &[String],
) -> Result<BTreeMap<String, i32>, AwsError> {
    let out = ec2
        .describe_instance_types()
        .set_instance_types(Some(types.iter().map(|t| t.as_str().into()).collect()))
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:DescribeInstanceTypes", e))?;
    Ok(out
        .instance_types()
        .iter()
        .filter_map(|t| {
            Some((
                t.instance_type()?.as_str().to_owned(),
                t.v_cpu_info()?.default_v_cpus()?,
            ))
        })
        .collect())
}

/// The latest Linux spot price of each pool among `types` × `azs`, $/h
/// (DescribeSpotPriceHistory from now: the current price of each pool).
pub async fn spot_prices(
    ec2: &aws_sdk_ec2::Client,
    types: &[String],
    azs: &[String],
) -> Result<BTreeMap<Pool, f64>, AwsError> {
    let mut latest: BTreeMap<Pool, (i64, f64)> = BTreeMap::new();
    let mut pages = ec2
        .describe_spot_price_history()
        .set_instance_types(Some(types.iter().map(|t| t.as_str().into()).collect()))
        .product_descriptions("Linux/UNIX")
        .start_time(aws_smithy_types::DateTime::from(
            std::time::SystemTime::now(),
        ))
        .filters(filter("availability-zone", azs))
        .into_paginator()
        .send();
    for _ in 0..MAX_PAGES {
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| AwsError::call("ec2:DescribeSpotPriceHistory", e))?;
        for p in page.spot_price_history() {
            let (Some(t), Some(az), Some(price)) = (
                p.instance_type(),
                p.availability_zone(),
                p.spot_price().and_then(|s| s.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if !azs.iter().any(|a| a == az) || !types.iter().any(|c| c == t.as_str()) {
                continue;
            }
            let at = p.timestamp().map_or(0, |d| d.secs());
            let key = (t.as_str().to_owned(), az.to_owned());
            if latest.get(&key).is_none_or(|(seen, _)| at >= *seen) {
                latest.insert(key, (at, price));
            }
        }
    }
    Ok(latest.into_iter().map(|(k, (_, p))| (k, p)).collect())
}

/// The Spot placement score (1 to 10) of each availability zone, by zone id (`use1-az1`),
/// or why the endpoint gave none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementScores {
    /// Zone id -> score, for the zones AWS scored (its top 10 at most).
    Scored(BTreeMap<String, i32>),
    /// The endpoint does not serve GetSpotPlacementScores (an answer without an AWS error
    /// code, or an "unknown action" code): what it answered.
    NotServed(String),
}

/// Error codes with which an EC2-compatible endpoint says it has no such action.
const NOT_SERVED_CODES: &[&str] = &["InvalidAction", "NotImplemented", "UnsupportedOperation"];

/// Attempts for a placement score call: one retry. The score is advice for pre-flight,
/// not worth the six attempts (and their back-off) of the calls apply depends on.
const SCORE_ATTEMPTS: u32 = 2;

/// Spot placement scores of `region`'s availability zones for `types` and `target`
/// instances (ec2:GetSpotPlacementScores, `SingleAvailabilityZone=true`).
///
/// API reference (EC2 API Reference, GetSpotPlacementScores; EC2 User Guide, "Spot
/// placement score"): `InstanceTypes` or `InstanceRequirementsWithMetadata`, not both;
/// `TargetCapacity` is required, in `TargetCapacityUnitType` (default `units`, i.e.
/// instances, as bbfleet counts runners); `RegionNames` filters the regions scored (this
/// call names one); the answer holds the top 10 regions or zones, each scored 1 (not likely
/// to succeed) to 10 (highly likely), paginated with `NextToken`. Limits: the target
/// capacity is capped by the account's recent Spot usage (a low default without any), new
/// request configurations may be limited per 24 hours, and fewer than three instance types
/// always score low.
pub async fn placement_scores(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    types: &[String],
    target: u32,
) -> Result<PlacementScores, AwsError> {
    const OP: &str = "ec2:GetSpotPlacementScores";
    let mut scores = BTreeMap::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let answer = ec2
            .get_spot_placement_scores()
            .set_instance_types(Some(types.to_vec()))
            .target_capacity(i32::try_from(target.max(1)).unwrap_or(i32::MAX))
            .target_capacity_unit_type(TargetCapacityUnitType::Units)
            .single_availability_zone(true)
            .region_names(region)
            .set_next_token(token.take())
            .customize()
            .config_override(aws_sdk_ec2::config::Builder::default().retry_config(
                aws_config::retry::RetryConfig::standard().with_max_attempts(SCORE_ATTEMPTS),
            ))
            .send()
            .await;
        let page = match answer {
            Ok(page) => page,
            Err(e) => return score_error(OP, e),
        };
        for s in page.spot_placement_scores() {
            let in_region = s.region().is_none_or(|r| r == region);
            if let (true, Some(zone), Some(score)) =
                (in_region, s.availability_zone_id(), s.score())
            {
                scores.insert(zone.to_owned(), score);
            }
        }
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(PlacementScores::Scored(scores))
}

/// A failed score call: [`PlacementScores::NotServed`] when the endpoint does not know the
/// action (an answer without an AWS error code, or an "unknown action" code), else the error.
fn score_error<E, R>(
    operation: &'static str,
    e: SdkError<E, R>,
) -> Result<PlacementScores, AwsError>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + super::HttpStatus,
{
    let not_served = match &e {
        SdkError::ServiceError(se) => se
            .err()
            .code()
            .is_none_or(|code| NOT_SERVED_CODES.contains(&code)),
        _ => false,
    };
    match (not_served, AwsError::call(operation, e)) {
        (true, AwsError::Call { message, .. }) => Ok(PlacementScores::NotServed(message)),
        (_, err) => Err(err),
    }
}

/// Zone id (`use1-az1`) -> zone name (`us-east-1a`) of the given subnets' zones
/// (DescribeSubnets answers both; zone names map to different physical zones in each
/// account, zone ids do not, and placement scores name zone ids).
pub async fn zone_ids(
    ec2: &aws_sdk_ec2::Client,
    subnet_ids: &[String],
) -> Result<BTreeMap<String, String>, AwsError> {
    let out = ec2
        .describe_subnets()
        .set_subnet_ids(Some(subnet_ids.to_vec()))
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:DescribeSubnets", e))?;
    Ok(out
        .subnets()
        .iter()
        .filter_map(|s| {
            Some((
                s.availability_zone_id()?.to_owned(),
                s.availability_zone()?.to_owned(),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::operation::get_spot_placement_scores::GetSpotPlacementScoresError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: Option<&str>) -> Result<PlacementScores, AwsError> {
        let mut meta = ErrorMetadata::builder().message("text");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::from(""));
        let e = SdkError::service_error(GetSpotPlacementScoresError::generic(meta.build()), raw);
        score_error("ec2:GetSpotPlacementScores", e)
    }

    #[test]
    fn an_endpoint_without_the_action_is_told_apart_from_a_refusal() {
        assert_eq!(
            answer(500, None).unwrap(),
            PlacementScores::NotServed("HTTP 500 without an AWS error in the body".to_owned())
        );
        assert_eq!(
            answer(400, Some("InvalidAction")).unwrap(),
            PlacementScores::NotServed("InvalidAction: text".to_owned())
        );
        let refused = answer(403, Some("UnauthorizedOperation")).unwrap_err();
        assert!(
            refused.to_string().contains("UnauthorizedOperation: text"),
            "{refused}"
        );
    }
}
