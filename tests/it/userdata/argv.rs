//! No runner secret in any process's arguments or environment on the host: the real
//! bootstrap (and the agent it starts) under `strace -f -e trace=execve`, with the stub
//! system commands, the real aws CLI against moto and the fake IMDS.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bbfleet::config::Os;
use bbfleet::runner_command::RunnerCommand;
use secrecy::{ExposeSecret, SecretString};

use super::aws::{launch_instances, put_runner_value as store};
use super::host::{assert_ok, assert_runner_started, wait_for, Host};

/// The runner's client secret: a plain prefix the trace shows as is, then characters a
/// shell or a quoting parser would take apart.
const SECRET: &str = r#"Zq7xK9pW-argv-canary it's $HOME "q" `id` \n #;|&* ~"#;

/// Makes `host`'s bootstrap.sh run the real script under strace (execve of every process
/// it and the agent start, with arguments and environments, into `execve.trace`). The
/// wrapper exits with the script's status; strace goes on tracing the detached agent
/// until it ends, its pid in `strace.pid`.
fn trace(host: &Host) {
    let real = host.path("bootstrap.real.sh");
    fs::rename(host.path("bootstrap.sh"), &real).expect("move the script");
    let wrapper = format!(
        "#!/bin/bash\n\
         strace -f --seccomp-bpf -v -s 100000 -e trace=execve -o '{trace}' \\\n\
           bash -c 'bash \"$1\"; echo $? >\"$2.new\" && mv \"$2.new\" \"$2\"' _ '{real}' '{rc}' &\n\
         echo $! >'{pid}'\n\
         while [ ! -e '{rc}' ]; do sleep 0.1; done\n\
         exit \"$(<'{rc}')\"\n",
        trace = host.path("execve.trace").display(),
        real = real.display(),
        rc = host.path("bootstrap.rc").display(),
        pid = host.path("strace.pid").display(),
    );
    fs::write(host.path("bootstrap.sh"), wrapper).expect("write the wrapper");
}

/// The trace's execve lines, once strace has ended (after the agent was killed).
fn execs(host: &Host) -> Vec<String> {
    let pid = host.read("strace.pid").trim().to_owned();
    wait_for("strace to end", Duration::from_secs(60), || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
    })
    .expect("strace ends with its tracees");
    host.read("execve.trace")
        .lines()
        .filter(|l| l.contains("execve("))
        .map(str::to_owned)
        .collect()
}

/// The program an execve line runs (for messages that must not show the secret).
fn program(line: &str) -> &str {
    line.split('"').nth(1).unwrap_or("?")
}

#[test]
fn no_runner_secret_reaches_any_process_argument_or_environment() {
    let fleet = "argv";
    let uuid = "1b1c0c8a-0000-4000-8000-0000000000a9";
    let secret: SecretString = SECRET.to_owned().into();
    let runner_uuid = format!("{{{uuid}}}");
    let command = RunnerCommand {
        image: "image:1",
        account_uuid: "{11111111-2222-4333-8444-555555555555}",
        repository_uuid: None,
        runner_uuid: &runner_uuid,
        client_id: "client-id-1",
        client_secret: &secret,
    }
    .render()
    .expect("the command renders");
    store(fleet, uuid, command.expose_secret());
    let instance_id = launch_instances(1).remove(0);
    let host = Host::new(Os::Al2023, fleet, &instance_id);
    trace(&host);
    let run = host.run();
    assert_ok(&host, &run);
    // Exactly the command's options, the environment in the root-only env file.
    assert_runner_started(&host, command.expose_secret());
    let env_file = host.read("state/runner.env");
    assert!(env_file.contains(&format!("\nOAUTH_CLIENT_SECRET={SECRET}\n")));
    host.kill_agent();
    assert_no_secret_in_any_exec(&host);
    let log = format!("{}{}", run.stderr, host.agent_log());
    assert!(!log.contains(&SECRET[..8]), "the secret is in a log");
}

/// The trace saw the aws CLI, the stubs and the runner's start, with environments; and
/// no execve's arguments or environment hold the secret (any 8 characters of its start)
/// or `OAUTH_CLIENT_SECRET=`.
fn assert_no_secret_in_any_exec(host: &Host) {
    let execs = execs(host);
    let bin = host.path("bin");
    let ran = |name: &str| {
        let path = format!("\"{}\"", bin.join(name).display());
        execs.iter().any(|l| l.contains(&path))
    };
    assert!(
        execs.iter().any(|l| program(l).ends_with("/aws")),
        "the trace saw no aws CLI: {} execs",
        execs.len()
    );
    let programs: Vec<&str> = execs.iter().map(|l| program(l)).collect();
    let mut distinct = programs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    eprintln!(
        "traced {} execs of {} programs",
        execs.len(),
        distinct.len()
    );
    assert!(
        ran("docker") && ran("systemctl"),
        "the trace saw no stubs: {programs:?}"
    );
    assert!(
        execs
            .iter()
            .any(|l| l.contains("\"container\", \"run\", \"--env-file\"")),
        "the trace saw no runner start"
    );
    assert!(
        execs.iter().any(|l| l.contains("\"BBFLEET_HOST_ROOT=")),
        "the trace shows no environments"
    );
    let prefix = &SECRET[..8];
    for line in &execs {
        assert!(
            !line.contains(prefix),
            "the runner secret is in an execve (argv or environment) of {}",
            program(line)
        );
        assert!(
            !line.contains("OAUTH_CLIENT_SECRET="),
            "OAUTH_CLIENT_SECRET= is in an execve of {}",
            program(line)
        );
    }
}

/// A stored command bbfleet did not write in the line format (here: an older bbfleet's
/// shell line) stops the bootstrap with a clear line that does not show it.
#[test]
fn a_malformed_stored_command_fails_clearly_without_showing_it() {
    let uuid = "1b1c0c8a-0000-4000-8000-0000000000a8";
    let old = format!(
        "docker container run -e 'OAUTH_CLIENT_SECRET={SECRET}' --name runner-{uuid} image:1"
    );
    let cases = [
        (old.as_str(), "line 1 is not \"bbfleet-runner-command 1\""),
        (
            "bbfleet-runner-command 1\nenv 1NAME=Zq7xK9pW\nimage i:1",
            "line 2 is not \"env NAME=VALUE\"",
        ),
        (
            "bbfleet-runner-command 1\nenv A=Zq7xK9pW\nexec Zq7xK9pW\nimage i:1",
            "line 3 is neither arg, env nor image",
        ),
        (
            "bbfleet-runner-command 1\nimage i:1\narg Zq7xK9pW",
            "line 3 follows the image",
        ),
        (
            "bbfleet-runner-command 1\nenv A=Zq7xK9pW",
            "it has no image line",
        ),
    ];
    for (k, (value, why)) in cases.into_iter().enumerate() {
        let fleet = format!("argv-malformed-{k}");
        let fleet = fleet.as_str();
        store(fleet, uuid, value);
        let instance_id = launch_instances(1).remove(0);
        let host = Host::new(Os::Al2023, fleet, &instance_id);
        let run = host.run();
        assert!(!run.status.success(), "{why}: the bootstrap succeeded");
        let line = format!("bbfleet: the stored command of runner {uuid} is malformed: {why}");
        assert!(run.stderr.contains(&line), "{why}:\n{}", run.stderr);
        assert!(
            !run.stderr.contains("Zq7xK9pW"),
            "{why}: the secret is in the log"
        );
        for left in ["runner.env", "runner.env.new", "command.tmp", "runner.argv"] {
            let path = host.path(&format!("state/{left}"));
            assert!(!Path::new(&path).exists(), "{why}: {left} left behind");
        }
    }
}
