//! AWS references that are wrong, and an answer lost in the middle of an apply.

use bitbucket_fake::Fault;
use testkit::harness::Harness;

use super::{check_all, edit, on_runners, Case, NOT_A_MESSAGE};
use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_aws_references() {
    let h = Harness::new(KIT, "badaws").await;
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
    let h = Harness::new(KIT, "midapply").await;
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
