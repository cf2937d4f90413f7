//! Bad input, table-driven: config files, environments, command-line values, Bitbucket
//! answers and AWS references that are wrong. Every case runs the real binary
//! (`apply --auto-approve`, the command that writes most) against moto and the Bitbucket
//! fake, and must give exit 1, one clear error paragraph naming the cause, no secret,
//! and zero write calls at Bitbucket and at AWS. A fault in the middle of an apply must
//! stop with a report of what was done, and the next apply must converge.

mod support;

use bitbucket_fake::Fault;
use support::harness::{Harness, Run};

/// Secrets of the test world: none may appear in any output.
const SECRETS: [&str; 6] = [
    "fake-access-token",
    "fake-api-token",
    "fake-client-secret",
    "fake-secret-",
    "canary-token",
    "canary-secret",
];

/// Signs of a panic, a backtrace or a `Debug` dump instead of a message.
const NOT_A_MESSAGE: [&str; 9] = [
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
struct Case {
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
    fn new(name: &'static str, expect: &[&'static str]) -> Case {
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

    fn offline(mut self) -> Case {
        self.offline = true;
        self
    }

    fn config(mut self, text: String) -> Case {
        self.config = Some(text);
        self
    }

    fn args(mut self, args: &[&str]) -> Case {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    fn env(mut self, env: &[(&'static str, &str)]) -> Case {
        self.env = Some(env.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self
    }

    fn fault(mut self, fault: Fault) -> Case {
        self.faults.push(fault);
        self
    }
}

/// `base` with `from` replaced by `to` (which must occur).
fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in the config");
    base.replacen(from, to, 1)
}

const RUNNERS: &str = "pipelines-config/runners";

fn on_runners() -> Option<String> {
    Some(RUNNERS.to_owned())
}

/// Runs one case and checks everything every case promises; returns the run.
async fn check(h: &Harness, case: &Case) -> Run {
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

async fn check_all(h: &Harness, cases: &[Case]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files() {
    let h = Harness::new("badcfg").await;
    let base = h.config(2, None);
    let b = base.as_str();
    let eleven: Vec<String> = (0..11).map(|i| format!("\"l{i}\"")).collect();
    let cases = vec![
        Case::new("toml_syntax", &["is not valid TOML: line 9, column 10: unclosed table"])
            .config(edit(b, "[capacity]", "[capacity")),
        Case::new(
            "wrong_type",
            &["capacity.default: invalid type: string \"two\", expected a whole number"],
        )
        .config(edit(b, "default = 2", "default = \"two\"")),
        Case::new("negative_capacity", &["capacity.default: invalid value: integer `-1`"])
            .config(edit(b, "default = 2", "default = -1")),
        Case::new("unknown_key_top_level", &["unknown field `colour`"])
            .config(format!("colour = \"blue\"\n{b}")),
        Case::new("unknown_key_nested", &["spot.subnet_ids: unknown field `subnet_ids`"])
            .config(edit(b, "subnets = [", "subnet_ids = [\"subnet-0abc1234\"]\nsubnets = [")),
        Case::new("capacity_max_out_of_range", &["capacity.max: 500 is out of range: 1 to 100"])
            .config(edit(b, "max = 20", "max = 500")),
        Case::new("default_above_max", &["capacity.default: 30 is above capacity.max (20)"])
            .config(edit(b, "default = 2", "default = 30")),
        Case::new("bad_fleet_name", &["name: \"Prod_Fleet\" is not a valid fleet name"])
            .config(edit(b, "name = \"badcfg\"", "name = \"Prod_Fleet\"")),
        Case::new("fleet_name_too_long", &["name: \"abcdefghij-abcdefghij-abcde\" is not a valid fleet name", "1-24 characters"])
            .config(edit(b, "name = \"badcfg\"", "name = \"abcdefghij-abcdefghij-abcde\"")),
        Case::new("bad_label", &["bitbucket.labels[2]: \"Spot Instances\": labels may hold only"])
            .config(edit(b, "\"spot\"]", "\"Spot Instances\"]")),
        Case::new("duplicate_label", &["bitbucket.labels[3]: \"spot\" is listed twice"])
            .config(edit(b, "\"spot\"]", "\"spot\", \"spot\"]")),
        Case::new("too_many_labels", &["bitbucket.labels: 11 custom labels", "at most 10"])
            .config(edit(b, "\"spot\"]", &format!("{}]", eleven.join(", ")))),
        Case::new("platform_label_of_another_os", &["bitbucket.labels[2]: \"windows\" is another platform's label"])
            .config(edit(b, "\"spot\"]", "\"windows\"]")),
        Case::new("bad_subnet_id", &["spot.subnets[0]: \"subnet-XYZ!\" is not a subnet id"])
            .config(edit(b, &format!("{:?}", h.subnets[0].0), "\"subnet-XYZ!\"")),
        Case::new("one_subnet", &["spot.subnets: 1 subnet(s)", "at least 2 availability zones"])
            .config(edit(
                b,
                &format!("{:?}, {:?}, {:?}", h.subnets[0].0, h.subnets[1].0, h.subnets[2].0),
                &format!("{:?}", h.subnets[0].0),
            )),
        Case::new("one_family", &["spot.instance_types: the fleet spans 1 instance family (m6i)", "at least 2 families"])
            .config(edit(b, "[\"m6i.large\", \"m6a.large\", \"c6i.xlarge\"]", "[\"m6i.large\", \"m6i.xlarge\"]")),
        Case::new("bad_instance_type", &["spot.instance_types[1]: \"m6a\" is not an EC2 instance type"])
            .config(edit(b, "\"m6a.large\"", "\"m6a\"")),
        Case::new("mixed_architectures", &["spot.instance_types: mixes x86_64 and arm64"])
            .config(edit(b, "\"m6a.large\"", "\"m6g.large\"")),
        Case::new(
            "bad_schedule",
            &[
                "capacity.schedule[0].days: \"funday\" is not a day",
                "capacity.schedule[0].hours: \"7\" is not a time HH:MM",
                "capacity.schedule[0].timezone: \"Mars/Olympus\" is not an IANA time zone",
            ],
        )
        .config(edit(
            b,
            "max = 20\n",
            "max = 20\n[[capacity.schedule]]\ndays = \"mon-funday\"\nhours = \"7-19\"\ntimezone = \"Mars/Olympus\"\ncapacity = 3\n",
        )),
        Case::new("schedule_above_max", &["capacity.schedule[0].capacity: 40 is above capacity.max (20)"])
            .config(edit(
                b,
                "max = 20\n",
                "max = 20\n[[capacity.schedule]]\ndays = \"mon-fri\"\nhours = \"07:00-19:00\"\ntimezone = \"UTC\"\ncapacity = 40\n",
            )),
        Case::new("bad_ami_ref", &["instance.ami: \"ubuntu-latest\" is neither an AMI id"])
            .config(edit(b, "os = \"al2023\"", "os = \"al2023\"\nami = \"ubuntu-latest\"")),
        Case::new("bad_kms_key_ref", &["kms.key: \"my key\" is not a KMS key id"])
            .config(format!("{b}\n[kms]\nkey = \"my key\"\n")),
        Case::new("aws_managed_kms_key", &["kms.key: \"alias/aws/ssm\" is an AWS managed key"])
            .config(format!("{b}\n[kms]\nkey = \"alias/aws/ssm\"\n")),
        Case::new("bad_region", &["region: \"mars-1\" is not an AWS region name"])
            .config(edit(b, "region = \"us-east-1\"", "region = \"mars-1\"")),
        Case::new("region_with_shell", &["region: \"us-east-1'; touch pwned; '\" is not an AWS region name"])
            .config(edit(b, "region = \"us-east-1\"", "region = \"us-east-1'; touch pwned; '\"")),
        Case::new("region_capitals", &["region: \"US-EAST-1\" is not an AWS region name"])
            .config(edit(b, "region = \"us-east-1\"", "region = \"US-EAST-1\"")),
        Case::new("api_url_http_not_loopback", &["bitbucket.api_url: \"http://bitbucket.example.com/2.0\"", "must be https"])
            .config(edit(b, &format!("api_url = \"{}\"", h.fake.base_url()), "api_url = \"http://bitbucket.example.com/2.0\"")),
        Case::new("bad_fleet_role", &["spot.fleet_role: \"my-role\" is not an IAM role ARN"])
            .config(edit(b, "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role", "my-role")),
        Case::new("missing_section", &["missing field `instance`"])
            .config(b[..b.find("[instance]").unwrap()].to_owned()),
        Case::new("config_file_missing", &["cannot read config file", "no-such.toml", "No such file"])
            .args(&["--config", "no-such.toml", "apply", "--auto-approve"]),
        Case::new("config_file_unreadable", &["cannot read config file", "Is a directory"])
            .args(&["--config", ".", "apply", "--auto-approve"]),
    ];
    assert!(cases.len() >= 25);
    let cases: Vec<Case> = cases.into_iter().map(Case::offline).collect();
    check_all(&h, &cases).await;
    assert!(
        h.fake.requests().is_empty() && h.recorder.calls().is_empty(),
        "a bad config made remote calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environments_and_arguments() {
    let h = Harness::new("badenv").await;
    let cases = vec![
        Case::new(
            "no_credentials",
            &[
                "no Bitbucket credentials in the environment",
                "BITBUCKET_ACCESS_TOKEN",
            ],
        )
        .env(&[]),
        Case::new(
            "half_basic",
            &["BITBUCKET_EMAIL is set but BITBUCKET_API_TOKEN is not"],
        )
        .env(&[("BITBUCKET_EMAIL", "dev@example.com")]),
        Case::new(
            "conflicting_modes",
            &[
                "conflicting Bitbucket credentials",
                "BITBUCKET_ACCESS_TOKEN",
            ],
        )
        .env(&[
            ("BITBUCKET_EMAIL", "dev@example.com"),
            ("BITBUCKET_API_TOKEN", "canary-token-1"),
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-2"),
        ]),
        Case::new("empty_token", &["BITBUCKET_ACCESS_TOKEN is set but empty"])
            .env(&[("BITBUCKET_ACCESS_TOKEN", "  ")]),
        Case::new(
            "oauth_id_without_secret",
            &["BITBUCKET_OAUTH_CLIENT_ID is set but BITBUCKET_OAUTH_CLIENT_SECRET is not"],
        )
        .env(&[("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id")]),
        Case::new(
            "oauth_token_url_http",
            &["BITBUCKET_OAUTH_TOKEN_URL", "must be https"],
        )
        .env(&[
            ("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id"),
            ("BITBUCKET_OAUTH_CLIENT_SECRET", "canary-secret-1"),
            (
                "BITBUCKET_OAUTH_TOKEN_URL",
                "http://bitbucket.example.com/site/oauth2/access_token",
            ),
        ]),
        Case::new("api_url_env_http", &["BITBUCKET_API_URL", "must be https"]).env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-3"),
            ("BITBUCKET_API_URL", "http://bitbucket.example.com/2.0"),
        ]),
        Case::new("api_url_env_garbage", &["BITBUCKET_API_URL"]).env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-4"),
            ("BITBUCKET_API_URL", "not a url"),
        ]),
        Case::new(
            "wrong_token_401",
            &["did not accept the access token", "401"],
        )
        .env(&[("BITBUCKET_ACCESS_TOKEN", "canary-token-5")]),
        // No `region` in the config: the SDK's chain finds AWS_REGION, which is checked
        // before any call, the error naming the variable.
        Case::new(
            "aws_region_env_with_shell",
            &["AWS_REGION: \"eu-west-1'; touch pwned; '\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-6"),
            ("AWS_REGION", "eu-west-1'; touch pwned; '"),
        ])
        .offline(),
        Case::new(
            "aws_region_env_render_userdata",
            &["AWS_REGION: \"eu-west-1\\n\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[("AWS_REGION", "eu-west-1\n")])
        .args(&["--config", "{config}", "render-userdata"])
        .offline(),
        Case::new(
            "aws_region_env_validate",
            &["AWS_REGION: \"$(id)\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[("AWS_REGION", "$(id)")])
        .args(&["--config", "{config}", "validate"])
        .offline(),
        Case::new("capacity_above_max", &["--capacity", "50", "20"]).args(&[
            "--config",
            "{config}",
            "apply",
            "--auto-approve",
            "--capacity",
            "50",
        ]),
        Case::new(
            "at_garbage",
            &["--at: \"yesterday-ish\" is not an RFC 3339 instant"],
        )
        .args(&[
            "--config",
            "{config}",
            "apply",
            "--auto-approve",
            "--at",
            "yesterday-ish",
        ]),
        Case::new(
            "autoscale_interval_garbage",
            &["--interval", "\"soon\" is not a duration"],
        )
        .config(edit(
            &h.config(2, None),
            "max = 20\n",
            "max = 20\n[capacity.autoscale]\nmin = 1\n",
        ))
        .args(&[
            "--config",
            "{config}",
            "autoscale",
            "--once",
            "--interval",
            "soon",
        ]),
    ];
    check_all(&h, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bitbucket_answers() {
    let h = Harness::new("badapi").await;
    // Another team's runner, so pages have a runner for faults to break.
    let other = reqwest::Client::new()
        .post(format!("{}/workspaces/acme/{RUNNERS}", h.fake.base_url()))
        .bearer_auth("fake-access-token")
        .json(&serde_json::json!({"name": "team-b-1", "labels": ["self.hosted", "linux"]}))
        .send()
        .await
        .unwrap();
    assert!(other.status().is_success());
    let list = "GET /2.0/workspaces/acme/pipelines-config/runners";
    let cases = vec![
        Case::new(
            "malformed_json",
            &[
                list,
                "not JSON: EOF while parsing",
                "body starts: \"{\\\"values\\\": [\"",
            ],
        )
        .fault(Fault::MalformedJson {
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "html_error_page",
            &[
                list,
                "502",
                "an HTML page, not the API's JSON",
                "still failed after 6 attempts",
            ],
        )
        .fault(Fault::HtmlError {
            count: 6,
            path_contains: on_runners(),
        }),
        Case::new(
            "runner_without_uuid",
            &[list, "values[0]: missing field `uuid`"],
        )
        .fault(Fault::MissingField {
            field: "uuid".to_owned(),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "labels_a_string",
            &[
                list,
                "values[0].labels: invalid type: string \"linux\", expected a sequence",
            ],
        )
        .fault(Fault::WrongType {
            field: "labels".to_owned(),
            value: serde_json::json!("linux"),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "status_a_number",
            &[
                list,
                "values[0].state.status: invalid type: integer `5`, expected a string",
            ],
        )
        .fault(Fault::WrongType {
            field: "state.status".to_owned(),
            value: serde_json::json!(5),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "workspace_without_uuid",
            &["GET /2.0/workspaces/acme: missing field `uuid`"],
        )
        .fault(Fault::MissingField {
            field: "uuid".to_owned(),
            count: 1,
            path_contains: Some("/workspaces/acme$".to_owned()),
        }),
        Case::new("huge_page", &[list, "response larger than 8 MB"]).fault(Fault::HugeBody {
            bytes: 50 << 20,
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "page_beyond_pagelen",
            &[
                list,
                "a page holds 5000 runners, more than the 100 asked for",
            ],
        )
        .fault(Fault::OversizedPage {
            values: 5000,
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new("looping_next", &[list, "pagination loop"])
            .fault(Fault::LoopingNext { count: 2 }),
        Case::new(
            "next_to_another_origin",
            &[
                list,
                "leaves the API's origin (http://bitbucket.example.com)",
                "not following it with credentials",
            ],
        )
        .fault(Fault::NextLink {
            url: "http://bitbucket.example.com/2.0/x?page=2".to_owned(),
            count: 1,
        }),
        Case::new(
            "forbidden_403",
            &["(403)", "Access denied.", "read:runner:bitbucket"],
        )
        .fault(Fault::ClientError {
            status: 403,
            message: "Access denied.".to_owned(),
            count: 2,
            path_contains: Some("/workspaces/acme".to_owned()),
        }),
        Case::new(
            "unauthorized_401",
            &["did not accept the access token", "(401)"],
        )
        .fault(Fault::ClientError {
            status: 401,
            message: "Token is invalid, expired, or not supported for this endpoint.".to_owned(),
            count: 2,
            path_contains: Some("/workspaces/acme".to_owned()),
        }),
        Case::new(
            "unknown_workspace_404",
            &["Bitbucket has no workspace nope", "404"],
        )
        .config(edit(
            &h.config(2, None),
            "workspace = \"acme\"",
            "workspace = \"nope\"",
        )),
    ];
    check_all(&h, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_aws_references() {
    let h = Harness::new("badaws").await;
    let base = h.config(2, None);
    let kms = aws_sdk_kms::Client::new(&h.sdk);
    let key = kms.create_key().send().await.unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_owned();
    // moto answers 500 to DisableKey by ARN: use the key id.
    let id = key.key_metadata().unwrap().key_id().to_owned();
    kms.disable_key().key_id(&id).send().await.unwrap();
    let cases = vec![
        Case::new(
            "subnet_does_not_exist",
            &["spot.subnets[1]: subnet-0123456789abcdef0 does not exist in us-east-1"],
        )
        .config(edit(
            &base,
            &format!("{:?}", h.subnets[1].0),
            "\"subnet-0123456789abcdef0\"",
        )),
        Case::new(
            "ami_does_not_exist",
            &["instance.ami: AMI ami-0123456789abcdef0 does not exist"],
        )
        .config(edit(
            &base,
            "os = \"al2023\"",
            "os = \"al2023\"\nami = \"ami-0123456789abcdef0\"",
        )),
        Case::new(
            "kms_key_disabled",
            &["kms.key", "is Disabled (must be Enabled)"],
        )
        .config(format!("{base}\n[kms]\nkey = \"{arn}\"\n")),
    ];
    check_all(&h, &cases).await;
}

/// A create whose answer is lost after Bitbucket registered the runner: the apply stops,
/// says what was done and not, and the next apply converges without an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_mid_apply_stops_safely_and_the_next_apply_converges() {
    let h = Harness::new("midapply").await;
    let config = h.write_config(&h.config(3, None));
    let cfg = config.to_str().unwrap();
    h.fake.inject(Fault::OnMethod {
        method: "POST".to_owned(),
        skip: 1,
        fault: Box::new(Fault::TruncatedAnswer {
            count: 1,
            path_contains: on_runners(),
        }),
    });
    let run = h
        .run(
            &[
                "--config",
                cfg,
                "apply",
                "--auto-approve",
                "--concurrency",
                "1",
            ],
            &Harness::token(),
        )
        .await;
    let out = format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1, "{out}");
    for want in [
        "error: runner bbfleet-midapply-2 failed: ",
        "failed: Bitbucket returned an invalid response to POST /2.0/workspaces/acme/pipelines-config/runners: not JSON",
        "not quoted: it may hold a secret",
        "actions were done; the rest were not started",
        "Run the same command again",
    ] {
        assert!(run.stderr.contains(want), "{want:?}\n{out}");
    }
    for bad in NOT_A_MESSAGE {
        assert!(!run.stderr.contains(bad), "{bad:?}\n{out}");
    }
    assert_eq!(run.stderr.matches("error: ").count(), 1, "{out}");
    assert_eq!(
        h.recorder
            .writes()
            .iter()
            .filter(|w| w.as_str() == "ec2:RequestSpotFleet")
            .count(),
        0,
        "no fleet was requested after the failure"
    );
    assert_eq!(
        h.runners(None).len(),
        2,
        "one created, one created with a lost answer"
    );

    let again = h.apply(cfg, &[]).await;
    let mut all = format!("{out}{}{}", again.stdout, again.stderr);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let params = ssm
        .get_parameters_by_path()
        .path("/bbfleet/midapply/runners")
        .send()
        .await
        .unwrap();
    let stored: std::collections::BTreeSet<String> = params
        .parameters()
        .iter()
        .map(|p| p.name().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect();
    let runners = h.fake.runners("acme", None);
    assert_eq!(runners.len(), 3, "no orphan runner: {runners:#?}");
    for r in &runners {
        let uuid = r["uuid"]
            .as_str()
            .unwrap()
            .trim_matches(|c| c == '{' || c == '}');
        assert!(stored.contains(uuid), "runner {r} has no stored command");
    }
    assert_eq!(stored.len(), 3, "no orphan command: {stored:?}");
    let plan = h
        .run(
            &[
                "--config",
                cfg,
                "plan",
                "--detailed-exitcode",
                "--no-preflight",
            ],
            &Harness::token(),
        )
        .await;
    plan.expect_code(0);
    all.push_str(&plan.stdout);
    for s in h.fake.issued_secrets() {
        assert!(!all.contains(&s), "a runner secret in the output");
    }
}
