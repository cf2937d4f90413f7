//! The detached agent: spot interruption notices, rebalance recommendations (idle and
//! busy hosts), and a crashing runner restarted a bounded number of times.

use std::collections::BTreeMap;
use std::fs;

use bbfleet::config::Os;

use super::aws::{
    claims, host_proxy, instance_state, launch_instances, put_runner, self_terminations,
};
use super::host::{assert_ok, assert_runner_started, wait_for, Host, AGENT_TIMEOUT};

/// A fleet of one runner and an instance whose bootstrap started it; the stored command.
pub(super) fn running_host(fleet: &str, uuid: &str) -> (Host, String) {
    let command = put_runner(fleet, uuid);
    let id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, fleet, &id);
    let run = host.run();
    assert_ok(&host, &run);
    assert_runner_started(&host, &command);
    (host, command)
}

/// How many times the agent has polled `spot/instance-action`.
fn interruption_polls(host: &Host) -> usize {
    host.imds
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/spot/instance-action"))
        .count()
}

/// Position of `line` in the agent's log.
fn agent_line(host: &Host, line: &str) -> usize {
    let log = host.agent_log();
    log.find(line)
        .unwrap_or_else(|| panic!("{line:?} not in the agent log:\n{log}"))
}

#[test]
fn an_interruption_notice_releases_the_claim_and_stops_the_runner() {
    let (fleet, uuid) = ("interrupt", "4e4f0fad-0000-4000-8000-000000000001");
    let (host, _) = running_host(fleet, uuid);
    // Two minutes left: a running step does not hold the runner back.
    fs::write(host.path("steps"), "step-1_build\n").expect("step container");
    host.imds.set_spot_instance_action(Some(
        r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#,
    ));
    host.wait_for_agent("agent: done (interrupted)");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([
            (0, "free".to_owned()),
            (1, host.instance_id.clone()),
            (2, "free".to_owned())
        ])
    );
    assert!(
        agent_line(&host, "released runner") < agent_line(&host, "stopping the runner container"),
        "the claim is released first"
    );
    assert!(
        host.stub_log()
            .contains(&format!("docker container stop --time 1 runner-{uuid}")),
        "{}",
        host.stub_log()
    );
    // AWS itself ends the instance after the notice.
    assert_eq!(instance_state(&host.instance_id), "running");
    wait_for("the agent exits", AGENT_TIMEOUT, || {
        host.agent_pid().is_none()
    })
    .unwrap();
}

fn assert_rebalanced(host: &Host, fleet: &str, uuid: &str) {
    host.wait_for_agent("agent: done (rebalanced)");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([
            (0, "free".to_owned()),
            (1, host.instance_id.clone()),
            (2, "free".to_owned())
        ])
    );
    assert!(host.stub_log().contains("docker container stop"));
    assert!(
        agent_line(host, "stopping the runner container") < agent_line(host, "released runner")
    );
    assert!(agent_line(host, "released runner") < agent_line(host, "terminating instance"));
    assert_eq!(self_terminations(host_proxy(), &host.instance_id), 1);
    let state = instance_state(&host.instance_id);
    assert!(
        state == "terminated" || state == "shutting-down",
        "instance is {state}"
    );
}

#[test]
fn a_rebalance_recommendation_on_an_idle_host_terminates_the_instance() {
    let (fleet, uuid) = ("rebalance-idle", "4e4f0fad-0000-4000-8000-000000000002");
    let (host, _) = running_host(fleet, uuid);
    host.imds
        .set_rebalance_recommendation(Some(r#"{"noticeTime": "2026-01-01T00:00:00Z"}"#));
    assert_rebalanced(&host, fleet, uuid);
}

#[test]
fn a_rebalance_recommendation_waits_for_the_running_step() {
    let (fleet, uuid) = ("rebalance-busy", "4e4f0fad-0000-4000-8000-000000000003");
    let (host, _) = running_host(fleet, uuid);
    fs::write(host.path("steps"), "step-1_build\nstep-1_clone\n").expect("step containers");
    host.imds
        .set_rebalance_recommendation(Some(r#"{"noticeTime": "2026-01-01T00:00:00Z"}"#));
    host.wait_for_agent("a pipeline step is running; waiting for it to finish");
    // Five more polls while the step runs: nothing stops.
    let polls = interruption_polls(&host);
    wait_for("five more polls", AGENT_TIMEOUT, || {
        interruption_polls(&host) >= polls + 5
    })
    .unwrap();
    assert!(
        !host.stub_log().contains("container stop"),
        "{}",
        host.stub_log()
    );
    assert!(!host.path("stopped").exists());
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, host.instance_id.clone())])
    );
    assert_eq!(instance_state(&host.instance_id), "running");
    assert!(host.agent_pid().is_some());

    // The step ends: the host drains.
    fs::remove_file(host.path("steps")).expect("step ends");
    assert_rebalanced(&host, fleet, uuid);
}

#[test]
fn a_runner_that_keeps_failing_is_restarted_a_bounded_number_of_times_then_released() {
    let (fleet, uuid) = ("crashy", "4e4f0fad-0000-4000-8000-000000000004");
    let command = put_runner(fleet, uuid);
    let id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, fleet, &id);
    fs::write(host.path("crash"), "").expect("crash marker");
    let run = host.run();
    assert_ok(&host, &run);
    host.wait_for_agent("gave up after 2 restarts");
    assert_runner_started(&host, &command);
    assert_eq!(
        host.read("docker.runs").lines().count(),
        3,
        "one start, two restarts"
    );
    assert!(host.agent_log().contains("restart 2 of 2"));
    // Three exits within the window: the host frees the runner and leaves.
    host.wait_for_agent("agent: done (the runner keeps failing)");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([
            (0, "free".to_owned()),
            (1, id.clone()),
            (2, "free".to_owned())
        ])
    );
    assert!(agent_line(&host, "released runner") < agent_line(&host, "terminating instance"));
    assert_eq!(self_terminations(host_proxy(), &id), 1);
    let state = instance_state(&id);
    assert!(
        state == "terminated" || state == "shutting-down",
        "instance is {state}"
    );
    assert_eq!(host.state("failures").lines().count(), 3);
    // systemd starting the unit again (a reboot before the end) starts no runner.
    wait_for("the agent exits", AGENT_TIMEOUT, || {
        host.agent_pid().is_none()
    })
    .unwrap();
    host.reset_docker();
    host.start_unit();
    host.wait_for_agent("not starting the runner");
    wait_for("the agent exits", AGENT_TIMEOUT, || {
        host.agent_pid().is_none()
    })
    .unwrap();
    assert_eq!(host.read("docker.runs").lines().count(), 3);
    assert_eq!(claims(fleet, uuid).len(), 3);
}
