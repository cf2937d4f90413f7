//! Recorded calls -> the IAM requests AWS authorizes for them.

mod ec2;
mod ec2_fleet;
mod images;
mod json;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::world::World;
use super::{Principal, Recorded, ACCOUNT, HARNESS_ACCESS_KEY, REGION};

/// One authorization AWS makes for a recorded call.
#[derive(Debug, Clone)]
pub struct IamRequest {
    /// The recorded call (`file:line`).
    pub origin: String,
    /// The recorded call's operation.
    pub operation: String,
    /// The proxy it came through (one per test harness or userdata process).
    pub proxy: String,
    /// Who made the call.
    pub principal: Principal,
    /// The IAM action authorized (`iam:PassRole` for a RequestSpotFleet, ...).
    pub action: String,
    /// The resource ARN (`*` for actions without resource types).
    pub resource: String,
    /// The request context: condition key -> value(s).
    pub context: BTreeMap<String, Value>,
    /// The fleet the call names (SSM path, tag, template or alias name), if any.
    pub fleet: Option<String>,
}

fn ec2_arn(kind: &str, id: &str) -> String {
    if kind == "image" || kind == "snapshot" {
        // Service Authorization Reference, EC2 resource types: image and snapshot ARNs
        // carry no account.
        format!("arn:aws:ec2:{REGION}::{kind}/{id}")
    } else {
        format!("arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{id}")
    }
}

/// `arn:aws:ssm:…:parameter/NAME` (names start with `/`; public `/aws/` ones have no account).
pub fn parameter_arn(name: &str) -> String {
    let path = name.trim_start_matches('/');
    let account = if path.starts_with("aws/") {
        ""
    } else {
        ACCOUNT
    };
    format!("arn:aws:ssm:{REGION}:{account}:parameter/{path}")
}

/// The fleet a name, path or tag value names: `/bbfleet/F/...`, `bbfleet-F`, `alias/bbfleet-F`.
fn fleet_of_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("/bbfleet/") {
        return rest
            .split('/')
            .next()
            .filter(|f| !f.is_empty())
            .map(str::to_owned);
    }
    let name = name.strip_prefix("alias/").unwrap_or(name);
    name.strip_prefix("bbfleet-")
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
}

fn tag_context(ctx: &mut BTreeMap<String, Value>, prefix: &str, tags: &BTreeMap<String, String>) {
    for (k, v) in tags {
        ctx.insert(format!("{prefix}/{k}"), json!(v));
    }
}

fn request_tag_context(tags: &[(String, String)]) -> BTreeMap<String, Value> {
    let mut ctx = BTreeMap::new();
    if tags.is_empty() {
        return ctx;
    }
    for (k, v) in tags {
        ctx.insert(format!("aws:RequestTag/{k}"), json!(v));
    }
    ctx.insert(
        "aws:TagKeys".into(),
        json!(tags.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()),
    );
    ctx
}

struct Builder<'a> {
    call: &'a Recorded,
    principal: Principal,
    fleet: Option<String>,
    out: Vec<IamRequest>,
}

impl Builder<'_> {
    fn push(&mut self, action: &str, resource: String, context: BTreeMap<String, Value>) {
        let mut context = context;
        if let Principal::Instance(id) = &self.principal {
            // IAM User Guide, "AWS global condition context keys" (properties of the role
            // session): ec2:SourceInstanceArn is the ARN of the instance the role session
            // was issued to, present on requests signed with instance role credentials;
            // the Service Authorization Reference for EC2 lists it as well.
            context.insert(
                "ec2:SourceInstanceARN".into(),
                json!(ec2_arn("instance", id)),
            );
        }
        self.out.push(IamRequest {
            origin: self.call.origin.clone(),
            operation: self.call.operation.clone(),
            proxy: self.call.proxy.clone(),
            principal: self.principal.clone(),
            action: action.to_owned(),
            resource,
            context,
            fleet: self.fleet.clone(),
        });
    }

    fn name_fleet(&mut self, name: &str) {
        if self.fleet.is_none() {
            self.fleet = fleet_of_name(name);
        }
    }

    fn tag_fleet(&mut self, tags: &[(String, String)]) {
        if self.fleet.is_none() {
            self.fleet = tags
                .iter()
                .find(|(k, _)| k == "bbfleet:fleet")
                .map(|(_, v)| v.clone());
        }
    }
}

/// Context of an existing EC2 resource: its tags (`aws:ResourceTag/…`, and EC2's own
/// `ec2:ResourceTag/…`), as the transcript showed them.
fn resource_context(world: &World, id: &str) -> BTreeMap<String, Value> {
    let mut ctx = BTreeMap::new();
    if let Some(tags) = world.tags.get(id) {
        tag_context(&mut ctx, "aws:ResourceTag", tags);
        tag_context(&mut ctx, "ec2:ResourceTag", tags);
    }
    ctx
}

/// A placeholder id for a resource a call creates that has no id yet (DryRun, failure).
const NEW: &str = "new";

/// The IAM requests for every call of one transcript (calls in order, one moto world).
pub fn iam_requests(calls: &[Recorded]) -> Vec<IamRequest> {
    let mut world = World::default();
    let mut out = Vec::new();
    for c in calls {
        if !c.throttled && c.status != 0 && c.access_key != HARNESS_ACCESS_KEY {
            out.extend(requests_of(&world, c));
        }
        world.learn(c);
    }
    out
}

fn requests_of(world: &World, c: &Recorded) -> Vec<IamRequest> {
    let mut b = Builder {
        call: c,
        principal: Principal::of(&c.access_key),
        fleet: None,
        out: Vec::new(),
    };
    let op = c.operation.as_str();
    if op.starts_with("ec2:") {
        ec2::ec2_requests(world, c, &mut b);
    } else {
        json::json_requests(world, c, &mut b);
    }
    let fleet = b.fleet.clone();
    b.out
        .into_iter()
        .map(|mut r| {
            r.fleet = fleet.clone();
            r
        })
        .collect()
}
