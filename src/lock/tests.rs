use jiff::Timestamp;

use super::identity::{process_started, process_state};
use super::*;
use crate::names;

fn me() -> Identity {
    Identity {
        owner: "dev@laptop".to_owned(),
        host: "laptop".to_owned(),
        pid: 100,
        pid_scope: Some("boot/pid:[1]".to_owned()),
        pid_started: Some(5),
    }
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn other(host: &str, pid: u32, scope: Option<&str>, expires: &str) -> LockValue {
    LockValue {
        state: LockState::Held,
        owner: format!("ops@{host}"),
        host: host.to_owned(),
        pid,
        command: "apply".to_owned(),
        acquired_at: at("2026-01-01T10:00:00Z"),
        expires_at: at(expires),
        pid_scope: scope.map(str::to_owned),
        pid_started: None,
    }
}

#[test]
fn staleness() {
    let now = at("2026-01-01T10:05:00Z");
    let alive = |_, _| true;
    let dead = |_, _| false;
    assert_eq!(judge(None, &me(), now, alive), Verdict::Free);
    let mut released = other("laptop", 7, None, "2026-01-01T11:00:00Z");
    released.state = LockState::Released;
    assert_eq!(judge(Some(&released), &me(), now, alive), Verdict::Free);
    // Live holder elsewhere, not expired: held even though "its pid" is not here.
    let remote = other("ci-box", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
    assert_eq!(judge(Some(&remote), &me(), now, dead), Verdict::Held);
    // Expired: stale wherever it is.
    let expired = other("ci-box", 7, None, "2026-01-01T10:04:59Z");
    assert!(matches!(
        judge(Some(&expired), &me(), now, alive),
        Verdict::Stale(r) if r.contains("expired")
    ));
    // Same machine: a dead pid is stale at once, a live one holds.
    let local = other("laptop", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
    assert!(matches!(
        judge(Some(&local), &me(), now, dead),
        Verdict::Stale(r) if r.contains("process 7")
    ));
    assert_eq!(judge(Some(&local), &me(), now, alive), Verdict::Held);
    // Same host name but another pid namespace (a container) or unknown scope: no pid check.
    let container = other("laptop", 7, Some("boot/pid:[2]"), "2026-01-01T10:20:00Z");
    assert_eq!(judge(Some(&container), &me(), now, dead), Verdict::Held);
    let unknown = other("laptop", 7, None, "2026-01-01T10:20:00Z");
    assert_eq!(judge(Some(&unknown), &me(), now, dead), Verdict::Held);
}

#[test]
fn values_round_trip_and_parse_the_documented_shape() {
    let v = LockValue::held(
        &me(),
        "apply",
        at("2026-01-01T10:00:00Z"),
        at("2026-01-01T10:00:00Z"),
    );
    assert_eq!(v.expires_at, at("2026-01-01T10:15:00Z"));
    let text = serde_json::to_string(&v).unwrap();
    assert_eq!(LockValue::parse(&text).unwrap(), v);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["state"], "held");
    assert_eq!(doc["acquired_at"], "2026-01-01T10:00:00Z");
    let hand = r#"{"state":"released","owner":"x","host":"h","pid":1,"command":"apply","acquired_at":"2026-01-01T10:00:00Z","expires_at":"2026-01-01T10:15:00+00:00"}"#;
    let parsed = LockValue::parse(hand).unwrap();
    assert_eq!(parsed.state, LockState::Released);
    assert_eq!(parsed.pid_scope, None);
    assert!(LockValue::parse(r#"{"state":"taken"}"#).is_err());
    assert!(LockValue::parse("not json").is_err());
    let shown = v.to_string();
    for part in [
        "dev@laptop",
        "laptop",
        "pid 100",
        "bbfleet apply",
        "since 2026-01-01T10:00:00Z",
        "expires 2026-01-01T10:15:00Z",
    ] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
}

#[test]
fn generations_only_grow_and_prune_keeps_two() {
    let g = |n: u64| Generation {
        generation: n,
        name: names::lock_parameter("ci", n),
        value: other("h", 1, None, "2026-01-01T10:00:00Z"),
    };
    assert_eq!(next_generation(&[]), 1);
    assert_eq!(next_generation(&[g(3), g(9), g(4)]), 10);
    assert_eq!(
        prunable(&[g(3), g(4), g(5), g(6)], 6),
        vec![
            names::lock_parameter("ci", 3),
            names::lock_parameter("ci", 4)
        ]
    );
    assert!(prunable(&[g(1)], 1).is_empty());
    assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/12"), Some(12));
    assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/x"), None);
    assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/"), None);
    assert_eq!(parse_generation("ci", "/bbfleet/ci2/lock/1"), None);
    assert_eq!(parse_generation("ci", "/bbfleet/ci/lock/1/2"), None);
}

#[test]
fn owner_is_the_pipeline_or_user_at_host() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(
        owner(
            env(&[
                ("BITBUCKET_PIPELINE_UUID", "{abc}"),
                ("BITBUCKET_BUILD_NUMBER", "42"),
                ("USER", "x")
            ]),
            "h"
        ),
        "pipeline {abc} (build #42)"
    );
    assert_eq!(owner(env(&[("USER", "ana")]), "box"), "ana@box");
    assert_eq!(owner(env(&[]), "box"), "unknown@box");
}

#[test]
fn process_state_reads_past_the_command_name() {
    assert_eq!(process_state("12 (bbfleet) S 1 2"), Some('S'));
    assert_eq!(process_state("12 (a) (b)) Z 1 2"), Some('Z'));
    assert_eq!(process_state("garbage"), None);
    let stat = "7 (x y) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50";
    assert_eq!(process_started(stat), Some(98765));
    let me = Identity::current();
    assert!(pid_running(me.pid, None));
    if me.pid_started.is_some() {
        assert!(pid_running(me.pid, me.pid_started));
        // Same pid, another start time: the pid was reused, the holder is gone.
        assert!(!pid_running(me.pid, me.pid_started.map(|t| t + 1)));
    }
}
