//! What EC2 offers for the configured instance types and zones, for pre-flight: which
//! (type, zone) pools exist, each type's vCPUs, and the latest spot price per pool.
//! Read-only; each listing uses the SDK's paginator, bounded to [`MAX_PAGES`] pages.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, LocationType};

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
