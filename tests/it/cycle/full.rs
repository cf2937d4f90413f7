//! validate -> plan -> apply -> plan (no changes) -> apply (0 writes) -> status ->
//! destroy -> destroy, with the world checked after each step.

use std::collections::BTreeSet;

use base64::Engine;
use testkit::harness::Harness;

use super::query_values;
use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_with_capacity_three() {
    let h = Harness::new(KIT, "cycle").await;
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
            command.starts_with(&format!("{}\n", bbfleet::runner_command::FORMAT)),
            "command shape"
        );
        assert!(!command.contains(" -it "), "no -it");
        assert!(!command.lines().any(|l| l == "arg -it"), "no -it");
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
        userdata.contains("Restart=always") && !userdata.contains("nohup"),
        "userdata runs the runner agent as a systemd unit that always restarts"
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
    assert_eq!(doc["fleet_api"], "Spot Fleet");
    assert!(doc["instances"].as_array().is_some());

    // destroy: nothing of the fleet remains but the key.
    h.destroy(cfg).await;
    assert!(h.runners(None).is_empty(), "runners left");
    h.assert_no_parameter_left().await;
    let lt = ec2
        .describe_launch_templates()
        .launch_template_names("bbfleet-cycle")
        .send()
        .await;
    assert!(lt.is_err(), "launch template left");
    assert!(
        testkit::world::running_instances(&h, "cycle")
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
