//! Rotation: a runner whose stored command is not a SecureString on the fleet key is
//! replaced by a new runner, then retired like a scale-down victim (never re-encrypted in
//! place: SSM keeps every older value in the parameter's history).

use super::*;

fn rotated_line(text: &str, who: &str, why: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("  ~ runner {who}: rotate: its command is {why}")))
}

/// `n` runners, the first one's command a String, the second's on AWS's managed key.
fn off_key(n: u32) -> Observed {
    let mut o = converged(&config(), n);
    o.parameters[0].kind = "String".into();
    o.parameters[0].key_id = None;
    o.parameters[1].key_id = Some("alias/aws/ssm".into());
    o
}

#[test]
fn a_string_or_another_key_rotates_the_runner() {
    let p = plan(&config(), 3, &off_key(3));
    assert_eq!(
        kinds(&p),
        [
            "create_runner",
            "create_runner",
            "drain_runner",
            "drain_runner",
            "terminate_instances",
            "delete_runner",
            "delete_runner",
            "delete_parameter",
            "delete_parameter",
            "delete_claims"
        ]
    );
    // New runners in the lowest free slots: the old ones keep theirs until deleted.
    assert_eq!(
        p.actions[..2],
        [
            Action::CreateRunner {
                name: "bbfleet-ci-4".into()
            },
            Action::CreateRunner {
                name: "bbfleet-ci-5".into()
            }
        ]
    );
    // The target stays: the old hosts go, the fleet launches hosts for the new runners.
    assert!(!kinds(&p).contains(&"set_fleet_target".to_owned()));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn the_plan_says_why_each_runner_is_rotated() {
    let p = plan(&config(), 3, &off_key(3));
    let text = p.view().to_string();
    assert!(
        rotated_line(
            &text,
            "bbfleet-ci-1",
            "a String, not a SecureString on the fleet key"
        ),
        "{text}"
    );
    assert!(
        rotated_line(
            &text,
            "bbfleet-ci-2",
            "on key alias/aws/ssm, not the fleet key"
        ),
        "{text}"
    );
    for line in [
        "  - instances i-1, i-2: scale-down, rotation: they hold removed runners",
        "  - runner bbfleet-ci-1 {00000001-0000-5000-8000-000000000000}: rotate: its command is a String, not a SecureString on the fleet key (ONLINE, idle)",
        "  - parameter /bbfleet/ci/runners/00000002-0000-5000-8000-000000000000: its runner bbfleet-ci-2 is rotated out",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn the_configured_key_by_alias_or_id_is_current_and_a_new_key_rotates_everything() {
    let c = config();
    let mut o = converged(&c, 2);
    o.parameters[0].key_id = Some(c.kms.key.clone());
    o.parameters[1].key_id = Some("k1".into());
    assert!(plan(&c, 2, &o).is_empty());
    // The key is created by this plan: every stored command is on another one.
    o.key = Some(KeyStatus::Absent);
    let p = plan(&c, 2, &o);
    assert_eq!(kinds(&p)[0], "create_key");
    let retired = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::DeleteRunner { .. }))
        .count();
    let created = kinds(&p).iter().filter(|k| *k == "create_runner").count();
    assert_eq!((retired, created), (2, 2), "{:?}", p.actions);
}

#[test]
fn a_busy_runner_to_rotate_waits_with_its_host_unless_forced() {
    let c = config();
    let mut o = converged(&c, 2);
    o.runners[0] = runner(1, "ONLINE", true);
    o.parameters[0].kind = "String".into();
    o.parameters[0].key_id = None;
    let p = plan(&c, 2, &o);
    // Its replacement now; the target counts both until it is retired.
    assert_eq!(kinds(&p), ["create_runner", "set_fleet_target"]);
    assert_eq!(
        p.actions[1],
        Action::SetFleetTarget {
            id: "sfr-1".into(),
            from: 2,
            to: 3,
            on_demand_from: 0,
            on_demand: 0,
            split: String::new(),
        }
    );
    assert_eq!(
        p.warnings,
        ["runner bbfleet-ci-1 to rotate (the stored command is not a SecureString in the current format on the fleet key) but busy with a pipeline step: retired when idle (run again later, or pass --force); a new runner replaces it now"]
    );
    let forced = plan_apply(&c, &desired_for(&c, 2), &o, PlanOptions { force: true }).unwrap();
    assert!(forced.actions.contains(&Action::DeleteRunner {
        uuid: uuid(1),
        name: "bbfleet-ci-1".into(),
        reason:
            "rotate: its command is a String, not a SecureString on the fleet key (ONLINE, busy)"
                .into()
    }));
    assert!(forced.warnings.is_empty());
}

#[test]
fn a_rotated_runner_is_the_first_to_go_in_a_scale_down_and_is_not_replaced() {
    let c = config();
    let mut o = converged(&c, 3);
    o.parameters[0].key_id = Some("alias/aws/ssm".into());
    let p = plan(&c, 2, &o);
    assert!(
        !kinds(&p).contains(&"create_runner".to_owned()),
        "{:?}",
        p.actions
    );
    let deleted: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteRunner { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["bbfleet-ci-1"]);
    assert!(p.actions.contains(&Action::SetFleetTarget {
        id: "sfr-1".into(),
        from: 3,
        to: 2,
        on_demand_from: 0,
        on_demand: 0,
        split: String::new(),
    }));
}

#[test]
fn rotations_that_do_not_fit_under_bitbuckets_limit_wait_and_stop_nothing_else() {
    let c = config();
    let mut o = converged(&c, 3);
    for p in &mut o.parameters {
        p.key_id = Some("alias/aws/ssm".into());
    }
    // 96 runners of others: room for one replacement at a time.
    o.scope_runner_count = 99;
    let p = plan(&c, 3, &o);
    assert_eq!(
        kinds(&p).iter().filter(|k| *k == "create_runner").count(),
        1,
        "{:?}",
        p.actions
    );
    assert_eq!(
        p.warnings,
        ["2 runner(s) wait for their rotation: a replacement is registered before its old runner goes, and workspace acme would then hold more than Bitbucket's 100 runners (lower the capacity for one apply to make room)"]
    );
    // A lower capacity makes room for all.
    let p = plan(&c, 1, &o);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        kinds(&p).iter().filter(|k| *k == "delete_runner").count(),
        3
    );
}

/// A command an older bbfleet stored as a shell line (its description names no format):
/// hosts no longer read it, so the runner is rotated like one on another key.
#[test]
fn a_command_in_an_older_format_rotates_the_runner() {
    let mut o = converged(&config(), 2);
    o.parameters[1].current_format = false;
    let p = plan(&config(), 2, &o);
    assert_eq!(
        p.actions[0],
        Action::CreateRunner {
            name: "bbfleet-ci-3".into()
        }
    );
    let text = p.view().to_string();
    assert!(
        rotated_line(&text, "bbfleet-ci-2", "stored in an older format"),
        "{text}"
    );
    assert!(kinds(&p).contains(&"delete_runner".to_owned()), "{text}");
}
