//! The userdata scripts: rendered, linted with shellcheck, and run for real with bash
//! against moto (SSM, EC2), a fake IMDSv2 and stub system commands.
//!
//! Needs on PATH: `shellcheck` (apt-get install -y shellcheck), `aws` (pip install awscli),
//! `moto_server` (pip install 'moto[server]'), `curl`, `bash`, coreutils `shuf` and `setsid`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bbfleet::config::Os;
use bbfleet::userdata::{render, UserdataVars, IMDS_ENDPOINT};
use support::imds::FakeImds;
use support::moto::{aws_env, moto, PROXY_VARS};

/// An AL2023 AMI that exists in moto.
const AMI: &str = "ami-0d27e0fb3bac4d724";
/// How long one run of a script may take before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the detached runner may take to reach the docker stub.
const RUNNER_TIMEOUT: Duration = Duration::from_secs(10);

fn production_vars(fleet: &str) -> UserdataVars {
    UserdataVars {
        fleet: fleet.to_owned(),
        region: "eu-west-1".to_owned(),
        ssm_prefix: format!("/bbfleet/{fleet}"),
        swap_gb: 4,
        imds_endpoint: IMDS_ENDPOINT.to_owned(),
        runner_log: "/var/log/bbfleet-runner.log".to_owned(),
        state_dir: "/run/bbfleet".to_owned(),
        claim_attempts: 60,
        claim_backoff_max_secs: 30,
    }
}

fn shellcheck(name: &str, script: &str) {
    let child = Command::new("shellcheck")
        .args(["-s", "bash", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run shellcheck ({e}); install it: `apt-get install -y shellcheck` \
             (or see https://github.com/koalaman/shellcheck#installing)"
        ),
    };
    child
        .stdin
        .take()
        .expect("shellcheck stdin")
        .write_all(script.as_bytes())
        .expect("feed shellcheck");
    let out = child.wait_with_output().expect("shellcheck finished");
    assert!(
        out.status.success(),
        "shellcheck findings in the rendered {name} script:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_templates_render_to_clean_bash() {
    let vars = production_vars("ci");
    for (os, name, installer) in [
        (Os::Al2023, "al2023", "dnf install -y docker"),
        (Os::Ubuntu, "ubuntu", "apt-get install -y"),
    ] {
        let script = render(os, &vars).unwrap_or_else(|e| panic!("render {name}: {e}"));
        assert!(
            script.starts_with("#!/bin/bash\n"),
            "{name}: no bash shebang"
        );
        assert!(script.contains("set -euo pipefail"), "{name}");
        assert!(
            script.contains("nohup setsid bash"),
            "{name}: runner not detached"
        );
        assert!(
            script.contains("'/bbfleet/ci'"),
            "{name}: SSM prefix missing"
        );
        assert!(script.contains(installer), "{name}: {installer} missing");
        assert!(
            script.contains("http://169.254.169.254"),
            "{name}: IMDS endpoint missing"
        );
        assert!(
            !script.contains("OAUTH_CLIENT_SECRET"),
            "{name}: mentions the runner secret"
        );
        assert!(!script.contains("{{"), "{name}: unrendered handlebars");
        assert!(
            !script.contains("--overwrite"),
            "{name}: claims must never overwrite"
        );
        shellcheck(name, &script);
    }
}

// ---- moto and the aws CLI, as seen from the test ----

/// The aws CLI pointed at the test's moto server.
fn aws(args: &[&str]) -> String {
    let out = aws_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run aws ({e}); install it: `pip install awscli`"));
    assert!(
        out.status.success(),
        "aws {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 from aws")
        .trim()
        .to_owned()
}

/// The aws CLI with the environment of an AWS client talking to moto.
fn aws_command() -> Command {
    let mut cmd = Command::new("aws");
    moto_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Points `cmd` at moto: the caller's AWS settings and proxies removed, moto's env set.
fn moto_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(aws_env(&moto().endpoint));
}

fn launch_instances(count: usize) -> Vec<String> {
    let count = count.to_string();
    let ids = aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        AMI,
        "--instance-type",
        "m6i.large",
        "--count",
        &count,
        "--query",
        "Instances[].InstanceId",
        "--output",
        "text",
    ]);
    let ids: Vec<String> = ids.split_whitespace().map(str::to_owned).collect();
    assert_eq!(ids.len().to_string(), count, "moto launched {ids:?}");
    ids
}

/// Stores a runner command the way bbfleet does; returns the command.
fn put_runner(fleet: &str, uuid: &str) -> String {
    let command = format!(
        "docker container run -e 'OAUTH_CLIENT_SECRET=canary-{uuid}' --name runner-{uuid} image:1"
    );
    aws(&[
        "ssm",
        "put-parameter",
        "--name",
        &format!("/bbfleet/{fleet}/runners/{uuid}"),
        "--type",
        "SecureString",
        "--key-id",
        "alias/aws/ssm",
        "--value",
        &command,
    ]);
    command
}

/// The claims of one runner: generation -> value.
fn claims(fleet: &str, uuid: &str) -> BTreeMap<u64, String> {
    let text = aws(&[
        "ssm",
        "get-parameters-by-path",
        "--path",
        &format!("/bbfleet/{fleet}/claims/{uuid}"),
        "--query",
        "Parameters[].[Name,Value]",
        "--output",
        "text",
    ]);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line.split_once('\t').expect("name<TAB>value");
            let generation = name
                .rsplit('/')
                .next()
                .and_then(|g| g.parse().ok())
                .expect("numeric generation");
            (generation, value.to_owned())
        })
        .collect()
}

/// The argv of a stored command as the shell would split it (test commands only use
/// plain words and single quotes).
fn shell_words(command: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

// ---- a simulated instance: temp dir, stubs, fake IMDS, the rendered script ----

const STUBS: [&str; 9] = [
    "docker",
    "dnf",
    "apt-get",
    "snap",
    "systemctl",
    "mkswap",
    "swapon",
    "fallocate",
    "sysctl",
];

struct Host {
    dir: tempfile::TempDir,
    instance_id: String,
    imds: FakeImds,
    script: String,
}

/// How one run of the script ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Host {
    fn new(os: Os, fleet: &str, instance_id: &str) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let imds = FakeImds::start(instance_id);
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).expect("stub dir");
        fs::create_dir_all(dir.path().join("root")).expect("host root");
        let log = dir.path().join("stubs.log");
        for stub in STUBS {
            let mut body = format!(
                "#!/bin/sh\nprintf '%s\\n' \"{stub} $*\" >>'{}'\n",
                log.display()
            );
            match stub {
                // The full argv, NUL-separated, then a marker that it is complete.
                "docker" => body += &format!(
                    "printf '%s\\0' \"$@\" >>'{0}/docker.argv'\n: >'{0}/docker.done'\n",
                    dir.path().display()
                ),
                // Docker must first start with the log rotation config in place.
                "systemctl" => body += &format!(
                    "if [ -e '{0}/root/etc/docker/daemon.json' ]; then d=present; else d=absent; fi\n\
                     echo \"systemctl: daemon.json $d\" >>'{1}'\n",
                    dir.path().display(),
                    log.display()
                ),
                _ => {}
            }
            let path = bin.join(stub);
            fs::write(&path, body).expect("write stub");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stub");
        }
        let vars = UserdataVars {
            fleet: fleet.to_owned(),
            region: "us-east-1".to_owned(),
            ssm_prefix: format!("/bbfleet/{fleet}"),
            swap_gb: 1,
            imds_endpoint: imds.endpoint.clone(),
            runner_log: dir.path().join("log/runner.log").display().to_string(),
            state_dir: dir.path().join("state").display().to_string(),
            claim_attempts: 3,
            claim_backoff_max_secs: 1,
        };
        let script = render(os, &vars).expect("render the script");
        fs::write(dir.path().join("bootstrap.sh"), &script).expect("write script");
        Host {
            dir,
            instance_id: instance_id.to_owned(),
            imds,
            script,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Starts the script as cloud-init would (bash, as this user), with the stubs first on PATH.
    fn spawn(&self) -> Child {
        let mut bash = Command::new("bash");
        moto_env(&mut bash);
        let path = std::env::var("PATH").unwrap_or_default();
        bash.arg(self.path("bootstrap.sh"))
            .env("PATH", format!("{}:{path}", self.path("bin").display()))
            .env("BBFLEET_HOST_ROOT", self.path("root"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.path("stdout")).expect("stdout file"))
            .stderr(fs::File::create(self.path("stderr")).expect("stderr file"))
            .spawn()
            .expect("run bash")
    }

    fn wait(&self, mut child: Child) -> Run {
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the script") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: script still running after {SCRIPT_TIMEOUT:?}:\n{}",
                    self.instance_id,
                    self.read("stderr")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run {
            status,
            stdout: self.read("stdout"),
            stderr: self.read("stderr"),
        }
    }

    fn run(&self) -> Run {
        self.wait(self.spawn())
    }

    /// The argv the detached runner passed to the docker stub, once it got there.
    fn docker_argv(&self) -> Vec<String> {
        let deadline = Instant::now() + RUNNER_TIMEOUT;
        while !self.path("docker.done").exists() {
            assert!(
                Instant::now() < deadline,
                "{}: docker was not started within {RUNNER_TIMEOUT:?}",
                self.instance_id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let raw = self.read("docker.argv");
        let raw = raw.strip_suffix('\0').expect("NUL-terminated argv");
        raw.split('\0').map(str::to_owned).collect()
    }

    fn state(&self, name: &str) -> String {
        self.read(&format!("state/{name}")).trim().to_owned()
    }
}

fn assert_ok(host: &Host, run: &Run) {
    assert!(
        run.status.success(),
        "{}: script failed ({}):\n{}",
        host.instance_id,
        run.status,
        run.stderr
    );
}

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
    let mut expected = shell_words(command);
    assert_eq!(expected.remove(0), "docker");
    assert_eq!(host.docker_argv(), expected);

    // (b) the claim: generation 1 holds this instance, and the state file names it.
    let claim = format!("/bbfleet/{fleet}/claims/{uuid}/1");
    assert_eq!(
        claims(fleet, &uuid),
        BTreeMap::from([(1, instance_id.clone())])
    );
    assert_eq!(host.state("claim"), claim);
    for other in uuids.iter().filter(|u| **u != uuid) {
        assert!(
            claims(fleet, other).is_empty(),
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

    // (d) the command file is private to root.
    let mode = fs::metadata(host.path("state/runner.sh"))
        .expect("runner.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "runner.sh mode {mode:o}");
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
    let imds: Vec<(String, String, u16)> = host
        .imds
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    assert_eq!(
        imds,
        [
            ("PUT".to_owned(), "/latest/api/token".to_owned(), 200),
            (
                "GET".to_owned(),
                "/latest/meta-data/instance-id".to_owned(),
                200
            )
        ]
    );

    // A second run on the same instance (after a reboot) keeps its claim and its host set-up.
    fs::remove_file(host.path("docker.argv")).expect("reset docker argv");
    fs::remove_file(host.path("docker.done")).expect("reset docker marker");
    let rerun = host.run();
    assert_ok(&host, &rerun);
    assert_eq!(host.state("runner-uuid"), uuid);
    assert_eq!(host.state("claim"), claim);
    assert_eq!(
        claims(fleet, &uuid),
        BTreeMap::from([(1, instance_id.clone())])
    );
    assert_eq!(host.docker_argv(), expected);
    assert_eq!(host.read("root/etc/fstab"), "/swapfile none swap sw 0 0\n");
}

#[test]
fn racing_instances_claim_each_runner_once_and_a_dead_claim_is_taken_over() {
    let fleet = "race";
    let uuids = [
        "2c2d0d9b-0000-4000-8000-00000000000a",
        "2c2d0d9b-0000-4000-8000-00000000000b",
    ];
    let commands: BTreeMap<&str, String> =
        uuids.iter().map(|u| (*u, put_runner(fleet, u))).collect();
    let mut ids = launch_instances(5);
    let late_id = ids.pop().expect("a fifth instance");
    let hosts: Vec<Host> = ids
        .iter()
        .map(|id| Host::new(Os::Al2023, fleet, id))
        .collect();

    let started = Instant::now();
    let children: Vec<Child> = hosts.iter().map(Host::spawn).collect();
    let runs: Vec<Run> = hosts.iter().zip(children).map(|(h, c)| h.wait(c)).collect();
    eprintln!("four racing bootstraps took {:?}", started.elapsed());

    let (winners, losers): (Vec<_>, Vec<_>) = hosts
        .iter()
        .zip(&runs)
        .partition(|(_, r)| r.status.success());
    let report = || {
        hosts
            .iter()
            .zip(&runs)
            .map(|(h, r)| format!("--- {} ({}):\n{}", h.instance_id, r.status, r.stderr))
            .collect::<String>()
    };
    assert_eq!(
        winners.len(),
        2,
        "exactly two instances must win:\n{}",
        report()
    );

    // Each runner claimed exactly once, by a different winner, at generation 1.
    let mut holders = BTreeSet::new();
    for uuid in uuids {
        let claims = claims(fleet, uuid);
        assert_eq!(claims.len(), 1, "runner {uuid}: {claims:?}\n{}", report());
        holders.insert(claims[&1].clone());
    }
    let winner_ids: BTreeSet<String> = winners.iter().map(|(h, _)| h.instance_id.clone()).collect();
    assert_eq!(holders, winner_ids);
    for (host, _) in &winners {
        let uuid = host.state("runner-uuid");
        assert_eq!(claims(fleet, &uuid)[&1], host.instance_id);
        let mut expected = shell_words(&commands[uuid.as_str()]);
        expected.remove(0);
        assert_eq!(host.docker_argv(), expected);
    }
    for (host, run) in &losers {
        assert!(
            run.stderr
                .contains("bbfleet: gave up: no runner of fleet race could be claimed in 3 rounds"),
            "{}:\n{}",
            host.instance_id,
            run.stderr
        );
        assert!(
            !host.path("docker.done").exists(),
            "{} started a runner",
            host.instance_id
        );
        assert!(
            !host.path("state/runner.sh").exists(),
            "{} fetched a command",
            host.instance_id
        );
    }

    // The instance holding a runner dies; a new instance takes its runner at generation 2.
    let (dead, _) = winners[0];
    let dead_uuid = dead.state("runner-uuid");
    aws(&[
        "ec2",
        "terminate-instances",
        "--instance-ids",
        &dead.instance_id,
    ]);
    let late = Host::new(Os::Al2023, fleet, &late_id);
    let run = late.run();
    assert_ok(&late, &run);
    assert_eq!(late.state("runner-uuid"), dead_uuid);
    assert_eq!(
        late.state("claim"),
        format!("/bbfleet/{fleet}/claims/{dead_uuid}/2")
    );
    assert_eq!(
        claims(fleet, &dead_uuid),
        BTreeMap::from([(1, dead.instance_id.clone()), (2, late_id.clone())])
    );
    let mut expected = shell_words(&commands[dead_uuid.as_str()]);
    expected.remove(0);
    assert_eq!(late.docker_argv(), expected);
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
        BTreeMap::from([(1, instance_id.clone())])
    );
    let mut expected = shell_words(&command);
    expected.remove(0);
    assert_eq!(host.docker_argv(), expected);
    assert!(!run.stderr.contains("canary") && !run.stdout.contains("canary"));
}

/// `curl` against the fake IMDS: the HTTP status and body.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).expect("utf-8 from curl");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.to_owned(), body.to_owned())
}

#[test]
fn the_fake_imds_speaks_imdsv2_and_stops_when_dropped() {
    let imds = FakeImds::start("i-0123456789abcdef0");
    let url = |path: &str| format!("{}{path}", imds.endpoint);
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 21600";
    assert_eq!(curl(&["-X", "PUT", &url("/latest/api/token")]).0, "400");
    assert_eq!(
        curl(&[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 0",
            &url("/latest/api/token")
        ])
        .0,
        "400"
    );
    let (status, token) = curl(&["-X", "PUT", "-H", ttl, &url("/latest/api/token")]);
    assert_eq!(status, "200");
    let auth = format!("X-aws-ec2-metadata-token: {token}");
    let get = |path: &str| curl(&["-H", &auth, &url(path)]);
    assert_eq!(curl(&[&url("/latest/meta-data/instance-id")]).0, "401");
    assert_eq!(
        curl(&[
            "-H",
            "X-aws-ec2-metadata-token: forged",
            &url("/latest/meta-data/instance-id")
        ])
        .0,
        "401"
    );
    assert_eq!(
        get("/latest/meta-data/instance-id"),
        ("200".to_owned(), "i-0123456789abcdef0".to_owned())
    );
    assert_eq!(
        get("/latest/meta-data/placement/availability-zone"),
        ("200".to_owned(), "us-east-1a".to_owned())
    );
    assert_eq!(get("/latest/meta-data/spot/instance-action").0, "404");
    assert_eq!(
        get("/latest/meta-data/events/recommendations/rebalance").0,
        "404"
    );
    let action = r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#;
    imds.set_spot_instance_action(Some(action));
    imds.set_rebalance_recommendation(Some(r#"{"noticeTime": "2026-01-01T00:00:00Z"}"#));
    assert_eq!(
        get("/latest/meta-data/spot/instance-action"),
        ("200".to_owned(), action.to_owned())
    );
    assert_eq!(
        get("/latest/meta-data/events/recommendations/rebalance").0,
        "200"
    );
    imds.set_spot_instance_action(None);
    assert_eq!(get("/latest/meta-data/spot/instance-action").0, "404");

    let endpoint = imds.endpoint.clone();
    drop(imds);
    let address = endpoint.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "the fake IMDS still listens after drop"
    );
}
