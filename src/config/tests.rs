use super::checks::{arch_of_family, REGION_PREFIXES, REGION_WORD_MAX};
use super::*;

pub(crate) const GOOD: &str = r#"
name = "ci"
region = "us-east-1"

[bitbucket]
workspace = "acme"
labels = ["self.hosted", "linux", "spot"]

[capacity]
default = 2
max = 20
[[capacity.schedule]]
days = "mon-fri"
hours = "07:00-19:00"
timezone = "Europe/Warsaw"
capacity = 8

[spot]
instance_types = ["m6i.large", "m6a.large", "c6i.xlarge"]
subnets = ["subnet-0123abcd", "subnet-0123abce"]
fleet_role = "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role"

[instance]
instance_profile = "bbfleet-runner"
"#;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, "test.toml") {
        Ok(_) => vec![],
        Err(ConfigError::Invalid { errors, .. }) => {
            errors.iter().map(ToString::to_string).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

fn with(replace: &str, by: &str) -> String {
    assert!(GOOD.contains(replace), "{replace} not in GOOD");
    GOOD.replacen(replace, by, 1)
}

#[test]
fn good_config_gets_defaults() {
    let c = Config::parse(GOOD, "t").unwrap();
    assert_eq!(c.bitbucket.labels, ["self.hosted", "linux", "spot"]);
    assert_eq!(c.bitbucket.runner_image, DEFAULT_RUNNER_IMAGE);
    assert_eq!(c.spot.allocation_strategy, AllocationStrategy::Diversified);
    assert_eq!(c.kms.key, "alias/bbfleet-ci");
    assert_eq!(c.instance.os, Os::Al2023);
    assert_eq!(
        c.instance.ami,
        AmiRef::Ssm("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".into())
    );
    assert_eq!(c.families(), ["m6i", "m6a", "c6i"]);
}

#[test]
fn mandatory_labels_are_added() {
    let c = Config::parse(
        &with(
            r#"labels = ["self.hosted", "linux", "spot"]"#,
            r#"labels = ["spot"]"#,
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.bitbucket.labels, ["self.hosted", "linux", "spot"]);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (with(r#"name = "ci""#, r#"name = "CI_fleet""#), "name: "),
        (
            with(
                r#"subnets = ["subnet-0123abcd", "subnet-0123abce"]"#,
                r#"subnets = ["subnet-0123abcd"]"#,
            ),
            "spot.subnets: 1 subnet",
        ),
        (
            with(r#""subnet-0123abce""#, r#""subnet-a""#),
            "spot.subnets[1]: ",
        ),
        (
            with(
                r#"["m6i.large", "m6a.large", "c6i.xlarge"]"#,
                r#"["m6i.large", "m6i.xlarge"]"#,
            ),
            "spot.instance_types: the fleet spans 1 instance family",
        ),
        (
            with("max = 20", "max = 101"),
            "capacity.max: 101 is out of range",
        ),
        (
            with("default = 2", "default = 30"),
            "capacity.default: 30 is above",
        ),
        (
            with("default = 2", "default = -1"),
            "capacity.default: invalid value",
        ),
        (
            with("default = 2", "default = \"two\""),
            "capacity.default: invalid type",
        ),
        (
            with(
                r#"timezone = "Europe/Warsaw""#,
                r#"timezone = "Mars/Olympus""#,
            ),
            "capacity.schedule[0].timezone",
        ),
        (
            with(r#"hours = "07:00-19:00""#, r#"hours = "7-19""#),
            "capacity.schedule[0].hours",
        ),
        (
            with(r#"days = "mon-fri""#, r#"days = "monday""#),
            "capacity.schedule[0].days",
        ),
        (with(r#""spot"]"#, r#""Spot!"]"#), "bitbucket.labels[2]"),
        (
            with(r#""spot"]"#, r#""spot", "spot"]"#),
            "bitbucket.labels[3]: \"spot\" is listed twice",
        ),
        (
            with("default = 2", "default = 2.5"),
            "capacity.default: invalid type: floating point `2.5`, expected a whole number",
        ),
        (
            with(
                r#"fleet_role = "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role""#,
                r#"fleet_role = "my-role""#,
            ),
            "spot.fleet_role",
        ),
        (
            with("[instance]", "[instance]\nbogus = 1"),
            "instance.bogus: unknown field `bogus`, expected one of",
        ),
        (
            with("[instance]", "[instance]\nos = \"windows\""),
            "instance.os",
        ),
        (
            with("[instance]", "[instance]\nami = \"resolve:ssm:\""),
            "instance.ami",
        ),
        (
            with("[instance]", "[kms]\nkey = \"alias/aws/ssm\"\n[instance]"),
            "kms.key: \"alias/aws/ssm\" is an AWS managed key",
        ),
        (
            with(r#"workspace = "acme""#, r#"workspace = "ac me""#),
            "bitbucket.workspace",
        ),
        (
            with(
                r#"workspace = "acme""#,
                "workspace = \"acme\"\napi_url = \"http://bitbucket.example.com/2.0\"",
            ),
            "bitbucket.api_url",
        ),
        (
            with(r#"region = "us-east-1""#, r#"region = "mars""#),
            "region: ",
        ),
        (
            with(
                r#"["m6i.large", "m6a.large", "c6i.xlarge"]"#,
                r#"["m6i.large", "m6g.large"]"#,
            ),
            "mixes x86_64 and arm64",
        ),
    ];
    for (text, expected) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errs:#?}"
        );
    }
}

const ROLE: &str =
    r#"fleet_role = "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role""#;

#[test]
fn the_fleet_api_the_on_demand_part_and_the_cost_cap_name_their_fields() {
    let cases = [
        (
            with(ROLE, "fleet_api = \"spot\""),
            "spot.fleet_api: \"spot\" is not one of spot-fleet",
        ),
        (with(ROLE, ""), "spot.fleet_role: missing"),
        (
            with(ROLE, &format!("{ROLE}\nfallback = \"ondemand\"")),
            "spot.fallback: \"ondemand\" is not one of none, on-demand",
        ),
        (
            with("max = 20", "max = 20\non_demand_base = 21"),
            "capacity.on_demand_base: 21 is above capacity.max (20)",
        ),
        (
            with("max = 20", "max = 20\nmax_hourly_cost = 2.5"),
            "capacity.on_demand_hourly_price: missing",
        ),
        (
            with(
                "max = 20",
                "max = 20\nmax_hourly_cost = -1.0\non_demand_hourly_price = 0.1",
            ),
            "capacity.max_hourly_cost: -1 is not a positive amount",
        ),
    ];
    for (text, expected) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errs:#?}"
        );
    }
}

#[test]
fn an_ec2_fleet_needs_no_role_and_the_defaults_are_spot_only() {
    let c = Config::parse(GOOD, "t").unwrap();
    assert_eq!(c.spot.fleet_api, crate::config::FleetApiKind::SpotFleet);
    assert_eq!(c.spot.fallback, crate::config::Fallback::None);
    assert_eq!(c.spot.fallback_grace_seconds, 600);
    assert_eq!((c.capacity.on_demand_base, c.capacity.cost_cap), (0, None));
    let text = with(ROLE, "fleet_api = \"ec2-fleet\"\nfallback = \"on-demand\"").replace(
        "max = 20",
        "max = 20\non_demand_base = 2\nmax_hourly_cost = 2.5\non_demand_hourly_price = 0.126",
    );
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!(c.spot.fleet_api, crate::config::FleetApiKind::Ec2Fleet);
    assert_eq!(c.spot.fleet_role, "");
    assert_eq!(c.spot.fallback, crate::config::Fallback::OnDemand);
    assert_eq!(c.capacity.on_demand_base, 2);
    let cap = c.capacity.cost_cap.unwrap();
    assert_eq!(
        (cap.max_hourly_cost, cap.on_demand_hourly_price),
        (2.5, 0.126)
    );
    // A role given with EC2 Fleet is checked, not used.
    let kept = with(ROLE, &format!("{ROLE}\nfleet_api = \"ec2-fleet\""));
    assert_eq!(Config::parse(&kept, "t").unwrap().spot.fleet_role, "");
}

#[test]
fn syntax_errors_say_where() {
    let err = Config::parse("name = \"ci\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.toml is not valid TOML"), "{err}");
    assert!(err.contains("line 1"), "{err}");
    let err = Config::parse("name = \"ci\"\n[capacity\nmax = 1\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.toml is not valid TOML: line 2, column 10: ") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn arch_follows_family() {
    for (f, a) in [
        ("m6g", Arch::Arm64),
        ("c7gn", Arch::Arm64),
        ("t4g", Arch::Arm64),
        ("a1", Arch::Arm64),
        ("im4gn", Arch::Arm64),
        ("g5g", Arch::Arm64),
    ] {
        assert_eq!(arch_of_family(f), a, "{f}");
    }
    for f in ["m6i", "m6a", "c6i", "r6i", "g5", "m7i-flex", "t3", "inf2"] {
        assert_eq!(arch_of_family(f), Arch::X86_64, "{f}");
    }
}

#[test]
fn capacity_precedence_and_windows() {
    let c = Config::parse(GOOD, "t").unwrap();
    // Monday 2026-03-02 10:00 in Warsaw (UTC+1) = 09:00Z.
    let monday_work: jiff::Timestamp = "2026-03-02T09:00:00Z".parse().unwrap();
    let monday_night: jiff::Timestamp = "2026-03-02T22:00:00Z".parse().unwrap();
    let sunday: jiff::Timestamp = "2026-03-01T09:00:00Z".parse().unwrap();
    let cap = |at, explicit| c.capacity.resolve(at, explicit).unwrap();
    assert_eq!(cap(monday_work, None).desired, 8);
    assert_eq!(
        cap(monday_work, None).source,
        "schedule mon-fri 07:00-19:00 Europe/Warsaw"
    );
    assert_eq!(cap(monday_night, None).desired, 2);
    assert_eq!(cap(sunday, None).desired, 2);
    assert_eq!(cap(sunday, Some(5)).desired, 5);
    assert!(c.capacity.resolve(sunday, Some(21)).is_err());
}

#[test]
fn windows_crossing_midnight_belong_to_their_start_day() {
    let text = with(r#"hours = "07:00-19:00""#, r#"hours = "22:00-02:00""#)
        .replace("Europe/Warsaw", "UTC");
    let c = Config::parse(&text, "t").unwrap();
    let w = &c.capacity.schedule[0];
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    assert!(w.contains(at("2026-03-06T23:00:00Z"))); // Friday night
    assert!(w.contains(at("2026-03-07T01:59:00Z"))); // early Saturday, Friday's window
    assert!(!w.contains(at("2026-03-07T23:00:00Z"))); // Saturday night: not a window day
    assert!(!w.contains(at("2026-03-02T01:00:00Z"))); // early Monday: Sunday had no window
    assert!(!w.contains(at("2026-03-06T02:00:00Z"))); // end is exclusive
}

fn window_config(days: &str, hours: &str, tz: &str) -> Config {
    let text = with(r#"days = "mon-fri""#, &format!("days = {days:?}"))
        .replace(r#"hours = "07:00-19:00""#, &format!("hours = {hours:?}"))
        .replace(
            r#"timezone = "Europe/Warsaw""#,
            &format!("timezone = {tz:?}"),
        );
    Config::parse(&text, "t").unwrap()
}

#[test]
fn schedule_table_with_dst_and_midnight() {
    // (days, hours, zone, instant, capacity: 8 in the window, 2 outside)
    let table = [
        // Warsaw is UTC+1 in winter, UTC+2 from 2026-03-29 02:00 local (03:00 CEST).
        (
            "mon-fri",
            "07:00-19:00",
            "Europe/Warsaw",
            "2026-03-27T06:30:00Z",
            8,
        ), // Fri 07:30 CET
        (
            "mon-fri",
            "07:00-19:00",
            "Europe/Warsaw",
            "2026-03-27T05:30:00Z",
            2,
        ), // Fri 06:30 CET
        (
            "mon-fri",
            "07:00-19:00",
            "Europe/Warsaw",
            "2026-03-30T05:30:00Z",
            8,
        ), // Mon 07:30 CEST
        (
            "mon-fri",
            "07:00-19:00",
            "Europe/Warsaw",
            "2026-03-30T17:00:00Z",
            2,
        ), // Mon 19:00 CEST: end exclusive
        (
            "mon-fri",
            "07:00-19:00",
            "Europe/Warsaw",
            "2026-03-28T10:00:00Z",
            2,
        ), // Saturday
        // The spring-forward night: 02:00-03:00 does not exist on 2026-03-29.
        (
            "sun",
            "01:00-03:00",
            "Europe/Warsaw",
            "2026-03-29T00:30:00Z",
            8,
        ), // 01:30 CET
        (
            "sun",
            "01:00-03:00",
            "Europe/Warsaw",
            "2026-03-29T01:00:00Z",
            2,
        ), // 03:00 CEST
        // The fall-back night: 02:30 happens twice on 2026-10-25, both are in the window.
        (
            "sun",
            "02:00-03:00",
            "Europe/Warsaw",
            "2026-10-25T00:30:00Z",
            8,
        ), // 02:30 CEST
        (
            "sun",
            "02:00-03:00",
            "Europe/Warsaw",
            "2026-10-25T01:30:00Z",
            8,
        ), // 02:30 CET
        (
            "sun",
            "02:00-03:00",
            "Europe/Warsaw",
            "2026-10-25T02:00:00Z",
            2,
        ), // 03:00 CET
        // US zones change on other dates: New York is UTC-4 from 2026-03-08.
        (
            "mon-fri",
            "09:00-17:00",
            "America/New_York",
            "2026-03-09T13:30:00Z",
            8,
        ), // Mon 09:30 EDT
        (
            "mon-fri",
            "09:00-17:00",
            "America/New_York",
            "2026-03-06T13:30:00Z",
            2,
        ), // Fri 08:30 EST
        // Crossing midnight: Friday's night window runs into Saturday, Sunday's into Monday.
        ("fri,sun", "20:00-06:00", "UTC", "2026-03-07T05:59:00Z", 8), // Sat early: Friday's
        ("fri,sun", "20:00-06:00", "UTC", "2026-03-07T20:00:00Z", 2), // Sat evening
        ("fri,sun", "20:00-06:00", "UTC", "2026-03-09T03:00:00Z", 8), // Mon early: Sunday's
        ("fri,sun", "20:00-06:00", "UTC", "2026-03-06T06:00:00Z", 2), // Fri early: Thursday had none
        ("sat-mon", "00:00-24:00", "UTC", "2026-03-09T23:59:00Z", 8), // wrapping day range, whole day
        ("sat-mon", "00:00-24:00", "UTC", "2026-03-10T00:00:00Z", 2), // Tuesday
    ];
    for (days, hours, tz, at, want) in table {
        let c = window_config(days, hours, tz);
        let got = c.capacity.resolve(at.parse().unwrap(), None).unwrap();
        assert_eq!(
            got.desired, want,
            "{days} {hours} {tz} at {at}: {}",
            got.source
        );
    }
}

#[test]
fn region_names_follow_the_partitions_patterns() {
    for good in [
        "us-east-1",
        "eu-central-2",
        "us-gov-west-1",
        "cn-northwest-1",
        "ap-southeast-7",
        "eu-isoe-west-1",
        "us-iso-east-1",
        "us-isob-east-1",
        "us-isof-south-1",
        "eusc-de-east-1",
        "mx-central-1",
        "il-central-1",
        LONGEST_REGION,
    ] {
        assert!(is_region(good), "{good} rejected");
        assert_eq!(check_region(good), Ok(()));
    }
    for bad in [
        "",
        "mars-1",
        "us-east",
        "us-east-",
        "US-EAST-1",
        "us-east-1 ",
        " us-east-1",
        "us-east-01",
        "us-east-100",
        "us-east_x-1",
        "xx-east-1",
        "us--1",
        "us-gov-west",
        "us-east-1a",
        "us-east-1'; touch /tmp/x; '",
        "us-east-1\n",
        "us-$(id)-1",
        "eusc-fr-east-1",
        "us-abcdefghijklmnopq-1",
    ] {
        assert!(!is_region(bad), "{bad:?} accepted");
        let message = check_region(bad).unwrap_err();
        assert!(message.contains("is not an AWS region name"), "{message}");
    }
}

#[test]
fn the_longest_region_is_the_longest_the_pattern_accepts() {
    let longest_prefix = REGION_PREFIXES.iter().map(|p| p.len()).max().unwrap();
    // prefix, '-', the word, '-', two digits
    assert_eq!(
        LONGEST_REGION.len(),
        longest_prefix + 1 + REGION_WORD_MAX + 1 + 2
    );
    assert!(is_region(LONGEST_REGION));
}

#[test]
fn rollout_batch_is_a_count_or_a_percentage() {
    let parsed = |batch: &str| {
        Config::parse(&format!("{GOOD}\n[rollout]\nbatch = {batch}\n"), "t.toml")
            .map(|c| c.rollout.batch)
    };
    assert_eq!(
        Config::parse(GOOD, "t.toml").unwrap().rollout.batch,
        RolloutBatch::Count(1)
    );
    assert_eq!(parsed("3").unwrap(), RolloutBatch::Count(3));
    assert_eq!(parsed("\"25%\"").unwrap(), RolloutBatch::Percent(25));
    assert_eq!(RolloutBatch::Percent(25).hosts(10), 3);
    assert_eq!(RolloutBatch::Percent(1).hosts(3), 1);
    assert_eq!(RolloutBatch::Count(0).hosts(3), 1);
    for bad in ["0", "-1", "101", "\"0%\"", "\"150%\"", "\"many\""] {
        let errs = errors(&format!("{GOOD}\n[rollout]\nbatch = {bad}\n"));
        assert!(
            errs.len() == 1 && errs[0].starts_with("rollout.batch: "),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn host_repair_timings_have_defaults_and_bounds() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert_eq!(c.spot.host_grace_seconds, 900);
    assert_eq!(c.instance.claim_timeout_seconds, 1200);
    let errs = errors(&GOOD.replace(
        "instance_profile = \"bbfleet-runner\"",
        "instance_profile = \"bbfleet-runner\"\nclaim_timeout_seconds = 10",
    ));
    assert!(
        errs.len() == 1 && errs[0].starts_with("instance.claim_timeout_seconds: "),
        "{errs:?}"
    );
}

#[test]
fn baked_ami_keeps_the_default_base_and_a_retention_count() {
    let c = Config::parse(GOOD, "t.toml").unwrap();
    assert!(!c.instance.baked);
    assert_eq!(c.instance.baked_images_kept, 3);
    let baked = GOOD.replace(
        "instance_profile = \"bbfleet-runner\"",
        "instance_profile = \"bbfleet-runner\"\nami = \"baked\"\nbaked_images_kept = 5",
    );
    let c = Config::parse(&baked, "t.toml").unwrap();
    assert!(c.instance.baked);
    assert_eq!(c.instance.baked_images_kept, 5);
    assert_eq!(
        c.instance.ami,
        AmiRef::Ssm("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".into())
    );
    let errs = errors(&GOOD.replace(
        "instance_profile = \"bbfleet-runner\"",
        "instance_profile = \"bbfleet-runner\"\nbaked_images_kept = 0",
    ));
    assert!(
        errs.len() == 1 && errs[0].starts_with("instance.baked_images_kept: "),
        "{errs:?}"
    );
}
