//! The blast radius of one compromised host. Pipeline steps are untrusted code and may
//! reach the host's role credentials; with them, what can they do? Two honest hosts claim
//! two runners; then an attacker on the first host makes, with that host's credentials,
//! every request that would reach beyond its own runner. moto answers them all (it
//! evaluates no IAM); the IAM evaluator, on the same transcript, must deny each one, and
//! allow the host's read of its own runner's command.

use std::process::Command;

use serde_json::Value;
use testkit::iam::{evaluate, iam_requests, instance_access_key, Fill, Recorded};
use testkit::moto::{aws_env, moto, PROXY_VARS};
use testkit::recorder::{AwsCall, Recorder};

use bbfleet::config::Os;

use super::aws::{host_proxy, launch_instances, put_runner, put_unoffered_runner, runtime};
use super::host::{assert_ok, Host};

/// `aws ARGS` with `instance`'s role credentials, through `proxy`; moto's answer is not
/// what matters (the evaluator judges the request), so failures are fine.
fn as_host(proxy: &Recorder, instance: &str, args: &[&str]) {
    let mut cmd = Command::new("aws");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(aws_env(&proxy.endpoint))
        .env("AWS_ACCESS_KEY_ID", instance_access_key(instance))
        .env("AWS_MAX_ATTEMPTS", "1")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.status().expect("run aws");
}

fn recorded(proxy: &str, calls: Vec<AwsCall>) -> Vec<Recorded> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| Recorded {
            origin: format!("{proxy}:{}", i + 1),
            proxy: proxy.to_owned(),
            upstream: moto().endpoint.clone(),
            operation: c.operation,
            body: c.body,
            access_key: c.access_key,
            throttled: c.throttled,
            status: c.status,
            response: c.response,
        })
        .collect()
}

#[test]
fn a_compromised_host_can_read_only_the_runner_command_bound_to_it() {
    let fleet = "blast";
    let uuid = |n: u8| format!("b1a57000-0000-4000-8000-0000000000{n:02}");
    let runners: Vec<String> = (1..=3).map(uuid).collect();
    for r in &runners {
        put_runner(fleet, r);
    }
    // Stored by an older bbfleet: untagged, never offered.
    let legacy = uuid(9);
    put_unoffered_runner(fleet, &legacy);
    let ids = launch_instances(2);
    let (me, other) = (&ids[0], &ids[1]);
    let mine = {
        let host = Host::new(Os::Al2023, fleet, me);
        assert_ok(&host, &host.run());
        host.kill_agent();
        host.state("runner-uuid")
    };
    let theirs = {
        let host = Host::new(Os::Al2023, fleet, other);
        assert_ok(&host, &host.run());
        host.kill_agent();
        host.state("runner-uuid")
    };
    let free = runners
        .iter()
        .find(|r| **r != mine && **r != theirs)
        .expect("three runners, two claimed")
        .clone();

    let attack = runtime().block_on(Recorder::start(&moto().endpoint, None));
    // The control: its own runner's command, as its bootstrap read it.
    as_host(
        &attack,
        me,
        &[
            "ssm",
            "get-parameter",
            "--name",
            &format!("/bbfleet/{fleet}/runners/{mine}"),
            "--with-decryption",
        ],
    );
    let blob = tempfile::NamedTempFile::new().expect("a ciphertext file");
    std::fs::write(blob.path(), [7u8; 64]).expect("write the ciphertext");
    let target = Target {
        fleet,
        mine: &mine,
        theirs: &theirs,
        free: &free,
        legacy: &legacy,
        me,
        other,
        blob: &format!("fileb://{}", blob.path().display()),
    };
    let denied = attacks(&target);
    for (_, args) in &denied {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_host(&attack, me, &args);
    }

    // One transcript: the honest hosts' calls (what the parameters' tags were), then the
    // attack's.
    let mut calls = recorded("hosts", host_proxy().calls());
    let honest = calls.len();
    let attack_calls = recorded("attack", attack.calls());
    assert_eq!(
        attack_calls.len(),
        denied.len() + 1,
        "every attack reached the proxy"
    );
    calls.extend(attack_calls);
    let requests = iam_requests(&calls);
    let policy: Value = crate::iam::policy("instance", &Fill::harness(fleet));
    let attack_requests: Vec<_> = requests.iter().filter(|r| r.proxy == "attack").collect();
    let decisions = evaluate(
        &attack_requests
            .iter()
            .map(|r| (policy.clone(), *r))
            .collect::<Vec<_>>(),
    );
    let call_of = |origin: &str| -> usize {
        origin
            .rsplit(':')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            - 1
    };
    let mut allowed_calls = vec![true; denied.len() + 1];
    for (r, d) in attack_requests.iter().zip(&decisions) {
        eprintln!(
            "{} {} on {}: {}",
            r.operation, r.action, r.resource, d.decision
        );
        if !d.allowed() {
            allowed_calls[call_of(&r.origin)] = false;
        }
    }
    assert!(
        allowed_calls[0],
        "the host may read its own runner's command ({} honest calls before)",
        honest
    );
    for (k, (what, _)) in denied.iter().enumerate() {
        assert!(!allowed_calls[k + 1], "allowed to the attacker: {what}");
    }
}

/// What the attacker aims at: its own runner, another host's, a free one, an untagged one.
struct Target<'a> {
    fleet: &'a str,
    mine: &'a str,
    theirs: &'a str,
    free: &'a str,
    legacy: &'a str,
    me: &'a str,
    other: &'a str,
    /// `fileb://` of some ciphertext.
    blob: &'a str,
}

/// The requests a compromised host could make to reach beyond its own runner, each with
/// what it tries.
fn attacks(t: &Target) -> Vec<(&'static str, Vec<String>)> {
    let fleet = t.fleet;
    let (mine, theirs, free, legacy, me, other, blob) =
        (t.mine, t.theirs, t.free, t.legacy, t.me, t.other, t.blob);
    let words = |w: &[&str]| -> Vec<String> { w.iter().map(|s| (*s).to_owned()).collect() };
    let param = |r: &str| format!("/bbfleet/{fleet}/runners/{r}");
    let claim = |r: &str, g: u64| format!("/bbfleet/{fleet}/claims/{r}/{g}");
    let arn = |p: &str| testkit::iam::parameter_arn(p);
    let my_arn = format!("arn:aws:ec2:us-east-1:123456789012:instance/{me}");
    vec![
        (
            "another host's runner",
            words(&[
                "ssm",
                "get-parameter",
                "--name",
                &param(theirs),
                "--with-decryption",
            ]),
        ),
        (
            "a free runner, unbound",
            words(&[
                "ssm",
                "get-parameter",
                "--name",
                &param(free),
                "--with-decryption",
            ]),
        ),
        (
            "an untagged runner",
            words(&["ssm", "get-parameter", "--name", &param(legacy)]),
        ),
        (
            "every runner by path",
            words(&[
                "ssm",
                "get-parameters-by-path",
                "--path",
                &format!("/bbfleet/{fleet}/runners"),
                "--recursive",
                "--with-decryption",
            ]),
        ),
        (
            "another host's runner, in a batch",
            words(&[
                "ssm",
                "get-parameters",
                "--names",
                &param(theirs),
                "--with-decryption",
            ]),
        ),
        (
            "its own runner's history",
            words(&[
                "ssm",
                "get-parameter-history",
                "--name",
                &param(mine),
                "--with-decryption",
            ]),
        ),
        (
            "over another host's claim",
            words(&[
                "ssm",
                "put-parameter",
                "--name",
                &claim(theirs, 1),
                "--type",
                "String",
                "--value",
                me,
                "--overwrite",
            ]),
        ),
        (
            "another host's claim, deleted",
            words(&["ssm", "delete-parameter", "--name", &claim(theirs, 1)]),
        ),
        (
            "a runner command, changed",
            words(&[
                "ssm",
                "put-parameter",
                "--name",
                &param(theirs),
                "--type",
                "String",
                "--value",
                "x",
                "--overwrite",
            ]),
        ),
        (
            "a direct Decrypt with a runner's context",
            words(&[
                "kms",
                "decrypt",
                "--ciphertext-blob",
                blob,
                "--encryption-context",
                &format!("PARAMETER_ARN={}", arn(&param(theirs))),
            ]),
        ),
        (
            "another instance, terminated",
            words(&["ec2", "terminate-instances", "--instance-ids", other]),
        ),
        (
            "its runner retagged out of the fleet",
            words(&[
                "ssm",
                "add-tags-to-resource",
                "--resource-type",
                "Parameter",
                "--resource-id",
                &param(mine),
                "--tags",
                "Key=bbfleet:fleet,Value=elsewhere",
            ]),
        ),
        // Last: moto takes it, and the transcript would then believe it.
        (
            "another host's runner, bound to itself",
            words(&[
                "ssm",
                "add-tags-to-resource",
                "--resource-type",
                "Parameter",
                "--resource-id",
                &param(theirs),
                "--tags",
                &format!("Key=bbfleet:holder,Value={my_arn}"),
            ]),
        ),
    ]
}
