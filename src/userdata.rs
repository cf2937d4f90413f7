//! Cloud-init userdata: handlebars templates from `userdata/`, rendered from config values only.
//!
//! The rendered script holds no secret: it names where the instance finds its runner
//! command (SSM, read with the instance role), never the command itself.
//!
//! Every value reaches the script through one of two helpers: `{{sh x}}` writes it as one
//! single-quoted shell word (`it's` becomes `'it'\''s'`), `{{int x}}` writes a whole number
//! and refuses anything else. A template never quotes a value itself.
//!
//! The launch template gets the script gzip-compressed, then base64-encoded
//! ([`launch_template_user_data`]): EC2 limits user data to 16 KB before base64, and counts
//! gzip user data compressed; cloud-init unpacks it before it runs the script.

use std::io::Write;

use base64::Engine;
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde::Serialize;

use crate::config::{Config, Os};

const AL2023: &str = include_str!("../userdata/al2023.sh.hbs");
const UBUNTU: &str = include_str!("../userdata/ubuntu.sh.hbs");
const COMMON: &str = include_str!("../userdata/common.sh.hbs");
const AGENT: &str = include_str!("../userdata/agent.sh.hbs");
const BAKE: &str = include_str!("../userdata/bake.sh.hbs");

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
    /// Root-only directory for the claimed runner's command and state, on the root volume
    /// so that the claim and the runner survive a reboot.
    pub state_dir: String,
    /// How long the instance tries to claim a free runner before it gives up and
    /// terminates itself, in seconds (`instance.claim_timeout_seconds`).
    pub claim_timeout_secs: u64,
    /// How many times each step that calls AWS, IMDS or a package mirror is tried.
    pub retry_attempts: u32,
    /// Upper bound of the back-off between tries and between claim rounds, in seconds.
    pub backoff_max_secs: u32,
    /// Log file of the agent (runner supervisor and spot notice watcher).
    pub agent_log: String,
    /// How often the agent polls IMDS for spot notices and checks the runner, in milliseconds.
    pub poll_interval_ms: u32,
    /// How many polls the agent makes before it stops; 0 = for the instance's lifetime.
    pub agent_max_polls: u32,
    /// How many times the agent restarts a runner container that exited by itself within
    /// [`UserdataVars::runner_failure_window_secs`]; one exit more and the instance
    /// releases its claim and terminates itself.
    pub runner_restarts: u32,
    /// The window in which runner exits are counted, in seconds: a runner that has run
    /// this long has a clean record again.
    pub runner_failure_window_secs: u32,
    /// Pause before each restart, in seconds.
    pub restart_delay_secs: u32,
    /// `docker container stop --time`: how long the runner gets to stop before it is killed.
    pub stop_timeout_secs: u32,
    /// Bake mode (`bbfleet bake`): the builder instance installs and pulls everything a
    /// host needs, marks the image baked ([`BAKED_MARKER`]), writes the signal parameter
    /// and claims no runner. `None` on fleet hosts.
    pub bake: Option<BakeVars>,
}

/// The file a baked image carries: a host that finds it skips the install and the pull
/// and goes straight to the claim.
pub const BAKED_MARKER: &str = "/etc/bbfleet/baked";

/// What a builder instance needs (all public).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BakeVars {
    /// SSM String parameter the builder writes when it is done (`done`) or failed
    /// (`failed: ...`), with the instance role: `/bbfleet/{fleet}/bake/{build}`.
    pub signal_parameter: String,
    /// The runner image pulled into the baked image.
    pub runner_image: String,
}

impl UserdataVars {
    /// The values for a validated config, with production defaults.
    pub fn from_config(config: &Config, region: &str) -> Self {
        UserdataVars {
            claim_timeout_secs: config.instance.claim_timeout_seconds,
            ..UserdataVars::new(&config.name, region, config.instance.swap_gb)
        }
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
            state_dir: "/var/lib/bbfleet".to_owned(),
            // The default of `instance.claim_timeout_seconds`: 20 minutes.
            claim_timeout_secs: 1200,
            // 1 + 2 + 4 + 8 + 16 + 30 + 30 s: at most about a minute and a half per step.
            retry_attempts: 8,
            backoff_max_secs: 30,
            agent_log: "/var/log/bbfleet-agent.log".to_owned(),
            // AWS recommends checking for the interruption notice every 5 seconds.
            poll_interval_ms: 5000,
            agent_max_polls: 0,
            // 5 exits within 10 minutes: the host gives up.
            runner_restarts: 4,
            runner_failure_window_secs: 600,
            restart_delay_secs: 10,
            // Well inside the 2-minute interruption notice.
            stop_timeout_secs: 60,
            bake: None,
        }
    }
}

/// Most bytes of user data (gzip-compressed, before base64) bbfleet puts into a launch
/// template: a quarter under EC2's limit ([`EC2_USER_DATA_LIMIT`]), so the scripts may grow.
pub const LAUNCH_TEMPLATE_MAX_BYTES: usize = 12_288;

/// EC2's limit: "User data is limited to 16 KB, in raw form, before it is base64-encoded"
/// (EC2 User Guide, "Work with instance user data"; the `UserData` member of
/// `RequestLaunchTemplateData` in the EC2 API Reference: "User data is limited to 16 KB").
/// Larger user data is refused with `InvalidUserData.Malformed`.
pub const EC2_USER_DATA_LIMIT: usize = 16_384;

/// The userdata could not be rendered or would not fit into a launch template.
#[derive(Debug, thiserror::Error)]
pub enum UserdataError {
    /// A template failed to render (a bug in a template, or a value a helper refuses).
    #[error("userdata template {template}: {source}")]
    Render {
        /// `al2023`, `ubuntu`.
        template: &'static str,
        /// Handlebars' error.
        #[source]
        source: Box<handlebars::RenderError>,
    },
    /// The launch template's user data would be over [`LAUNCH_TEMPLATE_MAX_BYTES`].
    #[error(
        "userdata: the {template} script for fleet {fleet:?} in {region} is {script} bytes, \
         {encoded} bytes gzip-compressed as the launch template's user data; bbfleet allows at \
         most {limit} (EC2 refuses more than {EC2_USER_DATA_LIMIT}). \
         The templates in userdata/ are too large"
    )]
    TooLarge {
        /// `al2023`, `ubuntu`.
        template: &'static str,
        /// Fleet name.
        fleet: String,
        /// Region.
        region: String,
        /// Size of the plain script.
        script: usize,
        /// Size of what the launch template would hold (before base64).
        encoded: usize,
        /// The most allowed, [`LAUNCH_TEMPLATE_MAX_BYTES`].
        limit: usize,
    },
}

fn template_name(os: Os) -> &'static str {
    match os {
        Os::Al2023 => "al2023",
        Os::Ubuntu => "ubuntu",
    }
}

/// `value` as one shell word: single-quoted, each `'` written as `'\''`. Inside single
/// quotes bash expands nothing (`$`, backticks, `\`, newlines stay as they are), so the
/// word is the value, byte for byte. `None` for a value bash cannot hold (a NUL byte).
pub fn shell_quote(value: &str) -> Option<String> {
    if value.contains('\0') {
        return None;
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    Some(quoted)
}

/// The one parameter of a helper, refused when it names no value (strict mode covers
/// `{{x}}`, not helper parameters).
fn param<'a>(
    h: &'a Helper<'_>,
    helper: &'static str,
) -> Result<&'a serde_json::Value, RenderErrorReason> {
    let p = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(helper, 0))?;
    if p.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(
            p.relative_path().cloned(),
        ));
    }
    Ok(p.value())
}

fn param_name(h: &Helper<'_>) -> String {
    h.param(0)
        .and_then(|p| p.relative_path().cloned())
        .unwrap_or_default()
}

/// `{{sh x}}`: `x` (a string or a number) as one single-quoted shell word.
fn sh_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let text = match param(h, "sh")? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(RenderErrorReason::InvalidParamType("a string or a number").into()),
    };
    let quoted = shell_quote(&text).ok_or_else(|| {
        RenderErrorReason::Other(format!(
            "{} holds a NUL byte, which a shell word cannot",
            param_name(h)
        ))
    })?;
    out.write(&quoted)?;
    Ok(())
}

/// `{{int x}}`: `x`, a whole number of 0 or more, unquoted; anything else is refused.
fn int_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let n = param(h, "int")?.as_u64().ok_or_else(|| {
        RenderErrorReason::Other(format!(
            "{} is not a whole number of 0 or more",
            param_name(h)
        ))
    })?;
    out.write(&n.to_string())?;
    Ok(())
}

/// A registry with the quoting helpers, strict (a missing value is an error).
fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // A bare `{{x}}` (the templates have none; a unit test checks) is shell-quoted too,
    // never pasted as it is.
    hb.register_escape_fn(|s| shell_quote(s).unwrap_or_else(|| "''".to_owned()));
    hb.register_helper("sh", Box::new(sh_helper));
    hb.register_helper("int", Box::new(int_helper));
    hb
}

/// What the templates see: the vars and the constants bbfleet fixes.
#[derive(Serialize)]
struct TemplateData<'a> {
    #[serde(flatten)]
    vars: &'a UserdataVars,
    baked_marker: &'static str,
}

/// The shared part: common.sh.hbs, and in bake mode bake.sh.hbs after it (its functions
/// are only in a builder's script, so a fleet host's script has no `--overwrite` at all).
fn common_part(vars: &UserdataVars) -> String {
    match vars.bake {
        Some(_) => format!("{COMMON}\n{BAKE}"),
        None => COMMON.to_owned(),
    }
}

/// Renders the userdata script for `os`: a fleet host's, or with `vars.bake` a builder's
/// (bake mode).
pub fn render(os: Os, vars: &UserdataVars) -> Result<String, UserdataError> {
    let name = template_name(os);
    let body = match os {
        Os::Al2023 => AL2023,
        Os::Ubuntu => UBUNTU,
    };
    let mut hb = registry();
    let wrap = |e: handlebars::TemplateError| UserdataError::Render {
        template: name,
        source: Box::new(e.into()),
    };
    hb.register_partial("common", common_part(vars))
        .map_err(wrap)?;
    hb.register_partial("agent", AGENT).map_err(wrap)?;
    hb.register_template_string(name, body).map_err(wrap)?;
    let data = TemplateData {
        vars,
        baked_marker: BAKED_MARKER,
    };
    hb.render(name, &data).map_err(|e| UserdataError::Render {
        template: name,
        source: Box::new(e),
    })
}

/// A script as a launch template holds it: gzip-compressed (what EC2 counts), to be sent
/// base64-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateUserData {
    bytes: Vec<u8>,
    script_len: usize,
}

impl LaunchTemplateUserData {
    /// Bytes of user data as EC2 counts them (before base64).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there is no user data at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes of the plain script.
    pub fn script_len(&self) -> usize {
        self.script_len
    }

    /// The value of `LaunchTemplateData.UserData`.
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

/// gzip with a fixed header (no name, mtime 0, OS "unknown") at the best level: the same
/// script always gives the same bytes, so the launch template never changes by itself.
fn gzip(script: &str) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(script.as_bytes())?;
    encoder.finish()
}

/// The launch template's encoding of `script` and its size, the one place both come from.
/// cloud-init unpacks gzip user data before acting on it ("Gzip compressed content",
/// cloud-init's user data formats documentation), and EC2 counts the compressed bytes.
pub fn launch_template_user_data(script: &str) -> LaunchTemplateUserData {
    // Writing into a Vec cannot fail; were it to, the plain script is valid user data too,
    // and `len()` is still the size of what is sent.
    let bytes = gzip(script).unwrap_or_else(|_| script.as_bytes().to_vec());
    LaunchTemplateUserData {
        bytes,
        script_len: script.len(),
    }
}

/// Renders the script for `os` and checks that its launch template encoding fits
/// ([`LAUNCH_TEMPLATE_MAX_BYTES`]); returns the encoding.
pub fn check_fits(os: Os, vars: &UserdataVars) -> Result<LaunchTemplateUserData, UserdataError> {
    let script = render(os, vars)?;
    fits_within(os, vars, &script, LAUNCH_TEMPLATE_MAX_BYTES)
}

fn fits_within(
    os: Os,
    vars: &UserdataVars,
    script: &str,
    limit: usize,
) -> Result<LaunchTemplateUserData, UserdataError> {
    let encoded = launch_template_user_data(script);
    if encoded.len() <= limit {
        Ok(encoded)
    } else {
        Err(UserdataError::TooLarge {
            template: template_name(os),
            fleet: vars.fleet.clone(),
            region: vars.region.clone(),
            script: encoded.script_len(),
            encoded: encoded.len(),
            limit,
        })
    }
}

/// [`check_fits`] for the config's OS and values in `region`.
pub fn check_config_fits(config: &Config, region: &str) -> Result<(), UserdataError> {
    check_fits(
        config.instance.os,
        &UserdataVars::from_config(config, region),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests;
