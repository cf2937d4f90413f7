//! The IAM actions bbfleet needs, next to the providers that call them.
//!
//! [`CALLED`] lists every AWS operation the code sends (IAM action = `service:Operation`).
//! In debug builds (every test) the call counter refuses a call that is not listed here,
//! so the table cannot fall behind the code; `tests/it/policies.rs` checks that
//! `policies/operator.json` allows every entry, and that it allows nothing else but
//! the [`IMPLIED`] actions AWS checks on bbfleet's behalf.

/// Operations bbfleet calls (`plan`, `apply`, `destroy`, `status`, `autoscale`, `bake`), by provider.
pub const CALLED: &[&str] = &[
    // src/aws/kms.rs
    "kms:CreateAlias",
    "kms:CreateKey",
    "kms:DescribeKey",
    "kms:ListAliases",
    "kms:ListKeys",
    "kms:ListResourceTags",
    // src/aws/ssm.rs (and the AMI parameter in src/observe.rs)
    "ssm:AddTagsToResource",
    "ssm:DeleteParameters",
    "ssm:DescribeParameters",
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:PutParameter",
    // src/aws/ec2.rs
    "ec2:CreateLaunchTemplate",
    "ec2:CreateLaunchTemplateVersion",
    "ec2:DeleteLaunchTemplate",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:TerminateInstances",
    // src/aws/spot_fleet.rs (the Spot Fleet backend; spot.fleet_api = "spot-fleet")
    "ec2:CancelSpotFleetRequests",
    "ec2:CreateTags",
    "ec2:DescribeSpotFleetInstances",
    "ec2:DescribeSpotFleetRequestHistory",
    "ec2:DescribeSpotFleetRequests",
    "ec2:ModifySpotFleetRequest",
    "ec2:RequestSpotFleet",
    // src/aws/ec2_fleet.rs (the EC2 Fleet backend; spot.fleet_api = "ec2-fleet"). It calls
    // ec2:CreateTags too (listed once, above). No fleet role: EC2 launches through the
    // service-linked role AWSServiceRoleForEC2Fleet (EC2 User Guide, "EC2 Fleet
    // prerequisites").
    "ec2:CreateFleet",
    "ec2:DeleteFleets",
    "ec2:DescribeFleetHistory",
    "ec2:DescribeFleetInstances",
    "ec2:DescribeFleets",
    "ec2:ModifyFleet",
    // src/aws/offerings.rs (pre-flight, read-only; its DryRun calls need the actions above,
    // and its zone id lookup ec2:DescribeSubnets)
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeSpotPriceHistory",
    "ec2:GetSpotPlacementScores",
    // src/aws/images.rs (`bake`: the builder, the baked images and their snapshots; it
    // also calls ec2:DescribeImages, ec2:DescribeInstances, ec2:TerminateInstances and
    // ec2:DescribeLaunchTemplateVersions, listed above). RunInstances is called directly
    // only here; the fleets' launches still need it implied (the IMPLIED entry's reason).
    "ec2:CreateImage",
    "ec2:DeleteSnapshot",
    "ec2:DeregisterImage",
    "ec2:DescribeSnapshots",
    "ec2:RunInstances",
];

/// Actions AWS authorizes as part of a call in [`CALLED`], with the call that needs them.
pub const IMPLIED: &[(&str, &str)] = &[
    (
        "iam:PassRole",
        "RequestSpotFleet passes spot.fleet_role; RequestSpotFleet and CreateFleet pass the \
         instance role of the launch template's instance profile",
    ),
    ("kms:TagResource", "tags given in CreateKey"),
    ("kms:Encrypt", "SSM encrypts a SecureString on PutParameter"),
];

/// Whether `service:operation` is in [`CALLED`].
pub fn is_called(service: &str, operation: &str) -> bool {
    CALLED.iter().any(|a| {
        a.split_once(':')
            .is_some_and(|(s, o)| s == service && o == operation)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_within_providers_and_has_no_duplicates() {
        let mut all: Vec<&str> = CALLED.to_vec();
        all.extend(IMPLIED.iter().map(|(a, _)| *a));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an action is listed twice");
        assert!(is_called("ec2", "RequestSpotFleet"));
        assert!(is_called("ec2", "CreateFleet"));
        // `bake` launches its builder with RunInstances itself; the fleets' launches need
        // it too (checked by AWS on the requester: policies/operator.json's statements).
        assert!(is_called("ec2", "RunInstances"));
        assert!(!is_called("iam", "PassRole"));
    }
}
