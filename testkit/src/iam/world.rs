//! What a transcript tells about the world behind one moto: tags, launch templates,
//! keys, learned call by call.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::query::{q, q_list, q_tags, query};
use super::xml::Xml;
use super::{Recorded, ACCOUNT, REGION};

/// What the transcript so far tells about the world behind one moto.
#[derive(Debug, Default)]
pub(super) struct World {
    /// Tags by EC2 resource id (`i-…`, `lt-…`, `sfr-…`, `fleet-…`).
    pub(super) tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Launch template id by name.
    pub(super) template_ids: BTreeMap<String, String>,
    /// Launch template data by (id, version): image, security groups, instance profile.
    pub(super) template_data: BTreeMap<(String, String), TemplateData>,
    /// Latest known version by launch template id.
    pub(super) template_latest: BTreeMap<String, String>,
    /// KMS key ARN by alias name, key id and ARN.
    pub(super) keys: BTreeMap<String, String>,
    /// KMS key ARN of each SecureString parameter, by name.
    pub(super) parameter_keys: BTreeMap<String, String>,
    /// Tags by SSM parameter name, from PutParameter, AddTagsToResource and
    /// ListTagsForResource.
    pub(super) parameter_tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Launch template ids of each Spot Fleet request or EC2 Fleet, from its
    /// RequestSpotFleet / CreateFleet.
    pub(super) fleet_templates: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct TemplateData {
    pub(super) image: Option<String>,
    pub(super) security_groups: Vec<String>,
    pub(super) instance_profile: Option<String>,
}

impl TemplateData {
    /// From `LaunchTemplateData.…` query keys.
    pub(super) fn from_query(params: &[(String, String)]) -> TemplateData {
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

pub(super) fn key_arn(id: &str) -> String {
    if id.starts_with("arn:") {
        id.to_owned()
    } else {
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
    }
}

impl World {
    pub(super) fn key(&self, id: &str) -> Option<String> {
        if let Some(k) = self.keys.get(id) {
            return Some(k.clone());
        }
        if id.starts_with("alias/") || id.contains(":alias/") {
            let name = id.rsplit(":").next().unwrap_or(id);
            return self.keys.get(name).cloned();
        }
        Some(key_arn(id))
    }

    pub(super) fn template_id(
        &self,
        id_or_name: Option<&str>,
        name: Option<&str>,
    ) -> Option<String> {
        id_or_name
            .map(str::to_owned)
            .or_else(|| name.and_then(|n| self.template_ids.get(n).cloned()))
    }

    pub(super) fn data(&self, id: &str, version: Option<&str>) -> TemplateData {
        let version = match version {
            Some(v) if v != "$Latest" && v != "$Default" => v.to_owned(),
            _ => self.template_latest.get(id).cloned().unwrap_or_default(),
        };
        self.template_data
            .get(&(id.to_owned(), version))
            .cloned()
            .unwrap_or_default()
    }

    /// The key of a SecureString a PutParameter stores.
    fn learn_secure_string(&mut self, req: &Value) {
        if req["Type"] != "SecureString" {
            return;
        }
        if let Some(name) = req["Name"].as_str() {
            let key = req["KeyId"].as_str().unwrap_or("alias/aws/ssm");
            if let Some(k) = self.key(key) {
                self.parameter_keys.insert(name.to_owned(), k);
            }
        }
    }

    /// Learns from one call, after it is evaluated.
    pub(super) fn learn(&mut self, c: &Recorded) {
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
                .or_else(|| el.text_of("spotFleetRequestId"))
                .or_else(|| el.text_of("fleetId"))
                // DescribeImages / DescribeSnapshots items (bbfleet bake).
                .or_else(|| el.text_of("imageId"))
                .or_else(|| el.text_of("snapshotId"));
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
        if op == "ec2:CreateFleet" {
            if let Some(id) = x.all().into_iter().find_map(|e| e.text_of("fleetId")) {
                let tags = q_tags(&params, "", "fleet");
                self.tags
                    .entry(id.clone())
                    .or_insert_with(|| tags.into_iter().collect());
                let lts = q_list(
                    &params,
                    "LaunchTemplateConfigs.",
                    ".LaunchTemplateSpecification.LaunchTemplateId",
                );
                self.fleet_templates.entry(id).or_default().extend(lts);
            }
        }
        if op == "ec2:CreateImage" {
            // The image's tags as given on create (DescribeImages shows them later too).
            if let Some(id) = x.all().into_iter().find_map(|e| e.text_of("imageId")) {
                let tags = q_tags(&params, "", "image");
                self.tags
                    .entry(id)
                    .or_insert_with(|| tags.into_iter().collect());
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
            "ssm:PutParameter" | "ssm:AddTagsToResource" | "ssm:ListTagsForResource" => {
                let (name, list) = match c.operation.as_str() {
                    "ssm:PutParameter" => (req["Name"].as_str(), &req["Tags"]),
                    "ssm:AddTagsToResource" => (req["ResourceId"].as_str(), &req["Tags"]),
                    _ => (req["ResourceId"].as_str(), &res["TagList"]),
                };
                if let Some(name) = name {
                    let tags = self.parameter_tags.entry(name.to_owned()).or_default();
                    for t in list.as_array().into_iter().flatten() {
                        if let (Some(k), Some(v)) = (t["Key"].as_str(), t["Value"].as_str()) {
                            tags.insert(k.to_owned(), v.to_owned());
                        }
                    }
                }
                self.learn_secure_string(&req);
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
