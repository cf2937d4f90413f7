//! The boot stages (docs/boot.md): a stock host logs each stage in order, a baked host (the
//! marker file) skips the install and the pull, and bake mode installs, pulls, marks the
//! image and writes the signal parameter without claiming a runner.

use std::collections::BTreeMap;
use std::fs;

use bbfleet::config::Os;
use bbfleet::userdata::{render, BakeVars, UserdataVars, BAKED_MARKER};

use super::aws::{aws, claims, host_proxy, launch_instances, put_runner, self_terminations};
use super::host::{assert_ok, assert_runner_started, Host};

const STOCK: [&str; 8] = [
    "start",
    "host-prepared",
    "docker-installed",
    "aws-cli-ready",
    "docker-started",
    "claim-done",
    "image-pulled",
    "agent-started",
];
const BAKED: [&str; 6] = [
    "start",
    "host-prepared",
    "install-skipped",
    "docker-started",
    "claim-done",
    "agent-started",
];
const BAKE: [&str; 9] = [
    "start",
    "host-prepared",
    "docker-installed",
    "aws-cli-ready",
    "docker-started",
    "image-pulled",
    "marked",
    "cleaned",
    "signalled",
];
const INSTALL_STAGES: [&str; 2] = ["docker-installed", "aws-cli-ready"];
const IMAGE: &str = "registry.example.com/bitbucket-pipelines-runner:1";

/// The `bbfleet-stage NAME SECONDS` lines of `log`, in order.
fn stages(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| l.strip_prefix("bbfleet-stage "))
        .map(|rest| {
            let (name, up) = rest.split_once(' ').expect("NAME SECONDS");
            let up: f64 = up.parse().unwrap_or_else(|e| panic!("{rest:?}: {e}"));
            (name.to_owned(), up)
        })
        .collect()
}

/// Asserts the stage names of `log` are `want`, with uptimes that never go back; prints
/// each stage's delta (the script's own overhead with stubs, for docs/boot.md).
fn assert_stages(what: &str, log: &str, want: &[&str]) -> Vec<(String, f64)> {
    let got = stages(log);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "{what}: stages\n{log}");
    for pair in got.windows(2) {
        assert!(pair[1].1 >= pair[0].1, "{what}: uptime went back: {pair:?}");
    }
    let deltas: Vec<String> = got
        .windows(2)
        .map(|p| format!("{} +{:.2}", p[1].0, p[1].1 - p[0].1))
        .collect();
    eprintln!(
        "{what}: {}; total {:.2} s",
        deltas.join(", "),
        got[got.len() - 1].1 - got[0].1
    );
    got
}

/// The runner-started stage the agent logs, after the bootstrap's agent-started.
fn assert_runner_stage(host: &Host, bootstrap: &[(String, f64)]) {
    host.wait_for_agent("bbfleet-stage runner-started ");
    let agent = stages(&host.agent_log());
    assert_eq!(agent.len(), 1, "{}", host.agent_log());
    let started = bootstrap.last().expect("stages").1;
    assert!(agent[0].1 >= started, "runner started before the agent");
    eprintln!(
        "runner-started +{:.2} after agent-started",
        agent[0].1 - started
    );
}

fn os_name(os: Os) -> &'static str {
    match os {
        Os::Al2023 => "al2023",
        Os::Ubuntu => "ubuntu",
    }
}

fn marker(host: &Host) -> std::path::PathBuf {
    host.path(&format!("root{BAKED_MARKER}"))
}

/// One fleet host of `fleet` with one free runner, the marker written first if `baked`.
fn boot(os: Os, fleet: &str, uuid: &str, baked: bool) -> (Host, String, super::host::Run) {
    let command = put_runner(fleet, uuid);
    let host = Host::new(os, fleet, &launch_instances(1).remove(0));
    if baked {
        fs::create_dir_all(marker(&host).parent().expect("marker dir")).expect("marker dir");
        fs::write(marker(&host), "runner_image image:1\n").expect("write the marker");
    }
    let run = host.run();
    assert_ok(&host, &run);
    (host, command, run)
}

#[test]
fn a_stock_host_logs_every_boot_stage_in_order() {
    for (os, fleet, installer) in [
        (Os::Al2023, "boot-al", "dnf install -y docker"),
        (Os::Ubuntu, "boot-ub", "apt-get install -y"),
    ] {
        let name = os_name(os);
        let (host, command, run) = boot(os, fleet, "b0070000-0000-4000-8000-000000000001", false);
        let got = assert_stages(&format!("stock {name}"), &run.stderr, &STOCK);
        let stubs = host.stub_log();
        assert!(stubs.contains(installer), "{name}: {stubs}");
        // Pulled at boot, retried, before the agent starts the container.
        let pull = stubs.find("docker pull --quiet image:1").expect("pulled");
        let unit = stubs
            .find("systemctl enable --now bbfleet-runner.service")
            .expect("agent started");
        assert!(pull < unit, "{name}: {stubs}");
        assert_runner_started(&host, &command);
        assert_runner_stage(&host, &got);
    }
}

#[test]
fn a_baked_host_skips_the_install_and_the_pull() {
    for (os, fleet) in [(Os::Al2023, "baked-al"), (Os::Ubuntu, "baked-ub")] {
        let name = os_name(os);
        let (host, command, run) = boot(os, fleet, "b0070000-0000-4000-8000-000000000002", true);
        let got = assert_stages(&format!("baked {name}"), &run.stderr, &BAKED);
        assert!(!got
            .iter()
            .any(|(n, _)| INSTALL_STAGES.contains(&n.as_str())));
        let stubs = host.stub_log();
        for installer in ["dnf ", "apt-get ", "snap "] {
            assert!(
                !stubs.lines().any(|l| l.starts_with(installer)),
                "{name}: {installer}called:\n{stubs}"
            );
        }
        assert!(stubs.contains("docker image inspect image:1"), "{stubs}");
        assert!(!stubs.contains("docker pull"), "{name}: pulled:\n{stubs}");
        // Per host: the swap file and Docker's start are not skipped.
        assert!(stubs.contains("fallocate -l 1G"), "{stubs}");
        assert!(stubs.contains("systemctl enable --now docker"), "{stubs}");
        assert_runner_started(&host, &command);
        assert_runner_stage(&host, &got);
    }
}

#[test]
fn a_baked_host_without_the_runner_image_pulls_it() {
    let fleet = "baked-noimg";
    let command = put_runner(fleet, "b0070000-0000-4000-8000-000000000003");
    let host = Host::new(Os::Al2023, fleet, &launch_instances(1).remove(0));
    fs::create_dir_all(marker(&host).parent().expect("marker dir")).expect("marker dir");
    fs::write(marker(&host), "runner_image other:2\n").expect("write the marker");
    fs::write(host.path("no-image"), "").expect("no image");
    let run = host.run();
    assert_ok(&host, &run);
    let mut want = BAKED.to_vec();
    want.insert(5, "image-pulled");
    assert_stages("baked al2023, image missing", &run.stderr, &want);
    let stubs = host.stub_log();
    assert!(stubs.contains("docker pull --quiet image:1"), "{stubs}");
    assert!(!stubs.lines().any(|l| l.starts_with("dnf ")), "{stubs}");
    assert_runner_started(&host, &command);
}

fn builder(os: Os, fleet: &str) -> (Host, String) {
    let signal = format!("/bbfleet/{fleet}/bake/build-1");
    let instance = launch_instances(1).remove(0);
    let host = Host::with(os, fleet, &instance, |v| {
        v.bake = Some(BakeVars {
            signal_parameter: signal.clone(),
            runner_image: IMAGE.to_owned(),
        });
    });
    fs::create_dir_all(host.path("root/etc")).expect("etc");
    fs::write(host.path("root/etc/machine-id"), "0123456789abcdef\n").expect("machine-id");
    (host, signal)
}

fn signal_value(name: &str) -> String {
    aws(&[
        "ssm",
        "get-parameter",
        "--name",
        name,
        "--query",
        "Parameter.Value",
        "--output",
        "text",
    ])
}

#[test]
fn bake_mode_installs_pulls_marks_and_signals_done_without_a_claim() {
    for (os, fleet, installer) in [
        (Os::Al2023, "bake-al", "dnf install -y docker"),
        (Os::Ubuntu, "bake-ub", "apt-get install -y"),
    ] {
        let name = os_name(os);
        let uuid = "b0070000-0000-4000-8000-000000000004";
        put_runner(fleet, uuid);
        let (host, signal) = builder(os, fleet);
        let run = host.run();
        assert_ok(&host, &run);
        assert_stages(&format!("bake {name}"), &run.stderr, &BAKE);
        assert_eq!(signal_value(&signal), "done");
        let stubs = host.stub_log();
        for called in [
            installer,
            "systemctl enable --now docker",
            &format!("docker pull --quiet {IMAGE}"),
            "cloud-init clean --logs",
        ] {
            assert!(stubs.contains(called), "{name}: no {called:?}:\n{stubs}");
        }
        // Docker's log config is in the image; the swap file is each host's own.
        assert!(host.path("root/etc/docker/daemon.json").exists());
        assert!(
            !stubs.contains("fallocate") && !stubs.contains("swapon"),
            "{stubs}"
        );
        assert_eq!(
            fs::read_to_string(marker(&host)).expect("the marker"),
            format!("runner_image {IMAGE}\n")
        );
        assert_eq!(host.read("root/etc/machine-id"), "");
        // No claim, no agent, no runner.
        assert_eq!(
            claims(fleet, uuid),
            BTreeMap::from([(0, "free".to_owned())])
        );
        assert!(!stubs.contains("bbfleet-runner.service"), "{stubs}");
        assert!(!host.path("state/claim").exists());
        assert!(!host.path(&format!("root/{}", super::host::UNIT)).exists());
        assert!(!stubs.contains("container run"), "{stubs}");
    }
}

#[test]
fn a_failed_bake_signals_the_stage_it_did_not_reach() {
    let fleet = "bake-fail";
    let (host, signal) = builder(Os::Al2023, fleet);
    fs::write(host.path("pull-fails"), "").expect("make the pull fail");
    let run = host.run();
    assert!(!run.status.success(), "the bake succeeded:\n{}", run.stderr);
    assert_eq!(signal_value(&signal), "failed: image-pulled");
    assert!(!marker(&host).exists(), "marked although the pull failed");
    let stubs = host.stub_log();
    assert!(!stubs.contains("cloud-init clean"), "{stubs}");
    // The builder is bbfleet bake's to end: it does not terminate itself.
    assert_eq!(self_terminations(host_proxy(), &host.instance_id), 0);
}

#[test]
fn a_builder_script_is_shellcheck_clean_and_fits() {
    for os in [Os::Al2023, Os::Ubuntu] {
        let vars = UserdataVars {
            bake: Some(BakeVars {
                signal_parameter: "/bbfleet/ci/bake/b-1".to_owned(),
                runner_image: IMAGE.to_owned(),
            }),
            ..UserdataVars::new("ci", "eu-west-1", 4)
        };
        let script = render(os, &vars).expect("render");
        super::render::shellcheck(os_name(os), &script);
        let encoded = bbfleet::userdata::check_fits(os, &vars).expect("fits");
        eprintln!(
            "bake {}: script {} bytes, {} gzip",
            os_name(os),
            script.len(),
            encoded.len()
        );
    }
}
