//! The zones phase's network rules: the subnets and security groups a Spot Fleet can use.
//!
//! - One subnet per availability zone: "One fleet can't span Regions or use two subnets of
//!   the same AZ" (EC2 API Reference, SpotFleetRequestConfigData and
//!   LaunchTemplateOverrides: a pool is an instance type in one subnet, i.e. one AZ).
//! - All subnets in one VPC: one launch template serves every subnet, and its security
//!   groups belong to one VPC (EC2 API Reference, CreateSecurityGroup: a group is created
//!   for a VPC, `VpcId`), so the launches in a subnet of another VPC fail.
//! - The security groups in the subnets' VPC (same document; SecurityGroup.VpcId as
//!   DescribeSecurityGroups answers it). Not read: a group shared into another VPC with
//!   AssociateSecurityGroupVpc (EC2 API Reference) would be refused here all the same.
//!
//! Checked from DescribeSubnets and DescribeSecurityGroups (see `observe`) before any
//! write; errors name `spot.subnets[i]` / `instance.security_groups[i]` in config order.

use std::collections::{BTreeMap, BTreeSet};

use super::PlanError;
use crate::config::Config;
use crate::world::{Observed, SecurityGroupInfo, SubnetInfo};

/// Phase 2: the first rule the configured network breaks, in config order; then a
/// diversified fleet needs two zones.
pub(super) fn plan(config: &Config, observed: &Observed) -> Result<(), PlanError> {
    check(
        &config.spot.subnets,
        &observed.subnets,
        &config.instance.security_groups,
        &observed.security_groups,
    )?;
    let zones: BTreeSet<&str> = observed.subnets.iter().map(|s| s.az.as_str()).collect();
    if zones.len() < 2 {
        return Err(PlanError::TooFewZones {
            zones: zones.into_iter().map(str::to_owned).collect(),
        });
    }
    Ok(())
}

/// `subnet_ids` and `group_ids` are the configured lists (their indices name the field);
/// `subnets` and `groups` what AWS answered. An id AWS did not describe is skipped: the
/// observer refuses a missing subnet or group with its own error.
pub(super) fn check(
    subnet_ids: &[String],
    subnets: &[SubnetInfo],
    group_ids: &[String],
    groups: &[SecurityGroupInfo],
) -> Result<(), PlanError> {
    let known: Vec<(usize, &SubnetInfo)> = subnet_ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| subnets.iter().find(|s| s.id == *id).map(|s| (i, s)))
        .collect();
    let Some(&(first, first_subnet)) = known.first() else {
        return Ok(());
    };
    let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
    for &(index, s) in &known {
        if s.vpc != first_subnet.vpc {
            return Err(PlanError::SubnetOtherVpc {
                index,
                subnet: s.id.clone(),
                vpc: s.vpc.clone(),
                first,
                first_vpc: first_subnet.vpc.clone(),
            });
        }
        if let Some(&earlier) = zones.get(s.az.as_str()) {
            return Err(PlanError::SubnetSameZone {
                index,
                subnet: s.id.clone(),
                az: s.az.clone(),
                first: earlier,
            });
        }
        zones.insert(&s.az, index);
    }
    for (index, id) in group_ids.iter().enumerate() {
        let Some(g) = groups.iter().find(|g| g.id == *id) else {
            continue;
        };
        if g.vpc != first_subnet.vpc {
            return Err(PlanError::SecurityGroupOtherVpc {
                index,
                group: g.id.clone(),
                vpc: g.vpc.clone(),
                subnets_vpc: first_subnet.vpc.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, az: &str, vpc: &str) -> SubnetInfo {
        SubnetInfo {
            id: id.into(),
            az: az.into(),
            vpc: vpc.into(),
        }
    }

    fn group(id: &str, vpc: &str) -> SecurityGroupInfo {
        SecurityGroupInfo {
            id: id.into(),
            vpc: vpc.into(),
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The world as AWS describes it, in an order other than the config's.
    fn world() -> Vec<SubnetInfo> {
        vec![
            subnet("subnet-c", "us-east-1c", "vpc-1"),
            subnet("subnet-a", "us-east-1a", "vpc-1"),
            subnet("subnet-a2", "us-east-1a", "vpc-1"),
            subnet("subnet-b", "us-east-1b", "vpc-1"),
            subnet("subnet-x", "us-east-1d", "vpc-2"),
        ]
    }

    #[test]
    fn one_subnet_per_zone_in_one_vpc_with_its_groups_passes() {
        let groups = [group("sg-1", "vpc-1"), group("sg-2", "vpc-1")];
        assert_eq!(
            check(
                &ids(&["subnet-a", "subnet-b", "subnet-c"]),
                &world(),
                &ids(&["sg-2", "sg-1"]),
                &groups
            ),
            Ok(())
        );
        assert_eq!(
            check(&ids(&["subnet-a", "subnet-b"]), &world(), &[], &[]),
            Ok(())
        );
    }

    #[test]
    fn a_second_subnet_of_a_zone_is_named_with_the_first() {
        let err = check(
            &ids(&["subnet-a", "subnet-b", "subnet-a2"]),
            &world(),
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::SubnetSameZone {
                index: 2,
                subnet: "subnet-a2".into(),
                az: "us-east-1a".into(),
                first: 0,
            }
        );
        assert_eq!(
            err.to_string(),
            "spot.subnets[2]: subnet-a2 is in us-east-1a like spot.subnets[0]; a fleet takes one subnet per availability zone"
        );
    }

    #[test]
    fn a_subnet_of_another_vpc_is_named() {
        let err = check(
            &ids(&["subnet-a", "subnet-x", "subnet-b"]),
            &world(),
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spot.subnets[1]: subnet-x is in vpc-2 but spot.subnets[0] is in vpc-1; a fleet's subnets must all be in one VPC"
        );
    }

    #[test]
    fn a_security_group_of_another_vpc_is_named() {
        let groups = [group("sg-1", "vpc-1"), group("sg-9", "vpc-2")];
        let err = check(
            &ids(&["subnet-a", "subnet-b"]),
            &world(),
            &ids(&["sg-1", "sg-9"]),
            &groups,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::SecurityGroupOtherVpc {
                index: 1,
                group: "sg-9".into(),
                vpc: "vpc-2".into(),
                subnets_vpc: "vpc-1".into(),
            }
        );
        assert!(err.to_string().starts_with(
            "instance.security_groups[1]: sg-9 is in vpc-2 but the subnets are in vpc-1"
        ));
    }

    #[test]
    fn the_verdict_does_not_depend_on_the_order_aws_answers_in() {
        let config = ids(&["subnet-b", "subnet-a", "subnet-a2"]);
        let mut w = world();
        let first = check(&config, &w, &[], &[]);
        w.reverse();
        assert_eq!(check(&config, &w, &[], &[]), first);
        assert!(matches!(
            first,
            Err(PlanError::SubnetSameZone {
                index: 2,
                first: 1,
                ..
            })
        ));
    }
}
