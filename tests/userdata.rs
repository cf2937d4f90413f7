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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bbfleet::config::Os;
use bbfleet::userdata::{render, UserdataVars};
use support::imds::FakeImds;
use support::moto::{aws_env, moto, PROXY_VARS};
use support::recorder::Recorder;

/// An AL2023 AMI that exists in moto.
const AMI: &str = "ami-0d27e0fb3bac4d724";
/// How long one run of a script may take before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the detached runner may take to reach the docker stub.
const RUNNER_TIMEOUT: Duration = Duration::from_secs(10);

fn production_vars(fleet: &str) -> UserdataVars {
    UserdataVars::new(fleet, "eu-west-1", 4)
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
        // `{{.Names}}` is docker's own template syntax, escaped in the template.
        assert!(
            !script.replace("'{{.Names}}'", "").contains("{{"),
            "{name}: unrendered handlebars"
        );
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

/// The tests are sync; the recording proxy of the hosts runs here.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the proxy's runtime")
    })
}

/// The recording proxy every host reaches moto through (one per test process), so each
/// host's requests are evaluated against instance.json (tests/iam.rs): a host signs with
/// the access key [`support::iam::instance_access_key`] of its instance.
fn host_proxy() -> &'static Recorder {
    static PROXY: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();
    PROXY.get_or_init(|| runtime().block_on(Recorder::start(&moto().endpoint)))
}

/// Tags `instance_id` as an instance of `fleet`, as the launch template's tag
/// specification does for the fleet's instances (the policies key on that tag). Through
/// the hosts' proxy, so the IAM evaluation learns the tag, signed as the harness (not
/// evaluated).
fn tag_as_fleet_instance(instance_id: &str, fleet: &str) {
    let endpoint = host_proxy().endpoint.clone();
    runtime().block_on(async {
        let sdk = support::moto::harness_sdk(&endpoint).await;
        aws_sdk_ec2::Client::new(&sdk)
            .create_tags()
            .resources(instance_id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("bbfleet:fleet")
                    .value(fleet)
                    .build(),
            )
            .send()
            .await
            .expect("tag the host's instance");
    });
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

/// Every claim of a fleet in one listing: runner -> generation -> value.
fn all_claims(fleet: &str) -> BTreeMap<String, BTreeMap<u64, String>> {
    let text = aws(&[
        "ssm",
        "get-parameters-by-path",
        "--recursive",
        "--path",
        &format!("/bbfleet/{fleet}/claims"),
        "--query",
        "Parameters[].[Name,Value]",
        "--output",
        "text",
    ]);
    let mut all: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once('\t').expect("name<TAB>value");
        let mut parts = name.rsplit('/');
        let generation = parts
            .next()
            .and_then(|g| g.parse().ok())
            .expect("generation");
        let uuid = parts.next().expect("runner uuid").to_owned();
        all.entry(uuid)
            .or_default()
            .insert(generation, value.to_owned());
    }
    all
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

const STUBS: [&str; 11] = [
    "docker",
    "dnf",
    "apt-get",
    "snap",
    "systemctl",
    "mkswap",
    "swapon",
    "fallocate",
    "sysctl",
    "findmnt",
    "mount",
];
/// The agent's poll interval in the tests.
const TEST_POLL_MS: u32 = 200;
/// How long a test waits for the agent to react to something.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

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
        Host::with(os, fleet, instance_id, |_| {})
    }

    /// A host whose script is rendered with the test values, then `tweak`.
    fn with(os: Os, fleet: &str, instance_id: &str, tweak: impl FnOnce(&mut UserdataVars)) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        tag_as_fleet_instance(instance_id, fleet);
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
                // `container run`: the full argv (NUL-separated), a marker that it is
                // complete, then it runs until `container stop` (or crashes when asked
                // to, or ends after 120 s). `container ls`: the step containers in `steps`.
                "docker" => body += &format!(
                    "D='{0}'\n\
                     case \"$1 $2\" in\n\
                     'container run')\n\
                       printf '%s\\0' \"$@\" >\"$D/docker.argv.new\"\n\
                       mv \"$D/docker.argv.new\" \"$D/docker.argv\"\n\
                       echo run >>\"$D/docker.runs\"\n\
                       : >\"$D/docker.done\"\n\
                       if [ -e \"$D/crash\" ]; then exit 3; fi\n\
                       i=0\n\
                       while [ ! -e \"$D/stopped\" ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done ;;\n\
                     'container stop') : >\"$D/stopped\" ;;\n\
                     'container ls') cat \"$D/steps\" 2>/dev/null ;;\n\
                     esac\n\
                     exit 0\n",
                    dir.path().display()
                ),
                // /tmp is a tmpfs, as on AL2023.
                "findmnt" => body += "echo tmpfs\n",
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
        let mut vars = UserdataVars {
            imds_endpoint: imds.endpoint.clone(),
            runner_log: dir.path().join("log/runner.log").display().to_string(),
            state_dir: dir.path().join("state").display().to_string(),
            claim_attempts: 3,
            claim_backoff_max_secs: 1,
            agent_log: dir.path().join("log/agent.log").display().to_string(),
            poll_interval_ms: TEST_POLL_MS,
            // Bounded: the agent ends by itself after about two minutes.
            agent_max_polls: 600,
            runner_restarts: 2,
            restart_delay_secs: 0,
            stop_timeout_secs: 1,
            ..UserdataVars::new(fleet, "us-east-1", 1)
        };
        tweak(&mut vars);
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
        bash.env("AWS_ENDPOINT_URL", &host_proxy().endpoint).env(
            "AWS_ACCESS_KEY_ID",
            support::iam::instance_access_key(&self.instance_id),
        );
        let path = std::env::var("PATH").unwrap_or_default();
        bash.arg(self.path("bootstrap.sh"))
            .env("PATH", format!("{}:{path}", self.path("bin").display()))
            .env("BBFLEET_HOST_ROOT", self.path("root"))
            .current_dir(self.dir.path())
            // Its own process group, so a test can stop it with every child.
            .process_group(0)
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

    fn agent_log(&self) -> String {
        fs::read_to_string(self.path("log/agent.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the agent's log has `line`.
    fn wait_for_agent(&self, line: &str) {
        wait_for(
            &format!("{}: agent log line {line:?}", self.instance_id),
            AGENT_TIMEOUT,
            || self.agent_log().contains(line),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.agent_log()));
    }

    /// The pid of the detached agent (its session and process group), while it runs.
    fn agent_pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.path("state/agent.pid")).ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Kills the agent and everything it started, as the instance's death would.
    fn kill_agent(&self) {
        if let Some(pid) = self.agent_pid() {
            kill_group(pid);
            let _ = fs::remove_file(self.path("state/agent.pid"));
        }
    }

    /// What reached the docker stub, in order.
    fn stub_log(&self) -> String {
        self.read("stubs.log")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// SIGKILL to the process group `pgid` (a process this test started in its own group).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Polls `done` every 50 ms until it holds, for at most `bound`.
fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What the docker stub must receive for a stored command on `host`: the command's words
/// after `docker`, its `-e NAME=VALUE` pairs replaced by `--env-file` after `run`; and the
/// env file's lines.
fn expected_run(host: &Host, command: &str) -> (Vec<String>, Vec<String>) {
    let words = shell_words(command);
    assert_eq!(words[..3], ["docker", "container", "run"]);
    let mut argv = vec![
        "container".to_owned(),
        "run".to_owned(),
        "--env-file".to_owned(),
        host.path("state/runner.env").display().to_string(),
    ];
    let mut env = Vec::new();
    let mut rest = words[3..].iter();
    while let Some(word) = rest.next() {
        if word == "-e" {
            env.push(rest.next().expect("a value after -e").clone());
        } else {
            argv.push(word.clone());
        }
    }
    (argv, env)
}

/// Asserts that docker got the stored `command` with its environment from the root-only
/// env file, and that no secret is in docker's arguments.
fn assert_runner_started(host: &Host, command: &str) {
    let (argv, env) = expected_run(host, command);
    let got = host.docker_argv();
    assert_eq!(got, argv, "{}: docker argv", host.instance_id);
    assert!(!got.iter().any(|w| w.contains("canary")));
    let env_file = host.read("state/runner.env");
    assert_eq!(env_file.lines().collect::<Vec<_>>(), env);
    let mode = fs::metadata(host.path("state/runner.env"))
        .expect("runner.env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "runner.env mode {mode:o}");
}

/// The state of an instance in moto.
fn instance_state(id: &str) -> String {
    aws(&[
        "ec2",
        "describe-instances",
        "--instance-ids",
        id,
        "--query",
        "Reservations[].Instances[].State.Name",
        "--output",
        "text",
    ])
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
    assert_runner_started(&host, command);
    // The bootstrap is over; the detached agent keeps the runner going.
    assert!(host.agent_pid().is_some(), "the agent does not run");

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
    assert_eq!(
        imds[..2],
        [
            ("PUT".to_owned(), "/latest/api/token".to_owned(), 200),
            (
                "GET".to_owned(),
                "/latest/meta-data/instance-id".to_owned(),
                200
            )
        ]
    );
    for (method, path, status) in &imds[2..] {
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
        BTreeMap::from([(1, instance_id.clone())])
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
fn twenty_instances_share_ten_runners_and_a_dead_claim_is_taken_over() {
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
                v.claim_attempts = 100;
                v.claim_backoff_max_secs = 4;
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

    // Each runner claimed exactly once, by a different winner, at generation 1.
    let claimed = all_claims(fleet);
    assert_eq!(
        claimed.keys().collect::<Vec<_>>(),
        uuids.iter().collect::<Vec<_>>()
    );
    let mut holders = BTreeSet::new();
    for (uuid, claims) in &claimed {
        assert_eq!(
            claims.len(),
            1,
            "runner {uuid}: {claims:?}\n{}",
            report(&finished)
        );
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

    // A claimer's instance dies; one waiter takes its runner over at generation 2.
    let dead = winners[0];
    let dead_uuid = dead.state("runner-uuid");
    dead.kill_agent();
    aws(&[
        "ec2",
        "terminate-instances",
        "--instance-ids",
        &dead.instance_id,
    ]);
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
        format!("/bbfleet/{fleet}/claims/{dead_uuid}/2")
    );
    assert_runner_started(late, &commands[&dead_uuid]);

    // The nine others still wait (they lost every race or found no free runner); stop them.
    for &i in waiters.iter().filter(|i| children[**i].is_some()) {
        let stderr = hosts[i].read("stderr");
        assert!(
            stderr.contains("bbfleet: no free runner among the 10 listed")
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
    // Exactly one more claim: the takeover at generation 2.
    let mut expected = claimed;
    expected
        .get_mut(&dead_uuid)
        .expect("the dead runner's claims")
        .insert(2, late.instance_id.clone());
    assert_eq!(all_claims(fleet), expected);
}

/// A fleet of one runner and an instance whose bootstrap started it.
fn running_host(fleet: &str, uuid: &str) -> Host {
    let command = put_runner(fleet, uuid);
    let id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, fleet, &id);
    let run = host.run();
    assert_ok(&host, &run);
    assert_runner_started(&host, &command);
    host
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
    let host = running_host(fleet, uuid);
    host.imds.set_spot_instance_action(Some(
        r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#,
    ));
    host.wait_for_agent("agent: done (interrupted)");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(1, host.instance_id.clone()), (2, "free".to_owned())])
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
        BTreeMap::from([(1, host.instance_id.clone()), (2, "free".to_owned())])
    );
    assert!(host.stub_log().contains("docker container stop"));
    assert!(
        agent_line(host, "stopping the runner container") < agent_line(host, "released runner")
    );
    assert!(agent_line(host, "released runner") < agent_line(host, "terminating instance"));
    let state = instance_state(&host.instance_id);
    assert!(
        state == "terminated" || state == "shutting-down",
        "instance is {state}"
    );
}

#[test]
fn a_rebalance_recommendation_on_an_idle_host_terminates_the_instance() {
    let (fleet, uuid) = ("rebalance-idle", "4e4f0fad-0000-4000-8000-000000000002");
    let host = running_host(fleet, uuid);
    host.imds
        .set_rebalance_recommendation(Some(r#"{"noticeTime": "2026-01-01T00:00:00Z"}"#));
    assert_rebalanced(&host, fleet, uuid);
}

#[test]
fn a_rebalance_recommendation_waits_for_the_running_step() {
    let (fleet, uuid) = ("rebalance-busy", "4e4f0fad-0000-4000-8000-000000000003");
    let host = running_host(fleet, uuid);
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
        BTreeMap::from([(1, host.instance_id.clone())])
    );
    assert_eq!(instance_state(&host.instance_id), "running");
    assert!(host.agent_pid().is_some());

    // The step ends: the host drains.
    fs::remove_file(host.path("steps")).expect("step ends");
    assert_rebalanced(&host, fleet, uuid);
}

#[test]
fn the_agent_restarts_a_crashing_runner_a_bounded_number_of_times() {
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
    // The agent still watches the notices.
    host.imds.set_spot_instance_action(Some(
        r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#,
    ));
    host.wait_for_agent("agent: done (interrupted)");
    assert_eq!(
        claims(fleet, uuid),
        BTreeMap::from([(1, id.clone()), (2, "free".to_owned())])
    );
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
    assert_runner_started(&host, &command);
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

// ---- the launch template's size, and values that try to break out of the script ----

/// The longest config the validation allows, for `os`: the longest fleet name (24
/// characters, mixed so gzip gains least), the longest region name, the most swap, and
/// every optional knob at its largest.
fn longest_config(os: &str) -> String {
    let labels: Vec<String> = (0..10)
        .map(|i| format!("\"label.{i}.{}\"", "x".repeat(40)))
        .collect();
    format!(
        r#"name = "a0b1c2d3e4f5g6h7i8j9k-l1"
region = "{region}"

[bitbucket]
workspace = "{slug}"
repository = "{slug}"
labels = [{labels}]
runner_image = "registry.example.com/{slug}/bitbucket-pipelines-runner:1"

[capacity]
default = 100
max = 100
[[capacity.schedule]]
days = "mon-fri"
hours = "07:00-19:00"
timezone = "America/Argentina/ComodRivadavia"
capacity = 100
[capacity.autoscale]
min = 100
max = 100
cooldown_seconds = 9223372036854775807

[spot]
instance_types = ["m6i.large", "m6a.large", "c6i.xlarge"]
subnets = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1", "subnet-0123456789abcdef2"]
allocation_strategy = "price-capacity-optimized"
fleet_role = "arn:aws-us-gov:iam::123456789012:role/{iam}"

[instance]
os = "{os}"
ami = "ssm:/{iam}"
instance_profile = "{iam}"
security_groups = ["sg-0123456789abcdef0", "sg-0123456789abcdef1", "sg-0123456789abcdef2", "sg-0123456789abcdef3", "sg-0123456789abcdef4"]
root_volume_gb = 16384
swap_gb = 64

[kms]
key = "alias/{iam}"
"#,
        region = bbfleet::config::LONGEST_REGION,
        slug = "s".repeat(128),
        labels = labels.join(", "),
        iam = "r".repeat(128),
    )
}

#[test]
fn the_longest_legal_config_fits_into_a_launch_template() {
    for (os, name) in [(Os::Al2023, "al2023"), (Os::Ubuntu, "ubuntu")] {
        let config = bbfleet::config::Config::parse(&longest_config(name), "longest.toml")
            .unwrap_or_else(|e| panic!("{name}: the longest config is not legal: {e}"));
        assert_eq!(config.name.len(), 24);
        assert_eq!(config.instance.os, os);
        assert_eq!(config.instance.swap_gb, 64);
        let region = config.region.clone().expect("region");
        let vars = UserdataVars::from_config(&config, &region);
        let script = render(os, &vars).expect("render");
        assert!(script.contains(&format!("readonly REGION='{region}'")));
        assert!(script.contains("readonly SWAP_GB=64"));
        let encoded =
            bbfleet::userdata::check_fits(os, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: script {} bytes, launch template user data {} bytes (gzip), {} in base64",
            script.len(),
            encoded.len(),
            encoded.base64().len()
        );
        assert!(
            encoded.len() <= bbfleet::userdata::LAUNCH_TEMPLATE_MAX_BYTES,
            "{name}: {} bytes",
            encoded.len()
        );
        assert_eq!(bbfleet::userdata::LAUNCH_TEMPLATE_MAX_BYTES, 12_288);
        bbfleet::userdata::check_config_fits(&config, &region).expect("fits");
    }
}

/// One value per shell trick: quotes of both kinds, command substitution, backticks,
/// newlines, `;`, `&&`, a glob and a variable. Each would create `marker` if run.
fn hostile(marker: &Path) -> String {
    let m = marker.display();
    format!(
        "it's \"q\" $(touch {m}) `touch {m}` '; touch {m}; ' \"; touch {m}; \" \n\
         touch {m}\n; touch {m} && touch {m} | touch {m} ${{HOME}} $HOME * \\ \\' end"
    )
}

/// The string values of `vars`, in the order the probe prints them.
const STRING_VARS: [&str; 7] = [
    "FLEET",
    "REGION",
    "SSM_PREFIX",
    "IMDS",
    "STATE_DIR",
    "RUNNER_LOG",
    "AGENT_LOG",
];

#[test]
fn hostile_values_are_rendered_as_values_and_never_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("injected");
    let evil = hostile(&marker);
    let vars = UserdataVars {
        fleet: format!("fleet {evil}"),
        region: format!("region {evil}"),
        ssm_prefix: format!("/bbfleet/{evil}"),
        imds_endpoint: format!("http://127.0.0.1:9/{evil}"),
        runner_log: format!("{}/runner {evil}.log", dir.path().display()),
        state_dir: format!("{}/state {evil}", dir.path().display()),
        agent_log: format!("{}/agent {evil}.log", dir.path().display()),
        ..UserdataVars::new("ci", "eu-west-1", 0)
    };
    let expected = [
        &vars.fleet,
        &vars.region,
        &vars.ssm_prefix,
        &vars.imds_endpoint,
        &vars.state_dir,
        &vars.runner_log,
        &vars.agent_log,
    ];
    for (os, name) in [(Os::Al2023, "al2023"), (Os::Ubuntu, "ubuntu")] {
        let script = render(os, &vars).unwrap_or_else(|e| panic!("render {name}: {e}"));
        let path = dir.path().join(format!("{name}.sh"));
        fs::write(&path, &script).expect("write script");
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash -n");
        assert!(
            syntax.status.success(),
            "{name}: bash -n: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
        // The value assignments: the script up to the end of the rendered values, then
        // each string value printed NUL-terminated.
        let end = "\n# ---- end of the rendered values ----\n";
        let cut = script
            .find(end)
            .unwrap_or_else(|| panic!("{name}: no end-of-values line"));
        let probe_vars: Vec<String> = STRING_VARS.iter().map(|v| format!("\"${v}\"")).collect();
        let probe = format!(
            "{}\nprintf '%s\\0' {}\n",
            &script[..cut],
            probe_vars.join(" ")
        );
        let probe_path = dir.path().join(format!("{name}-values.sh"));
        fs::write(&probe_path, probe).expect("write probe");
        let out = Command::new("bash")
            .arg(&probe_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run the value assignments");
        assert!(
            out.status.success(),
            "{name}: the value assignments failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).expect("utf-8 values");
        let got: Vec<&str> = printed
            .strip_suffix('\0')
            .expect("NUL-terminated")
            .split('\0')
            .collect();
        for ((var, want), got) in STRING_VARS.iter().zip(expected).zip(&got) {
            assert_eq!(got, want, "{name}: ${var} is not the value verbatim");
        }
        assert_eq!(got.len(), STRING_VARS.len());
        assert!(!marker.exists(), "{name}: an injected command ran");
    }
}

#[test]
fn hostile_paths_reach_the_whole_script_verbatim_and_nothing_is_injected() {
    let fleet = "hostile";
    let uuid = "1b1c0c8a-0000-4000-8000-0000000000aa";
    put_runner(fleet, uuid);
    let instance_id = launch_instances(1).remove(0);
    let witness = tempfile::tempdir().expect("temp dir");
    let marker = witness.path().join("injected");
    let evil = hostile(&marker);
    let mut used = None;
    let host = Host::with(Os::Al2023, fleet, &instance_id, |vars| {
        vars.state_dir = format!("{} {evil}", vars.state_dir);
        vars.runner_log = format!("{} {evil}", vars.runner_log);
        vars.agent_log = format!("{} {evil}", vars.agent_log);
        used = Some(vars.clone());
    });
    let vars = used.expect("the tweak ran");
    let run = host.run();
    assert_ok(&host, &run);
    // The runner started from the hostile state directory, with its files where the
    // values say, byte for byte.
    let got = host.docker_argv();
    let env_file = format!("{}/runner.env", vars.state_dir);
    assert!(
        got.windows(2)
            .any(|w| w[0] == "--env-file" && w[1] == env_file),
        "docker argv {got:?} lacks --env-file {env_file:?}"
    );
    assert_eq!(
        fs::read_to_string(format!("{}/runner-uuid", vars.state_dir))
            .expect("runner-uuid in the hostile state dir")
            .trim(),
        uuid
    );
    wait_for("the agent log at the hostile path", AGENT_TIMEOUT, || {
        Path::new(&vars.agent_log).exists()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(Path::new(&vars.runner_log).exists(), "runner log");
    host.kill_agent();
    assert!(!marker.exists(), "an injected command ran");
}
