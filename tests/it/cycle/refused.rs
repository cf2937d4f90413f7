//! Bad input at plan and apply: refused, nothing written.

use testkit::harness::Harness;
use testkit::world::vpc_of;

use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    let h = Harness::new(KIT, "badinput").await;
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
