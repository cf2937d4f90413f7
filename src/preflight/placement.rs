//! The `placement scores` check: how likely EC2 says a Spot request for the fleet's
//! instance types and capacity is to be fulfilled, per configured availability zone.

use std::collections::BTreeMap;

use super::{Check, Status};
use crate::aws::offerings::PlacementScores;
use crate::aws::AwsError;

/// The check's name.
pub(super) const NAME: &str = "placement scores";

/// A zone scoring at most this is low; the check warns when every configured zone is
/// low. Scores run from 1 ("not likely to succeed") to 10 ("highly likely"); each assumes
/// the whole capacity in that one zone, while the fleet spreads over all configured zones,
/// so a middling score per zone still fills a spread fleet: only the bottom three, in every
/// zone at once, say the request will likely stay short.
pub const LOW_SCORE: i32 = 3;

/// Fewer instance types than this always score low (EC2 User Guide, "Spot placement
/// score", Limitations).
const MIN_TYPES: usize = 3;

/// The capacity scored: the larger of the desired capacity and `capacity.max` (at least
/// 1, the API's minimum). The fleet reaches `capacity.max` at a schedule window's or the
/// autoscaler's peak without another plan, and a score for fewer instances would look
/// better than what the fleet will ask for then.
pub fn scored_capacity(desired: u32, max: u32) -> u32 {
    desired.max(max).max(1)
}

/// The check from the answers of GetSpotPlacementScores and DescribeSubnets (zone id ->
/// zone name), for the configured zones `azs` (names).
pub(super) fn check(
    scores: Result<PlacementScores, AwsError>,
    zones: Result<BTreeMap<String, String>, AwsError>,
    azs: &[String],
    types: usize,
    target: u32,
) -> Check {
    match (scores, zones) {
        (Ok(PlacementScores::Scored(scores)), Ok(zones)) => {
            judge(&by_zone_name(&scores, &zones), azs, types, target)
        }
        (Ok(PlacementScores::NotServed(answer)), _) => Check::new(
            NAME,
            Status::Unknown,
            format!("ec2:GetSpotPlacementScores is not reachable here ({answer}); no scores"),
        ),
        (Err(e), _) | (_, Err(e)) => Check::from_error(NAME, e),
    }
}

/// Scores keyed by zone name, for the zones `zones` names.
pub fn by_zone_name(
    scores: &BTreeMap<String, i32>,
    zones: &BTreeMap<String, String>,
) -> BTreeMap<String, i32> {
    scores
        .iter()
        .filter_map(|(id, score)| Some((zones.get(id)?.clone(), *score)))
        .collect()
}

/// Judges the scores (by zone name) of the configured zones.
pub fn judge(scores: &BTreeMap<String, i32>, azs: &[String], types: usize, target: u32) -> Check {
    let per_zone: Vec<String> = azs
        .iter()
        .map(|az| match scores.get(az) {
            Some(s) => format!("{az} {s}"),
            None => format!("{az} not scored"),
        })
        .collect();
    let what = format!(
        "{target} instance(s) of {types} type(s) in one zone: {} (1-10, 10 = highly likely)",
        per_zone.join(", ")
    );
    let few = if types < MIN_TYPES {
        format!("; AWS scores fewer than {MIN_TYPES} instance types low")
    } else {
        String::new()
    };
    if azs.iter().all(|az| !scores.contains_key(az)) {
        return Check::new(
            NAME,
            Status::Unknown,
            format!("{what}: AWS scored none of the configured zones"),
        );
    }
    // A zone missing from the answer ranks below the top 10 AWS returns: low too.
    if azs
        .iter()
        .all(|az| scores.get(az).is_none_or(|s| *s <= LOW_SCORE))
    {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "{what}: every configured zone scores {LOW_SCORE} or less, spot capacity is likely to stay short; add instance types or zones{few}"
            ),
        );
    }
    Check::new(NAME, Status::Ok, format!("{what}{few}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[(&str, i32)]) -> BTreeMap<String, i32> {
        v.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
    }

    fn azs() -> Vec<String> {
        vec!["eu-west-1a".to_owned(), "eu-west-1b".to_owned()]
    }

    #[test]
    fn scores_are_named_by_zone_and_warn_only_when_every_zone_is_low() {
        let zones: BTreeMap<String, String> = [
            ("euw1-az3", "eu-west-1a"),
            ("euw1-az1", "eu-west-1b"),
            ("euw1-az2", "eu-west-1c"),
        ]
        .iter()
        .map(|(i, n)| ((*i).to_owned(), (*n).to_owned()))
        .collect();
        let answer = map(&[("euw1-az3", 2), ("euw1-az1", 8), ("euw1-az2", 9)]);
        let named = by_zone_name(&answer, &zones);
        assert_eq!(
            named,
            map(&[("eu-west-1a", 2), ("eu-west-1b", 8), ("eu-west-1c", 9)])
        );
        let c = check(Ok(PlacementScores::Scored(answer)), Ok(zones), &azs(), 3, 8);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "8 instance(s) of 3 type(s) in one zone: eu-west-1a 2, eu-west-1b 8 (1-10, 10 = highly likely)"
        );
        let low = judge(&map(&[("eu-west-1a", 3)]), &azs(), 2, 8);
        assert_eq!(low.status, Status::Warn);
        assert!(
            low.detail.contains("eu-west-1a 3, eu-west-1b not scored")
                && low
                    .detail
                    .contains("every configured zone scores 3 or less")
                && low
                    .detail
                    .ends_with("AWS scores fewer than 3 instance types low"),
            "{}",
            low.detail
        );
        let none = judge(&map(&[("eu-west-1c", 9)]), &azs(), 3, 8);
        assert_eq!(none.status, Status::Unknown);
    }

    #[test]
    fn an_endpoint_without_the_api_leaves_the_scores_unknown() {
        let c = check(
            Ok(PlacementScores::NotServed(
                "HTTP 500 without an AWS error in the body".to_owned(),
            )),
            Ok(BTreeMap::new()),
            &azs(),
            3,
            8,
        );
        assert_eq!(
            (c.status, c.detail.as_str()),
            (
                Status::Unknown,
                "ec2:GetSpotPlacementScores is not reachable here (HTTP 500 without an AWS error in the body); no scores"
            )
        );
        let e = AwsError::Call {
            operation: "ec2:GetSpotPlacementScores",
            message: "UnauthorizedOperation: You are not authorized".to_owned(),
        };
        let c = check(Err(e), Ok(BTreeMap::new()), &azs(), 3, 8);
        assert_eq!(c.status, Status::Unknown);
        assert!(c.detail.contains("UnauthorizedOperation"), "{}", c.detail);
    }

    #[test]
    fn the_scored_capacity_is_the_larger_of_desired_and_max() {
        assert_eq!(scored_capacity(3, 10), 10);
        assert_eq!(scored_capacity(12, 10), 12);
        assert_eq!(scored_capacity(0, 0), 1);
    }
}
