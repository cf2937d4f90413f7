//! The sizing policies, pure: each maps what a tick saw (a [`Load`]), the policy's memory
//! and the time to a [`Decision`]. `bbfleet autoscale` runs them on the real clock and keeps
//! the memory in SSM; `bbfleet simulate` runs the very same functions on the simulator's
//! clock with the memory in hand. Both reach the time through [`Clock`].

use serde::{Deserialize, Serialize};

use crate::config::{AutoscaleConfig, AutoscalePolicy, CapacityConfig};

/// What the tick saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// The fleet's target capacity now.
    pub current: u32,
    /// ONLINE runners of the fleet.
    pub online: u32,
    /// ONLINE runners executing a step.
    pub busy: u32,
}

/// The autoscaler's memory, kept in SSM so `--once` runs share a cooldown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleState {
    /// Capacity set by the last change.
    pub capacity: u32,
    /// When (RFC 3339).
    pub changed_at: jiff::Timestamp,
    /// `bbfleet`: since when the fleet has had more runners than it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surplus_since: Option<jiff::Timestamp>,
}

/// The decision of one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// New capacity, or `None` to hold.
    pub scale_to: Option<u32>,
    /// Why, with the numbers behind it.
    pub reason: String,
    /// busy / online, when any runner is online.
    pub ratio: Option<f64>,
    /// The memory to keep from now on (`None`: unchanged). Saved once a change is applied.
    pub memory: Option<AutoscaleState>,
}

impl Decision {
    fn hold(reason: String, ratio: Option<f64>) -> Decision {
        Decision {
            scale_to: None,
            reason,
            ratio,
            memory: None,
        }
    }

    /// A change to `n` at `now`: the memory starts over.
    fn change(n: u32, reason: String, ratio: Option<f64>, now: jiff::Timestamp) -> Decision {
        Decision {
            scale_to: Some(n),
            reason,
            ratio,
            memory: Some(AutoscaleState {
                capacity: n,
                changed_at: now,
                surplus_since: None,
            }),
        }
    }
}

/// Where the time comes from: the wall clock in `autoscale`, simulated time in `simulate`.
pub trait Clock {
    /// Now.
    fn now(&self) -> jiff::Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// An instant read once: the time of one tick, for the decision and the log line alike.
impl Clock for jiff::Timestamp {
    fn now(&self) -> jiff::Timestamp {
        *self
    }
}

/// A sizing policy, as `simulate` compares them.
#[derive(Debug, Clone, Copy)]
pub enum Policy<'a> {
    /// Always this many runners (`capacity.default`).
    Fixed(u32),
    /// The schedule windows, else the default (what `apply` resolves).
    Schedule(&'a CapacityConfig),
    /// An autoscale policy (`capacity.autoscale.policy`): what `bbfleet autoscale` runs.
    Autoscale(&'a AutoscaleConfig),
}

impl Policy<'_> {
    /// One tick's decision at `clock`'s time.
    pub fn decide(
        &self,
        load: Load,
        memory: Option<&AutoscaleState>,
        clock: &dyn Clock,
    ) -> Decision {
        let now = clock.now();
        let ratio = crate::world::busy_ratio(load.busy, load.online);
        let (want, why) = match self {
            Policy::Autoscale(cfg) => return decide(cfg, load, memory, now),
            Policy::Fixed(n) => (*n, "fixed capacity".to_owned()),
            Policy::Schedule(c) => match c.resolve(now, None) {
                Ok(cap) => (cap.desired, cap.source),
                Err(e) => return Decision::hold(e.to_string(), ratio),
            },
        };
        if want == load.current {
            Decision::hold(format!("{why}: {want}"), ratio)
        } else {
            Decision::change(want, format!("{why}: {want}"), ratio, now)
        }
    }
}

/// Decides one tick of `bbfleet autoscale` by `cfg.policy`. Pure.
pub fn decide(
    cfg: &AutoscaleConfig,
    load: Load,
    last: Option<&AutoscaleState>,
    now: jiff::Timestamp,
) -> Decision {
    let ratio = crate::world::busy_ratio(load.busy, load.online);
    let clamped = load.current.clamp(cfg.min, cfg.max);
    if load.current != clamped {
        let why = format!(
            "capacity {} is outside min {} / max {}",
            load.current, cfg.min, cfg.max
        );
        return Decision::change(clamped, why, ratio, now);
    }
    match cfg.policy {
        AutoscalePolicy::Atlassian => atlassian(cfg, load, last, now),
        AutoscalePolicy::Bbfleet => bbfleet(cfg, load, last, now),
    }
}

/// Runners-autoscaler's rule: above the up threshold grow by the multiplier, below the down
/// threshold shrink by the other, and change nothing within the cooldown of a change.
fn atlassian(
    cfg: &AutoscaleConfig,
    load: Load,
    last: Option<&AutoscaleState>,
    now: jiff::Timestamp,
) -> Decision {
    let ratio = crate::world::busy_ratio(load.busy, load.online);
    if let Some(last) = last {
        let since = now.duration_since(last.changed_at).as_secs().max(0) as u64;
        if since < cfg.cooldown_seconds {
            return Decision::hold(
                format!(
                    "cooldown: last change to {} was {since}s ago ({}s left)",
                    last.capacity,
                    cfg.cooldown_seconds - since
                ),
                ratio,
            );
        }
    }
    let Some(r) = ratio else {
        return Decision::hold("no runner is online yet".to_owned(), None);
    };
    let target = by_ratio(cfg, load.current, r);
    let numbers = format!(
        "busy {}/{} online = {r:.2} (up above {}, down below {}), capacity {}",
        load.busy, load.online, cfg.scale_up_threshold, cfg.scale_down_threshold, load.current
    );
    if target == load.current {
        Decision::hold(format!("{numbers}: within bounds"), ratio)
    } else {
        Decision::change(target, format!("{numbers} -> {target}"), ratio, now)
    }
}

/// The capacity the busy ratio `r` asks for: up by the multiplier (at least one more)
/// above the up threshold, down by the multiplier below the down threshold, within bounds.
fn by_ratio(cfg: &AutoscaleConfig, current: u32, r: f64) -> u32 {
    let clamp = |n: u32| n.clamp(cfg.min, cfg.max);
    if r > cfg.scale_up_threshold {
        clamp(grown(cfg, current))
    } else if r < cfg.scale_down_threshold {
        clamp((f64::from(current) * cfg.scale_down_multiplier).floor() as u32)
    } else {
        current
    }
}

/// `current` times the up multiplier, rounded up, and at least one more.
fn grown(cfg: &AutoscaleConfig, current: u32) -> u32 {
    ((f64::from(current) * cfg.scale_up_multiplier).ceil() as u32).max(current + 1)
}

/// bbfleet's rule. The fleet needs its busy runners plus `headroom` idle ones while any
/// runner is busy, and `min` when none is. When every runner is busy and none is coming
/// up, steps may be queueing unseen (the runner API shows no queue), so it also grows by
/// the multiplier. It grows at once; it shrinks only once the surplus has lasted
/// `scale_down_delay_seconds`, so a lull between two steps costs no boot.
fn bbfleet(
    cfg: &AutoscaleConfig,
    load: Load,
    last: Option<&AutoscaleState>,
    now: jiff::Timestamp,
) -> Decision {
    let ratio = crate::world::busy_ratio(load.busy, load.online);
    let Load {
        current,
        online,
        busy,
    } = load;
    let coming_up = current.saturating_sub(online);
    let (want, saturated) = needed(cfg, load);
    let numbers = format!(
        "busy {busy}/{online} online, {coming_up} coming up, capacity {current}, needed {want} (headroom {})",
        cfg.headroom
    );
    let surplus_since = last.and_then(|s| s.surplus_since);
    if want > current {
        let why = if saturated {
            "every runner is busy"
        } else {
            "short of headroom"
        };
        return Decision::change(want, format!("{numbers}: {why} -> {want}"), ratio, now);
    }
    if want >= online {
        // As needed, or more only by hosts still coming up: they may be what a queue waits
        // for, so no surplus is counted until they are ONLINE. A surplus that ended is
        // forgotten.
        let why = if want == current {
            "as needed".to_owned()
        } else {
            format!("waiting for {coming_up} coming up")
        };
        let mut d = Decision::hold(format!("{numbers}: {why}"), ratio);
        d.memory = surplus_since.map(|_| remember(last, current, now, None));
        return d;
    }
    surplus(cfg, want, &numbers, last, now, ratio, current)
}

/// What `bbfleet` needs for `load`, and whether every runner is busy with none coming up.
fn needed(cfg: &AutoscaleConfig, load: Load) -> (u32, bool) {
    let coming_up = load.current.saturating_sub(load.online);
    let saturated = load.busy > 0 && load.busy >= load.online && coming_up == 0;
    let mut want = if load.busy == 0 {
        cfg.min
    } else {
        load.busy + cfg.headroom
    };
    if saturated {
        want = want.max(grown(cfg, load.current));
    }
    (want.clamp(cfg.min, cfg.max), saturated)
}

/// Idle runners beyond the need: remembered when first seen, shed to `want` once they have
/// lasted `scale_down_delay_seconds`.
fn surplus(
    cfg: &AutoscaleConfig,
    want: u32,
    numbers: &str,
    last: Option<&AutoscaleState>,
    now: jiff::Timestamp,
    ratio: Option<f64>,
    current: u32,
) -> Decision {
    let reason = |why: String| format!("{numbers}: {why}");
    let Some(since) = last.and_then(|s| s.surplus_since) else {
        let why = format!(
            "surplus; shrinking if it lasts {}s",
            cfg.scale_down_delay_seconds
        );
        let mut d = Decision::hold(reason(why), ratio);
        d.memory = Some(remember(last, current, now, Some(now)));
        return d;
    };
    let lasted = now.duration_since(since).as_secs().max(0) as u64;
    match cfg.scale_down_delay_seconds.checked_sub(lasted) {
        Some(left) if left > 0 => Decision::hold(
            reason(format!("surplus for {lasted}s ({left}s left)")),
            ratio,
        ),
        _ => Decision::change(
            want,
            reason(format!("surplus for {lasted}s -> {want}")),
            ratio,
            now,
        ),
    }
}

/// The memory with a new `surplus_since`, the last change kept.
fn remember(
    last: Option<&AutoscaleState>,
    current: u32,
    now: jiff::Timestamp,
    surplus_since: Option<jiff::Timestamp>,
) -> AutoscaleState {
    AutoscaleState {
        capacity: last.map_or(current, |s| s.capacity),
        changed_at: last.map_or(now, |s| s.changed_at),
        surplus_since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AutoscaleConfig {
        AutoscaleConfig {
            policy: AutoscalePolicy::Atlassian,
            min: 1,
            max: 10,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
            scale_up_multiplier: 1.5,
            scale_down_multiplier: 0.5,
            cooldown_seconds: 300,
            interval_seconds: 600,
            headroom: 2,
            scale_down_delay_seconds: 600,
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn busy_ratio_table() {
        let now = at("2026-03-02T10:00:00Z");
        let table = [
            // current, online, busy -> new capacity
            (4, 4, 4, Some(6)),    // ratio 1.0: ceil(4 * 1.5)
            (3, 3, 3, Some(5)),    // ceil(4.5)
            (1, 1, 1, Some(2)),    // ceil(1.5)
            (8, 8, 7, Some(10)),   // ceil(12) capped at max
            (10, 10, 10, None),    // at max
            (4, 4, 2, None),       // 0.5: hold
            (4, 4, 0, Some(2)),    // floor(4 * 0.5)
            (3, 3, 0, Some(1)),    // floor(1.5)
            (1, 1, 0, None),       // at min
            (4, 0, 0, None),       // nobody online: hold
            (0, 0, 0, Some(1)),    // below min
            (12, 12, 0, Some(10)), // above max
        ];
        for (current, online, busy, want) in table {
            let d = decide(
                &cfg(),
                Load {
                    current,
                    online,
                    busy,
                },
                None,
                now,
            );
            assert_eq!(d.scale_to, want, "{current} {online} {busy}: {}", d.reason);
        }
    }

    #[test]
    fn cooldown_holds_after_a_change() {
        let last = AutoscaleState {
            capacity: 4,
            changed_at: at("2026-03-02T10:00:00Z"),
            surplus_since: None,
        };
        let busy = Load {
            current: 4,
            online: 4,
            busy: 4,
        };
        let d = decide(&cfg(), busy, Some(&last), at("2026-03-02T10:04:59Z"));
        assert_eq!(d.scale_to, None);
        assert!(d.reason.starts_with("cooldown"), "{}", d.reason);
        assert_eq!(
            decide(&cfg(), busy, Some(&last), at("2026-03-02T10:05:00Z")).scale_to,
            Some(6)
        );
    }
}

#[cfg(test)]
mod bbfleet_tests {
    use super::*;

    fn cfg() -> AutoscaleConfig {
        AutoscaleConfig {
            policy: AutoscalePolicy::Bbfleet,
            min: 1,
            max: 20,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
            scale_up_multiplier: 3.0,
            scale_down_multiplier: 0.5,
            cooldown_seconds: 300,
            interval_seconds: 30,
            headroom: 1,
            scale_down_delay_seconds: 300,
        }
    }

    fn at(s: u64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_772_442_000 + s as i64).unwrap()
    }

    fn load(current: u32, online: u32, busy: u32) -> Load {
        Load {
            current,
            online,
            busy,
        }
    }

    #[test]
    fn grows_at_once_to_the_need() {
        let table = [
            // current, online, busy -> new capacity
            (1, 1, 1, Some(3)),     // saturated: max(1 + 1, ceil(1 x 3))
            (4, 4, 4, Some(12)),    // saturated: x3
            (10, 10, 10, Some(20)), // x3 capped at max
            (4, 2, 2, None),        // two coming up: 3 needed, wait for them
            (4, 4, 3, None),        // 3 + 1 = 4: as needed
            (3, 3, 0, None),        // surplus: remembered, not shed yet
            (0, 0, 0, Some(1)),     // below min
            (25, 25, 0, Some(20)),  // above max
            (5, 5, 4, None),        // 4 + 1
            (2, 2, 1, None),        // 1 + 1
        ];
        for (current, online, busy, want) in table {
            let d = decide(&cfg(), load(current, online, busy), None, at(0));
            assert_eq!(d.scale_to, want, "{current} {online} {busy}: {}", d.reason);
        }
    }

    #[test]
    fn shrinks_only_after_the_surplus_lasted_the_delay() {
        let c = cfg();
        // 6 online, 1 busy: 2 needed. The surplus is remembered...
        let d = decide(&c, load(6, 6, 1), None, at(0));
        assert_eq!(d.scale_to, None, "{}", d.reason);
        let memory = d.memory.expect("the surplus starts");
        assert_eq!(memory.surplus_since, Some(at(0)));
        // ...held while it lasts less than 300 s (nothing new to save)...
        let d = decide(&c, load(6, 6, 2), Some(&memory), at(299));
        assert_eq!(
            (d.scale_to, d.memory.is_none()),
            (None, true),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("(1s left)"), "{}", d.reason);
        // ...and shed to the need at 300 s, the memory starting over.
        let d = decide(&c, load(6, 6, 2), Some(&memory), at(300));
        assert_eq!(d.scale_to, Some(3), "{}", d.reason);
        assert_eq!(d.memory.unwrap().surplus_since, None);
        // A surplus that ends before the delay is forgotten.
        let d = decide(&c, load(6, 6, 5), Some(&memory), at(100));
        assert_eq!(d.scale_to, None);
        assert_eq!(d.memory.unwrap().surplus_since, None);
        // Hosts still coming up are no surplus.
        let d = decide(&c, load(6, 2, 1), None, at(0));
        assert_eq!((d.scale_to, d.memory), (None, None), "{}", d.reason);
        // A burst after a surplus grows at once, whatever the memory says.
        let d = decide(&c, load(6, 6, 6), Some(&memory), at(10));
        assert_eq!(d.scale_to, Some(18));
    }

    #[test]
    fn the_memory_reads_back_from_before_surplus_since_existed() {
        let old = r#"{"capacity":4,"changed_at":"2026-03-02T10:00:00Z"}"#;
        let m: AutoscaleState = serde_json::from_str(old).unwrap();
        assert_eq!(m.surplus_since, None);
        assert_eq!(serde_json::to_string(&m).unwrap(), old);
    }
}
