//! The metrics of a made-up observation: counts, the text, pricing, the file.

use super::*;
use crate::config::FleetApiKind;
use crate::world::{
    Claim, ClaimHolder, FleetPhase, FleetState, LaunchTemplateState, Runner, RunnerStatus,
};
use crate::world::{InstanceInfo, InstanceState};

fn host(
    id: &str,
    ty: &str,
    on_demand: bool,
    state: InstanceState,
    version: Option<i64>,
) -> InstanceInfo {
    InstanceInfo {
        id: id.to_owned(),
        instance_type: ty.to_owned(),
        az: "us-east-1a".to_owned(),
        state,
        fleet_request: Some("sfr-1".to_owned()),
        launched_at: None,
        template_version: version,
        on_demand,
    }
}

fn runner(n: u32, status: RunnerStatus, busy: bool) -> Runner {
    Runner {
        uuid: format!("{{0000000{n}-0000-0000-0000-000000000000}}"),
        name: format!("bbfleet-ci-{n}"),
        labels: Vec::new(),
        status,
        busy,
        status_since: None,
    }
}

/// Three runners (one claimed), three hosts (one on-demand, one pending), a live request.
fn observed() -> Observed {
    let running = InstanceState::Running;
    Observed {
        runners: vec![
            runner(1, RunnerStatus::Online, true),
            runner(2, RunnerStatus::Online, false),
            runner(3, RunnerStatus::Offline, false),
        ],
        claims: vec![Claim {
            name: "/bbfleet/ci/claims/00000001-0000-0000-0000-000000000000/1".to_owned(),
            runner_uuid: "00000001-0000-0000-0000-000000000000".to_owned(),
            generation: 1,
            holder: ClaimHolder::Instance("i-1".to_owned()),
            written_at: None,
        }],
        instances: vec![
            host("i-1", "m6i.large", false, running, Some(2)),
            host("i-2", "c6i.xlarge", true, running, Some(1)),
            host("i-3", "m6i.large", false, InstanceState::Pending, None),
        ],
        fleets: vec![FleetState {
            id: "sfr-1".to_owned(),
            state: FleetPhase::Active,
            target: 3,
            fingerprint: None,
            instance_ids: vec!["i-1".to_owned(), "i-2".to_owned()],
            role: None,
            strategy: None,
            api: FleetApiKind::SpotFleet,
            on_demand_target: 1,
            fulfilled: Some(2),
            spot_fulfilled: Some(1),
            target_at: None,
            capacity_errors: Vec::new(),
        }],
        launch_template: Some(LaunchTemplateState {
            id: "lt-1".to_owned(),
            name: "bbfleet-ci".to_owned(),
            latest_version: 2,
            fingerprint: None,
        }),
        ..Observed::default()
    }
}

fn prices(spot: &[(&str, f64)], on_demand: Option<f64>) -> Prices {
    Prices {
        spot: spot.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect(),
        history: BTreeMap::new(),
        on_demand,
    }
}

fn metrics(prices: &Prices) -> FleetMetrics {
    let observed = observed();
    let view = StatusView::new("ci", "Spot Fleet", FleetApiKind::SpotFleet, &observed);
    FleetMetrics::new(&view, &observed, prices)
}

#[test]
fn the_observation_is_counted() {
    let m = metrics(&prices(&[("m6i.large", 0.05)], Some(0.17)));
    assert_eq!(m.runners["ONLINE"], 2);
    assert_eq!(m.runners["OFFLINE"], 1);
    assert_eq!(m.runners["UNREGISTERED"], 0);
    assert_eq!((m.online, m.busy, m.claimed), (2, 1, 1));
    assert_eq!(m.hosts[&("spot", "2".to_owned(), "running")], 1);
    assert_eq!(m.hosts[&("on-demand", "1".to_owned(), "running")], 1);
    assert_eq!(m.hosts[&("spot", "unknown".to_owned(), "pending")], 1);
    let r = m.request.unwrap();
    assert_eq!(
        (r.target, r.on_demand_target, r.fulfilled, r.spot_fulfilled),
        (3, 1, Some(2), Some(1))
    );
    // The pending host is not billed yet.
    assert_eq!(m.cost.usd_per_hour["spot"], 0.05);
    assert_eq!(m.cost.usd_per_hour["on-demand"], 0.17);
    assert!(m.cost.unpriced.is_empty());
}

#[test]
fn the_text_is_openmetrics_with_the_fleet_label() {
    let text = metrics(&prices(&[("m6i.large", 0.05)], Some(0.17))).encode();
    for line in [
        "# HELP bbfleet_runners The fleet's runners by Bitbucket status.",
        "# TYPE bbfleet_runners gauge",
        "bbfleet_runners{fleet=\"ci\",status=\"OFFLINE\"} 1",
        "bbfleet_runners{fleet=\"ci\",status=\"ONLINE\"} 2",
        "bbfleet_runners_busy{fleet=\"ci\"} 1",
        "bbfleet_runners_claimed{fleet=\"ci\"} 1",
        "bbfleet_hosts{fleet=\"ci\",lifecycle=\"spot\",state=\"pending\",template_version=\"unknown\"} 1",
        "bbfleet_launch_template_latest_version{fleet=\"ci\"} 2",
        "bbfleet_fleet_target_capacity{fleet=\"ci\"} 3",
        "bbfleet_fleet_spot_fulfilled_capacity{fleet=\"ci\"} 1",
        "bbfleet_hosts_unpriced{fleet=\"ci\"} 0",
        "# UNIT bbfleet_estimated_cost_usd_per_hour usd_per_hour",
        "bbfleet_estimated_cost_usd_per_hour{fleet=\"ci\",lifecycle=\"on-demand\"} 0.17",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Samples in a fixed order: the same observation encodes to the same text.
    assert_eq!(
        text,
        metrics(&prices(&[("m6i.large", 0.05)], Some(0.17))).encode()
    );
}

#[test]
fn a_host_that_cannot_be_priced_leaves_the_cost_out() {
    // No on-demand price: the running on-demand host is unpriced.
    let m = metrics(&prices(&[("m6i.large", 0.05)], None));
    assert_eq!(m.cost.unpriced, ["i-2"]);
    let text = m.encode();
    assert!(
        text.contains("bbfleet_hosts_unpriced{fleet=\"ci\"} 1"),
        "{text}"
    );
    assert!(!text.contains("estimated_cost"), "{text}");
}

#[test]
fn spot_hosts_are_priced_by_the_config_then_by_their_pool_history() {
    let mut p = prices(&[("c6i.xlarge", 0.09)], Some(0.17));
    let hosts = observed().instances;
    // Only the running spot host of an unpriced type is looked up (not the pending one).
    assert_eq!(
        p.history_wanted(&hosts),
        (vec!["m6i.large".to_owned()], vec!["us-east-1a".to_owned()])
    );
    assert_eq!(p.of(&hosts[0]), None);
    p.history
        .insert(("m6i.large".to_owned(), "us-east-1b".to_owned()), 0.5);
    assert_eq!(
        p.of(&hosts[0]),
        None,
        "another zone's price is not this pool's"
    );
    p.history
        .insert(("m6i.large".to_owned(), "us-east-1a".to_owned()), 0.04);
    assert_eq!(p.of(&hosts[0]), Some(0.04));
    // The configured price wins over the history; the on-demand host has its own.
    p.spot.insert("m6i.large".to_owned(), 0.06);
    assert_eq!(p.of(&hosts[0]), Some(0.06));
    assert_eq!(p.of(&hosts[1]), Some(0.17));
    assert_eq!(p.history_wanted(&hosts), (Vec::new(), Vec::new()));
}

#[test]
fn without_a_live_request_its_families_are_left_out() {
    let mut observed = observed();
    observed.fleets[0].state = FleetPhase::Cancelled;
    let view = StatusView::new("ci", "Spot Fleet", FleetApiKind::SpotFleet, &observed);
    let text = FleetMetrics::new(&view, &observed, &Prices::default()).encode();
    assert!(!text.contains("bbfleet_fleet_"), "{text}");
}

#[test]
fn the_file_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbfleet.prom");
    write_atomically(&path, b"first\n").unwrap();
    write_atomically(&path, b"second\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["bbfleet.prom"], "no temporary file is left");
    let missing = dir.path().join("no-such-dir").join("bbfleet.prom");
    assert!(write_atomically(&missing, b"x").is_err());
}

#[test]
fn the_estimate_is_summed_to_a_millionth_of_a_dollar() {
    let hosts: Vec<InstanceInfo> = (1..=3)
        .map(|n| {
            host(
                &format!("i-{n}"),
                "m6i.large",
                false,
                InstanceState::Running,
                None,
            )
        })
        .collect();
    let cost = Cost::of(&hosts, &prices(&[("m6i.large", 0.05)], None));
    assert_eq!(cost.usd_per_hour["spot"], 0.15);
    assert_eq!(cost.usd_per_hour["on-demand"], 0.0);
    assert!(
        cost.unpriced.is_empty(),
        "no on-demand host runs: none unpriced"
    );
}
