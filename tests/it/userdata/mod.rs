//! The userdata scripts: rendered, linted with shellcheck, and run for real with bash
//! against moto (SSM, EC2), a fake IMDSv2 and stub system commands (systemctl among them:
//! `enable --now` of the runner's unit runs its ExecStart, as systemd would).
//!
//! Needs on PATH: `shellcheck` (apt-get install -y shellcheck), `aws` (pip install awscli),
//! `moto_server` (pip install 'moto[server]'), `curl`, `bash`, coreutils `shuf` and `setsid`,
//! `strace` (apt-get install -y strace; scripts/tools.sh installs it).

mod agent;
mod argv;
mod aws;
mod blast;
mod boot;
mod claims;
mod heal;
mod host;
mod hostile;
mod imds;
mod render;

use std::time::Duration;

/// An AL2023 AMI that exists in moto.
const AMI: &str = "ami-0d27e0fb3bac4d724";
/// How long one run of a script may take before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the detached runner may take to reach the docker stub (the agent now starts
/// through the systemctl stub; twenty hosts on two loaded cores can take a while).
const RUNNER_TIMEOUT: Duration = Duration::from_secs(60);
