//! Hosts that heal: the agent is a systemd unit (Restart=always) that comes back after a
//! reboot on the claim it holds; a host that cannot claim in time terminates itself; a
//! throttled AWS call is retried.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use bbfleet::config::Os;

use super::agent::running_host;
use super::aws::{
    aws, claims, host_proxy, instance_state, launch_instances, own_proxy, put_runner,
    self_terminations,
};
use super::host::{assert_ok, assert_runner_started, wait_for, Host, AGENT_TIMEOUT};

fn assert_leaving(id: &str) {
    let state = instance_state(id);
    assert!(
        state == "terminated" || state == "shutting-down",
        "{id} is {state}"
    );
}

/// Writes claim `generation` of runner `uuid` as the userdata would.
fn put_claim(fleet: &str, uuid: &str, generation: u64, value: &str) {
    aws(&[
        "ssm",
        "put-parameter",
        "--name",
        &format!("/bbfleet/{fleet}/claims/{uuid}/{generation}"),
        "--type",
        "String",
        "--value",
        value,
        "--no-overwrite",
    ]);
}

#[test]
fn the_runner_agent_is_an_enabled_systemd_unit_that_always_restarts() {
    let (fleet, uuid) = ("unit", "5a5b0fad-0000-4000-8000-000000000001");
    let (host, _) = running_host(fleet, uuid);
    let unit = host.unit();
    for line in [
        "Restart=always",
        "RestartSec=10",
        "RestartPreventExitStatus=100",
        "StartLimitIntervalSec=0",
        "After=network-online.target docker.service",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} not in:\n{unit}");
    }
    let agent = host.path("root/usr/local/sbin/bbfleet-agent");
    assert_eq!(
        host.exec_start(),
        ["/bin/bash", &agent.display().to_string(), "agent"]
    );
    // No secret in the unit, nor in the agent's arguments.
    assert!(
        !unit.contains("canary") && !unit.contains("OAUTH"),
        "{unit}"
    );
    let pid = host.agent_pid().expect("the unit's agent runs");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("canary"));
    let mode = fs::metadata(&agent).expect("agent").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "agent mode {mode:o}");
    // Installed, then enabled and started in one go; the runner came from its ExecStart.
    let stubs = host.stub_log();
    let reload = stubs
        .find("systemctl daemon-reload")
        .expect("daemon-reload");
    let enable = stubs
        .find("systemctl enable --now bbfleet-runner.service")
        .unwrap_or_else(|| panic!("the unit is not enabled:\n{stubs}"));
    assert!(reload < enable, "{stubs}");
    assert!(host.agent_log().contains(&format!("agent: runner {uuid}")));
}

#[test]
fn after_a_reboot_the_unit_starts_the_same_runner_on_the_same_claim() {
    let (fleet, uuid) = ("reboot", "5a5b0fad-0000-4000-8000-000000000002");
    let (host, command) = running_host(fleet, uuid);
    let id = host.instance_id.clone();
    let claim = host.state("claim");
    assert_eq!(claim, format!("/bbfleet/{fleet}/claims/{uuid}/1"));
    // A reboot: every process and the container are gone, the state directory is kept;
    // systemd starts the enabled unit.
    host.kill_agent();
    host.reset_docker();
    host.start_unit();
    assert_runner_started(&host, &command);
    assert_eq!(host.read("docker.runs").lines().count(), 2);
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, id.clone())])
    );
    assert_eq!(host.state("claim"), claim);
    let starts = host
        .agent_log()
        .matches(&format!("agent: runner {uuid}"))
        .count();
    assert_eq!(starts, 2, "{}", host.agent_log());

    // The boot script again with the state kept: the same claim, no new generation.
    host.kill_agent();
    host.reset_docker();
    let run = host.run();
    assert_ok(&host, &run);
    assert!(
        run.stderr
            .contains("is already claimed by this instance (generation 1)"),
        "{}",
        run.stderr
    );
    assert_runner_started(&host, &command);
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, id)])
    );
    assert_eq!(host.state("claim"), claim);
}

#[test]
fn an_agent_whose_claim_was_taken_over_while_it_was_down_starts_no_runner() {
    let (fleet, uuid) = ("taken", "5a5b0fad-0000-4000-8000-000000000003");
    let (host, _) = running_host(fleet, uuid);
    let id = host.instance_id.clone();
    host.kill_agent();
    host.reset_docker();
    // While this instance was stopped, another one took its runner over.
    let other = launch_instances(1).remove(0);
    put_claim(fleet, uuid, 2, &other);
    host.start_unit();
    host.wait_for_agent("agent: done (claim lost)");
    assert!(
        host.agent_log().contains(&format!(
            "claim /bbfleet/{fleet}/claims/{uuid}/1 is no longer"
        )),
        "{}",
        host.agent_log()
    );
    assert!(!host.path("docker.done").exists(), "a second runner ran");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, id.clone()), (2, other)])
    );
    assert_eq!(self_terminations(host_proxy(), &id), 1);
    assert_leaving(&id);
}

#[test]
fn a_host_that_cannot_claim_within_the_timeout_terminates_itself() {
    let fleet = "full";
    let uuids = [
        "5a5b0fad-0000-4000-8000-000000000004",
        "5a5b0fad-0000-4000-8000-000000000005",
    ];
    let ids = launch_instances(3);
    for (uuid, holder) in uuids.iter().zip(&ids) {
        put_runner(fleet, uuid);
        put_claim(fleet, uuid, 1, holder);
    }
    let host = Host::with(Os::Al2023, fleet, &ids[2], |v| v.claim_timeout_secs = 8);
    let started = std::time::Instant::now();
    let run = host.run();
    assert!(!run.status.success(), "{}", run.stderr);
    // It kept trying for the whole timeout (bash counts whole seconds), then gave up.
    assert!(started.elapsed().as_secs() >= 7, "{:?}", started.elapsed());
    for line in [
        "bbfleet: no free runner among the 2 offered",
        "bbfleet: claim round 1",
        "bbfleet: gave up: no runner of fleet full could be claimed within 8 s",
        "bbfleet: bootstrap failed",
        &format!("bbfleet: terminating instance {}", ids[2]),
    ] {
        assert!(
            run.stderr.contains(line),
            "{line:?} not in:\n{}",
            run.stderr
        );
    }
    assert_eq!(self_terminations(host_proxy(), &ids[2]), 1);
    assert_leaving(&ids[2]);
    // The claimants are untouched, and so are their claims.
    for (uuid, holder) in uuids.iter().zip(&ids) {
        assert_eq!(instance_state(holder), "running");
        assert_eq!(
            claims(fleet, uuid),
            BTreeMap::from([(0, "free".to_owned()), (1, holder.clone())])
        );
    }
    assert!(!host.path("docker.done").exists());
    assert!(!host
        .path("root/etc/systemd/system/bbfleet-runner.service")
        .exists());
}

#[test]
fn a_throttled_get_parameter_is_retried_and_the_runner_starts() {
    let (fleet, uuid) = ("throttled", "5a5b0fad-0000-4000-8000-000000000006");
    let command = put_runner(fleet, uuid);
    let id = launch_instances(1).remove(0);
    let proxy = own_proxy();
    let host = Host::through(&proxy, Os::Al2023, fleet, &id, |_| {});
    // From the bind (after the claim write) on, AWS throttles: the command's GetParameter
    // is refused once.
    let p = proxy.clone();
    proxy.on_operation("ssm:AddTagsToResource", move || p.throttle_every(1));
    let p = proxy.clone();
    proxy.on_operation("ssm:GetParameter", move || p.throttle_every(0));
    let run = host.run();
    assert_ok(&host, &run);
    assert_runner_started(&host, &command);
    let key = testkit::iam::instance_access_key(&id);
    let gets: Vec<bool> = proxy
        .calls()
        .iter()
        .filter(|c| c.operation == "ssm:GetParameter" && c.access_key == key)
        .map(|c| c.throttled)
        .collect();
    assert_eq!(gets, [true, false], "one throttled try, one retry");
    for line in [
        "bbfleet: aws ssm get-parameter: ThrottlingException",
        "bbfleet: aws ssm get-parameter failed (try 1 of 4); retrying",
    ] {
        assert!(
            run.stderr.contains(line),
            "{line:?} not in:\n{}",
            run.stderr
        );
    }
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, id)])
    );
    wait_for("the agent runs", AGENT_TIMEOUT, || {
        host.agent_pid().is_some()
    })
    .unwrap();
}
