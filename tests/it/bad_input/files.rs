//! Config files that are wrong.

use testkit::harness::Harness;

use super::{check_all, edit, Case};
use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files() {
    let h = Harness::new(KIT, "badcfg").await;
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

/// With `--output json`, a refused config is also a JSON document on stdout naming every
/// bad field (stderr keeps the paragraph).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_reports_a_bad_config_as_a_document_naming_the_fields() {
    let h = Harness::new(KIT, "badjson").await;
    let bad = edit(&h.config(2, None), "max = 20", "max = 500");
    let bad = edit(&bad, "default = 2", "default = \"two\"");
    let path = h.write_config(&bad);
    let cfg = path.to_str().expect("utf-8 temp path");
    let run = h
        .run(
            &["--config", cfg, "--output", "json", "validate"],
            &Harness::token(),
        )
        .await;
    run.expect_code(1);
    assert!(run.stderr.contains("error: config file"), "{}", run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON document");
    assert_eq!(doc["error"]["kind"], "config");
    let fields: Vec<&str> = doc["error"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(fields.contains(&"capacity.default"), "{fields:?}");
}
