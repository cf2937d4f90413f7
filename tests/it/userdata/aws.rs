//! moto and the aws CLI, as seen from the test; the recording proxy the hosts reach moto
//! through.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use testkit::moto::{aws_env, moto, PROXY_VARS};
use testkit::recorder::Recorder;

use super::AMI;
use crate::KIT;

/// The aws CLI pointed at the test's moto server.
pub(super) fn aws(args: &[&str]) -> String {
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
pub(super) fn aws_command() -> Command {
    let mut cmd = Command::new("aws");
    moto_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Points `cmd` at moto: the caller's AWS settings and proxies removed, moto's env set.
pub(super) fn moto_env(cmd: &mut Command) {
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
pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
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
/// host's requests are evaluated against instance.json (`crate::iam`): a host signs with
/// the access key [`testkit::iam::instance_access_key`] of its instance.
pub(super) fn host_proxy() -> &'static Recorder {
    static PROXY: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();
    PROXY.get_or_init(|| runtime().block_on(Recorder::start(&moto().endpoint, KIT.dump_dir())))
}

/// A recording proxy of its own, for a test that makes it misbehave (the hosts' shared one
/// serves tests running in parallel); its calls are dumped for the IAM evaluation too.
pub(super) fn own_proxy() -> Recorder {
    runtime().block_on(Recorder::start(&moto().endpoint, KIT.dump_dir()))
}

/// The successful TerminateInstances calls of `instance_id` on itself through `proxy`,
/// signed with its instance role's access key.
pub(super) fn self_terminations(proxy: &Recorder, instance_id: &str) -> usize {
    let key = testkit::iam::instance_access_key(instance_id);
    proxy
        .calls()
        .iter()
        .filter(|c| c.operation == "ec2:TerminateInstances" && c.access_key == key)
        .filter(|c| c.status == 200 && c.body.contains(&format!("InstanceId.1={instance_id}")))
        .count()
}

/// Tags `instance_id` as an instance of `fleet`, as the launch template's tag
/// specification does for the fleet's instances (the policies key on that tag). Through
/// the host's proxy at `endpoint`, so the IAM evaluation learns the tag, signed as the
/// harness (not evaluated).
pub(super) fn tag_as_fleet_instance(endpoint: &str, instance_id: &str, fleet: &str) {
    let endpoint = endpoint.to_owned();
    runtime().block_on(async {
        let sdk = testkit::moto::harness_sdk(&endpoint).await;
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

pub(super) fn launch_instances(count: usize) -> Vec<String> {
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

/// Stores a runner command the way bbfleet does (tagged with the fleet and as free, then
/// offered to the hosts: claim generation 0 = free); returns the command.
pub(super) fn put_runner(fleet: &str, uuid: &str) -> String {
    let command = format!(
        "{}\nenv OAUTH_CLIENT_SECRET=canary-{uuid}\narg --name\narg runner-{uuid}\nimage image:1",
        bbfleet::runner_command::FORMAT
    );
    put_runner_value(fleet, uuid, &command);
    command
}

/// Stores `value` as runner `uuid`'s command and offers it, the way bbfleet does.
pub(super) fn put_runner_value(fleet: &str, uuid: &str, value: &str) {
    store_command(fleet, uuid, value, true);
    aws(&[
        "ssm",
        "put-parameter",
        "--name",
        &format!("/bbfleet/{fleet}/claims/{uuid}/0"),
        "--type",
        "String",
        "--value",
        "free",
    ]);
}

/// Stores a runner command without offering it and without bbfleet's tags, as an older
/// bbfleet did; returns the command.
pub(super) fn put_unoffered_runner(fleet: &str, uuid: &str) -> String {
    let command = format!(
        "{}\nenv OAUTH_CLIENT_SECRET=canary-{uuid}\nimage image:1",
        bbfleet::runner_command::FORMAT
    );
    store_command(fleet, uuid, &command, false);
    command
}

/// The SecureString of a runner command; `tagged`: with the fleet tag and as free.
fn store_command(fleet: &str, uuid: &str, value: &str, tagged: bool) {
    let name = format!("/bbfleet/{fleet}/runners/{uuid}");
    let mut args = vec![
        "ssm",
        "put-parameter",
        "--name",
        &name,
        "--type",
        "SecureString",
        "--key-id",
        "alias/aws/ssm",
        "--value",
        value,
    ];
    let tags = format!("Key=bbfleet:fleet,Value={fleet}");
    if tagged {
        args.extend(["--tags", &tags, "Key=bbfleet:holder,Value=free"]);
    }
    aws(&args);
}

/// The claims of one runner: generation -> value.
pub(super) fn claims(fleet: &str, uuid: &str) -> BTreeMap<u64, String> {
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
pub(super) fn all_claims(fleet: &str) -> BTreeMap<String, BTreeMap<u64, String>> {
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

/// The state of an instance in moto.
pub(super) fn instance_state(id: &str) -> String {
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

/// Releases a runner's claim the way bbfleet's `release_claim` action does (unbind its
/// command, then write `generation` = free), through the hosts' proxy so that the IAM
/// evaluation learns the binding is free again (signed as the harness: not evaluated).
pub(super) fn release_as_bbfleet(fleet: &str, uuid: &str, generation: u64) {
    let endpoint = host_proxy().endpoint.clone();
    runtime().block_on(async {
        let sdk = testkit::moto::harness_sdk(&endpoint).await;
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let bound = bbfleet::aws::ssm::unbind_runner(&ssm, fleet, uuid)
            .await
            .expect("unbind the runner");
        assert!(bound, "runner {uuid} has a stored command");
        let written = bbfleet::aws::ssm::put_claim_if_absent(&ssm, fleet, uuid, generation, "free")
            .await
            .expect("write the free generation");
        assert!(written, "generation {generation} of {uuid} was new");
    });
}
