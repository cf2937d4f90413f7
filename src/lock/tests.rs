use std::time::Duration;

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
        renewed_at: None,
        pid_scope: scope.map(str::to_owned),
        pid_started: None,
    }
}

/// `v` as the newest generation, its write time unknown to SSM (so `expires_at` counts).
fn gen(v: &LockValue) -> Generation {
    Generation {
        generation: 1,
        name: names::lock_parameter("ci", 1),
        value: v.clone(),
        written: None,
    }
}

/// [`judge`] of `v` as the newest generation, SSM's write time unknown.
fn judge_value(
    v: &LockValue,
    me: &Identity,
    now: Timestamp,
    running: impl Fn(u32, Option<u64>) -> bool,
) -> Verdict {
    judge(Some(&gen(v)), me, now, running)
}

#[test]
fn staleness() {
    let now = at("2026-01-01T10:05:00Z");
    let alive = |_, _| true;
    let dead = |_, _| false;
    assert_eq!(judge(None, &me(), now, alive), Verdict::Free);
    let mut released = other("laptop", 7, None, "2026-01-01T11:00:00Z");
    released.state = LockState::Released;
    assert_eq!(judge_value(&released, &me(), now, alive), Verdict::Free);
    // Live holder elsewhere, not expired: held even though "its pid" is not here.
    let remote = other("ci-box", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
    assert_eq!(judge_value(&remote, &me(), now, dead), Verdict::Held);
    // Expired: stale wherever it is.
    let expired = other("ci-box", 7, None, "2026-01-01T10:04:59Z");
    assert!(matches!(
        judge_value(&expired, &me(), now, alive),
        Verdict::Stale(r) if r.contains("expired")
    ));
    // Same machine: a dead pid is stale at once, a live one holds.
    let local = other("laptop", 7, Some("boot/pid:[1]"), "2026-01-01T10:20:00Z");
    assert!(matches!(
        judge_value(&local, &me(), now, dead),
        Verdict::Stale(r) if r.contains("process 7")
    ));
    assert_eq!(judge_value(&local, &me(), now, alive), Verdict::Held);
    // Same host name but another pid namespace (a container) or unknown scope: no pid check.
    let container = other("laptop", 7, Some("boot/pid:[2]"), "2026-01-01T10:20:00Z");
    assert_eq!(judge_value(&container, &me(), now, dead), Verdict::Held);
    let unknown = other("laptop", 7, None, "2026-01-01T10:20:00Z");
    assert_eq!(judge_value(&unknown, &me(), now, dead), Verdict::Held);
}

#[test]
fn values_round_trip_and_parse_the_documented_shape() {
    let v = LockValue::held(
        &me(),
        "apply",
        at("2026-01-01T10:00:00Z"),
        at("2026-01-01T10:00:00Z"),
        TTL,
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
        written: None,
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

#[test]
fn expiry_is_ssm_write_time_plus_the_lease_whatever_the_holders_clock() {
    let now = at("2026-01-01T10:05:00Z");
    let alive = |_, _| true;
    // A holder whose clock is 20 minutes behind: its expires_at is already past on our
    // clock, but SSM recorded the write a minute ago and the lease is 15 minutes: held.
    let mut slow = other("ci-box", 7, None, "2026-01-01T09:59:00Z");
    slow.renewed_at = Some(at("2026-01-01T09:44:00Z"));
    assert_eq!(slow.lease(), TTL);
    let mut g = gen(&slow);
    g.written = Some(at("2026-01-01T10:04:00Z"));
    assert_eq!(judge(Some(&g), &me(), now, alive), Verdict::Held);
    assert_eq!(slow.expiry(g.written), at("2026-01-01T10:19:00Z"));
    // A holder whose clock is an hour ahead: expires_at is far off, but SSM's time plus
    // the lease has passed: stale.
    let mut fast = other("ci-box", 7, None, "2026-01-01T11:10:00Z");
    fast.renewed_at = Some(at("2026-01-01T10:55:00Z"));
    let mut g = gen(&fast);
    g.written = Some(at("2026-01-01T09:50:00Z"));
    assert!(matches!(
        judge(Some(&g), &me(), now, alive),
        Verdict::Stale(r) if r.contains("expired at 2026-01-01T10:05:00Z")
    ));
    // Values written before fencing (no renewed_at) count from acquired_at (longer, so
    // safe); a negative lease is none.
    let old = other("ci-box", 7, None, "2026-01-01T10:20:00Z");
    assert_eq!(old.lease(), Duration::from_secs(20 * 60));
    let backwards = other("ci-box", 7, None, "2026-01-01T09:00:00Z");
    assert_eq!(backwards.lease(), Duration::ZERO);
}

#[test]
fn the_margin_is_a_fifth_of_the_ttl_at_least_three_seconds_at_most_half() {
    assert_eq!(safety_margin(TTL), Duration::from_secs(180));
    assert_eq!(
        safety_margin(Duration::from_secs(60)),
        Duration::from_secs(12)
    );
    assert_eq!(
        safety_margin(Duration::from_secs(10)),
        Duration::from_secs(3)
    );
    assert_eq!(
        safety_margin(Duration::from_secs(4)),
        Duration::from_secs(2)
    );
    assert!(
        TTL - safety_margin(TTL) > RENEW_EVERY * 2,
        "two renewals fit before the deadline"
    );
    assert!(RETRY_EVERY <= Duration::from_secs(2));
}

#[tokio::test]
async fn a_fence_holds_until_its_deadline_or_a_takeover() {
    use tokio::time::Instant;
    let fence = Fence::new(
        "ci",
        Instant::now() + Duration::from_millis(200),
        at("2026-01-01T10:00:00Z"),
    );
    let copy = fence.clone();
    assert_eq!(copy.check(), Ok(()));
    fence.failed("ThrottlingException: Rate exceeded".to_owned());
    assert_eq!(
        copy.check(),
        Ok(()),
        "a failed renewal alone does not stop the work"
    );
    tokio::time::sleep_until(fence.valid_until()).await;
    let expired = copy.check().unwrap_err();
    let text = expired.to_string();
    for part in [
        "fleet lock of ci",
        "could not be renewed since 2026-01-01T10:00:00Z",
        "ThrottlingException",
        "stopped writing",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    // A later success moves the deadline on; a takeover stops the work for good.
    fence.renewed(
        Instant::now() + Duration::from_secs(60),
        at("2026-01-01T10:01:00Z"),
    );
    assert_eq!(copy.check(), Ok(()));
    fence.lost("ops@elsewhere".to_owned());
    assert!(matches!(copy.check(), Err(Fenced::Lost { holder, .. }) if holder == "ops@elsewhere"));
}
