//! The simulator's invariants, its determinism and the `atlassian` policy against ticks
//! computed by hand.

use proptest::prelude::*;

use super::engine::{run, Job, Model, Outcome};
use super::*;
use crate::config::{AutoscaleConfig, AutoscalePolicy, Config, LaunchDelay};

fn config() -> Config {
    Config::parse(crate::config::tests::GOOD, "t").unwrap()
}

/// 09:00 UTC on a Monday.
const T0: i64 = 1_772_442_000_000;

fn model(seed: u64, rate: f64, delay: LaunchDelay) -> Model {
    Model {
        seed,
        launch_delay: delay,
        interruptions_per_hour: rate,
        spot_prices: vec![0.04, 0.05, 0.09],
        on_demand: (1, 0.2),
    }
}

fn lognormal() -> LaunchDelay {
    LaunchDelay::Lognormal {
        median_seconds: 100.0,
        p90_seconds: 140.0,
    }
}

/// A day of steps: `n` submissions over 10 hours, some bursts, some unmatched.
fn jobs(seed: u64, n: usize) -> Vec<Job> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut jobs: Vec<Job> = (0..n)
        .map(|i| Job {
            submitted_ms: T0 + rng.i64(0..36_000_000) / if i % 5 == 0 { 50 } else { 1 },
            duration_ms: rng.i64(10_000..1_800_000),
            matches: rng.u8(..) > 3,
        })
        .collect();
    jobs.sort_by_key(|j| j.submitted_ms);
    jobs
}

/// A model without an on-demand base, interruptions or random delays.
fn no_base(delay_seconds: f64) -> Model {
    Model {
        on_demand: (0, 0.0),
        ..model(
            1,
            0.0,
            LaunchDelay::Fixed {
                seconds: delay_seconds,
            },
        )
    }
}

/// `n` steps of `duration_s` submitted together at `at_s` after T0.
fn burst(n: usize, at_s: i64, duration_s: i64) -> Vec<Job> {
    (0..n)
        .map(|_| Job {
            submitted_ms: T0 + at_s * 1000,
            duration_ms: duration_s * 1000,
            matches: true,
        })
        .collect()
}

fn atlassian() -> AutoscaleConfig {
    config().simulate.atlassian
}

fn check_invariants(jobs: &[Job], m: &Model, o: &Outcome) {
    for (j, start) in jobs.iter().zip(&o.first_start_ms) {
        if let Some(start) = start {
            assert!(
                *start >= j.submitted_ms,
                "a step started before it was submitted"
            );
        }
    }
    let completed: i64 = jobs
        .iter()
        .zip(&o.completed)
        .filter(|(_, done)| **done)
        .map(|(j, _)| j.duration_ms)
        .sum();
    assert_eq!(
        o.busy_ms,
        completed + o.lost_ms,
        "busy = durations + reruns"
    );
    assert_eq!(o.waits_ms.len() as u64 + o.failed, jobs.len() as u64);
    let hosts: i64 = o.host_ms.iter().sum();
    assert_eq!(hosts, o.busy_ms + o.idle_ms + o.booting_ms, "host time");
    let prices = m.spot_prices.iter().chain([&m.on_demand.1]);
    let cost: f64 = o
        .host_ms
        .iter()
        .zip(prices)
        .map(|(ms, p)| *ms as f64 / 3_600_000.0 * p)
        .sum();
    assert!((cost - o.cost_usd).abs() < 1e-9, "{cost} != {}", o.cost_usd);
    assert!(o.idle_ms >= 0 && o.booting_ms >= 0 && o.lost_ms >= 0);
    assert!(o.waits_ms.iter().all(|w| *w >= 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every policy, any seed, with interruptions frequent enough to rerun steps.
    #[test]
    fn invariants_hold_under_every_policy(seed in 0u64..1_000, n in 1usize..400, rate in 0.0f64..2.0) {
        let c = config();
        let m = model(seed, rate, lognormal());
        let jobs = jobs(seed, n);
        for name in POLICIES {
            let (p, interval) = policy(&c, name).unwrap();
            let o = run(&m, &jobs, &p, interval);
            check_invariants(&jobs, &m, &o);
        }
    }
}

#[test]
fn interruptions_rerun_steps_and_the_same_seed_gives_the_same_run() {
    let c = config();
    let jobs = jobs(7, 300);
    let (p, interval) = policy(&c, "bbfleet").unwrap();
    let a = run(&model(7, 1.0, lognormal()), &jobs, &p, interval);
    let b = run(&model(7, 1.0, lognormal()), &jobs, &p, interval);
    assert_eq!(a, b);
    assert!(a.reruns > 0 && a.lost_ms > 0, "{} reruns", a.reruns);
    let other = run(&model(8, 1.0, lognormal()), &jobs, &p, interval);
    assert_ne!(
        a, other,
        "another seed draws other delays and interruptions"
    );
    let report = |o: &Outcome| PolicyReport::new("bbfleet", o);
    assert_eq!(report(&a), report(&b));
}

#[test]
fn steps_fail_only_when_no_online_runner_matches() {
    let m = model(1, 0.0, LaunchDelay::Fixed { seconds: 60.0 });
    let step = |at: i64, matches: bool| Job {
        submitted_ms: T0 + at,
        duration_ms: 1_000,
        matches,
    };
    // Capacity 0: nobody is ever online, and every step fails at once.
    let zero = Policy::Fixed(0);
    let o = run(&m, &[step(0, true), step(5, true)], &zero, 3_600_000);
    assert_eq!((o.failed, o.waits_ms.len()), (2, 0));
    // One runner: a step with labels no runner has fails; the others queue.
    let one = Policy::Fixed(1);
    let o = run(
        &m,
        &[step(0, true), step(0, false), step(0, true)],
        &one,
        3_600_000,
    );
    assert_eq!(o.failed, 1);
    assert_eq!(o.waits_ms, [0, 1_000]);
}

#[test]
fn a_step_matches_by_its_labels_and_a_repository_fleet_by_its_repository() {
    let step = |labels: &[&str], repository: &str| Step {
        submitted_ms: T0,
        duration_ms: 1_000,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        repository: repository.to_owned(),
    };
    let steps = [
        step(&[], ""),
        step(&["self.hosted", "linux", "spot"], "web"),
        step(&["self.hosted", "linux.arm64"], "web"),
        step(&["gpu"], "api"),
        step(&["linux"], "api"),
    ];
    let matches =
        |c: &Config| -> Vec<bool> { super::jobs(c, &steps).iter().map(|j| j.matches).collect() };
    assert_eq!(matches(&config()), [true, true, false, false, true]);
    let repo = crate::config::tests::GOOD.replace(
        "workspace = \"acme\"",
        "workspace = \"acme\"\nrepository = \"web\"",
    );
    let c = Config::parse(&repo, "t").unwrap();
    assert_eq!(matches(&c), [true, true, false, false, false]);
}

/// Atlassian's policy, min 1, max 10, a 600 s poll and a 300 s cooldown, hosts ONLINE
/// 60 s after launch; four steps of 3000 s at 100 s. By hand:
/// - 0: capacity 0 is below min: 1 (online at once, the initial fleet);
/// - 100: A starts, B, C and D queue;
/// - 600: busy 1/1 = 1.0 > 0.8: ceil(1 x 1.5) = 2; 660 B starts;
/// - 1200: 2/2: ceil(3) = 3; 1260 C starts;
/// - 1800: 3/3: ceil(4.5) = 5; 1860 D starts, one idle;
/// - 2400 to 4800: 4/5 = 0.8, then 3/5, 2/5, 1/5 = 0.2: within bounds, held;
/// - D ends at 4860, the last step: the run ends.
#[test]
fn the_atlassian_policy_matches_ticks_computed_by_hand() {
    let cfg = atlassian();
    assert_eq!(
        (cfg.policy, cfg.interval_seconds, cfg.cooldown_seconds),
        (AutoscalePolicy::Atlassian, 600, 300)
    );
    let o = run(
        &no_base(60.0),
        &burst(4, 100, 3000),
        &Policy::Autoscale(&cfg),
        600_000,
    );
    let s = |t: i64| T0 + t * 1000;
    assert_eq!(o.changes, [(s(600), 2), (s(1200), 3), (s(1800), 5)]);
    assert_eq!(o.span_ms, (T0, s(4860)));
    let mut waits = o.waits_ms.clone();
    waits.sort_unstable();
    assert_eq!(waits, [0, 560_000, 1_160_000, 1_760_000]);
    // Idle: 1860 + 1200 + 600 + 0 + 3000 s; booting: four hosts of 60 s.
    assert_eq!(
        (o.idle_ms, o.booting_ms, o.busy_ms),
        (6_660_000, 240_000, 12_000_000)
    );
    // Host time 18900 s, types in turn: m6i 4860 + 3060, m6a 4260 + 3060, c6i 3660.
    assert_eq!(o.host_ms, [7_920_000, 7_320_000, 3_660_000, 0]);
    let r = PolicyReport::new("atlassian", &o);
    assert_eq!(r.queue_wait_p50_s, 560.0);
    assert_eq!(r.queue_wait_p90_s, 1760.0);
    assert_eq!(
        r.cost_usd, 0.28,
        "7920 s x 0.04 + 7320 s x 0.05 + 3660 s x 0.09"
    );
}

#[test]
fn the_cooldown_holds_the_next_atlassian_tick() {
    // With a poll shorter than the cooldown, the tick after a change holds.
    let cfg = AutoscaleConfig {
        interval_seconds: 120,
        ..atlassian()
    };
    let o = run(
        &no_base(30.0),
        &burst(6, 10, 2000),
        &Policy::Autoscale(&cfg),
        120_000,
    );
    let s = |t: i64| T0 + t * 1000;
    // 120: 1/1 -> 2; 240 and 360: cooldown (120 s, 240 s of 300); 480: 2/2 -> 3; 840: -> 5;
    // 1200: 5/5 -> 8; then 6 busy of 8 = 0.75: held, until the steps of 10, 150, 510 and
    // 870 (twice) end at 2010 to 2870: 1/8 = 0.125 at 2880 -> floor(8 x 0.5) = 4.
    assert_eq!(
        o.changes,
        [
            (s(120), 2),
            (s(480), 3),
            (s(840), 5),
            (s(1200), 8),
            (s(2880), 4)
        ]
    );
    assert_eq!(o.span_ms.1, s(1230 + 2000), "the last step started at 1230");
}

#[test]
fn the_bbfleet_policy_beats_atlassian_on_a_burst() {
    let c = config();
    let m = model(3, 0.0, lognormal());
    // A release: 30 shards at once, twice, on a quiet day.
    let mut jobs = burst(30, 600, 600);
    jobs.extend(burst(30, 14_400, 600));
    let report = |name| {
        let (p, interval) = policy(&c, name).unwrap();
        PolicyReport::new(name, &run(&m, &jobs, &p, interval))
    };
    let (a, b) = (report("atlassian"), report("bbfleet"));
    assert!(b.queue_wait_p90_s < a.queue_wait_p90_s, "{b:?} vs {a:?}");
    assert!(b.idle_runner_hours < a.idle_runner_hours, "{b:?} vs {a:?}");
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<i64> = (1..=10).collect();
    assert_eq!(report::percentile(&v, 0.5), 5);
    assert_eq!(report::percentile(&v, 0.9), 9);
    assert_eq!(report::percentile(&v, 0.99), 10);
    assert_eq!(report::percentile(&[], 0.5), 0);
}
