//! Roll-outs and host repair: the batch, the grace, OFFLINE runners, runners left disabled.

use super::*;

fn at(minutes: i64) -> jiff::Timestamp {
    jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_mins(minutes)
}

/// `converged` one hour after every launch, with instance `k`'s claim removed (its runner
/// free since minute `freed`).
fn with_claimless_host(c: &Config, k: usize, freed: i64) -> Observed {
    let mut o = converged(c, 2);
    o.observed_at = at(60);
    for i in &mut o.instances {
        i.launched_at = Some(at(0));
    }
    o.claims[k].holder = ClaimHolder::Free;
    o.claims[k].written_at = Some(at(freed));
    o.runners[k].status = RunnerStatus::Offline;
    o
}

#[test]
fn a_claimless_host_goes_only_past_the_grace_while_a_runner_waits_as_long() {
    let c = config();
    // Freed 50 minutes ago, host launched an hour ago: both past the 15-minute grace.
    let p = plan(&c, 2, &with_claimless_host(&c, 1, 10));
    assert_eq!(
        p.actions,
        [Action::TerminateInstances {
            ids: vec!["i-2".into()],
            reason: "repair: they hold no claim 15 min after their launch while bbfleet-ci-2 waits for a host".into()
        }]
    );
    // Freed 5 minutes ago: the claimless host may take it any second.
    assert!(plan(&c, 2, &with_claimless_host(&c, 1, 55)).is_empty());
    // Launched 5 minutes ago: it is still booting.
    let mut o = with_claimless_host(&c, 1, 10);
    o.instances[1].launched_at = Some(at(55));
    assert!(plan(&c, 2, &o).is_empty());
}

#[test]
fn the_host_of_a_runner_offline_past_the_grace_is_drained_and_replaced() {
    let c = config();
    let mut o = converged(&c, 2);
    o.observed_at = at(60);
    for i in &mut o.instances {
        i.launched_at = Some(at(0));
    }
    for cl in &mut o.claims {
        cl.written_at = Some(at(1));
    }
    o.runners[0].status = RunnerStatus::Offline;
    o.runners[0].status_since = Some(at(30));
    let p = plan(&c, 2, &o);
    assert_eq!(
        kinds(&p),
        [
            "drain_runner",
            "terminate_instances",
            "release_claim",
            "prune_claims",
            "enable_runner"
        ]
    );
    assert!(
        matches!(&p.actions[0], Action::DrainRunner { instance: Some(i), reason, .. }
        if i == "i-1" && reason == "repair: OFFLINE for over 15 min while its host runs")
    );
    // OFFLINE for 5 minutes only (a reconnect, a Bitbucket hiccup): left alone.
    o.runners[0].status_since = Some(at(55));
    assert!(plan(&c, 2, &o).is_empty());
}

#[test]
fn a_roll_out_replaces_a_batch_of_idle_hosts_and_busy_ones_wait() {
    let mut c = config();
    let mut o = converged(&c, 4);
    o.runners[0].busy = true;
    o.runners[1].busy = true;
    c.instance.root_volume_gb = 80;
    // 50% of 4: two hosts, and only idle ones.
    c.rollout.batch = crate::config::RolloutBatch::Percent(50);
    let p = plan(&c, 4, &o);
    let drained: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DrainRunner { instance, .. } => instance.as_deref(),
            _ => None,
        })
        .collect();
    assert_eq!(drained, ["i-3", "i-4"]);
    assert_eq!(
        p.notes,
        ["Roll-out: 4 hosts on launch template v1, current v2: 2 idle replaced now, 2 busy wait."]
    );
    // A runner already without a host counts against the batch.
    o.claims[3].holder = ClaimHolder::Free;
    let p = plan(&c, 4, &o);
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::DrainRunner { .. }))
            .count(),
        1
    );
}

#[test]
fn a_runner_left_disabled_is_enabled_again() {
    let c = config();
    let mut o = converged(&c, 2);
    o.runners[1].status = RunnerStatus::Disabled;
    let p = plan(&c, 2, &o);
    assert_eq!(kinds(&p), ["enable_runner"]);
    assert!(p
        .view()
        .to_string()
        .contains("  ~ runner bbfleet-ci-2: enable: drift: disabled, but the plan keeps it"));
}
