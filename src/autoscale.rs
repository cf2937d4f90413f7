//! `bbfleet autoscale`: sizes the fleet from the runners' busy ratio, with the semantics of
//! Atlassian's runners-autoscaler, at O(1) API calls a tick (one runners listing, one
//! fleet describe, one state read). A change is applied through the normal planner, so it
//! never removes a busy runner.

use serde::{Deserialize, Serialize};

use crate::aws::fleet::FleetApi;
use crate::aws::{ssm, AwsError};
use crate::bitbucket::Bitbucket;
use crate::config::{AutoscaleConfig, Config};
use crate::names;
use crate::observe::ObserveError;
use crate::world::{Runner, RunnerLoad};

/// What the tick saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

impl Decision {
    fn hold(reason: String, ratio: Option<f64>) -> Decision {
        Decision {
            scale_to: None,
            reason,
            ratio,
        }
    }
}

/// One tick's reads, in parallel: the runners listing, the fleet requests (without their
/// instances) and the autoscaler's state. An unreadable state is logged and ignored.
pub async fn observe(
    config: &Config,
    bitbucket: &Bitbucket,
    fleet_api: &dyn FleetApi,
    ssm_client: &aws_sdk_ssm::Client,
) -> Result<(Load, Option<AutoscaleState>), ObserveError> {
    let fleet = config.name.as_str();
    let state_name = names::autoscale_state(fleet);
    let (runners, fleets, state) = tokio::try_join!(
        async {
            Ok::<_, ObserveError>(
                bitbucket
                    .list_runners(&crate::observe::scope(config))
                    .await?,
            )
        },
        async { Ok(fleet_api.list_targets(fleet).await?) },
        async { Ok(ssm::get_string(ssm_client, &state_name).await?) },
    )?;
    let ours: Vec<Runner> = runners
        .iter()
        .filter(|r| names::runner_slot(fleet, &r.name).is_some())
        .map(Runner::from)
        .collect();
    let load = RunnerLoad::of(&ours);
    let current = fleets
        .iter()
        .find(|f| f.is_live())
        .map_or(load.total, |f| f.target.max(0) as u32);
    let last = state.and_then(|s| match serde_json::from_str(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(parameter = %state_name, error = %e, "ignoring an unreadable autoscale state");
            None
        }
    });
    let load = Load {
        current,
        online: load.online,
        busy: load.busy,
    };
    Ok((load, last))
}

/// Remembers a change (the cooldown starts now).
pub async fn save_state(
    ssm_client: &aws_sdk_ssm::Client,
    fleet: &str,
    state: &AutoscaleState,
) -> Result<(), AwsError> {
    let value = serde_json::to_string(state).unwrap_or_default();
    ssm::put_string(ssm_client, &names::autoscale_state(fleet), &value).await
}

/// Decides one tick. Pure.
pub fn decide(
    cfg: &AutoscaleConfig,
    load: Load,
    last: Option<&AutoscaleState>,
    now: jiff::Timestamp,
) -> Decision {
    let ratio = crate::world::busy_ratio(load.busy, load.online);
    let clamp = |n: u32| n.clamp(cfg.min, cfg.max);
    if load.current != clamp(load.current) {
        return Decision {
            scale_to: Some(clamp(load.current)),
            reason: format!(
                "capacity {} is outside min {} / max {}",
                load.current, cfg.min, cfg.max
            ),
            ratio,
        };
    }
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
        Decision {
            scale_to: Some(target),
            reason: format!("{numbers} -> {target}"),
            ratio,
        }
    }
}

/// The capacity the busy ratio `r` asks for: up by the multiplier (at least one more)
/// above the up threshold, down by the multiplier below the down threshold, within bounds.
fn by_ratio(cfg: &AutoscaleConfig, current: u32, r: f64) -> u32 {
    let clamp = |n: u32| n.clamp(cfg.min, cfg.max);
    if r > cfg.scale_up_threshold {
        clamp(((f64::from(current) * cfg.scale_up_multiplier).ceil() as u32).max(current + 1))
    } else if r < cfg.scale_down_threshold {
        clamp((f64::from(current) * cfg.scale_down_multiplier).floor() as u32)
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AutoscaleConfig {
        AutoscaleConfig {
            min: 1,
            max: 10,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.2,
            scale_up_multiplier: 1.5,
            scale_down_multiplier: 0.5,
            cooldown_seconds: 300,
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
