//! The fleet benchmark: the release `bbfleet` binary against a real `moto_server` and the
//! project's Bitbucket fake with 100 ms of latency on every request, all on loopback.
//! Run it with `scripts/bench.sh` (or `cargo bench --bench fleet`); it prints a Markdown
//! report (the tables of BENCHMARKS.md). It reports timings and never asserts them; it
//! exits non-zero only when a no-op run writes, or a tick's calls grow with the fleet.
//! The last two sections put the latency on AWS too (the recording proxy holds every AWS
//! request [`RTT`]): the no-op plan's depth in round trips, and an apply at Parameter
//! Store's standard throughput against the bound it sets.
//!
//! `BBFLEET_BENCH_ONLY=depth,throttled` runs only those sections (a quicker look; the
//! report of record is the whole run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bbfleet::execute::DEFAULT_CONCURRENCY;
use bitbucket_fake::FakeConfig;
use testkit::aws_rules::SSM_STANDARD_TPS;
use testkit::harness::Harness;

/// The test kit: the release `bbfleet` of this bench build (its AWS requests are dumped
/// into `target/tmp/aws-requests`, as the tests' are).
const KIT: testkit::Kit = testkit::kit!();

/// Latency the fake adds to every Bitbucket request: the round trip the bench assumes.
const RTT: Duration = Duration::from_millis(100);
/// Fleet sizes of the apply rows (the fake allows 100 runners per scope, as Bitbucket does).
const SIZES: [u32; 3] = [20, 50, 100];
/// Concurrencies tried at N = 100.
const SWEEP: [u32; 5] = [4, 8, 16, 32, 64];
/// Fleet sizes of the no-op plan's depth, and no-op plans per size (the fastest counts).
const DEPTH_SIZES: [u32; 2] = [20, 100];
const DEPTH_RUNS: usize = 3;
/// Fleet size of the apply at Parameter Store's rate.
const THROTTLED_SIZE: u32 = 100;
/// The Parameter Store operations AWS meters against the throughput quota, as the rules
/// layer does (`testkit/src/aws_rules/ssm.rs`): GetParameter(s), GetParametersByPath,
/// PutParameter (bbfleet calls no other `GetParameter*`).
fn is_metered(operation: &str) -> bool {
    operation.starts_with("ssm:GetParameter") || operation == "ssm:PutParameter"
}

/// What one bbfleet run cost.
#[derive(Debug, Default, Clone)]
struct Cost {
    wall: Duration,
    bitbucket_reads: u64,
    bitbucket_writes: u64,
    aws_reads: u64,
    aws_writes: u64,
    /// Calls by `service:Operation`, as bbfleet counted them.
    calls: BTreeMap<String, u64>,
    /// Requests the fake saw, and the writes among them.
    fake_requests: usize,
    fake_writes: usize,
    /// AWS requests the recording proxy saw, and the writes among them.
    wire_aws: usize,
    wire_aws_writes: usize,
    peak_rss_kib: u64,
}

impl Cost {
    fn writes(&self) -> u64 {
        self.bitbucket_writes + self.aws_writes
    }

    fn bitbucket(&self) -> u64 {
        self.bitbucket_reads + self.bitbucket_writes
    }

    fn aws(&self) -> u64 {
        self.aws_reads + self.aws_writes
    }

    /// "`service:Operation` n, ..."
    fn call_list(&self) -> String {
        self.calls
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A fleet world with `runners` capacity (max 100), an autoscale section, and a fake
/// with the bench latency.
async fn world(fleet: &str, runners: u32) -> (Harness, String) {
    world_with(fleet, runners, RTT, Duration::ZERO).await
}

/// [`world`], with [`RTT`] on every AWS request too.
async fn world_far(fleet: &str, runners: u32) -> (Harness, String) {
    world_with(fleet, runners, RTT, RTT).await
}

/// [`world`] with these latencies on Bitbucket's and AWS's requests.
async fn world_with(
    fleet: &str,
    runners: u32,
    bitbucket: Duration,
    aws: Duration,
) -> (Harness, String) {
    let fake = FakeConfig {
        latency: bitbucket,
        ..FakeConfig::default()
    };
    let h = Harness::with_fake(KIT, fleet, fake).await;
    h.recorder.delay(aws);
    let text = h.config(runners, None).replace(
        "max = 20\n",
        "max = 100\n\n[capacity.autoscale]\npolicy = \"atlassian\"\nmin = 1\nmax = 100\ncooldown_seconds = 0\n",
    );
    let path = h.write_config(&text);
    let cfg = path.to_str().expect("utf-8 temp path").to_owned();
    (h, cfg)
}

/// Runs bbfleet with `args` (after `--config`), exit code 0 required, and returns its cost.
async fn measure(h: &Harness, cfg: &str, args: &[&str]) -> Cost {
    h.fake.clear_requests();
    h.recorder.clear();
    let stats = h.dir.path().join("stats.json");
    let _ = std::fs::remove_file(&stats);
    let mut full = vec!["--config", cfg];
    full.extend_from_slice(args);
    let token = Harness::token();
    let env = [
        token[0],
        (
            "BBFLEET_STATS_FILE",
            stats.to_str().expect("utf-8 temp path"),
        ),
    ];
    let started = Instant::now();
    let run = h.run(&full, &env).await;
    let wall = started.elapsed();
    run.expect_code(0);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("bbfleet wrote its stats file"))
            .expect("stats JSON");
    let mut cost = Cost {
        wall,
        peak_rss_kib: summary["peak_rss_kib"].as_u64().unwrap_or(0),
        ..Cost::default()
    };
    for (name, n) in summary["calls"].as_object().expect("calls map") {
        let n = n.as_u64().unwrap_or(0);
        let (service, op) = name.split_once(':').unwrap_or(("", name));
        let write = if service == "bitbucket" {
            !op.starts_with("GET") && !op.contains("access_token")
        } else {
            bbfleet::stats::aws_kind(op) == bbfleet::stats::CallKind::Write
        };
        match (service == "bitbucket", write) {
            (true, false) => cost.bitbucket_reads += n,
            (true, true) => cost.bitbucket_writes += n,
            (false, false) => cost.aws_reads += n,
            (false, true) => cost.aws_writes += n,
        }
        cost.calls.insert(name.clone(), n);
    }
    // Names alone cannot tell a DryRun request (pre-flight: it changes nothing) from a
    // write; bbfleet's own total counts those as reads, so it decides the AWS split.
    if let Some(total) = summary["writes"].as_u64() {
        let aws_writes = total.saturating_sub(cost.bitbucket_writes);
        cost.aws_reads += cost.aws_writes.saturating_sub(aws_writes);
        cost.aws_writes = aws_writes;
    }
    cost.fake_requests = h.fake.requests().len();
    cost.fake_writes = h.fake.write_count();
    let wire = h.recorder.calls();
    cost.wire_aws = wire.len();
    cost.wire_aws_writes = wire.iter().filter(|c| c.is_write()).count();
    cost
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// 2 x RTT x ceil(N / concurrency): register + store for each wave of runners.
fn critical_path(n: u32, concurrency: u32) -> Duration {
    RTT * 2 * n.div_ceil(concurrency)
}

/// Apply from empty to `n` runners with `concurrency`, then destroy; returns the apply's
/// and the destroy's cost.
async fn apply_from_empty(fleet: &str, n: u32, concurrency: u32) -> (Cost, Cost) {
    let (h, cfg) = world(fleet, n).await;
    let c = concurrency.to_string();
    let apply = measure(&h, &cfg, &["apply", "--auto-approve", "--concurrency", &c]).await;
    assert_eq!(h.runners(None).len(), n as usize, "runners after apply");
    let destroy = measure(&h, &cfg, &["destroy", "--auto-approve"]).await;
    (apply, destroy)
}

/// The no-op `plan --no-preflight` at each of [`DEPTH_SIZES`], RTT on both sides: depth =
/// wall / RTT, beside the floor (no latency anywhere) and moto's extra DescribeParameters
/// pages (it pages by 10 whatever MaxResults asks; AWS by 50).
async fn noop_plan_depth(failures: &mut Vec<String>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### No-op plan depth, latency on both sides\n\n{} ms on every Bitbucket and AWS request; `plan --no-preflight`, fastest of {DEPTH_RUNS}. \
         Depth = wall / RTT. Floor: the same plan with no latency anywhere (process start, moto's own time). \
         DescribeParameters round trips: one after the other in each listing (a first page, then four parts in parallel if there is more); moto's extra pages: those beyond the first of the longer listing (moto pages by 10 whatever MaxResults asks, AWS by 50).\n",
        RTT.as_millis()
    );
    let _ = writeln!(
        out,
        "| N | wall | depth (wall / RTT) | floor | (wall - floor) / RTT | DescribeParameters round trips (runners / claims) | moto's extra pages | Bitbucket calls | AWS calls |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in DEPTH_SIZES {
        let (floor, _) = fastest_noop_plan(&format!("flat{n}"), n, Duration::ZERO, failures).await;
        let (cost, (runners, claims)) =
            fastest_noop_plan(&format!("depth{n}"), n, RTT, failures).await;
        let depth = cost.wall.as_secs_f64() / RTT.as_secs_f64();
        let above = cost.wall.saturating_sub(floor.wall).as_secs_f64() / RTT.as_secs_f64();
        let extra = runners.max(claims).saturating_sub(1);
        eprintln!(
            "bench: no-op plan N={n}: {}s, depth {depth:.1}",
            secs(cost.wall)
        );
        let _ = writeln!(
            out,
            "| {n} | {} s | {depth:.1} | {} s | {above:.1} | {runners} / {claims} | {extra} | {} | {} |",
            secs(cost.wall),
            secs(floor.wall),
            cost.bitbucket(),
            cost.aws(),
        );
    }
    out
}

/// The fastest of [`DEPTH_RUNS`] no-op plans of a fleet of `n` runners with `latency` on
/// both sides, and its DescribeParameters pages; the fleet is destroyed afterwards.
async fn fastest_noop_plan(
    fleet: &str,
    n: u32,
    latency: Duration,
    failures: &mut Vec<String>,
) -> (Cost, (usize, usize)) {
    let (h, cfg) = world_with(fleet, n, latency, latency).await;
    h.apply(&cfg, &[]).await;
    let args = ["plan", "--no-preflight", "--detailed-exitcode"];
    let mut best: Option<(Cost, (usize, usize))> = None;
    for _ in 0..DEPTH_RUNS {
        let cost = measure(&h, &cfg, &args).await;
        let pages = describe_pages(&h);
        if cost.writes() + (cost.fake_writes + cost.wire_aws_writes) as u64 != 0 {
            failures.push(format!("no-op plan at N = {n} wrote"));
        }
        if best.as_ref().is_none_or(|(b, _)| cost.wall < b.wall) {
            best = Some((cost, pages));
        }
    }
    measure(&h, &cfg, &["destroy", "--auto-approve"]).await;
    best.expect("at least one run")
}

/// The DescribeParameters round trips of the last run, one after the other, per listing
/// (runner commands, claims): a first page, then (if longer) 4 parts in parallel by the
/// first hex digit below the path (`0-3`, ..., `c-f`), each paged: 1 + the longest part.
fn describe_pages(h: &Harness) -> (usize, usize) {
    let calls = h.recorder.calls();
    let describe: Vec<&str> = calls
        .iter()
        .filter(|c| c.operation == "ssm:DescribeParameters")
        .map(|c| c.body.as_str())
        .collect();
    let chain = |listing: &str| {
        let first = describe.iter().any(|b| b.contains(listing)) as usize;
        let part = |d: char| {
            let prefix = format!("{listing}/{d}\"");
            describe.iter().filter(|b| b.contains(&prefix)).count()
        };
        first
            + ['0', '4', '8', 'c']
                .map(part)
                .into_iter()
                .max()
                .unwrap_or(0)
    };
    (chain("/runners"), chain("/claims"))
}

/// An apply of [`THROTTLED_SIZE`] runners from empty, Parameter Store throttled at
/// [`SSM_STANDARD_TPS`], RTT on both sides, against its bound: the metered calls the quota
/// admitted (a throttled one is refused before it counts) / rate.
async fn throttled_apply(failures: &mut Vec<String>) -> String {
    let n = THROTTLED_SIZE;
    let (h, cfg) = world_far("tps", n).await;
    h.recorder.rules(|r| r.ssm_rate = Some(SSM_STANDARD_TPS));
    let cost = measure(&h, &cfg, &["apply", "--auto-approve"]).await;
    let calls = h.recorder.calls();
    let metered = calls.iter().filter(|c| is_metered(&c.operation));
    let (throttled, admitted): (Vec<_>, Vec<_>) =
        metered.partition(|c| c.status == 400 && c.response.contains("ThrottlingException"));
    let problems = testkit::world::convergence_problems(&h, &cfg, n as usize).await;
    if !problems.is_empty() {
        failures.push(format!(
            "the throttled apply did not converge: {problems:?}"
        ));
    }
    h.recorder.rules(|r| r.ssm_rate = None);
    measure(&h, &cfg, &["destroy", "--auto-approve"]).await;
    let bound = admitted.len() as f64 / SSM_STANDARD_TPS;
    let ratio = cost.wall.as_secs_f64() / bound;
    eprintln!(
        "bench: throttled apply N={n}: {}s, bound {bound:.2}s",
        secs(cost.wall)
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Apply at Parameter Store's standard throughput\n\n{SSM_STANDARD_TPS} metered calls/s (GetParameter, GetParameters, GetParametersByPath, PutParameter; a burst of one second's worth), \
         {} ms on every Bitbucket and AWS request, concurrency {DEFAULT_CONCURRENCY}, from empty. Bound = metered calls admitted / rate.\n",
        RTT.as_millis()
    );
    let _ = writeln!(
        out,
        "| N | metered calls | throttled answers | bound | wall | ratio | converged |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|");
    let _ = writeln!(
        out,
        "| {n} | {} | {} | {bound:.2} s | {} s | {ratio:.2} | {} |",
        admitted.len(),
        throttled.len(),
        secs(cost.wall),
        if problems.is_empty() { "yes" } else { "no" },
    );
    out
}

/// Prints the report; exits non-zero after a failure.
fn finish(out: &str, failures: &[String]) {
    println!("{out}");
    if !failures.is_empty() {
        eprintln!("bench: FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
}

/// `BBFLEET_BENCH_ONLY`: only the sections it names (`depth`, `throttled`).
async fn sections(only: &str) {
    let mut failures = Vec::new();
    let mut out = String::new();
    if only.contains("depth") {
        out.push_str(&noop_plan_depth(&mut failures).await);
    }
    if only.contains("throttled") {
        out.push_str(&throttled_apply(&mut failures).await);
    }
    finish(&out, &failures);
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            })
            .trim()
            .to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem} RAM; {}; {}; moto {}",
        command_output("uname", &["-sr"]),
        command_output("rustc", &["--version"]),
        command_output("python3", &["-c", "import moto; print(moto.__version__)"]),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (one run, one report).
    if let Ok(only) = std::env::var("BBFLEET_BENCH_ONLY") {
        return sections(&only).await;
    }
    let binary = std::path::Path::new(KIT.bbfleet);
    let size = std::fs::metadata(binary).map_or(0, |m| m.len());
    let started = Instant::now();
    let concurrency = DEFAULT_CONCURRENCY as u32;
    let mut failures = Vec::new();
    let mut out = String::new();

    eprintln!("bench: apply from empty at N = {SIZES:?}, concurrency {concurrency} and 1");
    let mut rows = Vec::new();
    let mut peak_rss = 0;
    for n in SIZES {
        let (fast, fast_destroy) = apply_from_empty(&format!("par{n}"), n, concurrency).await;
        eprintln!(
            "bench: N={n} concurrency {concurrency}: {}s",
            secs(fast.wall)
        );
        let (slow, _) = apply_from_empty(&format!("seq{n}"), n, 1).await;
        eprintln!("bench: N={n} concurrency 1: {}s", secs(slow.wall));
        peak_rss = peak_rss
            .max(fast.peak_rss_kib)
            .max(slow.peak_rss_kib)
            .max(fast_destroy.peak_rss_kib);
        rows.push((n, fast, fast_destroy, slow));
    }

    let sequential_100 = rows.last().map(|(_, _, _, slow)| slow.wall);
    let mut sweep = Vec::new();
    for c in SWEEP {
        let wall = match rows.last() {
            Some((_, fast, _, _)) if c == concurrency => fast.wall,
            _ => apply_from_empty(&format!("c{c}"), 100, c).await.0.wall,
        };
        eprintln!("bench: N=100 concurrency {c}: {}s", secs(wall));
        sweep.push((c, wall));
    }

    eprintln!("bench: no-op plan and apply at N = 100, autoscale ticks at N = 10 and 100");
    let (h, cfg) = world("noop", 100).await;
    h.apply(&cfg, &[]).await;
    let plan = measure(&h, &cfg, &["plan", "--detailed-exitcode"]).await;
    let noop = measure(&h, &cfg, &["apply", "--auto-approve"]).await;
    let mut ticks = Vec::new();
    let (h10, cfg10) = world("tick", 10).await;
    h10.apply(&cfg10, &[]).await;
    for (n, h, cfg) in [(10, &h10, &cfg10), (100, &h, &cfg)] {
        // Half the runners online and busy: a busy ratio of 0.5, a holding tick.
        for (i, r) in h.runners(None).iter().enumerate() {
            let uuid = r["uuid"].as_str().expect("runner uuid");
            h.fake.set_status(uuid, "ONLINE");
            h.fake.set_busy(uuid, i % 2 == 0);
        }
        ticks.push((n, measure(h, cfg, &["autoscale", "--once"]).await));
    }
    for (h, cfg) in [(&h, &cfg), (&h10, &cfg10)] {
        measure(h, cfg, &["destroy", "--auto-approve"]).await;
    }

    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Machine: {}.  \nBitbucket fake latency (RTT): {} ms per request; AWS: moto_server on loopback behind a recording proxy. \
         Default concurrency: {concurrency}. Bench run time: {:.0} s.\n",
        machine(),
        RTT.as_millis(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "### Apply from empty\n");
    let _ = writeln!(
        out,
        "| N | wall (c={concurrency}) | Bitbucket calls (reads + writes) | AWS calls (reads + writes) | 2 x RTT x ceil(N/c) | ratio | wall (c=1) | speed-up | destroy wall | peak RSS |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, fast, destroy, slow) in &rows {
        let ideal = critical_path(*n, concurrency);
        let ratio = fast.wall.as_secs_f64() / ideal.as_secs_f64();
        let speedup = slow.wall.as_secs_f64() / fast.wall.as_secs_f64();
        let _ = writeln!(
            out,
            "| {n} | {} s | {} ({} + {}) | {} ({} + {}) | {} s | {ratio:.2} | {} s | {speedup:.1}x | {} s | {} MiB |",
            secs(fast.wall),
            fast.bitbucket(),
            fast.bitbucket_reads,
            fast.bitbucket_writes,
            fast.aws(),
            fast.aws_reads,
            fast.aws_writes,
            secs(ideal),
            secs(slow.wall),
            secs(destroy.wall),
            mib(fast.peak_rss_kib),
        );
    }
    if let Some((n, fast, _, _)) = rows.last() {
        let _ = writeln!(out, "\nCalls of the apply to {n} (bbfleet's own count):\n");
        for (name, count) in &fast.calls {
            let _ = writeln!(out, "- `{name}`: {count}");
        }
        let _ = writeln!(
            out,
            "\nOn the wire: the fake saw {} requests ({} writes), the AWS proxy {} ({} writes).",
            fast.fake_requests, fast.fake_writes, fast.wire_aws, fast.wire_aws_writes
        );
    }

    let _ = writeln!(out, "\n### Concurrency at N = 100\n");
    let _ = writeln!(
        out,
        "| concurrency | wall | 2 x RTT x ceil(100/c) | ratio | speed-up over c=1 |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    for (c, wall) in &sweep {
        let ideal = critical_path(100, *c);
        let _ = writeln!(
            out,
            "| {c} | {} s | {} s | {:.2} | {} |",
            secs(*wall),
            secs(ideal),
            wall.as_secs_f64() / ideal.as_secs_f64(),
            sequential_100.map_or("-".to_owned(), |s| format!(
                "{:.1}x",
                s.as_secs_f64() / wall.as_secs_f64()
            )),
        );
    }

    let _ = writeln!(out, "\n### No-op plan and apply at N = 100\n");
    let _ = writeln!(
        out,
        "| command | wall | Bitbucket calls | AWS calls | writes (bbfleet / fake / AWS wire) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, cost) in [("plan", &plan), ("apply", &noop)] {
        let _ = writeln!(
            out,
            "| {name} | {} s | {} | {} | {} / {} / {} |",
            secs(cost.wall),
            cost.bitbucket(),
            cost.aws(),
            cost.writes(),
            cost.fake_writes,
            cost.wire_aws_writes
        );
        if cost.writes() + (cost.fake_writes + cost.wire_aws_writes) as u64 != 0 {
            failures.push(format!("no-op {name} wrote"));
        }
    }
    let _ = writeln!(
        out,
        "\nCalls of the no-op plan (its pre-flight DryRun requests change nothing and count as reads): {}.",
        plan.call_list()
    );
    let _ = writeln!(out, "\nReads of the no-op apply: {}.", noop.call_list());

    let _ = writeln!(out, "\n### One autoscale tick (holding, busy ratio 0.5)\n");
    let _ = writeln!(out, "| N | wall | Bitbucket calls | AWS calls | calls |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---|");
    for (n, cost) in &ticks {
        let _ = writeln!(
            out,
            "| {n} | {} s | {} | {} | {} |",
            secs(cost.wall),
            cost.bitbucket(),
            cost.aws(),
            cost.call_list()
        );
        peak_rss = peak_rss.max(cost.peak_rss_kib);
    }
    if ticks[0].1.calls != ticks[1].1.calls {
        failures.push("a tick's calls differ between N = 10 and N = 100".to_owned());
    }

    out.push_str(&noop_plan_depth(&mut failures).await);
    out.push_str(&throttled_apply(&mut failures).await);

    let _ = writeln!(out, "\n### Footprint\n");
    let _ = writeln!(
        out,
        "- peak RSS of any bbfleet run above: {} MiB (VmHWM, as `/usr/bin/time -v` reports it)",
        mib(peak_rss)
    );
    let _ = writeln!(
        out,
        "- release binary (stripped, thin LTO): {:.1} MiB ({size} bytes)",
        size as f64 / (1024.0 * 1024.0)
    );
    finish(&out, &failures);
}
