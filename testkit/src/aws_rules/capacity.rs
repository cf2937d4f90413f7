//! Spot capacity, and the fleets' event history.
//!
//! With [`super::Rules::spot_capacity`] = `Some(n)`, the pools of this proxy's fleets hold
//! at most `n` Spot instances in all (running or pending, in every EC2 Fleet and Spot Fleet
//! this proxy created). A CreateFleet, ModifyFleet, RequestSpotFleet or
//! ModifySpotFleetRequest that asks for more goes to moto with its Spot part clipped to
//! what is left (a fleet keeps the Spot instances it runs), so moto launches fewer; the
//! fleet's Describe answers still show the targets as asked, with the fulfilled capacity
//! moto has, as AWS shows a fleet that cannot get its Spot capacity (a `maintain` fleet
//! keeps trying: a later modification, once capacity is back, is fulfilled).
//!
//! Each clipped request records the event AWS records when a pool has no Spot capacity.
//! EC2 API Reference, EventInformation: the `error` events of a fleet include
//! `spotFleetRequestConfigurationInvalid` ("The configuration is not valid. For more
//! information, see the description of the event"); an EC2 Fleet records error events
//! with the event type `service-error` (DescribeFleetHistory, FleetEventType:
//! `instance-change | fleet-change | service-error`), a Spot Fleet with `error`
//! (DescribeSpotFleetRequestHistory, EventType: `instanceChange | fleetRequestChange |
//! error | information`). That is the event a Spot Fleet short of capacity shows in its
//! history ("Error (spotFleetRequestConfigurationInvalid): p2.xlarge, ami-..., Linux/UNIX:
//! We currently do not have sufficient p2.xlarge capacity in the Availability Zone you
//! requested", github.com/c6fc/npk issue 70), the message of the InsufficientInstanceCapacity
//! error ("EC2 API Reference, Error codes"). The layer's description names both.
//!
//! moto has no DescribeFleetHistory nor DescribeSpotFleetRequestHistory: the layer answers
//! them for every fleet this proxy created, from the events it recorded (the fleet's
//! `submitted` and `active` changes, each modification, each instance `launched`, each
//! capacity shortage), with the shapes of the API reference.

use std::time::SystemTime;

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use axum::http::StatusCode;

use super::fleet::{is_ec2_fleet, EC2_FLEET_TAG, FLEET_REQUEST_TAG};
use super::{count, ec2_ok, moto_ec2, param, values, xml_escape, Rules};
use crate::recorder::{ec2_error, Answer, Upstream};

/// The sub-type of the event recorded for a capacity shortage (see the module's doc).
pub const SHORTAGE_SUB_TYPE: &str = "spotFleetRequestConfigurationInvalid";

/// A request as the layer sent it to moto, its Spot part clipped ([`clip`]).
#[derive(Debug, Clone)]
pub struct Clip {
    /// The query body sent to moto.
    pub body: String,
    /// The Spot units the client asked for.
    pub requested_spot: u32,
    /// The Spot units sent to moto.
    pub granted_spot: u32,
}

/// A fleet's targets, as asked: for a Spot Fleet, `total` is TargetCapacity and the rest
/// after `on_demand` is Spot.
#[derive(Debug, Clone, Default)]
pub(super) struct Targets {
    total: u32,
    on_demand: Option<u32>,
    spot: Option<u32>,
    default_type: Option<String>,
}

impl Targets {
    /// (on-demand, Spot) units: what is not in a part goes to DefaultTargetCapacityType
    /// (EC2 API Reference, TargetCapacitySpecificationRequest; on-demand by default).
    fn parts(&self) -> (u32, u32) {
        let on_demand = self.on_demand.unwrap_or(0).min(self.total);
        let spot = self.spot.unwrap_or(0).min(self.total - on_demand);
        let rest = self.total - on_demand - spot;
        match self.default_type.as_deref() {
            Some("spot") => (on_demand, spot + rest),
            _ => (on_demand + rest, spot),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fleet,
    Instance,
    Error,
}

#[derive(Debug, Clone)]
struct Event {
    at: SystemTime,
    kind: Kind,
    sub: String,
    description: Option<String>,
    instance: Option<String>,
}

/// What the layer knows of a fleet this proxy created.
#[derive(Debug, Clone, Default)]
pub(super) struct Fleet {
    requested: Targets,
    history: Vec<Event>,
}

impl Fleet {
    fn record(&mut self, kind: Kind, sub: &str, description: Option<String>) {
        self.history.push(Event {
            at: SystemTime::now(),
            kind,
            sub: sub.to_owned(),
            description,
            instance: None,
        });
    }
}

/// The target parameters of a create or modify call: (total, on-demand, Spot, default).
fn target_keys(op: &str) -> Option<[&'static str; 4]> {
    Some(match op {
        "ec2:CreateFleet" | "ec2:ModifyFleet" => [
            "TargetCapacitySpecification.TotalTargetCapacity",
            "TargetCapacitySpecification.OnDemandTargetCapacity",
            "TargetCapacitySpecification.SpotTargetCapacity",
            "TargetCapacitySpecification.DefaultTargetCapacityType",
        ],
        "ec2:RequestSpotFleet" => [
            "SpotFleetRequestConfig.TargetCapacity",
            "SpotFleetRequestConfig.OnDemandTargetCapacity",
            "",
            "",
        ],
        "ec2:ModifySpotFleetRequest" => ["TargetCapacity", "OnDemandTargetCapacity", "", ""],
        _ => return None,
    })
}

/// The targets a call asks for, over those the fleet had (`known`); `None` if it changes
/// none (a ModifyFleet of the launch template only).
fn asked(op: &str, q: &[(String, String)], known: Option<&Targets>) -> Option<Targets> {
    let [total, on_demand, spot, default] = target_keys(op)?;
    let number = |key: &str| param(q, key).and_then(|v| v.parse::<u32>().ok());
    let mut t = known.cloned().unwrap_or_default();
    t.total = number(total)?;
    t.on_demand = number(on_demand).or(t.on_demand);
    if spot.is_empty() {
        t.default_type = Some("spot".to_owned());
    } else {
        t.spot = number(spot).or(t.spot);
        t.default_type = param(q, default).map(str::to_owned).or(t.default_type);
    }
    Some(t)
}

/// The modified fleet's id, `None` for a create.
fn modified(op: &str, q: &[(String, String)]) -> Option<String> {
    match op {
        "ec2:ModifyFleet" => param(q, "FleetId").map(str::to_owned),
        "ec2:ModifySpotFleetRequest" => param(q, "SpotFleetRequestId").map(str::to_owned),
        _ => None,
    }
}

/// The request as moto gets it: the Spot part clipped to the capacity left. A
/// modification of a known fleet always goes with its whole targets (on-demand and Spot
/// explicit), so moto never mixes them with the clipped ones it kept.
pub(super) async fn clip(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Clip> {
    target_keys(op)?;
    let id = modified(op, q);
    let (known, capacity, fleets) = {
        let shared = up.shared.lock().unwrap();
        let rules = &shared.rules;
        let known = id
            .as_ref()
            .and_then(|i| rules.fleets.get(i))
            .map(|f| f.requested.clone());
        let fleets: Vec<String> = rules.fleets.keys().cloned().collect();
        (known, rules.spot_capacity, fleets)
    };
    if id.is_some() && known.is_none() {
        return None; // a fleet this proxy did not create
    }
    let asked = asked(op, q, known.as_ref())?;
    let (on_demand, spot) = asked.parts();
    let granted = match capacity {
        None => spot,
        Some(capacity) => {
            let (others, own) = spot_running(up, &fleets, id.as_deref()).await;
            spot.min(capacity.saturating_sub(others).max(own))
        }
    };
    if granted == spot && id.is_none() {
        return None;
    }
    Some(Clip {
        body: forwarded(op, q, &asked, on_demand, granted),
        requested_spot: spot,
        granted_spot: granted,
    })
}

/// `q` with explicit targets: `on_demand` on-demand and `spot` Spot units.
fn forwarded(
    op: &str,
    q: &[(String, String)],
    asked: &Targets,
    on_demand: u32,
    spot: u32,
) -> String {
    let keys = target_keys(op).unwrap_or_default();
    let mut out: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .cloned()
        .collect();
    out.push((keys[0].to_owned(), (on_demand + spot).to_string()));
    out.push((keys[1].to_owned(), on_demand.to_string()));
    if !keys[2].is_empty() {
        out.push((keys[2].to_owned(), spot.to_string()));
        let default = asked.default_type.as_deref().unwrap_or("on-demand");
        out.push((keys[3].to_owned(), default.to_owned()));
    }
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(out)
        .finish()
}

/// Spot instances running or pending in the `fleets` other than `own`, and in `own`.
async fn spot_running(up: &Upstream, fleets: &[String], own: Option<&str>) -> (u32, u32) {
    let (mut others, mut mine) = (0, 0);
    for id in fleets {
        let tag = if is_ec2_fleet(id) {
            EC2_FLEET_TAG
        } else {
            FLEET_REQUEST_TAG
        };
        let filter = format!("tag:{tag}");
        let xml = moto_ec2(
            up,
            &[
                ("Action", "DescribeInstances"),
                ("Version", "2016-11-15"),
                ("Filter.1.Name", &filter),
                ("Filter.1.Value.1", id),
                ("Filter.2.Name", "instance-state-name"),
                ("Filter.2.Value.1", "pending"),
                ("Filter.2.Value.2", "running"),
            ],
        )
        .await;
        let n = xml
            .matches("<instanceLifecycle>spot</instanceLifecycle>")
            .count() as u32;
        if Some(id.as_str()) == own {
            mine += n;
        } else {
            others += n;
        }
    }
    (others, mine)
}

/// After a successful create or modify: the fleet's targets as asked, its events, and
/// the shortage event if the layer clipped it.
pub(super) fn remember(
    up: &Upstream,
    op: &str,
    id: &str,
    q: &[(String, String)],
    clip: Option<&Clip>,
) {
    let mut shared = up.shared.lock().unwrap();
    let rules = &mut shared.rules;
    let ec2 = is_ec2_fleet(id);
    let creating = matches!(op, "ec2:CreateFleet" | "ec2:RequestSpotFleet");
    if !creating && !rules.fleets.contains_key(id) {
        return;
    }
    let fleet = rules.fleets.entry(id.to_owned()).or_default();
    if let Some(targets) = asked(op, q, (!creating).then_some(&fleet.requested)) {
        fleet.requested = targets;
    }
    // EC2 User Guide, "EC2 Fleet event types" / "Spot Fleet event types" (State Change).
    let changes: [&str; 2] = match (creating, ec2) {
        (true, _) => ["submitted", "active"],
        (false, true) => ["modify_in_progress", "modify_succeeded"],
        (false, false) => ["modify_in_progress", "modify_successful"],
    };
    for sub in changes {
        fleet.record(Kind::Fleet, sub, None);
    }
    let Some(clip) = clip.filter(|c| c.granted_spot < c.requested_spot) else {
        return;
    };
    let types = values(q, |k| {
        k.contains(".Overrides.") && k.ends_with(".InstanceType")
    });
    let types = if types.is_empty() {
        "the fleet's instance types".to_owned()
    } else {
        types.join(", ")
    };
    let description = format!(
        "{types}, Linux/UNIX: There is no Spot capacity available that matches your request \
         (InsufficientInstanceCapacity: We currently do not have sufficient {types} capacity \
         in the Availability Zone you requested); launched {} of {} Spot units",
        clip.granted_spot, clip.requested_spot
    );
    fleet.record(Kind::Error, SHORTAGE_SUB_TYPE, Some(description));
    count(rules, "spot-capacity");
}

/// Records the fleet's new instances as `launched` (instance change) events.
pub(super) fn launched(up: &Upstream, id: &str, instances: &[String]) {
    let mut shared = up.shared.lock().unwrap();
    let Some(fleet) = shared.rules.fleets.get_mut(id) else {
        return;
    };
    for instance in instances {
        fleet.history.push(Event {
            at: SystemTime::now(),
            kind: Kind::Instance,
            sub: "launched".to_owned(),
            description: None,
            instance: Some(instance.clone()),
        });
    }
}

/// `item` (one fleet of a DescribeFleets / DescribeSpotFleetRequests answer) with the
/// targets as asked, where the layer clipped them.
pub(super) fn show_requested(rules: &Rules, id: &str, item: String) -> String {
    let Some(fleet) = rules.fleets.get(id) else {
        return item;
    };
    let t = &fleet.requested;
    if !is_ec2_fleet(id) {
        let item = set_element(item, "targetCapacity", &t.total.to_string());
        return set_element(
            item,
            "onDemandTargetCapacity",
            &t.on_demand.unwrap_or(0).to_string(),
        );
    }
    let mut spec = format!("<totalTargetCapacity>{}</totalTargetCapacity>", t.total);
    if let Some(n) = t.on_demand {
        spec.push_str(&format!(
            "<onDemandTargetCapacity>{n}</onDemandTargetCapacity>"
        ));
    }
    if let Some(n) = t.spot {
        spec.push_str(&format!("<spotTargetCapacity>{n}</spotTargetCapacity>"));
    }
    if let Some(d) = &t.default_type {
        spec.push_str(&format!(
            "<defaultTargetCapacityType>{d}</defaultTargetCapacityType>"
        ));
    }
    set_element(item, "targetCapacitySpecification", &spec)
}

/// `xml` with the content of its first `<name>` element replaced by `content`.
fn set_element(mut xml: String, name: &str, content: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    if let Some(start) = xml.find(&open) {
        let from = start + open.len();
        if let Some(len) = xml[from..].find(&close) {
            xml.replace_range(from..from + len, content);
        }
    }
    xml
}

fn timestamp(t: SystemTime) -> String {
    DateTime::from(t)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

/// DescribeFleetHistory and DescribeSpotFleetRequestHistory, which moto lacks, answered
/// for the fleets this proxy created (EC2 API Reference: FleetId / SpotFleetRequestId and
/// StartTime required; EventType filters; "historyRecordSet", "lastEvaluatedTime",
/// "startTime" and the fleet's id in the answer).
pub(super) fn history(up: &Upstream, op: &str, q: &[(String, String)]) -> Option<Answer> {
    let (action, id_name, not_found) = match op {
        "ec2:DescribeFleetHistory" => {
            ("DescribeFleetHistory", "FleetId", "InvalidFleetId.NotFound")
        }
        "ec2:DescribeSpotFleetRequestHistory" => (
            "DescribeSpotFleetRequestHistory",
            "SpotFleetRequestId",
            "InvalidSpotFleetRequestId.NotFound",
        ),
        _ => return None,
    };
    let missing = |name: &str| {
        ec2_error(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            &format!("The request must contain the parameter {name}"),
        )
    };
    let Some(id) = param(q, id_name) else {
        return Some(missing(id_name));
    };
    let Some(start_text) = param(q, "StartTime") else {
        return Some(missing("StartTime"));
    };
    let start = DateTime::from_str(start_text, DateTimeFormat::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let shared = up.shared.lock().unwrap();
    let Some(fleet) = shared.rules.fleets.get(id) else {
        return Some(ec2_error(
            StatusCode::BAD_REQUEST,
            not_found,
            &format!("The fleet ID '{id}' does not exist"),
        ));
    };
    let ec2 = is_ec2_fleet(id);
    let wanted = param(q, "EventType");
    let items: String = fleet
        .history
        .iter()
        .filter(|e| e.at >= start)
        .filter(|e| wanted.is_none_or(|w| w == event_type(e.kind, ec2)))
        .map(|e| history_item(e, ec2))
        .collect();
    let id_element = if ec2 { "fleetId" } else { "spotFleetRequestId" };
    Some(ec2_ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>00000000-0000-0000-0000-000000000000</requestId><historyRecordSet>{items}</historyRecordSet><lastEvaluatedTime>{}</lastEvaluatedTime><{id_element}>{id}</{id_element}><startTime>{}</startTime></{action}Response>",
        timestamp(SystemTime::now()),
        timestamp(start),
    )))
}

/// The eventType of an event: EC2 Fleet and Spot Fleet spell them differently.
fn event_type(kind: Kind, ec2: bool) -> &'static str {
    match (kind, ec2) {
        (Kind::Fleet, true) => "fleet-change",
        (Kind::Instance, true) => "instance-change",
        (Kind::Error, true) => "service-error",
        (Kind::Fleet, false) => "fleetRequestChange",
        (Kind::Instance, false) => "instanceChange",
        (Kind::Error, false) => "error",
    }
}

fn history_item(e: &Event, ec2: bool) -> String {
    let mut info = String::new();
    if let Some(d) = &e.description {
        info.push_str(&format!(
            "<eventDescription>{}</eventDescription>",
            xml_escape(d)
        ));
    }
    info.push_str(&format!("<eventSubType>{}</eventSubType>", e.sub));
    if let Some(i) = &e.instance {
        info.push_str(&format!("<instanceId>{i}</instanceId>"));
    }
    format!(
        "<item><eventInformation>{info}</eventInformation><eventType>{}</eventType><timestamp>{}</timestamp></item>",
        event_type(e.kind, ec2),
        timestamp(e.at)
    )
}
