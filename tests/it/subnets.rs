//! Subnets and security groups a Spot Fleet can use: one subnet per availability zone,
//! all in one VPC, and the security groups in that VPC. moto launches whatever it is
//! given; AWS does not (AWS_NOTES.md A1), so bbfleet checks before any write. Every bad
//! network here is refused by `plan` and by `apply`, exit 1, with an error naming the
//! field, and nothing written at Bitbucket or AWS.

use testkit::harness::{Harness, Run};
use testkit::world::{create_subnet, create_vpc, vpc_of};

use crate::KIT;

/// `base` with `from` replaced by `to` (which must occur).
fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in the config");
    base.replacen(from, to, 1)
}

/// The harness config with `subnets` and `security_groups`.
fn network(h: &Harness, subnets: &[&str], groups: &[&str]) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let defaults: Vec<String> = h.subnets.iter().map(|(s, _)| format!("{s:?}")).collect();
    let text = edit(
        &h.config(2, None),
        &format!("subnets = [{}]", defaults.join(", ")),
        &format!("subnets = [{}]", list(subnets)),
    );
    if groups.is_empty() {
        text
    } else {
        edit(
            &text,
            "instance_profile = \"bbfleet-runner\"\n",
            &format!(
                "instance_profile = \"bbfleet-runner\"\nsecurity_groups = [{}]\n",
                list(groups)
            ),
        )
    }
}

/// Runs `plan` and `apply --auto-approve` on `config`; both must exit 1 with every
/// `expect` in the error and write nothing.
async fn refused(h: &Harness, name: &str, config: &str, expect: &[&str]) -> Vec<String> {
    let path = h.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let cfg = path.to_str().unwrap();
    let mut problems = Vec::new();
    for args in [
        vec!["--config", cfg, "plan"],
        vec!["--config", cfg, "apply", "--auto-approve"],
    ] {
        h.fake.clear_requests();
        h.recorder.clear();
        let run: Run = h.run(&args, &Harness::token()).await;
        let what = format!("{name}: {}", args[2]);
        let out = format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr);
        if run.code != 1 {
            problems.push(format!("{what}: exit {}\n{out}", run.code));
        }
        for want in expect {
            if !run.stderr.contains(want) {
                problems.push(format!("{what}: {want:?} not in the error\n{out}"));
            }
        }
        if run.stderr.matches("error: ").count() != 1 {
            problems.push(format!("{what}: not exactly one error\n{out}"));
        }
        h.assert_no_writes(&what);
    }
    problems
}

/// How many DescribeSecurityGroups calls the proxy saw.
fn security_group_reads(h: &Harness) -> usize {
    h.recorder
        .calls()
        .iter()
        .filter(|c| c.operation == "ec2:DescribeSecurityGroups")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_a_fleet_cannot_use_are_refused_before_any_write() {
    let h = Harness::new(KIT, "subnets").await;
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let (s1a, s1b) = (h.subnets[0].0.as_str(), h.subnets[1].0.as_str());
    let default_vpc = vpc_of(&ec2, s1a).await;

    // A second subnet in us-east-1a of the default VPC (outside moto's default /20s).
    let second_1a = create_subnet(&ec2, &default_vpc, "172.31.240.0/24", "us-east-1a").await;
    // Another VPC, with a subnet in us-east-1c and a security group.
    let other_vpc = create_vpc(&ec2, "10.77.0.0/16").await;
    let other_1c = create_subnet(&ec2, &other_vpc, "10.77.1.0/24", "us-east-1c").await;
    let group = |vpc: String, name: &'static str| {
        let ec2 = ec2.clone();
        async move {
            ec2.create_security_group()
                .group_name(name)
                .description("bbfleet test")
                .vpc_id(vpc)
                .send()
                .await
                .unwrap()
                .group_id()
                .unwrap()
                .to_owned()
        }
    };
    let sg_default = group(default_vpc.clone(), "bbfleet-subnets-default").await;
    let sg_other = group(other_vpc.clone(), "bbfleet-subnets-other").await;

    let mut problems = Vec::new();
    problems.extend(
        refused(
            &h,
            "two_subnets_of_one_zone",
            &network(&h, &[s1a, s1b, &second_1a], &[]),
            &[&format!(
                "spot.subnets[2]: {second_1a} is in us-east-1a like spot.subnets[0]; a fleet takes one subnet per availability zone"
            )],
        )
        .await,
    );
    problems.extend(
        refused(
            &h,
            "subnets_of_two_vpcs",
            &network(&h, &[s1a, s1b, &other_1c], &[]),
            &[&format!(
                "spot.subnets[2]: {other_1c} is in {other_vpc} but spot.subnets[0] is in {default_vpc}; a fleet's subnets must all be in one VPC"
            )],
        )
        .await,
    );
    problems.extend(
        refused(
            &h,
            "security_group_of_another_vpc",
            &network(&h, &[s1a, s1b], &[&sg_default, &sg_other]),
            &[&format!(
                "instance.security_groups[1]: {sg_other} is in {other_vpc} but the subnets are in {default_vpc}"
            )],
        )
        .await,
    );
    problems.extend(
        refused(
            &h,
            "security_group_does_not_exist",
            &network(&h, &[s1a, s1b], &[&sg_default, "sg-0123456789abcdef0"]),
            &["instance.security_groups[1]: sg-0123456789abcdef0 does not exist in us-east-1"],
        )
        .await,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));

    // Control: the same world with a usable network plans, with one security group read
    // when groups are configured and none when they are not.
    let good = h.dir.path().join("good.toml");
    for (groups, reads) in [(vec![sg_default.as_str()], 1), (vec![], 0)] {
        std::fs::write(&good, network(&h, &[s1a, s1b], &groups)).unwrap();
        h.recorder.clear();
        let run = h
            .run(
                &["--config", good.to_str().unwrap(), "plan", "--no-preflight"],
                &Harness::token(),
            )
            .await;
        run.expect_code(0);
        assert_eq!(security_group_reads(&h), reads, "groups {groups:?}");
        h.assert_no_writes("a plan");
    }
}
