//! The staleness fingerprint of a saved plan, derived from the world itself: every field
//! of [`Observed`] but the reading's clock goes into some part, so a field added to the
//! world is in the fingerprint without anyone listing it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{hex, Observed};

/// A digest of the world a plan was made from, part by part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldFingerprint {
    /// sha256 over all parts.
    pub sha256: String,
    /// sha256 of each part's canonical (sorted) projection, by part name.
    pub parts: BTreeMap<String, String>,
}

/// Fields of [`Observed`] that are not the world: when it was read, and the spot price
/// of that moment.
const NOT_THE_WORLD: [&str; 2] = ["observed_at", "spot_price"];

/// Which part each field of [`Observed`] belongs to, and the part's name for people, in
/// the order changes are reported. A field missing here is still fingerprinted, as a part
/// of its own named after the field (a unit test keeps this table complete).
const PARTS: [(&str, &str, &str); 15] = [
    ("scope_name", "scope", SCOPE),
    ("account_uuid", "scope", SCOPE),
    ("repository_uuid", "scope", SCOPE),
    ("scope_runner_count", "scope", SCOPE),
    ("runners", "runners", "runners"),
    ("parameters", "parameters", "stored runner commands"),
    ("claims", "claims", "claims"),
    ("key", "key", "the KMS key"),
    ("subnets", "subnets", "subnets"),
    ("security_groups", "security_groups", "security groups"),
    ("image", "image", "the AMI"),
    ("launch_template", "launch_template", "the launch template"),
    ("fleets", "fleets", "fleet requests"),
    ("instances", "instances", "instances"),
    (
        "autoscale_state",
        "autoscale_state",
        "the autoscaler's state",
    ),
];

const SCOPE: &str = "the Bitbucket scope (workspace, repository, runner count)";

/// The part a field belongs to.
fn part_of(field: &str) -> &str {
    PARTS
        .iter()
        .find(|(f, _, _)| *f == field)
        .map_or(field, |(_, part, _)| part)
}

/// The observed world with every list in one order, so what is computed from it does not
/// depend on the order the observer happened to produce.
pub fn canonical(observed: &Observed) -> Observed {
    let mut o = observed.clone();
    o.runners
        .sort_by(|a, b| (&a.name, &a.uuid).cmp(&(&b.name, &b.uuid)));
    o.parameters.sort_by(|a, b| a.name.cmp(&b.name));
    o.claims.sort_by(|a, b| {
        (&a.runner_uuid, a.generation, &a.name).cmp(&(&b.runner_uuid, b.generation, &b.name))
    });
    o.fleets.sort_by(|a, b| a.id.cmp(&b.id));
    for f in &mut o.fleets {
        f.instance_ids.sort();
    }
    o.instances.sort_by(|a, b| a.id.cmp(&b.id));
    o.subnets.sort_by(|a, b| a.id.cmp(&b.id));
    o.security_groups.sort_by(|a, b| a.id.cmp(&b.id));
    o
}

fn sha256_json<T: Serialize + ?Sized>(value: &T) -> String {
    hex(&Sha256::digest(
        serde_json::to_vec(value).unwrap_or_default(),
    ))
}

impl WorldFingerprint {
    /// The fingerprint of what a plan depends on. Every list is sorted (labels too), so
    /// observing an unchanged world again gives the same digest whatever order the APIs
    /// answered in.
    pub fn of(observed: &Observed) -> WorldFingerprint {
        let mut world = canonical(observed);
        for r in &mut world.runners {
            r.labels.sort();
        }
        let serde_json::Value::Object(fields) = serde_json::to_value(&world).unwrap_or_default()
        else {
            unreachable!("Observed serializes to a JSON object");
        };
        let mut grouped: BTreeMap<&str, Vec<(&String, &serde_json::Value)>> = BTreeMap::new();
        for (field, value) in &fields {
            if !NOT_THE_WORLD.contains(&field.as_str()) {
                grouped
                    .entry(part_of(field))
                    .or_default()
                    .push((field, value));
            }
        }
        let parts: BTreeMap<String, String> = grouped
            .into_iter()
            .map(|(part, values)| (part.to_owned(), sha256_json(&values)))
            .collect();
        WorldFingerprint {
            sha256: sha256_json(&parts),
            parts,
        }
    }

    /// The parts that differ from `now`, named for people.
    pub fn changed(&self, now: &WorldFingerprint) -> Vec<String> {
        let names: BTreeMap<&str, &str> = PARTS.iter().map(|(_, p, label)| (*p, *label)).collect();
        let mut order: Vec<&str> = PARTS.iter().map(|(_, p, _)| *p).collect();
        order.dedup();
        let unlisted = self
            .parts
            .keys()
            .chain(now.parts.keys())
            .map(String::as_str);
        let mut changed: Vec<String> = Vec::new();
        for part in order.into_iter().chain(unlisted) {
            let label = names.get(part).copied().unwrap_or(part).to_owned();
            if self.parts.get(part) != now.parts.get(part) && !changed.contains(&label) {
                changed.push(label);
            }
        }
        if changed.is_empty() && self.sha256 != now.sha256 {
            changed.push("the world".to_owned());
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_world_has_a_part_with_a_name() {
        let serde_json::Value::Object(fields) = serde_json::to_value(Observed::default()).unwrap()
        else {
            panic!("not an object");
        };
        for field in fields.keys() {
            assert!(
                NOT_THE_WORLD.contains(&field.as_str()) || PARTS.iter().any(|(f, _, _)| f == field),
                "Observed.{field} has no part in PARTS"
            );
        }
        let fp = WorldFingerprint::of(&Observed::default());
        let other = Observed {
            autoscale_state: Some("/bbfleet/ci/autoscale".into()),
            ..Observed::default()
        };
        assert_eq!(
            fp.changed(&WorldFingerprint::of(&other)),
            vec!["the autoscaler's state"]
        );
    }
}
