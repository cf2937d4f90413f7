//! The domain model: the world bbfleet observed, in its own typed terms.
//!
//! Providers (`aws`, `bitbucket`, through `observe`) convert the services' answers into
//! these types; the planner, `status` and `autoscale` read only them. Raw service strings
//! stop at the providers: a runner's status, a claim's holder, a fleet's phase and an
//! instance's state are enums here.

mod fingerprint;
mod infra;
mod spec;

use serde::{Deserialize, Serialize};

pub use fingerprint::{canonical, WorldFingerprint};
pub use infra::{
    FleetPhase, FleetState, ImageInfo, InstanceInfo, InstanceState, KeyStatus, LaunchTemplateState,
    SecurityGroupInfo, SubnetInfo,
};
pub use spec::{hex, hex16, FleetSpec, LaunchTemplateSpec};

/// Everything bbfleet found of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// `workspace acme` or `repository acme/app`.
    pub scope_name: String,
    /// Workspace `{uuid}` (the runner's ACCOUNT_UUID).
    pub account_uuid: String,
    /// Repository `{uuid}`, for repository runners.
    pub repository_uuid: Option<String>,
    /// All runners in the scope, the fleet's and others'.
    pub scope_runner_count: usize,
    /// The fleet's runners (named `bbfleet-{fleet}-{n}`).
    pub runners: Vec<Runner>,
    /// Stored runner commands.
    pub parameters: Vec<RunnerParameter>,
    /// Claim generations.
    pub claims: Vec<Claim>,
    /// The configured key (`None` when not looked at).
    pub key: Option<KeyStatus>,
    /// Configured subnets with their zones (plan/apply only).
    pub subnets: Vec<SubnetInfo>,
    /// Configured security groups with their VPCs (plan/apply only; none read when none
    /// are configured).
    pub security_groups: Vec<SecurityGroupInfo>,
    /// The resolved AMI (plan/apply only).
    pub image: Option<ImageInfo>,
    /// The launch template.
    pub launch_template: Option<LaunchTemplateState>,
    /// Fleet requests tagged with the fleet.
    pub fleets: Vec<FleetState>,
    /// Instances tagged with the fleet, not terminated.
    pub instances: Vec<InstanceInfo>,
    /// The autoscaler's state parameter, if it exists (not read for apply).
    pub autoscale_state: Option<String>,
    /// When the reading began: instance ages are judged against it.
    pub observed_at: jiff::Timestamp,
}

/// A registered runner, as the planner sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// `{uuid}` with braces.
    pub uuid: String,
    /// Name; bbfleet's are `bbfleet-{fleet}-{n}`.
    pub name: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Connection state.
    pub status: RunnerStatus,
    /// Executing a step.
    pub busy: bool,
}

impl Runner {
    /// Online and idle or busy: the runners Bitbucket can hand a step to.
    pub fn is_online(&self) -> bool {
        self.status == RunnerStatus::Online
    }
}

/// A runner's `state.status` at Bitbucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunnerStatus {
    /// Registered, never connected.
    Unregistered,
    /// Connected.
    Online,
    /// Was connected, is not.
    Offline,
    /// Takes no steps.
    Disabled,
    /// Enabled again.
    Enabled,
    /// Connected, failing.
    Unhealthy,
    /// No status, or one bbfleet does not know.
    Unknown,
}

impl RunnerStatus {
    /// From Bitbucket's `state.status` (absent or unknown: `Unknown`).
    pub fn from_api(status: Option<&str>) -> RunnerStatus {
        match status {
            Some("UNREGISTERED") => RunnerStatus::Unregistered,
            Some("ONLINE") => RunnerStatus::Online,
            Some("OFFLINE") => RunnerStatus::Offline,
            Some("DISABLED") => RunnerStatus::Disabled,
            Some("ENABLED") => RunnerStatus::Enabled,
            Some("UNHEALTHY") => RunnerStatus::Unhealthy,
            _ => RunnerStatus::Unknown,
        }
    }

    /// Bitbucket's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunnerStatus::Unregistered => "UNREGISTERED",
            RunnerStatus::Online => "ONLINE",
            RunnerStatus::Offline => "OFFLINE",
            RunnerStatus::Disabled => "DISABLED",
            RunnerStatus::Enabled => "ENABLED",
            RunnerStatus::Unhealthy => "UNHEALTHY",
            RunnerStatus::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for RunnerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the fleet's runners stand: the numbers `autoscale` decides on and `status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunnerLoad {
    /// Runners of the fleet.
    pub total: u32,
    /// ONLINE runners.
    pub online: u32,
    /// ONLINE runners executing a step.
    pub busy: u32,
}

impl RunnerLoad {
    /// Counts `runners`.
    pub fn of<'a>(runners: impl IntoIterator<Item = &'a Runner>) -> RunnerLoad {
        runners
            .into_iter()
            .fold(RunnerLoad::default(), |l, r| RunnerLoad {
                total: l.total + 1,
                online: l.online + u32::from(r.is_online()),
                busy: l.busy + u32::from(r.is_online() && r.busy),
            })
    }

    /// busy / online, when any runner is online.
    pub fn busy_ratio(&self) -> Option<f64> {
        (self.online > 0).then(|| f64::from(self.busy) / f64::from(self.online))
    }
}

/// A stored runner command (metadata only, never the value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerParameter {
    /// Full name.
    pub name: String,
    /// Runner UUID, bare and lower case (the last path segment).
    pub runner_uuid: String,
    /// `SecureString`, `String`, ...
    pub kind: String,
    /// KMS key as SSM reports it.
    pub key_id: Option<String>,
}

impl RunnerParameter {
    /// Stored encrypted (a `SecureString`).
    pub fn is_secure(&self) -> bool {
        self.kind == "SecureString"
    }
}

/// One claim generation: `{claims}/{runner}/{generation}` = instance id or `free`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// Full name.
    pub name: String,
    /// Runner UUID, bare.
    pub runner_uuid: String,
    /// Generation number.
    pub generation: u64,
    /// Who holds the runner.
    pub holder: ClaimHolder,
}

/// Who a claim generation gives the runner to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimHolder {
    /// Nobody: the next host may take it (stored as `free`).
    Free,
    /// This instance.
    Instance(String),
}

impl ClaimHolder {
    /// What a claim parameter stores.
    pub const FREE: &'static str = "free";

    /// From a claim parameter's value.
    pub fn parse(value: &str) -> ClaimHolder {
        if value == Self::FREE {
            ClaimHolder::Free
        } else {
            ClaimHolder::Instance(value.to_owned())
        }
    }

    /// The instance holding the runner, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            ClaimHolder::Free => None,
            ClaimHolder::Instance(id) => Some(id),
        }
    }

    /// The parameter value: the instance id or `free`.
    pub fn as_str(&self) -> &str {
        self.instance().unwrap_or(Self::FREE)
    }
}

impl Serialize for ClaimHolder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
