//! IAM documents and examples: operator.json allows every action in bbfleet's action
//! table (src/aws/actions.rs, enforced against the calls by the call counter) and nothing
//! else; instance.json allows every aws CLI call of the userdata; `bbfleet policy` fills
//! every document; the example config and pipeline parse with the expected keys.

mod ec2_fleet;

use std::path::Path;
use std::process::Command;

use bbfleet::aws::actions::{CALLED, IMPLIED};
use bbfleet::config::Config;
use bbfleet::policy::{self, Overrides, DOCUMENTS};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_config() -> Config {
    Config::load(&root().join("examples/bbfleet.toml")).expect("examples/bbfleet.toml is valid")
}

fn overrides() -> Overrides {
    Overrides {
        kms_key_arn: Some(
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        ),
        workspace_uuid: Some("{0f3c5a6e-1111-2222-3333-444455556666}".into()),
        repository_uuid: Some("9a8b7c6d-1111-2222-3333-444455556666".into()),
        ..Overrides::default()
    }
}

fn filled(name: &str) -> Value {
    let text = policy::render(name, &example_config(), "eu-west-1", &overrides())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"))
}

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// IAM's action match: case-insensitive, `*` and `?` wildcards.
fn matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], a) || (!a.is_empty() && go(p, &a[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => go(&p[1..], &a[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// Actions of the document's Allow statements.
fn allowed(doc: &Value) -> Vec<String> {
    doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| as_list(&s["Action"]))
        .collect()
}

#[test]
fn operator_policy_allows_every_action_bbfleet_calls_and_nothing_else() {
    let doc = filled("operator");
    let allowed = allowed(&doc);
    assert!(
        !doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Effect"] == "Deny"),
        "a Deny would need a real evaluator here"
    );
    assert!(CALLED.len() > 20, "the action table looks empty");
    let needed: Vec<&str> = CALLED
        .iter()
        .copied()
        .chain(IMPLIED.iter().map(|(a, _)| *a))
        .collect();
    let missing: Vec<&&str> = needed
        .iter()
        .filter(|a| !allowed.iter().any(|p| matches(p, a)))
        .collect();
    assert!(
        missing.is_empty(),
        "operator.json does not allow {missing:?}"
    );
    let extra: Vec<&String> = allowed
        .iter()
        .filter(|p| !p.contains('*') && !needed.iter().any(|a| a.eq_ignore_ascii_case(p)))
        .collect();
    assert!(
        extra.is_empty(),
        "operator.json allows actions bbfleet never needs: {extra:?}"
    );
    assert!(
        !allowed.iter().any(|p| p.contains('*')),
        "no wildcard actions: {allowed:?}"
    );
    // PassRole: exactly the two roles, each only to its service.
    let pass: Vec<(Vec<String>, String)> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| as_list(&s["Action"]).iter().any(|a| a == "iam:PassRole"))
        .map(|s| {
            (
                as_list(&s["Resource"]),
                s["Condition"]["StringEquals"]["iam:PassedToService"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pass,
        [
            (
                vec!["arn:aws:iam::123456789012:role/bbfleet-ci-spot-fleet".to_owned()],
                "spotfleet.amazonaws.com".to_owned()
            ),
            (
                vec!["arn:aws:iam::123456789012:role/bbfleet-ci-runner".to_owned()],
                "ec2.amazonaws.com".to_owned()
            ),
        ]
    );
}

#[test]
fn the_action_matcher_follows_iam_wildcards() {
    assert!(matches("ec2:Describe*", "ec2:DescribeSubnets"));
    assert!(matches("EC2:describesubnets", "ec2:DescribeSubnets"));
    assert!(!matches("ec2:Describe*", "ec2:RunInstances"));
    assert!(!matches("ssm:GetParameter", "ssm:GetParametersByPath"));
}

/// `aws ssm get-parameter` -> `ssm:GetParameter`.
fn cli_action(service: &str, command: &str) -> String {
    let op: String = command
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("{service}:{op}")
}

#[test]
fn instance_policy_allows_every_aws_call_of_the_userdata() {
    let mut calls = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root().join("userdata")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for l in text.lines() {
            let words: Vec<&str> = l.split_whitespace().collect();
            for w in words.windows(3) {
                if (w[0] == "aws" || w[0].ends_with("aws_call"))
                    && matches!(w[1], "ssm" | "ec2" | "kms")
                    && w[2].chars().all(|c| c.is_ascii_lowercase() || c == '-')
                {
                    calls.insert(cli_action(w[1], w[2]));
                }
            }
        }
    }
    for expected in [
        "ssm:GetParametersByPath",
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "ssm:ListTagsForResource",
    ] {
        assert!(
            calls.contains(expected),
            "the scan missed {expected}: {calls:?}"
        );
    }
    let allowed = allowed(&filled("instance"));
    let missing: Vec<&String> = calls
        .iter()
        .filter(|a| !allowed.iter().any(|p| matches(p, a)))
        .collect();
    assert!(
        missing.is_empty(),
        "instance.json does not allow {missing:?}"
    );
    let text = serde_json::to_string(&filled("instance")).unwrap();
    assert!(
        text.contains("kms:EncryptionContext:PARAMETER_ARN"),
        "{text}"
    );
    assert!(text.contains("parameter/bbfleet/ci/runners/*"), "{text}");
}

#[test]
fn every_document_fills_to_json_without_placeholders() {
    for (name, _) in DOCUMENTS {
        let text = serde_json::to_string(&filled(name)).unwrap();
        // IAM's own policy variables stay (instance.json: the instance's own id).
        let rest = text
            .replace("${ec2:InstanceID}", "")
            .replace("${ec2:SourceInstanceARN}", "");
        assert!(
            !rest.contains("${"),
            "{name}: unfilled placeholder in {text}"
        );
    }
    let trust = filled("bitbucket-oidc-trust");
    let text = trust.to_string();
    assert!(
        text.contains("ari:cloud:bitbucket::workspace/0f3c5a6e-1111-2222-3333-444455556666"),
        "{text}"
    );
    assert!(
        text.contains("{9a8b7c6d-1111-2222-3333-444455556666}:*"),
        "{text}"
    );
}

fn bbfleet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bbfleet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run bbfleet")
}

#[test]
fn the_policy_command_prints_filled_documents_offline() {
    let cfg = root().join("examples/bbfleet.toml");
    let cfg = cfg.to_str().unwrap();
    let out = bbfleet(&["--config", cfg, "policy", "operator"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let text = doc.to_string();
    assert!(text.contains("parameter/bbfleet/ci/*"), "{text}");
    // The example names the key by alias: every key of the account, fenced by conditions.
    assert!(
        text.contains("arn:aws:kms:eu-west-1:123456789012:key/*"),
        "{text}"
    );

    let out = bbfleet(&["--config", cfg, "policy", "bitbucket-oidc-trust"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--workspace-uuid") || err.contains("--repository-uuid"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = bbfleet(&[
        "--config",
        cfg,
        "policy",
        "instance",
        "--account-id",
        "12345",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--account-id"));

    let out = bbfleet(&["--config", cfg, "policy", "nope"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses an unknown document"
    );
}

/// examples/bitbucket-pipelines.yml as JSON, through PyYAML (installed with the aws CLI
/// by scripts/tools.sh).
fn pipeline() -> Value {
    let path = root().join("examples/bitbucket-pipelines.yml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 on PATH (scripts/test.sh puts .venv/bin first)");
    assert!(
        out.status.success(),
        "the pipeline is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_example_pipeline_has_the_action_pipeline_with_oidc_and_the_scheduled_resize() {
    let p = pipeline();
    assert!(p["image"].is_string(), "a step image with bbfleet");
    let custom = &p["pipelines"]["custom"];
    let manual = custom["bbfleet"]
        .as_array()
        .expect("custom pipeline bbfleet");
    let vars = manual[0]["variables"].as_array().expect("variables first");
    assert_eq!(vars[0]["name"], "ACTION");
    assert_eq!(vars[0]["default"], "plan");
    assert_eq!(
        vars[0]["allowed-values"],
        serde_json::json!(["plan", "apply", "destroy"])
    );
    let step = &manual[1]["step"];
    assert_eq!(step["oidc"], true);
    let script: String = as_list(&step["script"]).join("\n");
    for needle in [
        "AWS_ROLE_ARN=",
        "AWS_WEB_IDENTITY_TOKEN_FILE=",
        "$BITBUCKET_STEP_OIDC_TOKEN",
        r#"bbfleet "$ACTION" --auto-approve"#,
        "bbfleet plan",
    ] {
        assert!(script.contains(needle), "{needle} not in {script}");
    }
    assert!(
        step.get("runs-on").is_none(),
        "bbfleet must not run on the fleet's own runners"
    );

    let resize = &custom["resize-fleet"]
        .as_array()
        .expect("custom pipeline resize-fleet")[0]["step"];
    assert_eq!(resize["oidc"], true);
    let script: String = as_list(&resize["script"]).join("\n");
    assert!(
        script.contains("AWS_WEB_IDENTITY_TOKEN_FILE="),
        "the anchor is resolved: {script}"
    );
    assert!(script.contains("bbfleet apply --auto-approve"), "{script}");
}

#[test]
fn the_example_config_is_valid_and_uses_the_policy_role_names() {
    let c = example_config();
    assert_eq!(c.name, "ci");
    assert_eq!(
        c.spot.fleet_role,
        "arn:aws:iam::123456789012:role/bbfleet-ci-spot-fleet"
    );
    assert_eq!(c.instance.instance_profile, "bbfleet-ci-runner");
    let dockerfile = std::fs::read_to_string(root().join("examples/Dockerfile")).unwrap();
    assert!(dockerfile.contains("AS build") && dockerfile.contains("COPY --from=build"));
}
