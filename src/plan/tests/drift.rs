//! Drift repairs: claims of gone instances, strays, orphans, list order.

use super::*;

fn claim_gen(n: u32, generation: u64, value: &str) -> Claim {
    let bare = bare_uuid(&uuid(n));
    Claim {
        written_at: None,
        name: format!("/bbfleet/ci/claims/{bare}/{generation}"),
        runner_uuid: bare,
        generation,
        holder: ClaimHolder::parse(value),
    }
}

fn instance(id: &str, state: &str) -> InstanceInfo {
    InstanceInfo {
        template_version: None,
        on_demand: false,
        id: id.into(),
        instance_type: "m6i.large".into(),
        az: "us-east-1a".into(),
        state: InstanceState::from_api(state),
        fleet_request: None,
        launched_at: None,
    }
}

#[test]
fn each_drift_kind_is_its_own_line_with_a_reason() {
    let c = config();
    let mut o = converged(&c, 3);
    o.parameters.remove(0); // runner 1: secret lost
    o.parameters.push(param(9)); // command of no runner
    o.claims[1] = claim_gen(2, 1, "i-dead"); // runner 2 claimed by a gone instance
    o.instances.push(instance("i-stray", "running")); // tagged, outside the request
    let p = plan(&c, 3, &o);
    assert_eq!(
        kinds(&p),
        [
            "delete_orphan_parameter",
            "delete_orphan_runner",
            "create_runner",
            "delete_claims",
            "terminate_stray_instances",
            "release_claim",
            "prune_claims",
        ]
    );
    let text = p.view().to_string();
    for line in [
        "  - orphan parameter /bbfleet/ci/runners/00000009-0000-5000-8000-000000000000: drift: no runner of the fleet has uuid",
        "  - orphan runner bbfleet-ci-1 {00000001-0000-5000-8000-000000000000}: drift: its command is not stored (the secret is lost); deleted, and a new runner replaces it (its instance i-1 is terminated first)",
        "  + runner bbfleet-ci-1: register",
        "  - stray instances i-stray: drift: tagged with the fleet but not part of its live fleet request",
        "  ~ claim 00000002-0000-5000-8000-000000000000 generation 2: drift: claimed by i-dead, which is not running",
        "  - old claims 1 claim parameter(s): superseded generations",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let json = serde_json::to_value(p.view()).unwrap();
    let kinds: Vec<&str> = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "orphan_parameter",
            "orphan_runner",
            "runner",
            "claims",
            "stray_instances",
            "claim",
            "old_claims"
        ]
    );
    // The orphan runner's claim goes with it; the stray is not a scale-down termination.
    assert!(p.actions.contains(&Action::DeleteClaims {
        names: vec![claim(1, "i-1").name],
        reason: "their runners no longer exist".into()
    }));
}

#[test]
fn claims_of_stopped_terminated_or_absent_instances_are_released_once() {
    let c = config();
    let mut o = converged(&c, 3);
    o.instances[0].state = InstanceState::Stopped; // i-1
    o.claims[1] = claim_gen(2, 4, "i-gone"); // not among the fleet's instances at all
    o.claims.insert(1, claim_gen(2, 3, "i-older"));
    o.claims[3] = claim_gen(3, 1, "free"); // released already
    let p = plan(&c, 3, &o);
    let released: Vec<(&str, u64, &str)> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseClaim {
                runner,
                generation,
                instance,
            } => Some((runner.as_str(), *generation, instance.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        released,
        [
            ("00000001-0000-5000-8000-000000000000", 2, "i-1"),
            ("00000002-0000-5000-8000-000000000000", 5, "i-gone"),
        ]
    );
    // Released generations are superseded by the free one; the older one goes too; the
    // free newest of runner 3 stays.
    let Some(Action::PruneClaims { names }) = p.actions.last() else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(
        names,
        &[
            claim_gen(1, 1, "").name,
            claim_gen(2, 3, "").name,
            claim_gen(2, 4, "").name
        ]
    );
    assert_eq!(p.summary().change, 2);
}

#[test]
fn pending_and_running_claimants_keep_their_claims_and_only_old_generations_go() {
    let c = config();
    let mut o = converged(&c, 2);
    o.instances[0].state = InstanceState::Pending;
    // Runner 1: its offer (generation 0, never pruned), an old claim, the live one.
    o.claims[0] = claim_gen(1, 2, "i-1");
    o.claims.insert(0, claim_gen(1, 1, "i-old"));
    o.claims.insert(0, claim_gen(1, 0, "free"));
    let p = plan(&c, 2, &o);
    assert_eq!(kinds(&p), ["prune_claims"]);
    assert_eq!(
        p.actions[0],
        Action::PruneClaims {
            names: vec![claim_gen(1, 1, "").name]
        }
    );
}

#[test]
fn claims_of_instances_this_plan_terminates_are_released_after_them() {
    let c = config();
    let mut o = converged(&c, 2);
    // No live request any more: its instances run on, and are replaced a batch at a time
    // (a new request hosts the runners whose hosts go); each replaced host's claim would
    // name a dead instance on the next plan unless released now, after the termination.
    o.fleets[0].state = FleetPhase::CancelledRunning;
    let p = plan(&c, 2, &o);
    let k = kinds(&p);
    let terminated = k.iter().position(|x| x == "terminate_instances").unwrap();
    let first_release = k.iter().position(|x| x == "release_claim").unwrap();
    assert!(terminated < first_release, "{k:?}");
    assert_eq!(k.iter().filter(|x| *x == "release_claim").count(), 1);
    assert!(
        matches!(p.actions[0], Action::RequestFleet { target: 1, .. }),
        "{k:?}"
    );
    // With a batch of 2, both go at once, and both claims are released after them.
    let mut c = c;
    c.rollout.batch = crate::config::RolloutBatch::Count(2);
    let k = kinds(&plan(&c, 2, &o));
    let terminated = k.iter().position(|x| x == "terminate_instances").unwrap();
    let first_release = k.iter().position(|x| x == "release_claim").unwrap();
    assert!(terminated < first_release, "{k:?}");
    assert_eq!(k.iter().filter(|x| *x == "release_claim").count(), 2);
}

#[test]
fn unlisted_instances_wait_while_the_request_is_launching() {
    let c = config();
    // Scale-up: the request lists 2 of a target of 3, so an unlisted tagged instance may
    // be its launch in flight: not a stray.
    let mut o = converged(&c, 3);
    o.fleets[0].instance_ids.pop();
    o.instances[2].id = "i-new".into();
    o.claims[2].holder = ClaimHolder::parse("i-new");
    assert!(plan(&c, 3, &o).is_empty(), "{:?}", plan(&c, 3, &o).actions);
    // Fulfilled: the same instance is a stray.
    o.fleets[0].target = 2;
    o.runners.pop();
    o.parameters.pop();
    o.scope_runner_count = 2;
    let p = plan(&c, 2, &o);
    assert!(
        p.actions.contains(&Action::TerminateStrayInstances {
            ids: vec!["i-new".into()]
        }),
        "{:?}",
        p.actions
    );
    // Stray instances are never scale-down terminations.
    assert!(!kinds(&p).contains(&"terminate_instances".to_owned()));
}

#[test]
fn the_launch_tag_and_the_grace_decide_for_instances_no_listing_shows() {
    let c = config();
    // Fulfilled at 3, but the listing lags: i-3 is not listed.
    let fulfilled = || {
        let mut o = converged(&c, 3);
        o.fleets[0].instance_ids.retain(|i| i != "i-3");
        o.fleets[0].target = 2;
        o.runners.pop();
        o.parameters.pop();
        o.scope_runner_count = 2;
        o.claims.pop();
        o.observed_at = "2026-12-01T12:00:00Z".parse().unwrap();
        o
    };
    let strays = |o: &Observed| {
        plan(&c, 2, o)
            .actions
            .into_iter()
            .find_map(|a| match a {
                Action::TerminateStrayInstances { ids } => Some(ids),
                _ => None,
            })
            .unwrap_or_default()
    };
    // Its launch tag names the kept request: the fleet's own, whatever the listing says.
    let mut o = fulfilled();
    o.instances[2].fleet_request = Some(o.fleets[0].id.clone());
    assert_eq!(strays(&o), Vec::<String>::new());
    // Tagged with a request that is not the kept one: a leftover.
    o.instances[2].fleet_request = Some("sfr-gone".into());
    assert_eq!(strays(&o), ["i-3"]);
    // No tag (launched by hand from the template): left alone for the grace (600 s).
    o.instances[2].fleet_request = None;
    o.instances[2].launched_at = Some("2026-12-01T11:51:00Z".parse().unwrap());
    assert_eq!(strays(&o), Vec::<String>::new());
    o.instances[2].launched_at = Some("2026-12-01T11:49:59Z".parse().unwrap());
    assert_eq!(strays(&o), ["i-3"]);
}

#[test]
fn busy_orphans_wait_unless_forced_and_are_replaced_at_once() {
    let c = config();
    let mut o = converged(&c, 2);
    o.runners[0] = runner(1, "ONLINE", true);
    o.parameters.remove(0);
    let p = plan(&c, 2, &o);
    // The orphan keeps its name and its instance (counted in the target) while busy.
    assert_eq!(
        kinds(&p),
        ["create_runner", "set_fleet_target"],
        "{:?}",
        p.actions
    );
    assert_eq!(
        p.actions[0],
        Action::CreateRunner {
            name: "bbfleet-ci-3".into()
        }
    );
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
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0].contains("runner bbfleet-ci-1 has no stored command"),
        "{:?}",
        p.warnings
    );
    let forced = plan_apply(&c, &desired_for(&c, 2), &o, PlanOptions { force: true }).unwrap();
    assert!(kinds(&forced).contains(&"delete_orphan_runner".to_owned()));
    assert!(forced.warnings.is_empty());
}

#[test]
fn plans_do_not_depend_on_the_order_of_observed_lists() {
    let c = config();
    let mut o = converged(&c, 4);
    o.parameters.push(param(8));
    o.parameters.push(param(7));
    o.claims.push(claim_gen(1, 2, "i-x"));
    o.instances.push(instance("i-s1", "running"));
    o.instances.push(instance("i-s0", "running"));
    let p = plan(&c, 2, &o);
    let mut r = o.clone();
    r.runners.reverse();
    r.parameters.reverse();
    r.claims.reverse();
    r.instances.reverse();
    r.fleets[0].instance_ids.reverse();
    assert_eq!(plan(&c, 2, &r), p);
}

#[test]
fn running_strays_of_busy_runners_wait_but_stopped_ones_go_with_their_claim() {
    // Found by the property tests: a stopped stray named by a busy runner's claim was
    // held (not terminated) while its claim was released, so the next plan terminated it.
    let c = config();
    let mut o = converged(&c, 2);
    o.fleets.clear(); // no live request: both instances are strays
    for i in &mut o.instances {
        i.fleet_request = Some("sfr-1".into()); // the launch tag of the gone request
    }
    o.runners[0] = runner(1, "ONLINE", true);
    o.runners[1] = runner(2, "ONLINE", true);
    o.instances[1].state = InstanceState::Stopped; // i-2
    let p = plan(&c, 2, &o);
    let Some(Action::TerminateStrayInstances { ids }) = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::TerminateStrayInstances { .. }))
    else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(ids, &["i-2".to_owned()]);
    // The busy runner's host is a host of the replaced request: it waits, as the roll-out
    // note says, and is never terminated.
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("1 host on fleet request sfr-1 (replaced)")
                && n.contains("1 busy wait")),
        "{:?}",
        p.notes
    );
    assert!(!p.actions.iter().any(
        |a| matches!(a, Action::TerminateInstances { ids, .. } if ids.contains(&"i-1".to_owned()))
    ));
    assert!(p
        .actions
        .iter()
        .any(|a| matches!(a, Action::ReleaseClaim { instance, .. } if instance == "i-2")));
    assert!(!p
        .actions
        .iter()
        .any(|a| matches!(a, Action::ReleaseClaim { instance, .. } if instance == "i-1")));
    // --force replaces the busy runner's host too (drained first, like every replacement),
    // within the batch (runner 2, whose host is stopped, already counts as down).
    let mut c = c;
    c.rollout.batch = crate::config::RolloutBatch::Count(2);
    let forced = plan_apply(&c, &desired_for(&c, 2), &o, PlanOptions { force: true }).unwrap();
    assert!(forced.actions.contains(&Action::TerminateStrayInstances {
        ids: vec!["i-2".into()]
    }));
    assert!(forced
        .actions
        .iter()
        .any(|a| matches!(a, Action::DrainRunner { instance: Some(i), .. } if i == "i-1")));
    assert!(forced.actions.iter().any(
        |a| matches!(a, Action::TerminateInstances { ids, .. } if ids == &["i-1".to_owned()])
    ));
}
