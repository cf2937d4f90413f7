//! Bad input, table-driven: config files, environments, command-line values, Bitbucket
//! answers and AWS references that are wrong. Every case runs the real binary
//! (`apply --auto-approve`, the command that writes most) against moto and the Bitbucket
//! fake, and must give exit 1, one clear error paragraph naming the cause, no secret,
//! and zero write calls at Bitbucket and at AWS. A fault in the middle of an apply must
//! stop with a report of what was done, and the next apply must converge.

mod aws;
mod bitbucket;
mod environments;
mod files;

use bitbucket_fake::Fault;
use testkit::harness::{Harness, Run};

/// Secrets of the test world: none may appear in any output.
pub(super) const SECRETS: [&str; 6] = [
    "fake-access-token",
    "fake-api-token",
    "fake-client-secret",
    "fake-secret-",
    "canary-token",
    "canary-secret",
];

/// Signs of a panic, a backtrace or a `Debug` dump instead of a message.
pub(super) const NOT_A_MESSAGE: [&str; 9] = [
    "panicked",
    "backtrace",
    "RUST_BACKTRACE",
    "Error {",
    "Some(",
    "None,",
    "Ok(",
    "Err(",
    "kind: ",
];

/// One bad input.
pub(super) struct Case {
    name: &'static str,
    /// Config text; `None` keeps the harness config.
    config: Option<String>,
    /// Arguments; `{config}` is replaced by the config path.
    args: Vec<String>,
    /// Environment on top of the AWS settings (replaces the default Bitbucket token).
    env: Option<Vec<(&'static str, String)>>,
    /// Faults queued at the fake before the run.
    faults: Vec<Fault>,
    /// Substrings of stderr that name the field or cause.
    expect: Vec<&'static str>,
    /// Refused before any remote call, reads included.
    offline: bool,
}

impl Case {
    pub(super) fn new(name: &'static str, expect: &[&'static str]) -> Case {
        Case {
            name,
            config: None,
            args: ["--config", "{config}", "apply", "--auto-approve"]
                .map(str::to_owned)
                .to_vec(),
            env: None,
            faults: Vec::new(),
            expect: expect.to_vec(),
            offline: false,
        }
    }

    pub(super) fn offline(mut self) -> Case {
        self.offline = true;
        self
    }

    pub(super) fn config(mut self, text: String) -> Case {
        self.config = Some(text);
        self
    }

    pub(super) fn args(mut self, args: &[&str]) -> Case {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub(super) fn env(mut self, env: &[(&'static str, &str)]) -> Case {
        self.env = Some(env.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self
    }

    pub(super) fn fault(mut self, fault: Fault) -> Case {
        self.faults.push(fault);
        self
    }
}

/// `base` with `from` replaced by `to` (which must occur).
pub(super) fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in the config");
    base.replacen(from, to, 1)
}

pub(super) const RUNNERS: &str = "pipelines-config/runners";

pub(super) fn on_runners() -> Option<String> {
    Some(RUNNERS.to_owned())
}

/// Runs one case and checks everything every case promises; returns the run.
pub(super) async fn check(h: &Harness, case: &Case) -> Run {
    h.fake.clear_faults();
    h.fake.clear_requests();
    h.recorder.clear();
    let path = h.dir.path().join(format!("{}.toml", case.name));
    std::fs::write(
        &path,
        case.config.clone().unwrap_or_else(|| h.config(2, None)),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_owned();
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| a.replace("{config}", &path))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for f in &case.faults {
        h.fake.inject(f.clone());
    }
    let env: Vec<(&str, String)> = case.env.clone().unwrap_or_else(|| {
        Harness::token()
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect()
    });
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = h.run(&args, &env).await;
    let name = case.name;
    let out = format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1, "{name}: exit code\n{out}");
    let error = run
        .stderr
        .find("error: ")
        .map(|i| run.stderr[i..].trim_end())
        .unwrap_or_else(|| panic!("{name}: no `error: ` in stderr\n{out}"));
    assert_eq!(
        run.stderr.matches("error: ").count(),
        1,
        "{name}: one error\n{out}"
    );
    assert!(
        !error.contains("\n\n") && error.lines().count() <= 12,
        "{name}: the error is one short paragraph\n{out}"
    );
    for bad in NOT_A_MESSAGE {
        assert!(
            !run.stderr.contains(bad),
            "{name}: {bad:?} in stderr\n{out}"
        );
    }
    for want in &case.expect {
        assert!(
            error.contains(want),
            "{name}: {want:?} not in the error\n{out}"
        );
    }
    let mut secrets: Vec<String> = SECRETS.iter().map(|s| s.to_string()).collect();
    secrets.extend(h.fake.issued_secrets());
    for s in &secrets {
        assert!(
            !run.stdout.contains(s.as_str()) && !run.stderr.contains(s.as_str()),
            "{name}: secret {s:?} in the output\n{out}"
        );
    }
    assert_eq!(h.fake.write_count(), 0, "{name}: Bitbucket writes\n{out}");
    if case.offline {
        assert!(
            h.fake.requests().is_empty() && h.recorder.calls().is_empty(),
            "{name}: remote calls before the input was checked\n{out}"
        );
    }
    assert_eq!(
        h.recorder.writes(),
        Vec::<String>::new(),
        "{name}: AWS writes\n{out}"
    );
    run
}

pub(super) async fn check_all(h: &Harness, cases: &[Case]) {
    let mut names = std::collections::BTreeSet::new();
    let mut failed = Vec::new();
    for case in cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let started = std::time::Instant::now();
        let result =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check(h, case))).await;
        match result {
            Ok(run) => {
                let error = run.stderr.find("error: ").map_or("", |i| &run.stderr[i..]);
                eprintln!(
                    "{} ({:?}): {}",
                    case.name,
                    started.elapsed(),
                    error.trim_end()
                );
            }
            Err(_) => failed.push(case.name),
        }
    }
    // Every case runs, so one run shows every failure.
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
