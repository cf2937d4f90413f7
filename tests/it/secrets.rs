//! Canary secrets: the fake accepts only canary credentials and issues runner OAuth
//! secrets with a canary prefix; a broad scenario (validate, render-userdata, plan,
//! plan --out, apply FILE, status, scale up and down, autoscale, failing applies,
//! destroy) runs in every Bitbucket auth mode with debug logs, and then every captured
//! stdout/stderr, the log file, the plan file, the launch template versions' userdata,
//! instance userdata, tags, parameter descriptions and what the fake recorded are
//! searched: zero hits. A positive control finds the runner secrets where they must be
//! (the decrypted SecureStrings), so the search is proven able to find them.

use base64::Engine;
use bitbucket_fake::{FakeConfig, Fault};
use testkit::harness::Harness;

use crate::KIT;

const ACCESS_TOKEN: &str = "cnry-access-token-7d1f0c2b9e";
const API_TOKEN: &str = "cnry-api-token-51ab93e0d4";
const CLIENT_SECRET: &str = "cnry-client-secret-c0ffee7731";
const WRONG: &str = "cnry-wrong-credential-0a9b8c";
const RUNNER_PREFIX: &str = "cnryrunnersecret";
const EMAIL: &str = "dev@example.com";
const CLIENT_ID: &str = "cnry-client-id";

#[derive(Clone, Copy)]
enum Mode {
    Bearer,
    Basic,
    OAuth,
}

fn fake_config() -> FakeConfig {
    FakeConfig {
        basic_users: vec![(EMAIL.to_owned(), API_TOKEN.to_owned())],
        bearer_tokens: vec![ACCESS_TOKEN.to_owned()],
        oauth_clients: vec![(CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())],
        secret_prefix: RUNNER_PREFIX.to_owned(),
        ..FakeConfig::default()
    }
}

/// The environment of `mode`; `wrong` swaps the secret part for another canary.
fn credentials(
    h: &Harness,
    mode: Mode,
    wrong: bool,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let secret = |s: &str| {
        if wrong {
            WRONG.to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut env: Vec<(String, String)> = match mode {
        Mode::Bearer => vec![("BITBUCKET_ACCESS_TOKEN".into(), secret(ACCESS_TOKEN))],
        Mode::Basic => vec![
            ("BITBUCKET_EMAIL".into(), EMAIL.into()),
            ("BITBUCKET_API_TOKEN".into(), secret(API_TOKEN)),
        ],
        Mode::OAuth => vec![
            ("BITBUCKET_OAUTH_CLIENT_ID".into(), CLIENT_ID.into()),
            (
                "BITBUCKET_OAUTH_CLIENT_SECRET".into(),
                secret(CLIENT_SECRET),
            ),
            ("BITBUCKET_OAUTH_TOKEN_URL".into(), h.fake.oauth_token_url()),
        ],
    };
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Everything searched, by where it came from.
#[derive(Default)]
struct Evidence(Vec<(String, String)>);

impl Evidence {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }

    /// Places holding `needle`, as text or as the byte list `Debug` prints for raw bytes
    /// (`Bytes([99, 110, ...])`, how the AWS SDK's trace logs show a body).
    fn hits(&self, needle: &str) -> Vec<&str> {
        let as_bytes = needle
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        self.0
            .iter()
            .filter(|(_, text)| text.contains(needle) || text.contains(&as_bytes))
            .map(|(place, _)| place.as_str())
            .collect()
    }
}

/// User data unpacked when gzip (as bbfleet's launch templates hold it), so the search
/// sees the script, not compressed bytes a secret would hide in.
fn gunzip_user_data(bytes: &[u8]) -> Vec<u8> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return bytes.to_vec();
    }
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut plain)
        .expect("gzip user data");
    plain
}

async fn aws_evidence(h: &Harness, evidence: &mut Evidence) {
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let b64 = base64::engine::general_purpose::STANDARD;
    let lt_name = format!("bbfleet-{}", h.fleet);
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(&lt_name)
        .send()
        .await
        .expect("launch template versions");
    assert!(!versions.launch_template_versions().is_empty());
    for v in versions.launch_template_versions() {
        let data = v.launch_template_data().unwrap();
        let userdata = b64.decode(data.user_data().unwrap()).unwrap();
        evidence.add(
            format!("launch template version {:?} userdata", v.version_number()),
            String::from_utf8(gunzip_user_data(&userdata)).unwrap(),
        );
        evidence.add(
            format!("launch template version {:?}", v.version_number()),
            format!("{v:?} {:?}", data.tag_specifications()),
        );
    }
    let lts = ec2
        .describe_launch_templates()
        .launch_template_names(&lt_name)
        .send()
        .await
        .unwrap();
    evidence.add("DescribeLaunchTemplates", format!("{lts:?}"));
    let tags = ec2.describe_tags().send().await.unwrap();
    evidence.add("ec2 DescribeTags", format!("{tags:?}"));
    let fleets = ec2.describe_spot_fleet_requests().send().await.unwrap();
    evidence.add("DescribeSpotFleetRequests", format!("{fleets:?}"));
    // The fleet's instances (all of bbfleet's carry the fleet tag, from the launch
    // template): the other tests of this binary share moto and launch hundreds more, each
    // of whose user data would cost one call here.
    let instances = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:bbfleet:fleet")
                .values(&h.fleet)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        !instances.reservations().is_empty(),
        "the fleet has instances"
    );
    evidence.add("DescribeInstances", format!("{instances:?}"));
    for r in instances.reservations() {
        for i in r.instances() {
            let id = i.instance_id().unwrap();
            let attr = ec2
                .describe_instance_attribute()
                .instance_id(id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
                .unwrap();
            if let Some(v) = attr.user_data().and_then(|u| u.value()) {
                let text =
                    String::from_utf8_lossy(&gunzip_user_data(&b64.decode(v).unwrap_or_default()))
                        .into_owned();
                evidence.add(format!("instance {id} userdata"), text);
            }
        }
    }
    // The fleet's parameters only, listed by path: the other tests of this binary share
    // moto and create and delete their own parameters all the while. A region-wide
    // DescribeParameters listed theirs too, and one deleted between the listing and the
    // ListTagsForResource that followed answered InvalidResourceId (moto also pages
    // DescribeParameters by offset into its live table, so a concurrent delete could shift
    // a parameter of this fleet out of the pages unseen). GetParametersByPath and the
    // per-name calls below touch only names under the fleet's path, which nothing else
    // writes and no bbfleet run changes any more; `parameters_written_outside_the_fleet_path`
    // shows nothing bbfleet wrote lies outside it.
    let mut pages = ssm
        .get_parameters_by_path()
        .path(format!("/bbfleet/{}", h.fleet))
        .recursive(true)
        .into_paginator()
        .send();
    let mut names = Vec::new();
    while let Some(page) = pages.next().await {
        for p in page.expect("the fleet's parameters").parameters() {
            names.push(p.name().unwrap().to_owned());
        }
    }
    assert!(!names.is_empty(), "the fleet has parameters");
    for name in names {
        // Every version's metadata (description, key, labels), not its value: the runner
        // commands hold their secrets by design (the positive control below).
        let mut versions = Vec::new();
        let mut history = ssm
            .get_parameter_history()
            .name(&name)
            .into_paginator()
            .send();
        while let Some(page) = history.next().await {
            let page = page.unwrap_or_else(|e| panic!("history of {name}: {e:?}"));
            versions.extend(page.parameters().to_vec());
        }
        assert!(!versions.is_empty(), "{name} has versions");
        for v in versions {
            evidence.add(
                format!("parameter {name} version {}", v.version()),
                format!(
                    "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                    v.name(),
                    v.r#type(),
                    v.key_id(),
                    v.description(),
                    v.labels(),
                    v.tier(),
                    v.allowed_pattern()
                ),
            );
        }
        let tags = ssm
            .list_tags_for_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("tags of {name}: {e:?}"));
        evidence.add(format!("ssm tags of {name}"), format!("{tags:?}"));
    }
}

/// Names of the SSM parameters bbfleet wrote (PutParameter, as the proxy recorded it)
/// outside `/bbfleet/{fleet}/`: the evidence reads only that path.
fn parameters_written_outside_the_fleet_path(h: &Harness) -> Vec<String> {
    let prefix = format!("/bbfleet/{}/", h.fleet);
    let mut outside = Vec::new();
    let mut writes = 0;
    for call in h.recorder.calls() {
        if call.operation != "ssm:PutParameter" {
            continue;
        }
        writes += 1;
        let body: serde_json::Value = serde_json::from_str(&call.body).expect("a JSON body");
        let name = body["Name"].as_str().unwrap_or_default();
        if !name.starts_with(&prefix) {
            outside.push(name.to_owned());
        }
    }
    assert!(writes > 0, "the proxy saw bbfleet's PutParameter calls");
    outside
}

/// The SecureStrings, decrypted: where the runner secrets must be.
async fn stored_commands(h: &Harness) -> Vec<String> {
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let out = ssm
        .get_parameters_by_path()
        .path(format!("/bbfleet/{}/runners", h.fleet))
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    out.parameters()
        .iter()
        .map(|p| p.value().unwrap().to_owned())
        .collect()
}

fn argv<'a>(cfg: &'a str, verbosity: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--config", cfg];
    a.extend_from_slice(verbosity);
    a.extend_from_slice(rest);
    a
}

async fn scenario(fleet: &str, mode: Mode, verbosity: &[&str], extra_env: &[(&str, &str)]) {
    let h = Harness::with_fake(KIT, fleet, fake_config()).await;
    let text = format!(
        "{}\n[capacity.autoscale]\nmin = 1\nmax = 4\n",
        h.config(2, None)
    );
    let config = h.write_config(&text);
    let cfg = config.to_str().unwrap();
    let good = credentials(&h, mode, false, extra_env);
    let bad = credentials(&h, mode, true, extra_env);
    let (good, bad) = (pairs(&good), pairs(&bad));
    let args = |rest: &[&'static str]| argv(cfg, verbosity, rest);

    h.run(&args(&["validate"]), &good).await.expect_code(0);
    h.run(&args(&["render-userdata"]), &good)
        .await
        .expect_code(0);
    h.run(&args(&["plan"]), &good).await.expect_code(0);
    h.run(&args(&["--output", "json", "plan"]), &good)
        .await
        .expect_code(0);
    h.run(&args(&["plan", "--out", "plan.json"]), &good)
        .await
        .expect_code(0);
    let applied = h.run(&args(&["apply", "plan.json"]), &good).await;
    applied.expect_code(0);
    // Debug logs are on: a line per Bitbucket request and per AWS call.
    for line in [
        "POST /2.0/workspaces/acme/pipelines-config/runners",
        "operation=\"PutParameter\" status=200",
    ] {
        assert!(applied.stderr.contains(line), "{line}: {}", applied.stderr);
    }
    h.run(&args(&["status"]), &good).await.expect_code(0);
    h.run(&args(&["--output", "json", "status"]), &good)
        .await
        .expect_code(0);

    // Scale up with the logs going to a file, as a pipeline would keep them.
    let log_path = h.dir.path().join("apply.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let up = h
        .command(
            &args(&["apply", "--auto-approve", "--capacity", "3"]),
            &good,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(up.status.success());
    h.transcript
        .lock()
        .unwrap()
        .push_str(&String::from_utf8_lossy(&up.stdout));
    assert!(std::fs::metadata(&log_path).unwrap().len() > 0);

    h.run(
        &args(&["apply", "--auto-approve", "--capacity", "1"]),
        &good,
    )
    .await
    .expect_code(0);
    h.run(&args(&["autoscale", "--once"]), &good)
        .await
        .expect_code(0);

    // Failures: refused credentials, then a storm of 500s.
    let refused = h
        .run(&args(&["apply", "--auto-approve", "--capacity", "2"]), &bad)
        .await;
    refused.expect_code(1);
    h.fake.inject(Fault::ServerError {
        status: 500,
        count: 50,
        path_contains: Some("runners".into()),
    });
    let storm = h
        .run(
            &args(&["apply", "--auto-approve", "--capacity", "2"]),
            &good,
        )
        .await;
    storm.expect_code(1);
    h.fake.clear_faults();
    h.run(
        &args(&["apply", "--auto-approve", "--capacity", "2"]),
        &good,
    )
    .await
    .expect_code(0);

    // Evidence, before destroy removes it.
    assert_eq!(
        parameters_written_outside_the_fleet_path(&h),
        Vec::<String>::new(),
        "bbfleet wrote parameters outside its fleet's path"
    );
    let mut evidence = Evidence::default();
    aws_evidence(&h, &mut evidence).await;
    evidence.add(
        "runners at the fake",
        format!("{:?}", h.fake.runners("acme", None)),
    );
    evidence.add(
        "requests the fake received",
        format!("{:?}", h.fake.requests()),
    );
    evidence.add(
        "plan file",
        std::fs::read_to_string(h.dir.path().join("plan.json")).unwrap(),
    );
    evidence.add("log file", std::fs::read_to_string(&log_path).unwrap());
    let commands = stored_commands(&h).await;
    assert_eq!(commands.len(), 2);

    h.run(&args(&["destroy", "--auto-approve"]), &good)
        .await
        .expect_code(0);
    evidence.add("stdout and stderr", h.transcript.lock().unwrap().clone());

    // Positive control: the search finds each stored runner secret where it must be.
    let issued = h.fake.issued_secrets();
    assert!(issued.len() >= 3, "issued: {}", issued.len());
    let mut control = Evidence::default();
    for (k, c) in commands.iter().enumerate() {
        control.add(format!("SecureString {k}"), c.clone());
    }
    let found = issued
        .iter()
        .filter(|s| !control.hits(s).is_empty())
        .count();
    assert_eq!(
        found, 2,
        "the two live runners' secrets are in their SecureStrings"
    );
    assert!(!control.hits(RUNNER_PREFIX).is_empty());

    // Zero hits anywhere else.
    let mut canaries: Vec<&str> =
        vec![ACCESS_TOKEN, API_TOKEN, CLIENT_SECRET, WRONG, RUNNER_PREFIX];
    canaries.extend(issued.iter().map(String::as_str));
    for c in canaries {
        assert_eq!(evidence.hits(c), Vec::<&str>::new(), "canary {c} leaked");
    }
    // Access tokens the fake issued over OAuth are random: no header may show at all.
    for header in ["authorization:", "bearer ", "basic "] {
        for (place, text) in &evidence.0 {
            let lower = text.to_lowercase();
            if let Some(at) = lower.find(header) {
                let from = lower[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                let to = lower[at..]
                    .char_indices()
                    .nth(80)
                    .map_or(lower.len(), |(i, _)| at + i);
                panic!("{header:?} appears in {place}: ...{}...", &text[from..to]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_with_an_access_token() {
    scenario("cn-access", Mode::Bearer, &["--debug"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_with_an_api_token() {
    scenario("cn-apitoken", Mode::Basic, &["--debug"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_with_an_oauth_consumer() {
    scenario("cn-oauth", Mode::OAuth, &["--debug"], &[]).await;
}

/// `-vv`, and BBFLEET_LOG asking every crate for trace logs, with the AWS SDK told to
/// print request bodies (`LOG_SIGNABLE_BODY`): its trace logs would show the SecureString
/// values being written; bbfleet caps other crates at info, so nothing shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_with_vv_and_trace_filter() {
    scenario(
        "cn-trace",
        Mode::OAuth,
        &["-vv"],
        &[("BBFLEET_LOG", "trace"), ("LOG_SIGNABLE_BODY", "true")],
    )
    .await;
}

/// Credentials in a URL are refused without repeating the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_url_are_refused_unprinted() {
    let h = Harness::with_fake(KIT, "cn-url", fake_config()).await;
    let config = h.write_config(&h.config(1, None));
    let cfg = config.to_str().unwrap();
    let token_url = h
        .fake
        .oauth_token_url()
        .replace("http://", &format!("http://{CLIENT_ID}:{CLIENT_SECRET}@"));
    let env = [
        ("BITBUCKET_OAUTH_CLIENT_ID", CLIENT_ID),
        ("BITBUCKET_OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("BITBUCKET_OAUTH_TOKEN_URL", token_url.as_str()),
    ];
    let run = h.run(&["--config", cfg, "--debug", "plan"], &env).await;
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("BITBUCKET_OAUTH_TOKEN_URL: the URL holds a user name or password"),
        "{}",
        run.stderr
    );
    let api_url = format!("http://user:{ACCESS_TOKEN}@127.0.0.1:1/2.0");
    let run = h
        .run(
            &["--config", cfg, "--debug", "status"],
            &[
                ("BITBUCKET_ACCESS_TOKEN", ACCESS_TOKEN),
                ("BITBUCKET_API_URL", api_url.as_str()),
            ],
        )
        .await;
    run.expect_code(1);
    assert!(
        run.stderr.contains("BITBUCKET_API_URL: the URL holds"),
        "{}",
        run.stderr
    );
    let transcript = h.transcript.lock().unwrap().clone();
    assert!(!transcript.contains(CLIENT_SECRET) && !transcript.contains(ACCESS_TOKEN));
    h.assert_no_writes("credentials in a URL");
}
