//! The economics settings: `[capacity.autoscale]` (the policy `bbfleet autoscale` runs) and
//! `[simulate]` (the model `bbfleet simulate` runs it in), raw and validated.

use serde::{Deserialize, Serialize};

use super::validate::Validator;

/// Settings of `bbfleet autoscale`: which policy, and its numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleConfig {
    /// The policy (`bbfleet`, the default, or `atlassian`).
    pub policy: AutoscalePolicy,
    /// Fewest runners (at least one keeps steps from failing for want of an online runner).
    pub min: u32,
    /// Most runners (defaults to `capacity.max`).
    pub max: u32,
    /// `atlassian`: grow above this busy ratio.
    pub scale_up_threshold: f64,
    /// `atlassian`: shrink below this busy ratio.
    pub scale_down_threshold: f64,
    /// Growth factor (rounded up): `atlassian` above the up threshold, `bbfleet` when every
    /// online runner is busy and none is coming up.
    pub scale_up_multiplier: f64,
    /// `atlassian`: shrink factor (rounded down).
    pub scale_down_multiplier: f64,
    /// `atlassian`: quiet time after a change, in seconds.
    pub cooldown_seconds: u64,
    /// Seconds between ticks (`autoscale --interval` overrides it).
    pub interval_seconds: u64,
    /// `bbfleet`: idle runners kept beside the busy ones while any runner is busy.
    pub headroom: u32,
    /// `bbfleet`: how long a surplus must last before the fleet shrinks, in seconds.
    pub scale_down_delay_seconds: u64,
}

/// `capacity.autoscale.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoscalePolicy {
    /// Busy runners plus idle headroom, growing by the multiplier while saturated,
    /// shrinking only after the surplus lasted `scale_down_delay_seconds`.
    #[default]
    Bbfleet,
    /// Atlassian's runners-autoscaler: busy-ratio thresholds and multipliers, a cooldown.
    Atlassian,
}

/// Settings of `bbfleet simulate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulateConfig {
    /// Seed of every random draw (`--seed` overrides it).
    pub seed: u64,
    /// Time from a host's launch to its runner being ONLINE.
    pub launch_delay: LaunchDelay,
    /// Spot interruptions per spot instance-hour (a Poisson rate).
    pub interruptions_per_instance_hour: f64,
    /// Seconds between the `schedule` policy's applies (the hourly scheduled pipeline).
    pub schedule_interval_seconds: u64,
    /// The `atlassian` policy: runners-autoscaler's defaults, each overridable.
    pub atlassian: AutoscaleConfig,
    /// The `bbfleet` policy: `[capacity.autoscale]`, or its defaults without one.
    pub bbfleet: AutoscaleConfig,
}

/// `simulate.launch_delay`: a distribution of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "distribution", rename_all = "kebab-case")]
pub enum LaunchDelay {
    /// Always `seconds`.
    Fixed {
        /// Seconds.
        seconds: f64,
    },
    /// Uniform between `min_seconds` and `max_seconds`.
    Uniform {
        /// Lower bound.
        min_seconds: f64,
        /// Upper bound.
        max_seconds: f64,
    },
    /// Log-normal with this median and 90th percentile.
    Lognormal {
        /// Median.
        median_seconds: f64,
        /// 90th percentile (above the median).
        p90_seconds: f64,
    },
}

// ---------------------------------------------------------------- raw

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoscale {
    policy: Option<String>,
    min: Option<u32>,
    max: Option<u32>,
    scale_up_threshold: Option<f64>,
    scale_down_threshold: Option<f64>,
    scale_up_multiplier: Option<f64>,
    scale_down_multiplier: Option<f64>,
    cooldown_seconds: Option<u64>,
    interval_seconds: Option<u64>,
    headroom: Option<u32>,
    scale_down_delay_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulate {
    seed: Option<u64>,
    launch_delay: Option<RawLaunchDelay>,
    interruptions_per_instance_hour: Option<f64>,
    schedule_interval_seconds: Option<u64>,
    #[serde(default)]
    atlassian: RawAutoscale,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLaunchDelay {
    distribution: String,
    seconds: Option<f64>,
    min_seconds: Option<f64>,
    max_seconds: Option<f64>,
    median_seconds: Option<f64>,
    p90_seconds: Option<f64>,
}

/// Runners-autoscaler's README: 0.8 / 0.2 thresholds, 1.5 / 0.5 multipliers, a 600 s
/// `runner_api_polling_interval` and a 300 s `runner_cool_down_period`, min 1.
const ATLASSIAN_POLL_SECONDS: u64 = 600;
/// bbfleet's tick: 120 Bitbucket listings an hour, inside the budget of 1,000 with room
/// for the applies. This and the defaults below won on both sample traces
/// (examples/traces; README "Simulate"): headroom 1, a 300 s scale-down delay, growth x3.
const BBFLEET_INTERVAL_SECONDS: u64 = 30;
/// bbfleet's growth while saturated: a burst of steps is seen only as "all busy".
const BBFLEET_UP_MULTIPLIER: f64 = 3.0;
/// The shortest tick: 360 listings an hour (a tick lists runners 100 a page).
const MIN_INTERVAL_SECONDS: u64 = 10;

/// Running to runner ONLINE on a stock AL2023 host is 60-120 s (docs/boot.md), plus about
/// 16 s from launch to running.
const DEFAULT_LAUNCH_DELAY: LaunchDelay = LaunchDelay::Lognormal {
    median_seconds: 100.0,
    p90_seconds: 140.0,
};

// ---------------------------------------------------------------- validation

impl Validator {
    /// `[capacity.autoscale]` (`prefix`), or the `atlassian` model of `[simulate]`.
    pub(super) fn autoscale(
        &mut self,
        a: RawAutoscale,
        max: u32,
        prefix: &str,
        default_policy: AutoscalePolicy,
    ) -> AutoscaleConfig {
        let policy = self.autoscale_policy(a.policy.as_deref(), prefix, default_policy);
        let (default_interval, default_multiplier) = match policy {
            AutoscalePolicy::Bbfleet => (BBFLEET_INTERVAL_SECONDS, BBFLEET_UP_MULTIPLIER),
            AutoscalePolicy::Atlassian => (ATLASSIAN_POLL_SECONDS, 1.5),
        };
        let c = AutoscaleConfig {
            policy,
            min: a.min.unwrap_or(1),
            max: a.max.unwrap_or(max),
            scale_up_threshold: a.scale_up_threshold.unwrap_or(0.8),
            scale_down_threshold: a.scale_down_threshold.unwrap_or(0.2),
            scale_up_multiplier: a.scale_up_multiplier.unwrap_or(default_multiplier),
            scale_down_multiplier: a.scale_down_multiplier.unwrap_or(0.5),
            cooldown_seconds: a.cooldown_seconds.unwrap_or(300),
            interval_seconds: a.interval_seconds.unwrap_or(default_interval),
            headroom: a.headroom.unwrap_or(1),
            scale_down_delay_seconds: a.scale_down_delay_seconds.unwrap_or(300),
        };
        self.autoscale_bounds(&c, max, prefix);
        c
    }

    fn autoscale_policy(
        &mut self,
        raw: Option<&str>,
        prefix: &str,
        default: AutoscalePolicy,
    ) -> AutoscalePolicy {
        match raw {
            None => default,
            Some("bbfleet") => AutoscalePolicy::Bbfleet,
            Some("atlassian") => AutoscalePolicy::Atlassian,
            Some(s) => {
                self.err(
                    format!("{prefix}.policy"),
                    format!("{s:?} is not one of bbfleet, atlassian"),
                );
                default
            }
        }
    }

    fn autoscale_bounds(&mut self, a: &AutoscaleConfig, max: u32, prefix: &str) {
        let field = |k: &str| format!("{prefix}.{k}");
        self.check(
            a.max <= max,
            field("max"),
            format!("{} is above capacity.max ({max})", a.max),
        );
        self.check(
            a.min <= a.max,
            field("min"),
            format!("{} is above the autoscale max ({})", a.min, a.max),
        );
        for (name, value) in [
            ("scale_up_threshold", a.scale_up_threshold),
            ("scale_down_threshold", a.scale_down_threshold),
        ] {
            self.check(
                (0.0..=1.0).contains(&value),
                field(name),
                format!("{value} is not a ratio between 0 and 1"),
            );
        }
        self.check(
            a.scale_down_threshold < a.scale_up_threshold,
            field("scale_down_threshold"),
            "must be below scale_up_threshold",
        );
        self.check(
            a.scale_up_multiplier > 1.0 && a.scale_up_multiplier <= 10.0,
            field("scale_up_multiplier"),
            format!(
                "{} is out of range: above 1, at most 10",
                a.scale_up_multiplier
            ),
        );
        self.check(
            a.scale_down_multiplier > 0.0 && a.scale_down_multiplier < 1.0,
            field("scale_down_multiplier"),
            format!(
                "{} is out of range: above 0, below 1",
                a.scale_down_multiplier
            ),
        );
        self.check(
            (MIN_INTERVAL_SECONDS..=86_400).contains(&a.interval_seconds),
            field("interval_seconds"),
            format!(
                "{} is out of range: {MIN_INTERVAL_SECONDS} to 86400 (a tick is a Bitbucket call; Bitbucket allows 1,000 an hour)",
                a.interval_seconds
            ),
        );
        self.check(
            a.headroom <= a.max,
            field("headroom"),
            format!("{} is above the autoscale max ({})", a.headroom, a.max),
        );
    }

    /// `[simulate]`; `autoscale` is `[capacity.autoscale]`, if any.
    pub(super) fn simulate(
        &mut self,
        raw: RawSimulate,
        max: u32,
        autoscale: Option<&AutoscaleConfig>,
    ) -> SimulateConfig {
        let bbfleet = autoscale.cloned().unwrap_or_else(|| {
            let prefix = "capacity.autoscale";
            self.autoscale(
                RawAutoscale::default(),
                max,
                prefix,
                AutoscalePolicy::Bbfleet,
            )
        });
        let rate = raw.interruptions_per_instance_hour.unwrap_or(0.001);
        self.check(
            rate.is_finite() && (0.0..=10.0).contains(&rate),
            "simulate.interruptions_per_instance_hour",
            format!("{rate} is out of range: 0 to 10 per instance-hour"),
        );
        let schedule_interval_seconds = raw.schedule_interval_seconds.unwrap_or(3600);
        self.check(
            (1..=86_400).contains(&schedule_interval_seconds),
            "simulate.schedule_interval_seconds",
            format!("{schedule_interval_seconds} is out of range: 1 to 86400"),
        );
        SimulateConfig {
            seed: raw.seed.unwrap_or(1),
            launch_delay: raw
                .launch_delay
                .map_or(DEFAULT_LAUNCH_DELAY, |d| self.launch_delay(d)),
            interruptions_per_instance_hour: rate,
            schedule_interval_seconds,
            atlassian: self.autoscale(
                raw.atlassian,
                max,
                "simulate.atlassian",
                AutoscalePolicy::Atlassian,
            ),
            bbfleet,
        }
    }

    fn launch_delay(&mut self, d: RawLaunchDelay) -> LaunchDelay {
        let field = |k: &str| format!("simulate.launch_delay.{k}");
        let need = |v: &mut Self, k: &str, x: Option<f64>| match x {
            Some(x) if (0.0..=86_400.0).contains(&x) => x,
            Some(x) => {
                v.err(field(k), format!("{x} is out of range: 0 to 86400 seconds"));
                0.0
            }
            None => {
                v.err(
                    field(k),
                    format!("missing: the {} distribution needs it", d.distribution),
                );
                0.0
            }
        };
        let delay = match d.distribution.as_str() {
            "fixed" => LaunchDelay::Fixed {
                seconds: need(self, "seconds", d.seconds),
            },
            "uniform" => LaunchDelay::Uniform {
                min_seconds: need(self, "min_seconds", d.min_seconds),
                max_seconds: need(self, "max_seconds", d.max_seconds),
            },
            "lognormal" => LaunchDelay::Lognormal {
                median_seconds: need(self, "median_seconds", d.median_seconds),
                p90_seconds: need(self, "p90_seconds", d.p90_seconds),
            },
            other => {
                self.err(
                    field("distribution"),
                    format!("{other:?} is not one of fixed, uniform, lognormal"),
                );
                return DEFAULT_LAUNCH_DELAY;
            }
        };
        match delay {
            LaunchDelay::Uniform {
                min_seconds,
                max_seconds,
            } if min_seconds > max_seconds => {
                self.err(field("max_seconds"), "must not be below min_seconds")
            }
            LaunchDelay::Lognormal {
                median_seconds,
                p90_seconds,
            } if !(median_seconds > 0.0 && p90_seconds > median_seconds) => self.err(
                field("p90_seconds"),
                "must be above median_seconds, which must be above 0",
            ),
            _ => {}
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::GOOD;
    use crate::config::{Config, ConfigError};

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, "t") {
            Ok(_) => vec![],
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    fn with(extra: &str) -> String {
        format!("{GOOD}\n{extra}")
    }

    #[test]
    fn defaults_and_prices() {
        let c = Config::parse(GOOD, "t").unwrap();
        let (b, a) = (&c.simulate.bbfleet, &c.simulate.atlassian);
        assert_eq!(b.policy, AutoscalePolicy::Bbfleet);
        assert_eq!(
            (
                b.min,
                b.max,
                b.interval_seconds,
                b.headroom,
                b.scale_down_delay_seconds
            ),
            (1, 20, 30, 1, 300)
        );
        assert_eq!(b.scale_up_multiplier, 3.0);
        assert_eq!(a.policy, AutoscalePolicy::Atlassian);
        assert_eq!(
            (a.interval_seconds, a.cooldown_seconds, a.min),
            (600, 300, 1)
        );
        assert_eq!(
            (
                a.scale_up_threshold,
                a.scale_down_threshold,
                a.scale_up_multiplier,
                a.scale_down_multiplier
            ),
            (0.8, 0.2, 1.5, 0.5)
        );
        assert_eq!(c.simulate.launch_delay, DEFAULT_LAUNCH_DELAY);
        assert!(c.spot.hourly_prices.is_empty());
        // The on-demand price alone prices on-demand hosts (no cost cap).
        let text = GOOD.replace("max = 20", "max = 20\non_demand_hourly_price = 0.1");
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(
            (c.capacity.on_demand_hourly_price, c.capacity.cost_cap),
            (Some(0.1), None)
        );
        let text = GOOD.replace(
            "[instance]",
            "[spot.hourly_prices]\n\"m6i.large\" = 0.04\n\n[instance]",
        );
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(c.spot.hourly_prices["m6i.large"], 0.04);
    }

    #[test]
    fn bad_values_name_their_fields() {
        let prices = |p: &str| {
            GOOD.replace(
                "[instance]",
                &format!("[spot.hourly_prices]\n{p}\n\n[instance]"),
            )
        };
        let cases = [
            (prices("\"t3.micro\" = 0.01"), "spot.hourly_prices.\"t3.micro\": is not one of spot.instance_types"),
            (prices("\"m6i.large\" = -1.0"), "spot.hourly_prices.\"m6i.large\": -1 is not a positive amount"),
            (with("[capacity.autoscale]\npolicy = \"greedy\""), "capacity.autoscale.policy: \"greedy\" is not one of bbfleet, atlassian"),
            (with("[capacity.autoscale]\ninterval_seconds = 5"), "capacity.autoscale.interval_seconds: 5 is out of range: 10 to 86400"),
            (with("[capacity.autoscale]\nheadroom = 30"), "capacity.autoscale.headroom: 30 is above the autoscale max (20)"),
            (with("[simulate.atlassian]\nscale_up_multiplier = 1.0"), "simulate.atlassian.scale_up_multiplier: 1 is out of range"),
            (with("[simulate]\ninterruptions_per_instance_hour = -1.0"), "simulate.interruptions_per_instance_hour: -1 is out of range"),
            (with("[simulate.launch_delay]\ndistribution = \"gamma\""), "simulate.launch_delay.distribution: \"gamma\" is not one of fixed, uniform, lognormal"),
            (with("[simulate.launch_delay]\ndistribution = \"uniform\"\nmin_seconds = 10.0"), "simulate.launch_delay.max_seconds: missing: the uniform distribution needs it"),
            (with("[simulate.launch_delay]\ndistribution = \"uniform\"\nmin_seconds = 10.0\nmax_seconds = 5.0"), "simulate.launch_delay.max_seconds: must not be below min_seconds"),
            (with("[simulate.launch_delay]\ndistribution = \"lognormal\"\nmedian_seconds = 100.0\np90_seconds = 50.0"), "simulate.launch_delay.p90_seconds: must be above median_seconds"),
            (with("[simulate]\nspeed = 2"), "unknown field `speed`"),
        ];
        for (text, expected) in cases {
            let errs = errors(&text);
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "expected {expected:?} in {errs:#?}"
            );
        }
    }
}
