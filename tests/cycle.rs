//! The whole life of a fleet against a real moto server and the Bitbucket fake:
//! validate -> plan -> apply -> plan (no changes) -> apply (0 writes) -> destroy -> destroy.
//! The world is checked through the AWS SDK after each step, and writes are counted at
//! the fake and at a recording proxy in front of moto.

mod support;

use std::collections::BTreeSet;

use base64::Engine;
use support::harness::Harness;
use support::world::vpc_of;

fn query_values(body: &str, suffix: &str) -> Vec<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_with_capacity_three() {
    let h = Harness::new("cycle").await;
    let config = h.write_config(&h.config(3, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let kms = aws_sdk_kms::Client::new(&h.sdk);

    // validate: offline.
    h.run(&["--config", cfg, "validate"], &[])
        .await
        .expect_code(0);
    assert!(
        h.fake.requests().is_empty() && h.recorder.calls().is_empty(),
        "validate made calls"
    );

    // plan: changes present, nothing written.
    let plan = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    plan.expect_code(2);
    assert!(
        plan.stdout
            .contains("Plan: 6 to add, 0 to change, 0 to destroy."),
        "{}",
        plan.stdout
    );
    assert_eq!(h.fake.write_count(), 0);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());

    // plan --output json: the documented shape.
    let json = h
        .run(&["--config", cfg, "--output", "json", "plan"], &token)
        .await;
    json.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan JSON");
    assert_eq!(doc["fleet"], "cycle");
    assert_eq!(doc["capacity"]["desired"], 3);
    assert_eq!(doc["capacity"]["source"], "default");
    assert_eq!(doc["summary"]["add"], 6);
    for a in doc["actions"].as_array().unwrap() {
        for k in ["op", "kind", "name", "reason"] {
            assert!(a.get(k).is_some(), "action without {k}: {a}");
        }
    }

    // apply without a terminal and without --auto-approve: refused, nothing written.
    let refused = h.run(&["--config", cfg, "apply"], &token).await;
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("--auto-approve"),
        "{}",
        refused.stderr
    );
    assert_eq!(h.fake.write_count(), 0);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());

    // apply.
    h.run(&["--config", cfg, "apply", "--auto-approve"], &token)
        .await
        .expect_code(0);
    let runners = h.runners(None);
    assert_eq!(runners.len(), 3, "runners: {runners:#?}");
    let names: BTreeSet<&str> = runners
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["bbfleet-cycle-1", "bbfleet-cycle-2", "bbfleet-cycle-3"])
    );

    let key = kms
        .describe_key()
        .key_id("alias/bbfleet-cycle")
        .send()
        .await
        .expect("the key exists");
    let key = key.key_metadata().unwrap();
    assert_eq!(
        key.key_manager(),
        Some(&aws_sdk_kms::types::KeyManagerType::Customer)
    );
    assert_eq!(
        key.key_state(),
        Some(&aws_sdk_kms::types::KeyState::Enabled)
    );
    let key_arn = key.arn().unwrap().to_owned();

    let params = ssm
        .get_parameters_by_path()
        .path("/bbfleet/cycle/runners")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters().len(), 3);
    let described = ssm
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder()
                .key("Path")
                .values("/bbfleet/cycle/runners")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(described.parameters().len(), 3);
    for p in described.parameters() {
        assert_eq!(
            p.r#type(),
            Some(&aws_sdk_ssm::types::ParameterType::SecureString)
        );
        assert_eq!(
            p.key_id(),
            Some(key_arn.as_str()),
            "parameter {:?} not under the customer key",
            p.name()
        );
    }
    for p in params.parameters() {
        let name = p.name().unwrap();
        let uuid = name.rsplit('/').next().unwrap();
        let runner = runners
            .iter()
            .find(|r| {
                r["uuid"]
                    .as_str()
                    .unwrap()
                    .trim_matches(|c| c == '{' || c == '}')
                    == uuid
            })
            .unwrap_or_else(|| panic!("no runner for {name}"));
        let command = p.value().unwrap();
        assert!(
            command.starts_with("docker container run "),
            "command shape"
        );
        assert!(!command.contains(" -it "), "no -it");
        assert!(
            command.contains(&format!("RUNNER_UUID={{{uuid}}}")),
            "runner uuid in the command"
        );
        assert!(
            command.contains(&format!(
                "OAUTH_CLIENT_ID={}",
                runner["oauth_client"]["id"].as_str().unwrap()
            )),
            "client id in the command"
        );
        assert!(
            command.contains("ACCOUNT_UUID={11111111-2222-4333-8444-555555555555}"),
            "workspace uuid in the command"
        );
        assert!(
            !command.contains("REPOSITORY_UUID"),
            "workspace runners carry no repository"
        );
        let tags = ssm
            .list_tags_for_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(name)
            .send()
            .await
            .unwrap();
        assert!(tags
            .tag_list()
            .iter()
            .any(|t| t.key() == "bbfleet:fleet" && t.value() == "cycle"));
    }
    // Every issued secret is stored, in exactly one parameter.
    let secrets = h.fake.issued_secrets();
    assert_eq!(secrets.len(), 3);
    for s in &secrets {
        assert_eq!(
            params
                .parameters()
                .iter()
                .filter(|p| p.value().unwrap().contains(s.as_str()))
                .count(),
            1
        );
    }

    // Launch template: nohup in userdata, no secret, IMDSv2.
    let lt = ec2
        .describe_launch_template_versions()
        .launch_template_name("bbfleet-cycle")
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let data = lt.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    // As EC2 counts it: base64-decoded; gzip, within bbfleet's 12 KB (EC2 allows 16 KB).
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.user_data().unwrap())
        .unwrap();
    assert!(
        raw.len() <= 12_288,
        "launch template user data is {} bytes",
        raw.len()
    );
    assert_eq!(
        raw[..2],
        [0x1f, 0x8b],
        "launch template user data is not gzip"
    );
    let mut userdata = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut userdata)
        .expect("launch template user data: gzip of UTF-8");
    // Exactly the script `render-userdata` prints for the same config.
    let rendered = h.run(&["--config", cfg, "render-userdata"], &[]).await;
    rendered.expect_code(0);
    assert_eq!(userdata, rendered.stdout, "launch template user data");
    assert!(userdata.starts_with("#!/bin/bash"));
    assert!(
        userdata.contains("nohup"),
        "userdata starts the runner with nohup"
    );
    assert!(
        userdata.contains("/bbfleet/cycle"),
        "userdata names the fleet's SSM path"
    );
    for s in &secrets {
        assert!(!userdata.contains(s.as_str()), "secret in userdata");
    }
    assert_eq!(
        data.metadata_options().and_then(|m| m.http_tokens()),
        Some(&aws_sdk_ec2::types::LaunchTemplateHttpTokensState::Required)
    );

    // Fleet: maintain, diversified, overrides across >= 2 families and >= 2 zones (as sent:
    // moto uses only the first override, AWS_NOTES B3), tagged with the fleet.
    let request = h
        .recorder
        .calls()
        .into_iter()
        .find(|c| c.operation == "ec2:RequestSpotFleet")
        .expect("a RequestSpotFleet call");
    assert_eq!(
        query_values(&request.body, "SpotFleetRequestConfig.Type"),
        ["maintain"]
    );
    assert_eq!(
        query_values(&request.body, "SpotFleetRequestConfig.AllocationStrategy"),
        ["diversified"]
    );
    let types: BTreeSet<String> = query_values(&request.body, ".InstanceType")
        .into_iter()
        .collect();
    let subnets: BTreeSet<String> = query_values(&request.body, ".SubnetId")
        .into_iter()
        .collect();
    let families: BTreeSet<&str> = types.iter().map(|t| t.split('.').next().unwrap()).collect();
    let zones: BTreeSet<&str> = h
        .subnets
        .iter()
        .filter(|(s, _)| subnets.contains(s))
        .map(|(_, az)| az.as_str())
        .collect();
    assert!(
        families.len() >= 2 && zones.len() >= 2,
        "families {families:?}, zones {zones:?}"
    );
    assert_eq!(
        query_values(&request.body, ".Overrides.9.SubnetId").len(),
        1,
        "3 types x 3 subnets = 9 overrides"
    );
    let fleets = ec2.describe_spot_fleet_requests().send().await.unwrap();
    let ours: Vec<_> = fleets
        .spot_fleet_request_configs()
        .iter()
        .filter(|f| {
            f.tags()
                .iter()
                .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some("cycle"))
        })
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(
        ours[0]
            .spot_fleet_request_config()
            .and_then(|c| c.target_capacity()),
        Some(3)
    );

    // Second plan: no changes; second apply: zero writes anywhere.
    h.fake.clear_requests();
    h.recorder.clear();
    let again = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    again.expect_code(0);
    assert!(
        again
            .stdout
            .contains("No changes. The fleet matches the configuration."),
        "{}",
        again.stdout
    );
    let noop = h
        .run(&["--config", cfg, "apply", "--auto-approve"], &token)
        .await;
    noop.expect_code(0);
    assert!(noop.stdout.contains("No changes."));
    assert_eq!(h.fake.write_count(), 0, "Bitbucket writes on a no-op apply");
    assert_eq!(
        h.recorder.writes(),
        Vec::<String>::new(),
        "AWS writes on a no-op apply"
    );

    // status: text and JSON.
    let status = h
        .run(&["--config", cfg, "--output", "json", "status"], &token)
        .await;
    status.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["runners"].as_array().unwrap().len(), 3);
    assert_eq!(doc["fleet_request"]["target"], 3);
    assert!(doc["instances"].as_array().is_some());

    // destroy: nothing of the fleet remains but the key.
    h.destroy(cfg).await;
    assert!(h.runners(None).is_empty(), "runners left");
    h.assert_only_lock_left().await;
    let lt = ec2
        .describe_launch_templates()
        .launch_template_names("bbfleet-cycle")
        .send()
        .await;
    assert!(lt.is_err(), "launch template left");
    assert!(
        support::world::running_instances(&h, "cycle")
            .await
            .is_empty(),
        "instances left running"
    );
    let fleets = ec2.describe_spot_fleet_requests().send().await.unwrap();
    assert!(fleets
        .spot_fleet_request_configs()
        .iter()
        .filter(|f| f.tags().iter().any(|t| t.value() == Some("cycle")))
        .all(|f| f
            .spot_fleet_request_state()
            .is_some_and(|s| s.as_str().starts_with("cancelled"))));
    kms.describe_key()
        .key_id("alias/bbfleet-cycle")
        .send()
        .await
        .expect("the key is kept");

    // destroy again: nothing to do, nothing written.
    h.fake.clear_requests();
    h.recorder.clear();
    let again = h
        .run(&["--config", cfg, "destroy", "--auto-approve"], &token)
        .await;
    again.expect_code(0);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(h.fake.write_count(), 0);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());

    // No runner secret in anything printed.
    let transcript = h.transcript.lock().unwrap().clone();
    for s in &secrets {
        assert!(
            !transcript.contains(s.as_str()),
            "a runner secret was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_runners_over_oauth_survive_rate_limits() {
    let h = Harness::new("repo").await;
    let config = h.write_config(&h.config(2, Some("app")));
    let cfg = config.to_str().unwrap();
    let token_url = h.fake.oauth_token_url();
    let oauth = [
        ("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id"),
        ("BITBUCKET_OAUTH_CLIENT_SECRET", "fake-client-secret"),
        ("BITBUCKET_OAUTH_TOKEN_URL", token_url.as_str()),
        ("BBFLEET_LOG", "bbfleet=debug"),
    ];
    // Bitbucket often sends 429 without Retry-After, and 5xx happen.
    h.fake.inject(bitbucket_fake::Fault::RateLimit {
        retry_after: None,
        count: 2,
        path_contains: Some("runners".into()),
    });
    h.fake.inject(bitbucket_fake::Fault::RateLimit {
        retry_after: Some(1),
        count: 1,
        path_contains: None,
    });
    h.fake.inject(bitbucket_fake::Fault::ServerError {
        status: 503,
        count: 1,
        path_contains: Some("runners".into()),
    });
    h.run(&["--config", cfg, "apply", "--auto-approve"], &oauth)
        .await
        .expect_code(0);
    let runners = h.runners(Some("app"));
    assert_eq!(runners.len(), 2);
    assert!(
        h.fake.runners("acme", None).is_empty(),
        "workspace scope untouched"
    );
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let params = ssm
        .get_parameters_by_path()
        .path("/bbfleet/repo/runners")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters().len(), 2);
    for p in params.parameters() {
        assert!(p
            .value()
            .unwrap()
            .contains("REPOSITORY_UUID={66666666-7777-4888-9999-000000000000}"));
    }
    h.run(&["--config", cfg, "destroy", "--auto-approve"], &oauth)
        .await
        .expect_code(0);
    assert!(h.runners(Some("app")).is_empty());
    let transcript = h.transcript.lock().unwrap().clone();
    assert!(
        transcript.contains("rate limited"),
        "debug logs show the retries"
    );
    assert!(
        !transcript.contains("fake-client-secret"),
        "the OAuth consumer secret was printed"
    );
    for s in h.fake.issued_secrets() {
        assert!(
            !transcript.contains(s.as_str()),
            "a runner secret was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    let h = Harness::new("badinput").await;
    let good = h.config(2, None);
    let token = Harness::token();
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            good.replace("max = 20", "max = 500"),
            token.to_vec(),
            "capacity.max: 500 is out of range",
        ),
        (
            good.replace("\"m6a.large\", \"c6i.xlarge\"", "\"m6i.xlarge\""),
            token.to_vec(),
            "spot.instance_types: the fleet spans 1 instance family",
        ),
        (
            good.replace("name = \"badinput\"", "name = \"Bad_Input\""),
            token.to_vec(),
            "name: \"Bad_Input\"",
        ),
        (
            good.replace("[instance]", "[instance]\ncolour = \"red\""),
            token.to_vec(),
            "instance.colour: unknown field",
        ),
        (
            good.clone(),
            vec![],
            "no Bitbucket credentials in the environment",
        ),
        (
            good.clone(),
            vec![("BITBUCKET_EMAIL", "dev@example.com")],
            "BITBUCKET_API_TOKEN is not",
        ),
        (
            good.clone(),
            vec![
                ("BITBUCKET_ACCESS_TOKEN", "x"),
                ("BITBUCKET_EMAIL", "a@b.c"),
                ("BITBUCKET_API_TOKEN", "y"),
            ],
            "conflicting Bitbucket credentials",
        ),
        (
            good.clone(),
            vec![("BITBUCKET_ACCESS_TOKEN", "wrong-token")],
            "did not accept",
        ),
    ];
    for (config, env, expected) in cases {
        let path = h.write_config(&config);
        for command in ["plan", "apply"] {
            let mut args = vec!["--config", path.to_str().unwrap(), command];
            if command == "apply" {
                args.push("--auto-approve");
            }
            let run = h.run(&args, &env).await;
            assert_eq!(run.code, 1, "{command} with {expected:?}: {}", run.stderr);
            assert!(
                run.stderr.contains(expected),
                "expected {expected:?} in:\n{}",
                run.stderr
            );
            h.assert_no_writes(&format!("{command} with {expected:?}"));
        }
    }
    // A subnet that does not exist: found at plan time, before any write.
    apply_refused(
        &h,
        &good.replace(&h.subnets[2].0, "subnet-0123456789abcdef0"),
        "spot.subnets",
    )
    .await;
    // Two subnets of one zone: refused before any write. (The default VPC, the one of the
    // default subnets; a CIDR no other test of this binary uses, as they share one moto.)
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let vpc = vpc_of(&ec2, &h.subnets[0].0).await;
    let extra = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("172.31.241.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    let same_zone = format!(
        "[{:?}, {:?}]",
        h.subnets[0].0,
        extra.subnet().unwrap().subnet_id().unwrap()
    );
    let all: Vec<String> = h.subnets.iter().map(|(s, _)| format!("{s:?}")).collect();
    apply_refused(
        &h,
        &good.replace(&format!("[{}]", all.join(", ")), &same_zone),
        "availability zone",
    )
    .await;
    assert_eq!(h.fake.write_count(), 0);
    assert_eq!(h.recorder.writes(), Vec::<String>::new());
}

/// `apply --auto-approve` of `config` exits 1 naming `expected`, and nothing is written.
async fn apply_refused(h: &Harness, config: &str, expected: &str) {
    let path = h.write_config(config);
    let run = h
        .run(
            &[
                "--config",
                path.to_str().unwrap(),
                "apply",
                "--auto-approve",
            ],
            &Harness::token(),
        )
        .await;
    run.expect_code(1);
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in:\n{}",
        run.stderr
    );
    h.assert_no_writes(expected);
}
