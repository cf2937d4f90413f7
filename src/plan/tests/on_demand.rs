//! The fleet API switch and the on-demand part: base, fallback, back to spot, cost cap.

use super::*;
use crate::config::{CostCap, Fallback, FleetApiKind};

fn target_action(p: &Plan) -> Option<(u32, u32, String)> {
    p.actions.iter().find_map(|a| match a {
        Action::SetFleetTarget {
            to,
            on_demand,
            split,
            ..
        } => Some((*to, *on_demand, split.clone())),
        Action::RequestFleet {
            target,
            on_demand,
            reason,
            ..
        } => Some((*target, *on_demand, reason.clone())),
        _ => None,
    })
}

/// Time 0 is the epoch; the fleet's target was set `ago` seconds before the reading.
fn at(o: &mut Observed, ago: i64) {
    o.observed_at = jiff::Timestamp::from_second(100_000).unwrap();
    o.fleets[0].target_at = Some(jiff::Timestamp::from_second(100_000 - ago).unwrap());
}

fn with_fallback() -> Config {
    let mut c = config();
    c.spot.fallback = Fallback::OnDemand;
    c.spot.fallback_grace_seconds = 600;
    c
}

#[test]
fn switching_the_api_is_a_roll_out_that_terminates_no_busy_host() {
    let mut c = config();
    let mut o = converged(&c, 3);
    o.runners[0].busy = true;
    o.runners[1].busy = true;
    c.spot.fleet_api = FleetApiKind::Ec2Fleet;
    c.spot.fleet_role = String::new();
    let p = plan(&c, 3, &o);
    assert_eq!(kinds(&p)[..2], ["request_fleet", "cancel_fleet"]);
    let Action::RequestFleet { reason, .. } = &p.actions[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("spot.fleet_api is now ec2-fleet"),
        "{reason}"
    );
    assert!(matches!(
        p.actions[1],
        Action::CancelFleet {
            terminate_instances: false,
            ..
        }
    ));
    // Only the idle runner's host (i-3) goes in this batch; the busy ones stay.
    for a in &p.actions {
        if let Action::TerminateInstances { ids, .. } = a {
            assert_eq!(ids, &["i-3".to_owned()], "{a:?}");
        }
    }
    // The same world seen with the new API's request listed: the request stays.
    let mut after = o.clone();
    after.fleets[0].api = FleetApiKind::Ec2Fleet;
    after.fleets[0].id = "fleet-1".into();
    after.fleets[0].role = None;
    after.fleets[0].fingerprint = Some(desired_for(&c, 3).fleet.fingerprint());
    assert!(plan(&c, 3, &after).actions.is_empty());
}

#[test]
fn the_on_demand_base_is_part_of_every_target_and_never_above_it() {
    let mut c = config();
    c.capacity.on_demand_base = 2;
    let o = converged(&c, 3);
    assert_eq!(
        target_action(&plan(&c, 3, &o)),
        Some((3, 2, "on-demand base 2".into()))
    );
    let mut o1 = converged(&c, 1);
    o1.fleets[0].on_demand_target = 1;
    assert!(
        plan(&c, 1, &o1).actions.is_empty(),
        "a base of 2 with 1 runner is 1"
    );
    let mut empty = converged(&c, 3);
    empty.fleets.clear();
    let (total, od, why) = target_action(&plan(&c, 3, &empty)).unwrap();
    assert_eq!((total, od), (3, 2), "{why}");
}

#[test]
fn missing_spot_capacity_falls_back_after_the_grace_or_on_a_capacity_error() {
    let c = with_fallback();
    let mut o = converged(&c, 4);
    o.fleets[0].spot_fulfilled = Some(1);
    o.fleets[0].fulfilled = Some(1 + o.fleets[0].on_demand_target);
    // Set a minute ago, no error yet: the fleet may still be launching.
    at(&mut o, 60);
    assert!(plan(&c, 4, &o).actions.is_empty());
    // An error in the history: fall back now.
    o.fleets[0].capacity_errors = vec!["launchSpecUnusable: InsufficientInstanceCapacity".into()];
    let (total, od, why) = target_action(&plan(&c, 4, &o)).unwrap();
    assert_eq!((total, od), (4, 3), "{why}");
    assert!(
        why.contains("3 spot runner(s) missing") && why.contains("InsufficientInstanceCapacity"),
        "{why}"
    );
    // No error, but unfulfilled past the grace: fall back too.
    o.fleets[0].capacity_errors.clear();
    at(&mut o, 601);
    let (_, od, why) = target_action(&plan(&c, 4, &o)).unwrap();
    assert_eq!(od, 3, "{why}");
    assert!(why.contains("unfulfilled for over 600s"), "{why}");
    // Without spot.fallback, nothing moves.
    assert!(plan(&config(), 4, &o).actions.is_empty());
}

#[test]
fn the_fallback_holds_then_goes_back_to_spot_when_spot_is_quiet_past_the_grace() {
    let mut c = with_fallback();
    c.capacity.on_demand_base = 1;
    let mut o = converged(&c, 4);
    o.fleets[0].on_demand_target = 3;
    o.fleets[0].spot_fulfilled = Some(1);
    o.fleets[0].fulfilled = Some(1 + o.fleets[0].on_demand_target);
    // Raised a minute ago, errors still in the window: it holds.
    at(&mut o, 60);
    o.fleets[0].capacity_errors = vec!["launchSpecUnusable: no Spot capacity".into()];
    assert!(plan(&c, 4, &o).actions.is_empty());
    // Quiet, but not for the grace yet: it holds.
    o.fleets[0].capacity_errors.clear();
    assert!(plan(&c, 4, &o).actions.is_empty());
    // Quiet past the grace, spot part fulfilled: back to the base.
    at(&mut o, 601);
    let (total, od, why) = target_action(&plan(&c, 4, &o)).unwrap();
    assert_eq!((total, od), (4, 1), "{why}");
    assert!(why.starts_with("back to spot"), "{why}");
    // Applied: the part is 1, three on-demand hosts run. The fleet lacks nothing, so no
    // new fallback; the idle on-demand hosts above the part are replaced a batch at a
    // time, busy ones never.
    o.fleets[0].on_demand_target = 1;
    o.runners[0].busy = true;
    for i in &mut o.instances[..3] {
        i.on_demand = true;
    }
    let p = plan(&c, 4, &o);
    assert_eq!(target_action(&p), None, "{:?}", p.actions);
    let ended: Vec<&String> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::TerminateInstances { ids, .. } => Some(ids),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(ended.len(), 1, "one batch: {ended:?}");
    assert_ne!(ended[0], "i-1", "i-1 runs a step");
    assert!(
        p.notes[0].contains("2 hosts on on-demand beyond the fleet's on-demand part of 1"),
        "{:?}",
        p.notes
    );
    o.fleets[0].on_demand_target = 3;
    // Scaling down while it holds keeps the part within the new target.
    at(&mut o, 60);
    let p = plan(&c, 2, &o);
    let (total, od, _) = target_action(&p).unwrap();
    assert_eq!((total, od), (2, 2));
}

#[test]
fn the_cost_cap_holds_a_fallback_back_and_says_so() {
    let mut c = with_fallback();
    c.capacity.cost_cap = Some(CostCap {
        max_hourly_cost: 0.50,
        on_demand_hourly_price: 0.10,
    });
    let mut o = converged(&c, 6);
    o.fleets[0].spot_fulfilled = Some(0);
    o.fleets[0].fulfilled = Some(0);
    o.fleets[0].capacity_errors = vec!["launchSpecUnusable: no Spot capacity".into()];
    o.spot_price = Some(0.04);
    // 6 on-demand would cost 0.60/h; 4 on-demand + 2 spot cost 0.48/h.
    let p = plan(&c, 6, &o);
    let (total, od, _) = target_action(&p).unwrap();
    assert_eq!((total, od), (6, 4));
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(
        p.warnings[0].contains("max_hourly_cost 0.50/h"),
        "{}",
        p.warnings[0]
    );
    // Without a spot price, a spot runner counts at the on-demand price: nothing fits
    // above the base, and the plan says why.
    o.spot_price = None;
    let p = plan(&c, 6, &o);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.warnings[0].contains("assumed: no spot price"),
        "{}",
        p.warnings[0]
    );
}
