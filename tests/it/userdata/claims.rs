//! Claiming: an instance claims one runner and starts exactly its command; twenty race
//! for ten; no runner, no start; the Ubuntu script.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Child;
use std::time::Instant;

use bbfleet::config::Os;

use super::aws::{
    all_claims, aws, claims, host_proxy, instance_state, launch_instances, put_runner,
    release_as_bbfleet, self_terminations,
};
use super::host::{
    assert_ok, assert_runner_started, kill_group, wait_for, Host, Run, AGENT_TIMEOUT,
};
use super::SCRIPT_TIMEOUT;

#[test]
fn an_instance_claims_a_runner_and_starts_exactly_its_command() {
    let fleet = "solo";
    let uuids = [
        "1b1c0c8a-0000-4000-8000-000000000001",
        "1b1c0c8a-0000-4000-8000-000000000002",
        "1b1c0c8a-0000-4000-8000-000000000003",
    ];
    let commands: BTreeMap<&str, String> =
        uuids.iter().map(|u| (*u, put_runner(fleet, u))).collect();
    let instance_id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, fleet, &instance_id);

    let started = Instant::now();
    let run = host.run();
    eprintln!("one bootstrap took {:?}", started.elapsed());
    assert_ok(&host, &run);

    // (a) docker got exactly the stored command of the claimed runner.
    let uuid = host.state("runner-uuid");
    let command = commands
        .get(uuid.as_str())
        .unwrap_or_else(|| panic!("claimed unknown runner {uuid:?}"));
    assert_runner_started(&host, command);
    // The bootstrap is over; the detached agent keeps the runner going.
    assert!(host.agent_pid().is_some(), "the agent does not run");

    // (b) the claim: generation 1 holds this instance, and the state file names it.
    let claim = format!("/bbfleet/{fleet}/claims/{uuid}/1");
    assert_eq!(
        claims(fleet, &uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, instance_id.clone())])
    );
    assert_eq!(host.state("claim"), claim);
    for other in uuids.iter().filter(|u| **u != uuid) {
        assert_eq!(
            claims(fleet, other),
            BTreeMap::from([(0, "free".to_owned())]),
            "runner {other} was claimed too"
        );
    }

    // (c) no secret in the script or in what it printed.
    for u in uuids {
        let canary = format!("canary-{u}");
        assert!(!host.script.contains(&canary));
        assert!(
            !run.stdout.contains(&canary),
            "secret in stdout:\n{}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(&canary),
            "secret in stderr:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("bbfleet: claimed runner ")),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("+ "),
        "the script must not trace its commands:\n{}",
        run.stderr
    );

    // (d) the state dir is private to root, and the decrypted command is not left on disk.
    assert!(!host.path("state/command.tmp").exists());
    let mode = fs::metadata(host.path("state"))
        .expect("state dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "state dir mode {mode:o}");

    // Host set-up: packages, Docker started after its config was written, swap, IMDSv2.
    let stubs = host.read("stubs.log");
    for expected in [
        "dnf install -y docker",
        "systemctl: daemon.json present",
        "systemctl enable --now docker",
        "swapon ",
        "sysctl -q -w vm.swappiness=10",
        "systemctl mask tmp.mount",
        &format!(
            "mount --bind {0}/root/var/lib/bbfleet-tmp {0}/root/tmp",
            host.dir.path().display()
        ),
    ] {
        assert!(
            stubs.contains(expected),
            "{expected:?} not in the stub log:\n{stubs}"
        );
    }
    assert!(
        !stubs.contains("awscli-2"),
        "aws is on PATH, so it must not be installed:\n{stubs}"
    );
    let daemon = host.read("root/etc/docker/daemon.json");
    let daemon: serde_json::Value = serde_json::from_str(&daemon).expect("daemon.json is JSON");
    assert_eq!(daemon["log-driver"], "json-file");
    assert_eq!(daemon["log-opts"]["max-file"], "5");
    assert_eq!(host.read("root/etc/fstab"), "/swapfile none swap sw 0 0\n");
    // IMDSv2: a token, the instance id, then the agent polls only the spot notices.
    wait_for(
        "the agent polls the rebalance notice",
        AGENT_TIMEOUT,
        || {
            host.imds
                .requests()
                .iter()
                .any(|r| r.path.ends_with("/rebalance"))
        },
    )
    .unwrap();
    let imds: Vec<(String, String, u16)> = host
        .imds
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    let get = |path: &str| ("GET".to_owned(), path.to_owned(), 200);
    assert_eq!(
        imds[..4],
        [
            ("PUT".to_owned(), "/latest/api/token".to_owned(), 200),
            get("/latest/meta-data/instance-id"),
            // For the instance's ARN, which the binding of its runner names.
            get("/latest/meta-data/services/partition"),
            get("/latest/dynamic/instance-identity/document"),
        ]
    );
    for (method, path, status) in &imds[4..] {
        assert!(
            matches!(
                (method.as_str(), path.as_str(), status),
                ("PUT", "/latest/api/token", 200)
                    | ("GET", "/latest/meta-data/spot/instance-action", 404)
                    | (
                        "GET",
                        "/latest/meta-data/events/recommendations/rebalance",
                        404
                    )
            ),
            "unexpected IMDS request {method} {path} ({status})"
        );
    }
    assert!(!host.agent_log().contains("canary"));

    // A second run on the same instance (after a reboot) keeps its claim and its host set-up.
    host.kill_agent();
    fs::remove_file(host.path("docker.argv")).expect("reset docker argv");
    fs::remove_file(host.path("docker.done")).expect("reset docker marker");
    let rerun = host.run();
    assert_ok(&host, &rerun);
    assert_eq!(host.state("runner-uuid"), uuid);
    assert_eq!(host.state("claim"), claim);
    assert_eq!(
        claims(fleet, &uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, instance_id.clone())])
    );
    assert_runner_started(&host, command);
    assert_eq!(host.read("root/etc/fstab"), "/swapfile none swap sw 0 0\n");
}

/// Collects the runs of the `children` that have ended.
fn reap(hosts: &[Host], children: &mut [Option<Child>], finished: &mut BTreeMap<usize, Run>) {
    for (i, slot) in children.iter_mut().enumerate() {
        let Some(child) = slot else { continue };
        if let Some(status) = child.try_wait().expect("poll a script") {
            *slot = None;
            let host = &hosts[i];
            finished.insert(
                i,
                Run {
                    status,
                    stdout: host.read("stdout"),
                    stderr: host.read("stderr"),
                },
            );
        }
    }
}

#[test]
fn twenty_instances_share_ten_runners_and_a_dead_claim_is_taken_over_once_bbfleet_releases_it() {
    let fleet = "race";
    let uuids: Vec<String> = (0..10)
        .map(|i| format!("2c2d0d9b-0000-4000-8000-0000000000{i:02}"))
        .collect();
    let commands: BTreeMap<String, String> = uuids
        .iter()
        .map(|u| (u.clone(), put_runner(fleet, u)))
        .collect();
    let ids = launch_instances(20);
    // Waiters retry (at most 4 s apart) long enough to see the takeover; the test stops them.
    let hosts: Vec<Host> = ids
        .iter()
        .map(|id| {
            Host::with(Os::Al2023, fleet, id, |v| {
                v.claim_timeout_secs = 400;
                v.backoff_max_secs = 4;
                v.poll_interval_ms = 1000;
            })
        })
        .collect();
    let report = |finished: &BTreeMap<usize, Run>| {
        finished
            .iter()
            .map(|(i, r)| {
                format!(
                    "--- {} ({}):\n{}",
                    hosts[*i].instance_id, r.status, r.stderr
                )
            })
            .collect::<String>()
    };

    let started = Instant::now();
    let mut children: Vec<Option<Child>> = hosts.iter().map(|h| Some(h.spawn())).collect();
    let mut finished = BTreeMap::new();
    wait_for("ten bootstraps end", SCRIPT_TIMEOUT, || {
        reap(&hosts, &mut children, &mut finished);
        finished.len() >= 10
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", report(&finished)));
    eprintln!(
        "20 instances racing for 10 runners: 10 claimed in {:?}",
        started.elapsed()
    );
    assert_eq!(finished.len(), 10, "{}", report(&finished));
    assert!(
        finished.values().all(|r| r.status.success()),
        "{}",
        report(&finished)
    );
    let winners: Vec<&Host> = finished.keys().map(|i| &hosts[*i]).collect();

    // Each runner claimed exactly once, by a different winner, at generation 1 (bbfleet
    // offered it at generation 0).
    let claimed = all_claims(fleet);
    assert_eq!(
        claimed.keys().collect::<Vec<_>>(),
        uuids.iter().collect::<Vec<_>>()
    );
    let mut holders = BTreeSet::new();
    for (uuid, claims) in &claimed {
        assert_eq!(
            claims.len(),
            2,
            "runner {uuid}: {claims:?}\n{}",
            report(&finished)
        );
        assert_eq!(claims[&0], "free");
        holders.insert(claims[&1].clone());
    }
    let winner_ids: BTreeSet<String> = winners.iter().map(|h| h.instance_id.clone()).collect();
    assert_eq!(holders, winner_ids);
    for host in &winners {
        assert_runner_started(host, &commands[&host.state("runner-uuid")]);
        // Their agents are tested elsewhere; stopping them leaves the CPU to the waiters.
        host.kill_agent();
    }
    // The ten others wait: still running, no runner, no command fetched.
    let waiters: Vec<usize> = (0..hosts.len())
        .filter(|i| children[*i].is_some())
        .collect();
    assert_eq!(waiters.len(), 10);
    for &i in &waiters {
        let host = &hosts[i];
        assert!(
            !host.path("docker.done").exists(),
            "{} started a runner",
            host.instance_id
        );
        assert!(
            !host.path("state/runner.env").exists(),
            "{} fetched a command",
            host.instance_id
        );
    }

    // A claimer's instance dies. Its runner's command stays bound to it, so no waiter can
    // take it (the waiters poll at most 4 s apart: 10 s is two rounds each) until bbfleet's
    // next apply releases the claim as ReleaseClaim does (unbind, then generation 2 =
    // free); then one waiter claims it at generation 3.
    let dead = winners[0];
    let dead_uuid = dead.state("runner-uuid");
    dead.kill_agent();
    aws(&[
        "ec2",
        "terminate-instances",
        "--instance-ids",
        &dead.instance_id,
    ]);
    std::thread::sleep(std::time::Duration::from_secs(10));
    reap(&hosts, &mut children, &mut finished);
    assert_eq!(finished.len(), 10, "{}", report(&finished));
    assert_eq!(all_claims(fleet), claimed, "no host took a bound runner");
    release_as_bbfleet(fleet, &dead_uuid, 2);
    let takeover = Instant::now();
    wait_for("a waiter takes the dead claim over", SCRIPT_TIMEOUT, || {
        reap(&hosts, &mut children, &mut finished);
        finished.len() > 10
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", report(&finished)));
    eprintln!("takeover after {:?}", takeover.elapsed());
    assert_eq!(finished.len(), 11, "{}", report(&finished));
    let (&late, run) = finished
        .iter()
        .find(|(i, _)| waiters.contains(i))
        .expect("a waiter ended");
    let late = &hosts[late];
    assert_ok(late, run);
    assert_eq!(late.state("runner-uuid"), dead_uuid);
    assert_eq!(
        late.state("claim"),
        format!("/bbfleet/{fleet}/claims/{dead_uuid}/3")
    );
    assert_runner_started(late, &commands[&dead_uuid]);

    // The nine others still wait (they lost every race or found no free runner); stop them.
    for &i in waiters.iter().filter(|i| children[**i].is_some()) {
        let stderr = hosts[i].read("stderr");
        assert!(
            stderr.contains("bbfleet: no free runner among the 10 offered")
                || stderr.contains("another instance claimed it first"),
            "{}:\n{stderr}",
            hosts[i].instance_id
        );
    }
    for child in children.iter_mut().filter_map(Option::take) {
        kill_group(child.id());
        let mut child = child;
        let _ = child.wait();
    }
    // Exactly two more claims: bbfleet's release at generation 2, the takeover at 3.
    let mut expected = claimed;
    let dead_claims = expected
        .get_mut(&dead_uuid)
        .expect("the dead runner's claims");
    dead_claims.insert(2, "free".to_owned());
    dead_claims.insert(3, late.instance_id.clone());
    assert_eq!(all_claims(fleet), expected);
}

#[test]
fn an_instance_gives_up_when_the_fleet_has_no_runner() {
    let instance_id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, "empty", &instance_id);
    let run = host.run();
    assert!(
        !run.status.success(),
        "must fail without a runner:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("bbfleet: gave up: no runner of fleet empty"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("bbfleet: bootstrap failed"),
        "{}",
        run.stderr
    );
    assert!(!host.path("docker.done").exists());
    // It does not stay, billed, running nothing: it terminates its own instance.
    assert_eq!(self_terminations(host_proxy(), &instance_id), 1);
    let state = instance_state(&instance_id);
    assert!(
        state == "terminated" || state == "shutting-down",
        "instance is {state}"
    );
}

#[test]
fn the_ubuntu_script_installs_from_apt_and_starts_its_runner() {
    let fleet = "noble";
    let uuid = "3d3e0eac-0000-4000-8000-0000000000c1";
    let command = put_runner(fleet, uuid);
    let instance_id = launch_instances(1).remove(0);
    let host = Host::new(Os::Ubuntu, fleet, &instance_id);
    let run = host.run();
    assert_ok(&host, &run);
    let stubs = host.read("stubs.log");
    for expected in [
        "apt-get update",
        "apt-get install -y -q -o DPkg::Lock::Timeout=120 docker.io",
        "systemctl: daemon.json present",
    ] {
        assert!(
            stubs.contains(expected),
            "{expected:?} not in the stub log:\n{stubs}"
        );
    }
    assert!(
        !stubs.contains("snap "),
        "aws is on PATH, so it must not be installed:\n{stubs}"
    );
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(0, "free".to_owned()), (1, instance_id.clone())])
    );
    assert_runner_started(&host, &command);
    assert!(!run.stderr.contains("canary") && !run.stdout.contains("canary"));
}
