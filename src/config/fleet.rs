//! Validation of the fleet API, the on-demand part and the cost cap.

use super::checks::is_role_arn;
use super::validate::Validator;
use super::{CostCap, Fallback, FleetApiKind};

impl Validator {
    pub(super) fn fleet_api(&mut self, raw: Option<&str>) -> FleetApiKind {
        let Some(s) = raw else {
            return FleetApiKind::default();
        };
        match FleetApiKind::ALL.iter().find(|(n, _)| *n == s) {
            Some((_, kind)) => *kind,
            None => {
                self.err(
                    "spot.fleet_api",
                    format!("{s:?} is not one of spot-fleet (RequestSpotFleet), ec2-fleet (CreateFleet)"),
                );
                FleetApiKind::default()
            }
        }
    }

    /// Spot Fleet launches with the fleet role, which must be given; EC2 Fleet uses its
    /// service-linked role (AWSServiceRoleForEC2Fleet, EC2 User Guide, "EC2 Fleet
    /// prerequisites"), so a role given with it is not used (kept for a switch back).
    pub(super) fn fleet_role(&mut self, raw: Option<String>, api: FleetApiKind) -> String {
        match raw {
            Some(role) => {
                self.check(
                    is_role_arn(&role),
                    "spot.fleet_role",
                    format!(
                        "{role:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
                    ),
                );
                if api == FleetApiKind::Ec2Fleet {
                    String::new()
                } else {
                    role
                }
            }
            None => {
                self.check(
                    api == FleetApiKind::Ec2Fleet,
                    "spot.fleet_role",
                    "missing: Spot Fleet launches instances with this role (arn:aws:iam::123456789012:role/NAME); spot.fleet_api = \"ec2-fleet\" needs none",
                );
                String::new()
            }
        }
    }

    pub(super) fn fallback(&mut self, raw: Option<&str>) -> Fallback {
        match raw {
            None | Some("none") => Fallback::None,
            Some("on-demand") => Fallback::OnDemand,
            Some(s) => {
                self.err(
                    "spot.fallback",
                    format!("{s:?} is not one of none, on-demand"),
                );
                Fallback::None
            }
        }
    }

    pub(super) fn cost_cap(&mut self, max: Option<f64>, price: Option<f64>) -> Option<CostCap> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        for (field, value) in [
            ("capacity.max_hourly_cost", max),
            ("capacity.on_demand_hourly_price", price),
        ] {
            if let Some(v) = value {
                self.check(
                    positive(v),
                    field,
                    format!("{v} is not a positive amount of USD per hour"),
                );
            }
        }
        match (max, price) {
            (Some(max_hourly_cost), Some(on_demand_hourly_price)) => Some(CostCap {
                max_hourly_cost,
                on_demand_hourly_price,
            }),
            (Some(_), None) => {
                self.err(
                    "capacity.on_demand_hourly_price",
                    "missing: capacity.max_hourly_cost is judged with it (USD per hour of one on-demand instance of the dearest configured type, from the EC2 pricing page: EC2's API has no on-demand prices)",
                );
                None
            }
            // The price alone prices on-demand runners for the metrics and `simulate`.
            (None, _) => None,
        }
    }

    /// `spot.hourly_prices`: positive USD per hour, for configured instance types only.
    pub(super) fn hourly_prices(
        &mut self,
        prices: &std::collections::BTreeMap<String, f64>,
        instance_types: &[String],
    ) {
        for (ty, &v) in prices {
            let field = format!("spot.hourly_prices.{ty:?}");
            if !instance_types.contains(ty) {
                self.err(
                    field,
                    "is not one of spot.instance_types (a price for a type the fleet does not run)",
                );
            } else {
                self.check(
                    v.is_finite() && v > 0.0,
                    field,
                    format!("{v} is not a positive amount of USD per hour"),
                );
            }
        }
    }
}
