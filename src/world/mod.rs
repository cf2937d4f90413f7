//! The domain model: the world bbfleet observed, in its own typed terms.
//!
//! Providers (`aws`, `bitbucket`, through `observe`) convert the services' answers into
//! these types; the planner, `status` and `autoscale` read only them. Raw service strings
//! stop at the providers: a runner's status, a claim's holder, a fleet's phase and an
//! instance's state are enums here.

/// An enum of a service's state names: the variants with their spellings, from which
/// `from_api` (an unknown spelling is the `unknown` variant), `as_str`, `Display` and a
/// `Serialize` as the spelling are derived, so each table is written once.
macro_rules! spelled {
    (
        $(#[$meta:meta])*
        pub enum $name:ident (unknown = $unknown:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $spelling:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// From the service's spelling.
            pub fn from_api(spelling: &str) -> $name {
                match spelling {
                    $( $spelling => $name::$variant, )*
                    _ => $name::$unknown,
                }
            }

            /// The service's spelling.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( $name::$variant => $spelling, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

mod fingerprint;
mod infra;
mod spec;

use serde::Serialize;

pub use fingerprint::{canonical, WorldFingerprint};
pub use infra::{
    FleetPhase, FleetState, ImageInfo, InstanceInfo, InstanceState, KeyStatus, LaunchTemplateState,
    SecurityGroupInfo, SubnetInfo,
};
pub use spec::{hex, hex16, FleetSpec, FleetTarget, LaunchTemplateSpec};

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
    /// The mean spot price of the configured pools per instance-hour (USD), read only
    /// when `capacity.max_hourly_cost` is set (a price of the moment, not fingerprinted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_price: Option<f64>,
}

/// A registered runner, as the planner sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// When its status last changed, if Bitbucket said (how long it has been OFFLINE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_since: Option<jiff::Timestamp>,
}

impl Runner {
    /// Online and idle or busy: the runners Bitbucket can hand a step to.
    pub fn is_online(&self) -> bool {
        self.status == RunnerStatus::Online
    }
}

spelled! {
    /// A runner's `state.status` at Bitbucket.
    pub enum RunnerStatus (unknown = Unknown) {
        /// Registered, never connected.
        Unregistered = "UNREGISTERED",
        /// Connected.
        Online = "ONLINE",
        /// Was connected, is not.
        Offline = "OFFLINE",
        /// Takes no steps.
        Disabled = "DISABLED",
        /// Enabled again.
        Enabled = "ENABLED",
        /// Connected, failing.
        Unhealthy = "UNHEALTHY",
        /// No status, or one bbfleet does not know.
        Unknown = "UNKNOWN",
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
        busy_ratio(self.busy, self.online)
    }
}

/// `busy / online`, when any runner is online: what `status` shows and `autoscale` decides on.
pub fn busy_ratio(busy: u32, online: u32) -> Option<f64> {
    (online > 0).then(|| f64::from(busy) / f64::from(online))
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
    /// Stored in the current format ([`crate::runner_command::FORMAT`]), as its
    /// description says: the hosts read no other (an older bbfleet stored a shell line).
    pub current_format: bool,
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
    /// When it was written (SSM's LastModifiedDate), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_at: Option<jiff::Timestamp>,
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
