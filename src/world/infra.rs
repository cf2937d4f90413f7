//! The AWS side of the world: key, network, image, launch template, fleet requests and
//! instances, with their states as enums.

use serde::Serialize;

/// What the configured key reference points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyStatus {
    /// A customer-managed, enabled, symmetric encryption key.
    Usable {
        /// Key ARN.
        arn: String,
    },
    /// Nothing under that name.
    Absent,
    /// Exists but must not be used; why.
    Unusable {
        /// The reason, for the user.
        reason: String,
    },
}

/// A subnet and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetInfo {
    /// `subnet-...`.
    pub id: String,
    /// Availability zone name.
    pub az: String,
    /// VPC.
    pub vpc: String,
}

/// A security group and the VPC it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroupInfo {
    /// `sg-...`.
    pub id: String,
    /// VPC.
    pub vpc: String,
}

/// An AMI's facts the launch template needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// `ami-...`.
    pub id: String,
    /// Root device name (`/dev/xvda` on AL2023, `/dev/sda1` on Ubuntu).
    pub root_device: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
}

/// The launch template as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchTemplateState {
    /// `lt-...`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Newest version number.
    pub latest_version: i64,
    /// Fingerprint of the newest version, if bbfleet wrote it.
    pub fingerprint: Option<String>,
}

/// A fleet request found by its `bbfleet:fleet` tag, whichever API made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetState {
    /// Request id (`sfr-...`).
    pub id: String,
    /// Where the request is in its life.
    pub state: FleetPhase,
    /// Target capacity.
    pub target: i32,
    /// `bbfleet:config` tag: the configuration it was requested with.
    pub fingerprint: Option<String>,
    /// Its running instances.
    pub instance_ids: Vec<String>,
    /// The fleet role it was requested with (`None` when the API did not say): a request's
    /// role and strategy cannot be modified, its launch template and overrides can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its allocation strategy (`None` when the API did not say, or one bbfleet does not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::config::AllocationStrategy>,
    /// The API that made it (`sfr-...` Spot Fleet, `fleet-...` EC2 Fleet).
    pub api: crate::config::FleetApiKind,
    /// The on-demand part of its target.
    pub on_demand_target: i32,
    /// Capacity it runs now, both parts (the API's fulfilled capacity), when the API said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfilled: Option<i32>,
    /// Of it spot (the fulfilled capacity less the fulfilled on-demand part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_fulfilled: Option<i32>,
    /// When bbfleet last set its target (the `bbfleet:target-at` tag; its creation time
    /// when the tag is missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_at: Option<jiff::Timestamp>,
    /// Spot capacity errors in its history within the fallback grace, newest first (read
    /// only when `spot.fallback` is on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity_errors: Vec<String>,
}

impl FleetState {
    /// The spot instances the request lacks: its spot target less the spot it runs, and
    /// no more than the whole request lacks (on-demand instances above the on-demand part,
    /// left from a fallback until bbfleet retires them, still serve). 0 when the API did
    /// not say.
    pub fn spot_missing(&self) -> u32 {
        let (Some(all), Some(spot)) = (self.fulfilled, self.spot_fulfilled) else {
            return 0;
        };
        let spot_target = self.target.saturating_sub(self.on_demand_target).max(0);
        let short_spot = spot_target.saturating_sub(spot);
        let short_all = self.target.saturating_sub(all);
        short_spot.min(short_all).max(0) as u32
    }

    /// Still launching and replacing instances.
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }

    /// Whether the instance is this request's: listed by it, or launch-tagged with it
    /// (DescribeSpotFleetInstances "might be out of date"; the tag is set at launch).
    pub fn owns(&self, instance: &InstanceInfo) -> bool {
        self.instance_ids.contains(&instance.id)
            || instance.fleet_request.as_deref() == Some(self.id.as_str())
    }
}

spelled! {
    /// A fleet request's phase, the same for every fleet API (the backend maps its states).
    /// Spelled as Spot Fleet spells its `SpotFleetRequestState`.
    pub enum FleetPhase (unknown = Unknown) {
        /// Being evaluated.
        Submitted = "submitted",
        /// Launching and maintaining instances.
        Active = "active",
        /// Being changed.
        Modifying = "modifying",
        /// Cancelled; its instances keep running.
        CancelledRunning = "cancelled_running",
        /// Cancelled; its instances are terminating.
        CancelledTerminating = "cancelled_terminating",
        /// Cancelled, no instance left.
        Cancelled = "cancelled",
        /// Failed to launch.
        Failed = "failed",
        /// A state bbfleet does not know (never live).
        Unknown = "unknown",
    }
}

impl FleetPhase {
    /// Still launching and replacing instances.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            FleetPhase::Submitted | FleetPhase::Active | FleetPhase::Modifying
        )
    }
}

/// An instance of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// `i-...`.
    pub id: String,
    /// Instance type.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// Availability zone.
    pub az: String,
    /// Its state.
    pub state: InstanceState,
    /// The fleet request that launched it: the `aws:ec2spot:fleet-request-id` tag EC2 puts
    /// on Spot Fleet instances (EC2 User Guide, "Tag a Spot Fleet"), or the
    /// `aws:ec2:fleet-id` tag it puts on EC2 Fleet instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_request: Option<String>,
    /// When it was launched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<jiff::Timestamp>,
    /// The launch template version it was launched from: the `aws:ec2launchtemplate:version`
    /// tag EC2 puts on instances launched from a launch template (EC2 User Guide, "Launch
    /// EC2 instances using a launch template"). `None` when the tag is missing: such a
    /// host is never taken for outdated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version: Option<i64>,
    /// An on-demand instance: DescribeInstances gives no `InstanceLifecycle` (spot
    /// instances have `spot`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
}

impl InstanceInfo {
    /// Pending or running: it may be running a runner.
    pub fn is_up(&self) -> bool {
        matches!(self.state, InstanceState::Pending | InstanceState::Running)
    }
}

spelled! {
    /// An instance's state (EC2's `InstanceStateName`).
    pub enum InstanceState (unknown = Unknown) {
        /// Launching.
        Pending = "pending",
        /// Running.
        Running = "running",
        /// Terminating.
        ShuttingDown = "shutting-down",
        /// Gone.
        Terminated = "terminated",
        /// Stopping.
        Stopping = "stopping",
        /// Stopped.
        Stopped = "stopped",
        /// A state bbfleet does not know.
        Unknown = "unknown",
    }
}
