//! What bbfleet wants to exist: the launch template's newest version and the fleet
//! request, each with a stable fingerprint (written as a tag, compared at every plan).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AllocationStrategy, FleetApiKind};

/// What bbfleet wants the launch template's newest version to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTemplateSpec {
    /// `bbfleet-{fleet}`.
    pub name: String,
    /// Fleet name (tags).
    pub fleet: String,
    /// AMI.
    pub image_id: String,
    /// Root device of the AMI.
    pub root_device: String,
    /// Root volume size.
    pub root_volume_gb: u32,
    /// Instance profile name or ARN.
    pub instance_profile: String,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// Userdata script, plain text (holds no secret).
    pub userdata: String,
}

impl LaunchTemplateSpec {
    /// A short, stable digest of everything in the spec.
    pub fn fingerprint(&self) -> String {
        digest16(self)
    }
}

/// What to request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSpec {
    /// Fleet name.
    pub fleet: String,
    /// Spot fleet role ARN.
    pub role: String,
    /// Allocation strategy.
    pub strategy: AllocationStrategy,
    /// Instance types.
    pub instance_types: Vec<String>,
    /// Subnets.
    pub subnets: Vec<String>,
    /// Fingerprint of the launch template contents.
    pub launch_template_fingerprint: String,
    /// The API that requests it (left out of the fingerprint when the default, so the
    /// fleets of earlier releases keep theirs): another API means another request.
    #[serde(default, skip_serializing_if = "FleetApiKind::is_default")]
    pub api: FleetApiKind,
}

/// A fleet's target capacity and the part of it on on-demand instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetTarget {
    /// Runners (instances: every override weighs 1).
    pub total: u32,
    /// Of them on on-demand instances (at most `total`); the rest are spot.
    pub on_demand: u32,
}

impl FleetTarget {
    /// All spot.
    pub fn spot(total: u32) -> FleetTarget {
        FleetTarget {
            total,
            on_demand: 0,
        }
    }

    /// The spot part.
    pub fn spot_part(&self) -> u32 {
        self.total.saturating_sub(self.on_demand)
    }
}

impl FleetSpec {
    /// Digest of everything that needs a new request when it changes.
    pub fn fingerprint(&self) -> String {
        digest16(self)
    }
}

/// The first 16 hex digits of the SHA-256 of `value`'s JSON.
fn digest16<T: Serialize>(value: &T) -> String {
    hex16(&Sha256::digest(
        serde_json::to_vec(value).unwrap_or_default(),
    ))
}

/// First 16 hex digits of a digest.
pub fn hex16(digest: &[u8]) -> String {
    hex(&digest[..digest.len().min(8)])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprints are tags on running fleets: a value that changes with a refactor
    /// (a field renamed or reordered, another digest) gives every fleet a new launch
    /// template version and a new request at its next apply. The values are the
    /// first 16 hex digits of the SHA-256 of the specs' JSON, as the releases before this
    /// one computed them (checked independently of this code).
    #[test]
    fn fingerprints_are_stable_across_releases() {
        let lt = LaunchTemplateSpec {
            name: "bbfleet-ci".into(),
            fleet: "ci".into(),
            image_id: "ami-0123abcd".into(),
            root_device: "/dev/xvda".into(),
            root_volume_gb: 40,
            instance_profile: "bbfleet-runner".into(),
            security_groups: vec!["sg-0123abcd".into()],
            userdata: "#!/bin/bash\n".into(),
        };
        let fleet = FleetSpec {
            fleet: "ci".into(),
            role: "arn:aws:iam::123456789012:role/bbfleet-spot-fleet".into(),
            strategy: AllocationStrategy::Diversified,
            instance_types: vec!["m6i.large".into(), "c6i.large".into()],
            subnets: vec!["subnet-0123abcd".into(), "subnet-0123abce".into()],
            launch_template_fingerprint: lt.fingerprint(),
            api: FleetApiKind::SpotFleet,
        };
        assert_eq!(lt.fingerprint(), "297fa086e093685f");
        assert_eq!(fleet.fingerprint(), "e1e14814774f03ea");
        let ec2 = FleetSpec {
            api: FleetApiKind::Ec2Fleet,
            ..fleet
        };
        assert_ne!(
            ec2.fingerprint(),
            "e1e14814774f03ea",
            "another API, another request"
        );
    }
}
