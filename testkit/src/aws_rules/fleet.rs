//! What AWS does to a fleet's instances and listings, for Spot Fleet requests (`sfr-`)
//! and EC2 Fleets (`fleet-`) alike: the fleet tag and the launch template tags on each
//! instance, the late listing of new instances, tags written to a Spot Fleet request, and
//! (with [`super::capacity`]) the targets as asked.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Bytes;

use super::{capacity, moto_ec2, param, values, xml_values};
use crate::recorder::{Answer, Upstream};

/// The tag AWS puts on every instance a Spot Fleet launches (EC2 User Guide, "Tag a Spot
/// Fleet": "Amazon EC2 adds the tag aws:ec2spot:fleet-request-id to instances launched by
/// a Spot Fleet"); moto does not, so the layer adds it.
pub const FLEET_REQUEST_TAG: &str = "aws:ec2spot:fleet-request-id";

/// The tag AWS puts on every instance an EC2 Fleet launches: "When launching instances
/// using an EC2 Fleet, EC2 Fleet automatically adds a tag to the instances with a key of
/// aws:ec2:fleet-id and a value of the fleet id" (AWS's EC2 Spot workshops, "EC2 Fleet";
/// the counterpart of [`FLEET_REQUEST_TAG`]); moto does not, so the layer adds it.
pub const EC2_FLEET_TAG: &str = "aws:ec2:fleet-id";

/// An EC2 Fleet's id (a Spot Fleet request's is `sfr-...`).
pub fn is_ec2_fleet(id: &str) -> bool {
    id.starts_with("fleet-")
}

/// The fleet a create or modify call is about.
pub(super) fn fleet_id(op: &str, q: &[(String, String)], answer: &Answer) -> Option<String> {
    match op {
        "ec2:RequestSpotFleet" => xml_values(&answer.2, "spotFleetRequestId")
            .into_iter()
            .next(),
        "ec2:CreateFleet" => xml_values(&answer.2, "fleetId").into_iter().next(),
        "ec2:ModifySpotFleetRequest" => param(q, "SpotFleetRequestId").map(str::to_owned),
        "ec2:ModifyFleet" => param(q, "FleetId").map(str::to_owned),
        _ => None,
    }
}

/// EC2 API Reference, CreateTags: "Adds or overwrites only the specified tags for the
/// specified Amazon EC2 resource", a Spot Fleet request included (EC2 User Guide, "Tag a
/// Spot Fleet"), and DescribeSpotFleetRequests then shows them. moto accepts the call but
/// keeps a request's tags from its creation only, so the layer remembers them.
pub(super) fn remember_fleet_tags(up: &Upstream, q: &[(String, String)]) {
    let ids: Vec<&str> = values(q, |k| k.starts_with("ResourceId."))
        .into_iter()
        .filter(|id| id.starts_with("sfr-"))
        .collect();
    if ids.is_empty() {
        return;
    }
    let tags: BTreeMap<String, String> = crate::iam::query::q_tag_list(q, "").into_iter().collect();
    let mut shared = up.shared.lock().unwrap();
    for id in ids {
        let known = shared.rules.fleet_tags.entry(id.to_owned()).or_default();
        known.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// DescribeSpotFleetRequests / DescribeFleets as AWS answers them: each Spot Fleet
/// request's tags written since ([`remember_fleet_tags`]: the remembered value replaces
/// that of the same key in its `tagSet`, or is added), and each fleet's targets as asked
/// ([`capacity::show_requested`]).
pub(super) fn show_fleets(up: &Upstream, op: &str, answer: Answer) -> Answer {
    let id_name = if op == "ec2:DescribeFleets" {
        "fleetId"
    } else {
        "spotFleetRequestId"
    };
    let shared = up.shared.lock().unwrap();
    let (status, headers, body) = answer;
    let xml = String::from_utf8_lossy(&body).into_owned();
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml.as_str();
    // Each fleet is one top-level <item> of spotFleetRequestConfigSet / fleetSet.
    while let Some((before, item, after)) = top_level_item(rest) {
        out.push_str(before);
        let id = xml_values(item.as_bytes(), id_name)
            .into_iter()
            .next()
            .unwrap_or_default();
        let item = match shared.rules.fleet_tags.get(&id) {
            Some(tags) => retag(item, tags),
            None => item.to_owned(),
        };
        out.push_str(&capacity::show_requested(&shared.rules, &id, item));
        rest = after;
    }
    out.push_str(rest);
    (status, headers, Bytes::from(out))
}

/// The first `<item>...</item>` of `xml` with its nested items, and what is around it.
fn top_level_item(xml: &str) -> Option<(&str, &str, &str)> {
    let start = xml.find("<item>")?;
    let mut depth = 0usize;
    let mut at = start;
    while at < xml.len() {
        let open = xml[at..].find("<item>").map(|i| i + at);
        let close = xml[at..].find("</item>").map(|i| i + at)?;
        match open {
            Some(o) if o < close => {
                depth += 1;
                at = o + "<item>".len();
            }
            _ => {
                depth -= 1;
                at = close + "</item>".len();
                if depth == 0 {
                    return Some((&xml[..start], &xml[start..at], &xml[at..]));
                }
            }
        }
    }
    None
}

/// `item` with each of `tags` set in its `tagSet`.
fn retag(item: &str, tags: &BTreeMap<String, String>) -> String {
    let mut item = item.to_owned();
    for (k, v) in tags {
        let key = format!("<key>{k}</key>");
        match item.find(&key) {
            Some(at) => {
                let after = at + key.len();
                if let (Some(vs), Some(ve)) = (
                    item[after..].find("<value>"),
                    item[after..].find("</value>"),
                ) {
                    item.replace_range(after + vs + "<value>".len()..after + ve, v);
                }
            }
            None => {
                if let Some(at) = item.rfind("<tagSet/>") {
                    item.replace_range(at..at + "<tagSet/>".len(), "<tagSet></tagSet>");
                }
                if let Some(at) = item.find("<tagSet>") {
                    item.insert_str(
                        at + "<tagSet>".len(),
                        &format!("<item><key>{k}</key><value>{v}</value></item>"),
                    );
                }
            }
        }
    }
    item
}

/// The launch template version a request names (RequestSpotFleet, CreateFleet, or a
/// modification that changes the launch template configs): new instances launch from it.
pub(super) fn remember_fleet_template(up: &Upstream, id: &str, q: &[(String, String)]) {
    const SPEC: &str = ".1.LaunchTemplateSpecification.";
    let Some((key, lt)) = q
        .iter()
        .find(|(k, _)| k.ends_with(&format!("{SPEC}LaunchTemplateId")))
    else {
        return;
    };
    let version_key = key.replace("LaunchTemplateId", "Version");
    if let Some(version) = param(q, &version_key) {
        up.shared
            .lock()
            .unwrap()
            .rules
            .fleet_templates
            .insert(id.to_owned(), (lt.clone(), version.to_owned()));
    }
}

/// EC2 User Guide, "Launch EC2 instances using a launch template": instances launched
/// from a launch template carry the tags `aws:ec2launchtemplate:id` and
/// `aws:ec2launchtemplate:version`. moto's Spot Fleet copies the newest version's data and
/// tags neither, so the layer tags each new instance of a request with the version the
/// request names (AWS launches from that version).
async fn tag_template_versions(up: &Upstream, id: &str, instances: &[String]) -> Vec<String> {
    let (template, fresh) = {
        let mut shared = up.shared.lock().unwrap();
        let template = shared.rules.fleet_templates.get(id).cloned();
        let fresh: Vec<String> = instances
            .iter()
            .filter(|i| shared.rules.template_tagged.insert((*i).clone()))
            .cloned()
            .collect();
        (template, fresh)
    };
    let Some((lt, version)) = template else {
        return fresh;
    };
    for instance in &fresh {
        moto_ec2(
            up,
            &[
                ("Action", "CreateTags"),
                ("Version", "2016-11-15"),
                ("ResourceId.1", instance),
                ("Tag.1.Key", "aws:ec2launchtemplate:id"),
                ("Tag.1.Value", &lt),
                ("Tag.2.Key", "aws:ec2launchtemplate:version"),
                ("Tag.2.Value", &version),
            ],
        )
        .await;
    }
    fresh
}

/// Tags the fleet's instances with [`FLEET_REQUEST_TAG`] or [`EC2_FLEET_TAG`], as AWS does
/// at launch, and records each new one in the fleet's history.
pub(super) async fn tag_fleet_instances(up: &Upstream, id: &str) {
    let (action, id_param, tag) = if is_ec2_fleet(id) {
        ("DescribeFleetInstances", "FleetId", EC2_FLEET_TAG)
    } else {
        (
            "DescribeSpotFleetInstances",
            "SpotFleetRequestId",
            FLEET_REQUEST_TAG,
        )
    };
    let xml = moto_ec2(
        up,
        &[
            ("Action", action),
            ("Version", "2016-11-15"),
            (id_param, id),
        ],
    )
    .await;
    let instances = xml_values(xml.as_bytes(), "instanceId");
    if instances.is_empty() {
        return;
    }
    let fresh = tag_template_versions(up, id, &instances).await;
    capacity::launched(up, id, &fresh);
    let keys: Vec<String> = (1..=instances.len())
        .map(|i| format!("ResourceId.{i}"))
        .collect();
    let mut params = vec![
        ("Action", "CreateTags"),
        ("Version", "2016-11-15"),
        ("Tag.1.Key", tag),
        ("Tag.1.Value", id),
    ];
    params.extend(
        keys.iter()
            .map(String::as_str)
            .zip(instances.iter().map(String::as_str)),
    );
    moto_ec2(up, &params).await;
}

/// EC2 API Reference, DescribeSpotFleetInstances (and DescribeFleetInstances): the list
/// "is refreshed periodically and might be out of date". With `fleet_listing_delay`, an instance stays unlisted for
/// that long after the layer first saw it.
pub(super) fn hide_new_instances(up: &Upstream, answer: Answer) -> Answer {
    let (status, headers, body) = answer;
    let mut shared = up.shared.lock().unwrap();
    let delay = shared.rules.fleet_listing_delay;
    let now = Instant::now();
    let xml = String::from_utf8_lossy(&body).into_owned();
    let mut parts = xml.split("<item>");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for item in parts {
        let id = xml_values(item.as_bytes(), "instanceId")
            .into_iter()
            .next()
            .unwrap_or_default();
        let seen = *shared.rules.first_seen.entry(id).or_insert(now);
        if now.duration_since(seen) >= delay {
            out.push_str("<item>");
            out.push_str(item);
        } else {
            // Keep what follows the item's end (the closing of the list).
            let tail = item.split_once("</item>").map_or("", |(_, t)| t);
            out.push_str(tail);
        }
    }
    (status, headers, Bytes::from(out))
}
