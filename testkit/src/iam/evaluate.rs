//! The policies' fills and the evaluator's answers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::query::{q, query};
use super::world::TemplateData;
use super::{iam_requests, IamRequest, Principal, Recorded, ACCOUNT};

/// The values a test's config gives the policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fill {
    /// The fleet's name.
    pub fleet: String,
    /// spot.fleet_role.
    pub fleet_role: String,
    /// instance.instance_profile (its role has the same name).
    pub instance_profile: String,
}

impl Fill {
    /// The harness's config ([`crate::harness::Harness::config`]) for `fleet`.
    pub fn harness(fleet: &str) -> Fill {
        Fill {
            fleet: fleet.to_owned(),
            fleet_role: format!("arn:aws:iam::{ACCOUNT}:role/aws-ec2-spot-fleet-tagging-role"),
            instance_profile: "bbfleet-runner".to_owned(),
        }
    }
}

/// One evaluator answer.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `Allowed`, `ImplicitlyDenied`, `ExplicitlyDenied` or `Error`.
    pub decision: String,
    /// Why not, for a denial.
    pub reason: String,
    /// Context keys the evaluator dropped as not applying to the action/resource.
    pub ignored: Vec<String>,
}

impl Decision {
    /// The evaluator allowed the request.
    pub fn allowed(&self) -> bool {
        self.decision == "Allowed"
    }
}

/// Evaluates each (policy, request) with `scripts/iam/evaluate.mjs` (installed by
/// `scripts/tools.sh`), in order.
pub fn evaluate(items: &[(Value, &IamRequest)]) -> Vec<Decision> {
    let mut policies = BTreeMap::new();
    let mut requests = Vec::new();
    for (p, r) in items {
        let text = p.to_string();
        let n = policies.len();
        let name = policies
            .entry(text)
            .or_insert_with(|| format!("p{n}"))
            .clone();
        requests.push(json!({
            "policy": name,
            "principal": r.principal.arn(),
            "action": r.action,
            "resource": r.resource,
            "context": r.context,
        }));
    }
    let policies: serde_json::Map<String, Value> = policies
        .into_iter()
        .map(|(text, name)| (name, serde_json::from_str(&text).unwrap_or(Value::Null)))
        .collect();
    let input = json!({"policies": policies, "requests": requests});
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("requests.json");
    std::fs::write(&path, input.to_string()).expect("write the evaluator input");
    let root = crate::repo_root();
    let out = std::process::Command::new("node")
        .arg(root.join("scripts/iam/evaluate.mjs"))
        .arg(&path)
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run node (scripts/tools.sh installs the evaluator; node 20+ on PATH)");
    assert!(
        out.status.success(),
        "scripts/iam/evaluate.mjs failed (run scripts/tools.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decisions: Vec<Decision> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("one JSON line per request");
            Decision {
                decision: v["decision"].as_str().unwrap_or_default().to_owned(),
                reason: v["reason"].as_str().unwrap_or_default().to_owned(),
                ignored: v["ignored"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
            }
        })
        .collect();
    assert_eq!(decisions.len(), items.len(), "one decision per request");
    decisions
}

/// The fills (one per fleet the calls name) each request of one transcript is evaluated
/// with: the fleet the request names, else every fleet its proxy's principal named (a
/// call naming only ids, as TerminateInstances). Role and profile: the ones the proxy's
/// RequestSpotFleet / CreateLaunchTemplate calls used, else the harness's.
pub fn fills(calls: &[Recorded], reqs: &[IamRequest]) -> Vec<Vec<Fill>> {
    let mut roles: BTreeMap<&str, String> = BTreeMap::new();
    let mut profiles: BTreeMap<&str, String> = BTreeMap::new();
    for c in calls {
        let params = query(&c.body);
        if let Some(r) = q(&params, "SpotFleetRequestConfig.IamFleetRole") {
            roles
                .entry(c.proxy.as_str())
                .or_insert_with(|| r.to_owned());
        }
        if c.operation == "ec2:CreateLaunchTemplate" {
            if let Some(p) = TemplateData::from_query(&params).instance_profile {
                profiles.entry(c.proxy.as_str()).or_insert(p);
            }
        }
    }
    let mut named: BTreeMap<(&str, &Principal), BTreeSet<String>> = BTreeMap::new();
    for r in reqs {
        if let Some(f) = &r.fleet {
            named
                .entry((r.proxy.as_str(), &r.principal))
                .or_default()
                .insert(f.clone());
        }
    }
    reqs.iter()
        .map(|r| {
            let fleets: Vec<String> = match &r.fleet {
                Some(f) => vec![f.clone()],
                None => named
                    .get(&(r.proxy.as_str(), &r.principal))
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_else(|| vec!["unnamed".to_owned()]),
            };
            fleets
                .into_iter()
                .map(|fleet| {
                    let mut f = Fill::harness(&fleet);
                    if let Some(role) = roles.get(r.proxy.as_str()) {
                        f.fleet_role = role.clone();
                    }
                    if let Some(p) = profiles.get(r.proxy.as_str()) {
                        f.instance_profile = p.clone();
                    }
                    f
                })
                .collect()
        })
        .collect()
}

/// A denial, for the failure message.
#[derive(Debug, Clone)]
pub struct Denial {
    /// What was asked.
    pub request: IamRequest,
    /// What the evaluator answered.
    pub decision: Decision,
}

/// Evaluates every request of `calls` (one transcript) against operator.json (bbfleet) or
/// instance.json (hosts), as `policy(name, fill)` fills them; returns the requests and the
/// denials.
pub fn denials(
    calls: &[Recorded],
    policy: impl Fn(&str, &Fill) -> Value,
) -> (Vec<IamRequest>, Vec<Denial>) {
    // Group by moto world: resources and their tags are learned within one.
    let mut by_world: BTreeMap<&str, Vec<Recorded>> = BTreeMap::new();
    for c in calls {
        by_world
            .entry(c.upstream.as_str())
            .or_default()
            .push(c.clone());
    }
    let mut all = Vec::new();
    let mut fill_sets = Vec::new();
    for calls in by_world.values() {
        let reqs = iam_requests(calls);
        fill_sets.extend(fills(calls, &reqs));
        all.extend(reqs);
    }
    let mut items = Vec::new();
    let mut owner = Vec::new();
    let mut cache: BTreeMap<(&str, Fill), Value> = BTreeMap::new();
    for (i, (r, fills)) in all.iter().zip(&fill_sets).enumerate() {
        let doc = match r.principal {
            Principal::Operator => "operator",
            Principal::Instance(_) => "instance",
        };
        for f in fills {
            let p = cache
                .entry((doc, f.clone()))
                .or_insert_with(|| policy(doc, f))
                .clone();
            items.push((p, r));
            owner.push(i);
        }
    }
    let decisions = evaluate(&items);
    // A request passes when one of its candidate fills allows it.
    let mut best: BTreeMap<usize, Decision> = BTreeMap::new();
    for (i, d) in owner.into_iter().zip(decisions) {
        match best.get(&i) {
            Some(b) if b.allowed() => {}
            _ => {
                best.insert(i, d);
            }
        }
    }
    let denials = best
        .into_iter()
        .filter(|(_, d)| !d.allowed())
        .map(|(i, d)| Denial {
            request: all[i].clone(),
            decision: d,
        })
        .collect();
    (all, denials)
}
