//! The fleet's on-demand part: `capacity.on_demand_base` runners always, plus, with
//! `spot.fallback = "on-demand"`, the spot runners the fleet cannot get. Everything it
//! judges is on the fleet request itself (its targets, fulfilled capacity,
//! `bbfleet:target-at` tag and history), so an unattended apply finds it again without
//! local state.
//!
//! - **Short**: the kept request's spot part is not fulfilled, and either its history
//!   has a capacity error within the grace, or its target was set longer than the grace
//!   ago. The missing runners move to the on-demand part.
//! - **Back to spot**: the on-demand part is above the base, the spot part is fulfilled,
//!   no capacity error within the grace, and the target was set longer than the grace
//!   ago: the part goes back to the base, and spot gets its runners back (if it still
//!   has no capacity, the next apply falls back again).
//! - **Cost cap**: the part never grows above the base by more than
//!   `capacity.max_hourly_cost` allows, judged with the spot price and the configured
//!   on-demand price.

use crate::config::{Config, Fallback};
use crate::world::{FleetState, FleetTarget, Observed};

/// The on-demand part of the target, and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Split {
    /// The target with its on-demand part.
    pub target: FleetTarget,
    /// Why the part is what it is (empty when all is spot and nothing changed).
    pub why: String,
    /// For the user: a fallback the cost cap stopped.
    pub warning: Option<String>,
}

/// The split of `total` runners for the request `keep` (the one that stays, if any).
pub(super) fn split(
    config: &Config,
    observed: &Observed,
    keep: Option<&FleetState>,
    total: u32,
) -> Split {
    let base = config.capacity.on_demand_base.min(total);
    let done = |on_demand: u32, why: String, warning: Option<String>| Split {
        target: FleetTarget { total, on_demand },
        why,
        warning,
    };
    let base_why = || {
        if base > 0 {
            format!("on-demand base {base}")
        } else {
            String::new()
        }
    };
    let Some(f) = keep.filter(|_| config.spot.fallback == Fallback::OnDemand) else {
        return done(base, base_why(), None);
    };
    let now_od = u32::try_from(f.on_demand_target).unwrap_or(0);
    let extra = now_od.saturating_sub(base);
    let grace = jiff::SignedDuration::from_secs(config.spot.fallback_grace_seconds as i64);
    let settled = f
        .target_at
        .is_none_or(|t| observed.observed_at.duration_since(t) >= grace);
    let missing = f.spot_missing();
    if missing > 0 && (!f.capacity_errors.is_empty() || settled) {
        let cause = f.capacity_errors.first().map_or_else(
            || {
                format!(
                    "unfulfilled for over {}s",
                    config.spot.fallback_grace_seconds
                )
            },
            |e| e.clone(),
        );
        let wanted = (base + extra + missing).min(total);
        let (allowed, warning) = capped(config, observed, total, base, wanted);
        let why = format!(
            "spot fallback: {missing} spot runner(s) missing ({cause}); on-demand {allowed} of {total}"
        );
        return done(allowed, why, warning);
    }
    if extra > 0 && missing == 0 && f.capacity_errors.is_empty() && settled {
        let why = format!(
            "back to spot: the spot part is fulfilled and no capacity error for {}s; on-demand base {base}",
            config.spot.fallback_grace_seconds
        );
        return done(base, why, None);
    }
    if extra > 0 {
        let kept = (base + extra).min(total);
        let (allowed, warning) = capped(config, observed, total, base, kept);
        let why = format!("spot fallback holds: on-demand {allowed} of {total} (base {base})");
        return done(allowed, why, warning);
    }
    done(base, base_why(), None)
}

/// The on-demand part at most `wanted` and at least `base` that keeps the fleet's hourly
/// cost within the cap: `spot runners x spot price + on-demand runners x on-demand
/// price`. Without a spot price, a spot runner counts at the on-demand price (the cap
/// is hard, so the estimate errs high).
fn capped(
    config: &Config,
    observed: &Observed,
    total: u32,
    base: u32,
    wanted: u32,
) -> (u32, Option<String>) {
    let Some(cap) = config.capacity.cost_cap else {
        return (wanted, None);
    };
    let od = cap.on_demand_hourly_price;
    let spot = observed.spot_price.unwrap_or(od).min(od);
    let cost = |on_demand: u32| f64::from(total - on_demand) * spot + f64::from(on_demand) * od;
    let allowed = (base..=wanted)
        .rev()
        .find(|n| *n == base || cost(*n) <= cap.max_hourly_cost + 1e-9)
        .unwrap_or(base);
    let warning = (allowed < wanted).then(|| {
        format!(
            "the spot fallback is held at {allowed} on-demand runner(s), not {wanted}: capacity.max_hourly_cost {:.2}/h (on-demand {od:.4}/h, spot {spot:.4}/h{}) would be exceeded ({:.2}/h)",
            cap.max_hourly_cost,
            if observed.spot_price.is_some() { "" } else { " assumed: no spot price" },
            cost(wanted)
        )
    });
    (allowed, warning)
}
