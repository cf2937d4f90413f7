//! The discrete-event simulation of one policy over a trace.
//!
//! The model, in milliseconds:
//! - one runner per host; a host launched now comes ONLINE after a launch delay drawn from
//!   the configured distribution (hosts of the initial capacity start ONLINE);
//! - Bitbucket's rules: a step that no online runner matches (by labels and repository, or
//!   because no runner is online at all) fails at once; otherwise it starts on an idle
//!   runner, or queues (first in, first out) while every matching runner is busy;
//! - a spot host is interrupted after an exponential time (a Poisson rate per
//!   instance-hour); a step it ran is rerun from the start (as a new submission, by the same
//!   rules) and the maintain-type fleet launches a replacement;
//! - the policy ticks every `interval`; a new target launches hosts at once, a lower one
//!   removes hosts still coming up, newest first, then idle ones, never a busy one (the
//!   target stops at the hosts kept, as bbfleet's scale-down does);
//! - hosts are billed per second from launch to termination at their type's price (types
//!   taken in turn, as a diversified fleet spreads them), the on-demand base at the
//!   on-demand price.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::autoscale::{AutoscaleState, Load, Policy};
use crate::config::{Config, LaunchDelay};

/// What the model needs besides the trace and the policy.
#[derive(Debug, Clone)]
pub struct Model {
    /// Seed of every draw.
    pub seed: u64,
    /// Launch to ONLINE.
    pub launch_delay: LaunchDelay,
    /// Spot interruptions per spot instance-hour.
    pub interruptions_per_hour: f64,
    /// USD per hour of a spot host of each type, in turn.
    pub spot_prices: Vec<f64>,
    /// Hosts kept on on-demand capacity, and their USD per hour.
    pub on_demand: (u32, f64),
}

impl Model {
    /// `config`'s model (`[simulate]`) with `seed` and the prices found for it.
    pub fn new(config: &Config, seed: u64, spot_prices: Vec<f64>, on_demand: (u32, f64)) -> Model {
        Model {
            seed,
            launch_delay: config.simulate.launch_delay,
            interruptions_per_hour: config.simulate.interruptions_per_instance_hour,
            spot_prices,
            on_demand,
        }
    }
}

/// The trace as the engine reads it.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// Submitted, in ms since the epoch.
    pub submitted_ms: i64,
    /// Run time in ms.
    pub duration_ms: i64,
    /// Whether the fleet's runners match its labels and repository.
    pub matches: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Queue wait of each step that completed (every attempt's wait summed), in ms.
    pub waits_ms: Vec<i64>,
    /// When each step first started (`None`: never).
    pub first_start_ms: Vec<Option<i64>>,
    /// Whether each step completed.
    pub completed: Vec<bool>,
    /// Steps that failed for want of an online runner that matches.
    pub failed: u64,
    /// Steps rerun after their host was interrupted.
    pub reruns: u64,
    /// Runner time executing steps, interrupted attempts included.
    pub busy_ms: i64,
    /// Of it, attempts an interruption cut short.
    pub lost_ms: i64,
    /// Runner time ONLINE and idle.
    pub idle_ms: i64,
    /// Host time before the runner was ONLINE.
    pub booting_ms: i64,
    /// Host time by spot type (in turn, as `Model::spot_prices`), then on-demand last.
    pub host_ms: Vec<i64>,
    /// USD.
    pub cost_usd: f64,
    /// The policy's changes: when (ms since the epoch) and to what target.
    pub changes: Vec<(i64, u32)>,
    /// The simulated span, from the first tick to the last step's end.
    pub span_ms: (i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Online,
    Done,
    Interrupt,
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Booting,
    Idle,
    Busy { job: usize, started: i64 },
    Gone,
}

#[derive(Debug, Clone)]
struct Host {
    /// Index into `Outcome::host_ms` (the last index is on-demand).
    kind: usize,
    launched: i64,
    online: Option<i64>,
    busy_ms: i64,
    state: State,
}

/// The simulated clock at `ms` since the epoch: an instant is a [`crate::autoscale::Clock`].
fn at(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Steps still queued a year after the last submission are given up (and counted as
/// failed): the bound of a run whose policy leaves no runner.
const GIVE_UP_AFTER_MS: i64 = 365 * 24 * 3_600_000;

struct Sim<'a> {
    model: &'a Model,
    jobs: &'a [Job],
    rng: fastrand::Rng,
    events: BinaryHeap<Reverse<(i64, u64, Event, usize)>>,
    seq: u64,
    hosts: Vec<Host>,
    idle: Vec<usize>,
    booting: Vec<usize>,
    queue: VecDeque<(usize, i64)>,
    wait_ms: Vec<i64>,
    live: u32,
    live_on_demand: u32,
    online: u32,
    busy: u32,
    target: u32,
    launches: usize,
    resolved: usize,
    out: Outcome,
}

/// Runs `policy`, ticking every `interval_ms`, over `jobs` (sorted by submission).
pub fn run(model: &Model, jobs: &[Job], policy: &Policy<'_>, interval_ms: i64) -> Outcome {
    let Some(first) = jobs.first() else {
        return Outcome::default();
    };
    let interval_ms = interval_ms.max(1000);
    let start = first.submitted_ms.div_euclid(interval_ms) * interval_ms;
    let mut sim = Sim::new(model, jobs);
    // The fleet as the policy would have left it before the trace: its first decision,
    // ONLINE, and no change to remember (no cooldown runs from it).
    let opening = policy.decide(
        Load {
            current: 0,
            online: 0,
            busy: 0,
        },
        None,
        &at(start),
    );
    sim.warm_start(opening.scale_to.unwrap_or(0), start);
    let mut memory: Option<AutoscaleState> = None;
    sim.push(start + interval_ms, Event::Tick, 0);
    let last_submit = jobs.last().map_or(start, |j| j.submitted_ms);
    let mut next_job = 0;
    let mut now = start;
    while sim.resolved < jobs.len() {
        let next_event = sim.events.peek().map(|Reverse(e)| e.0);
        let job_due = jobs.get(next_job).map(|j| j.submitted_ms);
        // Events at the same instant go before a submission (a runner freed at t takes it).
        if job_due.is_some_and(|t| next_event.is_none_or(|e| t < e)) {
            now = jobs[next_job].submitted_ms;
            sim.submit(next_job, now);
            next_job += 1;
            continue;
        }
        let Some(Reverse((t, _, event, host))) = sim.events.pop() else {
            break;
        };
        now = t;
        if now > last_submit + GIVE_UP_AFTER_MS {
            break;
        }
        match event {
            Event::Online => sim.online(host, now),
            Event::Done => sim.done(host, now),
            Event::Interrupt => sim.interrupt(host, now),
            Event::Tick => {
                memory = sim.tick(policy, memory, now);
                sim.push(now + interval_ms, Event::Tick, 0);
            }
        }
    }
    sim.finish(start, now)
}

impl<'a> Sim<'a> {
    fn new(model: &'a Model, jobs: &'a [Job]) -> Sim<'a> {
        Sim {
            model,
            jobs,
            rng: fastrand::Rng::with_seed(model.seed),
            events: BinaryHeap::new(),
            seq: 0,
            hosts: Vec::new(),
            idle: Vec::new(),
            booting: Vec::new(),
            queue: VecDeque::new(),
            wait_ms: vec![0; jobs.len()],
            live: 0,
            live_on_demand: 0,
            online: 0,
            busy: 0,
            target: 0,
            launches: 0,
            resolved: 0,
            out: Outcome {
                first_start_ms: vec![None; jobs.len()],
                completed: vec![false; jobs.len()],
                host_ms: vec![0; model.spot_prices.len() + 1],
                ..Outcome::default()
            },
        }
    }

    /// The policy's tick: what Bitbucket and the fleet would show, its decision applied.
    fn tick(
        &mut self,
        policy: &Policy<'_>,
        memory: Option<AutoscaleState>,
        now: i64,
    ) -> Option<AutoscaleState> {
        let load = Load {
            current: self.target,
            online: self.online,
            busy: self.busy,
        };
        let d = policy.decide(load, memory.as_ref(), &at(now));
        if let Some(n) = d.scale_to {
            self.out.changes.push((now, n));
            self.scale(n, now);
        }
        d.memory.or(memory)
    }

    fn push(&mut self, at: i64, event: Event, host: usize) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event, host)));
    }

    fn warm_start(&mut self, n: u32, now: i64) {
        self.target = n;
        for _ in 0..n {
            let h = self.launch(now);
            self.online(h, now);
        }
    }

    /// A new host: on-demand while the base is short, else spot of the next type.
    fn launch(&mut self, now: i64) -> usize {
        let (base, _) = self.model.on_demand;
        let on_demand = self.live_on_demand < base.min(self.target);
        let kind = if on_demand {
            self.live_on_demand += 1;
            self.model.spot_prices.len()
        } else {
            self.launches += 1;
            (self.launches - 1) % self.model.spot_prices.len().max(1)
        };
        let h = self.hosts.len();
        self.hosts.push(Host {
            kind,
            launched: now,
            online: None,
            busy_ms: 0,
            state: State::Booting,
        });
        self.live += 1;
        self.booting.push(h);
        let delay = sample_delay(&mut self.rng, self.model.launch_delay);
        self.push(now + delay, Event::Online, h);
        let rate = self.model.interruptions_per_hour;
        if !on_demand && rate > 0.0 {
            // Exponential time to the next interruption: -ln(U) / rate hours.
            let hours = -(1.0 - self.rng.f64()).ln() / rate;
            self.push(now + (hours * 3_600_000.0) as i64, Event::Interrupt, h);
        }
        h
    }

    fn online(&mut self, h: usize, now: i64) {
        if self.hosts[h].state != State::Booting {
            return;
        }
        self.hosts[h].online = Some(now);
        self.online += 1;
        self.become_idle(h, now);
    }

    /// A free runner takes the queue's head, or waits.
    fn become_idle(&mut self, h: usize, now: i64) {
        match self.queue.pop_front() {
            Some((job, since)) => self.start(job, since, h, now),
            None => {
                self.hosts[h].state = State::Idle;
                self.idle.push(h);
            }
        }
    }

    fn submit(&mut self, job: usize, now: i64) {
        if !self.jobs[job].matches || self.online == 0 {
            self.out.failed += 1;
            self.resolved += 1;
            return;
        }
        match self.take_idle() {
            Some(h) => self.start(job, now, h, now),
            None => self.queue.push_back((job, now)),
        }
    }

    fn take_idle(&mut self) -> Option<usize> {
        while let Some(h) = self.idle.pop() {
            if self.hosts[h].state == State::Idle {
                return Some(h);
            }
        }
        None
    }

    fn start(&mut self, job: usize, since: i64, h: usize, now: i64) {
        self.wait_ms[job] += now - since;
        self.out.first_start_ms[job].get_or_insert(now);
        self.hosts[h].state = State::Busy { job, started: now };
        self.busy += 1;
        self.push(now + self.jobs[job].duration_ms, Event::Done, h);
    }

    fn done(&mut self, h: usize, now: i64) {
        let State::Busy { job, started } = self.hosts[h].state else {
            return;
        };
        self.ran(h, now - started);
        self.out.waits_ms.push(self.wait_ms[job]);
        self.out.completed[job] = true;
        self.resolved += 1;
        self.become_idle(h, now);
    }

    fn ran(&mut self, h: usize, ms: i64) {
        self.busy -= 1;
        self.hosts[h].busy_ms += ms;
        self.out.busy_ms += ms;
    }

    fn interrupt(&mut self, h: usize, now: i64) {
        let state = self.hosts[h].state;
        if state == State::Gone {
            return;
        }
        if let State::Busy { started, .. } = state {
            self.ran(h, now - started);
            self.out.lost_ms += now - started;
            self.out.reruns += 1;
        }
        self.terminate(h, now);
        if let State::Busy { job, .. } = state {
            self.submit(job, now);
        }
        // The maintain-type fleet replaces what it lost.
        if self.live < self.target {
            self.launch(now);
        }
    }

    fn scale(&mut self, n: u32, now: i64) {
        self.target = n;
        while self.live < n {
            self.launch(now);
        }
        while self.live > n {
            let Some(h) = self.removable() else { break };
            self.terminate(h, now);
        }
        self.target = self.live.max(n);
    }

    /// A host to remove: the newest still coming up, else an idle one.
    fn removable(&mut self) -> Option<usize> {
        while let Some(h) = self.booting.pop() {
            if self.hosts[h].state == State::Booting {
                return Some(h);
            }
        }
        self.take_idle()
    }

    fn terminate(&mut self, h: usize, now: i64) {
        let host = &mut self.hosts[h];
        if let Some(online) = host.online {
            self.out.idle_ms += now - online - host.busy_ms;
            self.out.booting_ms += online - host.launched;
            self.online -= 1;
        } else {
            self.out.booting_ms += now - host.launched;
        }
        self.out.host_ms[host.kind] += now - host.launched;
        if host.kind == self.model.spot_prices.len() {
            self.live_on_demand -= 1;
        }
        host.state = State::Gone;
        self.live -= 1;
    }

    fn finish(mut self, start: i64, end: i64) -> Outcome {
        for h in 0..self.hosts.len() {
            match self.hosts[h].state {
                State::Gone => {}
                State::Busy { started, .. } => {
                    // Given up: the attempt ran until the end.
                    self.ran(h, end - started);
                    self.out.lost_ms += end - started;
                    self.terminate(h, end);
                }
                _ => self.terminate(h, end),
            }
        }
        let unresolved = self.jobs.len() - self.resolved;
        self.out.failed += unresolved as u64;
        let prices = self
            .model
            .spot_prices
            .iter()
            .chain([&self.model.on_demand.1]);
        self.out.cost_usd = self
            .out
            .host_ms
            .iter()
            .zip(prices)
            .map(|(&ms, &price)| ms as f64 / 3_600_000.0 * price)
            .sum();
        self.out.span_ms = (start, end);
        self.out
    }
}

/// One launch delay in ms.
fn sample_delay(rng: &mut fastrand::Rng, d: LaunchDelay) -> i64 {
    let seconds = match d {
        LaunchDelay::Fixed { seconds } => seconds,
        LaunchDelay::Uniform {
            min_seconds,
            max_seconds,
        } => min_seconds + (max_seconds - min_seconds) * rng.f64(),
        LaunchDelay::Lognormal {
            median_seconds,
            p90_seconds,
        } => {
            // ln X ~ N(mu, sigma): mu = ln(median), and p90 = exp(mu + 1.2816 sigma).
            let mu = median_seconds.ln();
            let sigma = (p90_seconds.ln() - mu) / 1.281_551_565_544_600_4;
            // Box-Muller: a standard normal from two uniforms in (0, 1].
            let (u1, u2) = (1.0 - rng.f64(), rng.f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mu + sigma * z).exp()
        }
    };
    (seconds * 1000.0).round() as i64
}
