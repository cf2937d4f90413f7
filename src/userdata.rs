//! Cloud-init userdata: handlebars templates from `userdata/`, rendered from config values only.
//!
//! The rendered script holds no secret: it names where the instance finds its runner
//! command (SSM, read with the instance role), never the command itself.

use handlebars::Handlebars;
use serde::Serialize;

use crate::config::{Config, Os};

const AL2023: &str = include_str!("../userdata/al2023.sh.hbs");
const UBUNTU: &str = include_str!("../userdata/ubuntu.sh.hbs");
const COMMON: &str = include_str!("../userdata/common.sh.hbs");

/// Default instance metadata endpoint; tests override it with a loopback fake.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Values the templates may use. Everything here is public information.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserdataVars {
    /// Fleet name, e.g. `ci`.
    pub fleet: String,
    /// AWS region of the fleet.
    pub region: String,
    /// SSM prefix of the fleet, `/bbfleet/{fleet}` (runners under `/runners/`, claims under `/claims/`).
    pub ssm_prefix: String,
    /// Swap file size in GiB; 0 = no swap.
    pub swap_gb: u32,
    /// Base URL of the instance metadata service.
    pub imds_endpoint: String,
    /// Log file of the runner container's output.
    pub runner_log: String,
    /// Root-only directory for the claimed runner's command and state (a tmpfs on the host).
    pub state_dir: String,
    /// How many rounds the instance tries to claim a free runner before giving up.
    pub claim_attempts: u32,
    /// Upper bound of the back-off between claim rounds, in seconds.
    pub claim_backoff_max_secs: u32,
    /// Log file of the agent (runner supervisor and spot notice watcher).
    pub agent_log: String,
    /// How often the agent polls IMDS for spot notices and checks the runner, in milliseconds.
    pub poll_interval_ms: u32,
    /// How many polls the agent makes before it stops; 0 = for the instance's lifetime.
    pub agent_max_polls: u32,
    /// How many times the agent restarts a runner container that exited by itself.
    pub runner_restarts: u32,
    /// Pause before each restart, in seconds.
    pub restart_delay_secs: u32,
    /// `docker container stop --time`: how long the runner gets to stop before it is killed.
    pub stop_timeout_secs: u32,
}

impl UserdataVars {
    /// The values for a validated config, with production defaults.
    pub fn from_config(config: &Config, region: &str) -> Self {
        UserdataVars::new(&config.name, region, config.instance.swap_gb)
    }

    /// The production values for fleet `fleet` in `region`.
    pub fn new(fleet: &str, region: &str, swap_gb: u32) -> Self {
        UserdataVars {
            fleet: fleet.to_owned(),
            region: region.to_owned(),
            ssm_prefix: crate::names::ssm_prefix(fleet),
            swap_gb,
            imds_endpoint: IMDS_ENDPOINT.to_owned(),
            runner_log: "/var/log/bbfleet-runner.log".to_owned(),
            state_dir: "/run/bbfleet".to_owned(),
            claim_attempts: 60,
            claim_backoff_max_secs: 30,
            agent_log: "/var/log/bbfleet-agent.log".to_owned(),
            // AWS recommends checking for the interruption notice every 5 seconds.
            poll_interval_ms: 5000,
            agent_max_polls: 0,
            runner_restarts: 10,
            restart_delay_secs: 10,
            // Well inside the 2-minute interruption notice.
            stop_timeout_secs: 60,
        }
    }
}

/// A template failed to render (a bug in a template, never in user input).
#[derive(Debug, thiserror::Error)]
#[error("userdata template {template}: {source}")]
pub struct UserdataError {
    template: &'static str,
    #[source]
    source: Box<handlebars::RenderError>,
}

/// Renders the userdata script for `os`.
pub fn render(os: Os, vars: &UserdataVars) -> Result<String, UserdataError> {
    let (name, body) = match os {
        Os::Al2023 => ("al2023", AL2023),
        Os::Ubuntu => ("ubuntu", UBUNTU),
    };
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // Shell scripts, not HTML: no escaping.
    hb.register_escape_fn(handlebars::no_escape);
    let wrap = |e: handlebars::TemplateError| UserdataError {
        template: name,
        source: Box::new(e.into()),
    };
    hb.register_partial("common", COMMON).map_err(wrap)?;
    hb.register_template_string(name, body).map_err(wrap)?;
    hb.render(name, vars).map_err(|e| UserdataError {
        template: name,
        source: Box::new(e),
    })
}
