//! Values that try to break out of the script: rendered as values, never run.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use bbfleet::config::Os;
use bbfleet::userdata::{render, UserdataVars};

use super::aws::{launch_instances, put_runner};
use super::host::{assert_ok, wait_for, Host, AGENT_TIMEOUT};

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
