//! A simulated instance: temp dir, stubs, fake IMDS, the rendered script.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bbfleet::config::Os;
use bbfleet::userdata::{render, UserdataVars};
use testkit::imds::FakeImds;
use testkit::recorder::Recorder;

use super::aws::{host_proxy, moto_env, tag_as_fleet_instance};
use super::{RUNNER_TIMEOUT, SCRIPT_TIMEOUT};

pub(super) const STUBS: [&str; 12] = [
    "docker",
    "cloud-init",
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

/// The runner's unit file, under the host root.
pub(super) const UNIT: &str = "etc/systemd/system/bbfleet-runner.service";

/// The agent's poll interval in the tests.
pub(super) const TEST_POLL_MS: u32 = 200;

/// How long a test waits for the agent to react to something.
pub(super) const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct Host {
    pub(super) dir: tempfile::TempDir,
    pub(super) instance_id: String,
    pub(super) imds: FakeImds,
    pub(super) script: String,
    /// The recording proxy this host reaches moto through.
    endpoint: String,
}

/// How one run of the script ended.
pub(super) struct Run {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Host {
    pub(super) fn new(os: Os, fleet: &str, instance_id: &str) -> Host {
        Host::with(os, fleet, instance_id, |_| {})
    }

    /// A host whose script is rendered with the test values, then `tweak`.
    pub(super) fn with(
        os: Os,
        fleet: &str,
        instance_id: &str,
        tweak: impl FnOnce(&mut UserdataVars),
    ) -> Host {
        Host::through(host_proxy(), os, fleet, instance_id, tweak)
    }

    /// [`Host::with`], reaching moto through `proxy` (one a test may make misbehave).
    pub(super) fn through(
        proxy: &Recorder,
        os: Os,
        fleet: &str,
        instance_id: &str,
        tweak: impl FnOnce(&mut UserdataVars),
    ) -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        tag_as_fleet_instance(&proxy.endpoint, instance_id, fleet);
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
                // `pull` fails when `pull-fails` exists, `image inspect` when `no-image` does.
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
                     'pull --quiet') if [ -e \"$D/pull-fails\" ]; then exit 1; fi ;;\n\
                     'image inspect') if [ -e \"$D/no-image\" ]; then exit 1; fi ;;\n\
                     esac\n\
                     exit 0\n",
                    dir.path().display()
                ),
                // /tmp is a tmpfs, as on AL2023.
                "findmnt" => body += "echo tmpfs\n",
                // Docker must first start with the log rotation config in place. `enable
                // --now` of the runner's unit runs its ExecStart detached (own session, no
                // stdio), as systemd would.
                "systemctl" => body += &format!(
                    "if [ -e '{0}/root/etc/docker/daemon.json' ]; then d=present; else d=absent; fi\n\
                     echo \"systemctl: daemon.json $d\" >>'{1}'\n\
                     if [ \"$*\" = 'enable --now bbfleet-runner.service' ]; then\n\
                       cmd=$(sed -n 's/^ExecStart=//p' '{0}/root/{UNIT}')\n\
                       setsid $cmd </dev/null >/dev/null 2>&1 &\n\
                     fi\n",
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
            claim_timeout_secs: 3,
            retry_attempts: 4,
            backoff_max_secs: 1,
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
            endpoint: proxy.endpoint.clone(),
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(super) fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// `program` in this host's environment: moto through its proxy with its instance's
    /// access key, the stubs first on PATH, the host root.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        moto_env(&mut cmd);
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint).env(
            "AWS_ACCESS_KEY_ID",
            testkit::iam::instance_access_key(&self.instance_id),
        );
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.path("bin").display()))
            .env("BBFLEET_HOST_ROOT", self.path("root"))
            .current_dir(self.dir.path());
        cmd
    }

    /// Starts the script as cloud-init would (bash, as this user), with the stubs first on PATH.
    pub(super) fn spawn(&self) -> Child {
        let mut bash = self.command("bash");
        bash.arg(self.path("bootstrap.sh"))
            // Its own process group, so a test can stop it with every child.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.path("stdout")).expect("stdout file"))
            .stderr(fs::File::create(self.path("stderr")).expect("stderr file"))
            .spawn()
            .expect("run bash")
    }

    pub(super) fn wait(&self, mut child: Child) -> Run {
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

    pub(super) fn run(&self) -> Run {
        self.wait(self.spawn())
    }

    /// The argv the detached runner passed to the docker stub, once it got there.
    pub(super) fn docker_argv(&self) -> Vec<String> {
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

    pub(super) fn state(&self, name: &str) -> String {
        self.read(&format!("state/{name}")).trim().to_owned()
    }

    pub(super) fn agent_log(&self) -> String {
        fs::read_to_string(self.path("log/agent.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the agent's log has `line`.
    pub(super) fn wait_for_agent(&self, line: &str) {
        wait_for(
            &format!("{}: agent log line {line:?}", self.instance_id),
            AGENT_TIMEOUT,
            || self.agent_log().contains(line),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.agent_log()));
    }

    /// The pid of the detached agent (its session and process group), while it runs.
    pub(super) fn agent_pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.path("state/agent.pid")).ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Kills the agent and everything it started, as the instance's death would.
    pub(super) fn kill_agent(&self) {
        if let Some(pid) = self.agent_pid() {
            kill_group(pid);
            let _ = fs::remove_file(self.path("state/agent.pid"));
        }
    }

    /// The runner's systemd unit, as the script wrote it.
    pub(super) fn unit(&self) -> String {
        self.read(&format!("root/{UNIT}"))
    }

    /// The unit's ExecStart, split into words (the script writes plain words only).
    pub(super) fn exec_start(&self) -> Vec<String> {
        let unit = self.unit();
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in the unit:\n{unit}"));
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// Starts the unit's ExecStart as systemd does at boot (after a reboot, say): detached,
    /// in its own process group, without stdio.
    pub(super) fn start_unit(&self) {
        let argv = self.exec_start();
        let mut child = self
            .command(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the unit's ExecStart");
        std::thread::spawn(move || child.wait());
    }

    /// Forgets that the runner started (the docker stub's markers), before it starts again.
    pub(super) fn reset_docker(&self) {
        for marker in ["docker.argv", "docker.done", "stopped"] {
            let _ = fs::remove_file(self.path(marker));
        }
    }

    /// What reached the docker stub, in order.
    pub(super) fn stub_log(&self) -> String {
        self.read("stubs.log")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// SIGKILL to the process group `pgid` (a process this test started in its own group).
pub(super) fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Polls `done` every 50 ms until it holds, for at most `bound`.
pub(super) fn wait_for(
    what: &str,
    bound: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What the docker stub must receive for a stored command on `host` (the line format of
/// `bbfleet::runner_command`): `container run --env-file FILE`, its `arg` words, its
/// image; and the env file's lines (its `env` values).
pub(super) fn expected_run(host: &Host, command: &str) -> (Vec<String>, Vec<String>) {
    let mut lines = command.lines();
    assert_eq!(lines.next(), Some(bbfleet::runner_command::FORMAT));
    let mut argv = vec![
        "container".to_owned(),
        "run".to_owned(),
        "--env-file".to_owned(),
        host.path("state/runner.env").display().to_string(),
    ];
    let mut env = Vec::new();
    for line in lines {
        let (kind, value) = line.split_once(' ').expect("KIND VALUE");
        match kind {
            "env" => env.push(value.to_owned()),
            "arg" | "image" => argv.push(value.to_owned()),
            _ => panic!("no such line kind: {kind:?}"),
        }
    }
    (argv, env)
}

/// Asserts that docker got the stored `command` with its environment from the root-only
/// env file, and that no secret is in docker's arguments.
pub(super) fn assert_runner_started(host: &Host, command: &str) {
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

pub(super) fn assert_ok(host: &Host, run: &Run) {
    assert!(
        run.status.success(),
        "{}: script failed ({}):\n{}",
        host.instance_id,
        run.status,
        run.stderr
    );
}
