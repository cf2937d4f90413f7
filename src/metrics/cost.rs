//! What the running hosts cost: their prices (`spot.hourly_prices`, the spot price history,
//! `capacity.on_demand_hourly_price`) and the estimate the metrics export.

use std::collections::BTreeMap;

use crate::aws::offerings::Pool;
use crate::config::Config;
use crate::world::{InstanceInfo, InstanceState};

/// The two lifecycles, as the `lifecycle` label spells them.
const LIFECYCLES: [&str; 2] = ["on-demand", "spot"];

/// `spot` or `on-demand`.
pub(super) fn lifecycle(host: &InstanceInfo) -> &'static str {
    if host.on_demand {
        "on-demand"
    } else {
        "spot"
    }
}

/// The hosts that are billed: running ones. EC2 User Guide, "Amazon EC2 instance state
/// changes": instance usage is billed in `running` only (not in `pending`, `stopping`,
/// `stopped`, `shutting-down` or `terminated`).
fn running(hosts: &[InstanceInfo]) -> impl Iterator<Item = &InstanceInfo> {
    hosts.iter().filter(|h| h.state == InstanceState::Running)
}

/// What a host costs, USD per hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// `spot.hourly_prices`: by instance type.
    pub spot: BTreeMap<String, f64>,
    /// The latest spot price of each (type, zone) pool, read from the spot price history
    /// for the running spot hosts whose type `spot` does not price.
    pub history: BTreeMap<Pool, f64>,
    /// `capacity.on_demand_hourly_price`.
    pub on_demand: Option<f64>,
}

impl Prices {
    /// The configured prices (no spot price history).
    pub fn of_config(config: &Config) -> Prices {
        Prices {
            spot: config.spot.hourly_prices.clone(),
            history: BTreeMap::new(),
            on_demand: config.capacity.on_demand_hourly_price,
        }
    }

    /// A host's price: an on-demand host's is `capacity.on_demand_hourly_price`; a spot
    /// host's is `spot.hourly_prices[its type]`, else its pool's from the history.
    pub fn of(&self, host: &InstanceInfo) -> Option<f64> {
        if host.on_demand {
            return self.on_demand;
        }
        let pool = (host.instance_type.clone(), host.az.clone());
        self.spot
            .get(&host.instance_type)
            .or_else(|| self.history.get(&pool))
            .copied()
    }

    /// The instance types and zones of the running spot hosts whose type the config does
    /// not price: what to read from the spot price history (both empty: nothing to read).
    pub fn history_wanted(&self, hosts: &[InstanceInfo]) -> (Vec<String>, Vec<String>) {
        let (mut types, mut zones) = (Vec::new(), Vec::new());
        for h in running(hosts).filter(|h| !h.on_demand) {
            if !self.spot.contains_key(&h.instance_type) {
                types.push(h.instance_type.clone());
                zones.push(h.az.clone());
            }
        }
        for list in [&mut types, &mut zones] {
            list.sort();
            list.dedup();
        }
        (types, zones)
    }
}

/// The configured prices, and the spot price history of the types they lack among the
/// running spot hosts (`offerings::spot_prices`, the read pre-flight makes): read only when
/// some running spot host's type is not in `spot.hourly_prices`. EC2 API Reference,
/// DescribeSpotPriceHistory: with a start time it also returns "the last price change
/// before the start time, which is the effective price as of the start time", so a start
/// time of now gives each pool's current price. A failed read is logged and leaves those
/// hosts unpriced: the metrics still go out, without the cost estimate.
pub async fn read_prices(
    config: &Config,
    ec2: &aws_sdk_ec2::Client,
    hosts: &[InstanceInfo],
) -> Prices {
    let mut prices = Prices::of_config(config);
    let (types, zones) = prices.history_wanted(hosts);
    if types.is_empty() {
        return prices;
    }
    match crate::aws::offerings::spot_prices(ec2, &types, &zones).await {
        Ok(history) => prices.history = history,
        Err(e) => {
            tracing::warn!(error = %e, "no spot price history: the cost estimate is left out")
        }
    }
    prices
}

/// The estimated cost of the running hosts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cost {
    /// USD per hour by lifecycle (`spot`, `on-demand`), of the priced running hosts.
    pub usd_per_hour: BTreeMap<&'static str, f64>,
    /// Running hosts with no known price: while any, no estimate is exported.
    pub unpriced: Vec<String>,
}

impl Cost {
    /// The running hosts among `hosts`, priced.
    pub fn of(hosts: &[InstanceInfo], prices: &Prices) -> Cost {
        let mut cost = Cost {
            usd_per_hour: LIFECYCLES.iter().map(|l| (*l, 0.0)).collect(),
            unpriced: Vec::new(),
        };
        for h in running(hosts) {
            match prices.of(h) {
                Some(p) => *cost.usd_per_hour.entry(lifecycle(h)).or_default() += p,
                None => cost.unpriced.push(h.id.clone()),
            }
        }
        // To a millionth of a dollar: 3 x 0.05 is 0.15, not 0.15000000000000002.
        for usd in cost.usd_per_hour.values_mut() {
            *usd = (*usd * 1e6).round() / 1e6;
        }
        cost
    }
}
