//! The simulator's speed: `bbfleet simulate` on the shipped 30-day office trace (49,718
//! steps), the release binary end to end (process start, config, trace, four policies,
//! JSON out), and its parts through the library. Run with `scripts/bench.sh` (or `cargo
//! bench --bench simulate`); it prints Markdown and asserts no timing.

use std::path::Path;
use std::time::{Duration, Instant};

use bbfleet::config::Config;
use bbfleet::simulate::{self, engine, Model, POLICIES};

const KIT: testkit::Kit = testkit::kit!();
/// The goal: a 30-day trace of 50,000 steps in under 5 s.
const GOAL: Duration = Duration::from_secs(5);
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_path = root.join("examples/bbfleet.toml");
    let trace = root.join("examples/traces/office.csv");
    let wall: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let out = std::process::Command::new(KIT.bbfleet)
                .arg("--config")
                .arg(&config_path)
                .args(["--output", "json", "simulate", "--trace"])
                .arg(&trace)
                .env_clear()
                .output()
                .expect("run bbfleet");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed()
        })
        .collect();
    let config = Config::load(&config_path).unwrap();
    let t = Instant::now();
    let steps = simulate::trace::read(&trace).unwrap();
    let parse = t.elapsed();
    let jobs = simulate::jobs(&config, &steps);
    let prices = config
        .spot
        .instance_types
        .iter()
        .map(|t| config.spot.hourly_prices[t])
        .collect();
    let model = Model::new(&config, config.simulate.seed, prices, (0, 0.0));
    let wall_median = median(wall.clone());
    println!("## The simulator\n");
    println!(
        "`bbfleet simulate --trace examples/traces/office.csv` ({} steps over 30 days, the four policies), release build, {RUNS} runs.\n",
        steps.len()
    );
    println!("| | time | against the 5 s goal, or rate |");
    println!("|---|--:|--:|");
    println!(
        "| end to end (median of {RUNS}; fastest {:.3} s) | {:.3} s | {:.0}x under |",
        wall.iter().min().unwrap().as_secs_f64(),
        wall_median.as_secs_f64(),
        GOAL.as_secs_f64() / wall_median.as_secs_f64()
    );
    println!(
        "| reading the trace (CSV, times, sort) | {:.3} s | |",
        parse.as_secs_f64()
    );
    for name in POLICIES {
        let (policy, interval) = simulate::policy(&config, name).unwrap();
        let t = Instant::now();
        let o = engine::run(&model, &jobs, &policy, interval);
        let took = t.elapsed();
        println!(
            "| policy `{name}`: {} ticks, {} changes | {:.3} s | {:.1} M steps/s |",
            (o.span_ms.1 - o.span_ms.0) / interval.max(1),
            o.changes.len(),
            took.as_secs_f64(),
            steps.len() as f64 / took.as_secs_f64().max(1e-9) / 1e6
        );
    }
}
