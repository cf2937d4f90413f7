//! The operator policy on the bake calls, as bbfleet sends them (CreateImage with the
//! snapshot tags), through the IAM translation.

use testkit::iam::{evaluate, iam_requests, Fill, Recorded};

use crate::iam::{call, policy};

const FLEET: &str = "iamrules";

/// `TagSpecification.{spec}` for `rt` with `pairs`, as query parameters.
fn tags(spec: usize, rt: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = format!("&TagSpecification.{spec}.ResourceType={rt}");
    for (j, (k, v)) in pairs.iter().enumerate() {
        let n = j + 1;
        s.push_str(&format!(
            "&TagSpecification.{spec}.Tag.{n}.Key={k}&TagSpecification.{spec}.Tag.{n}.Value={v}"
        ));
    }
    s
}

const BUILDER: [(&str, &str); 2] = [
    ("bbfleet:fleet", FLEET),
    ("bbfleet:bake", "20261201T000000000Z"),
];

const IMAGE_TAGS: [(&str, &str); 3] = [
    ("bbfleet:fleet", FLEET),
    ("bbfleet:source-ami", "ami-1"),
    ("bbfleet:baked-at", "2026-12-01T00:00:00Z"),
];

/// The builder's RunInstances with `tag_pairs` on instance and volume.
fn run(tag_pairs: &[(&str, &str)], tokens: &str) -> Recorded {
    let body = format!(
        "Action=RunInstances&ImageId=ami-0123456789abcdef0&SubnetId=subnet-1&IamInstanceProfile.Name=bbfleet-runner&MetadataOptions.HttpTokens={tokens}{}{}",
        tags(1, "instance", tag_pairs),
        tags(2, "volume", tag_pairs)
    );
    // AWS answers with the instance's tags (the world learns them from the answer).
    let tag_set: String = tag_pairs
        .iter()
        .map(|(k, v)| format!("<item><key>{k}</key><value>{v}</value></item>"))
        .collect();
    let answer = format!("<x><instancesSet><item><instanceId>i-0b</instanceId><tagSet>{tag_set}</tagSet></item></instancesSet></x>");
    call("ec2:RunInstances", &body, &answer, "testing")
}

/// Each IAM request of the last call, (action and resource, allowed), after the others
/// taught the world.
fn decide(calls: Vec<Recorded>) -> Vec<(String, bool)> {
    let operator = policy("operator", &Fill::harness(FLEET));
    let requests = iam_requests(&calls);
    let items: Vec<_> = requests.iter().map(|r| (operator.clone(), r)).collect();
    let decisions = evaluate(&items);
    let last = &calls.last().unwrap().operation;
    requests
        .iter()
        .zip(decisions)
        .filter(|(r, _)| &r.operation == last)
        .map(|(r, d)| (format!("{} {}", r.action, r.resource), d.allowed()))
        .collect()
}

fn all_allowed(v: &[(String, bool)]) -> bool {
    v.iter().all(|(_, a)| *a)
}

#[test]
fn the_builder_and_its_image_are_allowed_only_tagged_for_the_fleet() {
    let d = decide(vec![run(&BUILDER, "required")]);
    assert!(all_allowed(&d), "{d:?}");
    let other = [("bbfleet:fleet", "other"), ("bbfleet:bake", "b")];
    let no_build = [("bbfleet:fleet", FLEET)];
    for (what, bad) in [
        ("no bake tag", run(&no_build, "required")),
        ("another fleet", run(&other, "required")),
        ("IMDSv1", run(&BUILDER, "optional")),
    ] {
        let d = decide(vec![bad]);
        assert!(!all_allowed(&d), "{what}: {d:?}");
    }
    let create_image = format!(
        "Action=CreateImage&InstanceId=i-0b&Name=bbfleet-{FLEET}-x{}{}",
        tags(1, "image", &IMAGE_TAGS),
        tags(2, "snapshot", &IMAGE_TAGS)
    );
    let made = "<x><imageId>ami-0new</imageId></x>";
    let image = |body: &str| call("ec2:CreateImage", body, made, "testing");
    let d = decide(vec![run(&BUILDER, "required"), image(&create_image)]);
    assert!(all_allowed(&d), "{d:?}");
    let untagged = create_image.replace(&tags(2, "snapshot", &IMAGE_TAGS), "");
    let d = decide(vec![run(&BUILDER, "required"), image(&untagged)]);
    assert!(!all_allowed(&d), "snapshots untagged: {d:?}");
    // Not a builder (no bake tag): no image of it.
    let d = decide(vec![run(&no_build, "required"), image(&create_image)]);
    assert!(!all_allowed(&d), "image of a non-builder: {d:?}");
}

#[test]
fn retention_may_remove_only_the_fleets_images_and_snapshots() {
    // Only what DescribeImages / DescribeSnapshots showed tagged with the fleet.
    let described = |fleet: &str| {
        format!("<x><imagesSet><item><imageId>ami-0old</imageId><tagSet><item><key>bbfleet:fleet</key><value>{fleet}</value></item></tagSet></item></imagesSet><snapshotSet><item><snapshotId>snap-0old</snapshotId><tagSet><item><key>bbfleet:fleet</key><value>{fleet}</value></item></tagSet></item></snapshotSet></x>")
    };
    for (fleet, allowed) in [(FLEET, true), ("other", false)] {
        for (op, body) in [
            (
                "ec2:DeregisterImage",
                "Action=DeregisterImage&ImageId=ami-0old",
            ),
            (
                "ec2:DeleteSnapshot",
                "Action=DeleteSnapshot&SnapshotId=snap-0old",
            ),
        ] {
            let seen = call(
                "ec2:DescribeImages",
                "Action=DescribeImages",
                &described(fleet),
                "testing",
            );
            let d = decide(vec![seen, call(op, body, "<x/>", "testing")]);
            assert_eq!(all_allowed(&d), allowed, "{op} of {fleet}'s: {d:?}");
        }
    }
}
