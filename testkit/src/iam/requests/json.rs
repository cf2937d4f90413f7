//! SSM and KMS calls (JSON protocol) -> IAM requests.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{parameter_arn, request_tag_context, tag_context, Builder, NEW};
use crate::iam::world::{key_arn, World};
use crate::iam::{Recorded, ACCOUNT, REGION};

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

pub(super) fn json_requests(world: &World, c: &Recorded, b: &mut Builder) {
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
        | "ssm:AddTagsToResource"
        | "ssm:ListTagsForResource"
        | "ssm:RemoveTagsFromResource" => {
            let names: Vec<String> = match op {
                "ssm:GetParametersByPath" => vec![str_of("Path")],
                "ssm:DeleteParameters" | "ssm:GetParameters" => req["Names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                "ssm:AddTagsToResource"
                | "ssm:ListTagsForResource"
                | "ssm:RemoveTagsFromResource" => vec![str_of("ResourceId")],
                _ => vec![str_of("Name")],
            };
            for n in &names {
                b.name_fleet(n);
                let mut ctx = BTreeMap::new();
                if op == "ssm:AddTagsToResource" {
                    ctx = request_tag_context(&tags_of(&req["Tags"], "Key", "Value"));
                }
                if op == "ssm:RemoveTagsFromResource" {
                    let keys: Vec<&str> = req["TagKeys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    ctx.insert("aws:TagKeys".into(), json!(keys));
                }
                // The parameter's tags as they were before the call (Service Authorization
                // Reference, SSM: resource type parameter, aws:ResourceTag/${TagKey} and
                // ssm:resourceTag/${TagKey}).
                if let Some(tags) = world.parameter_tags.get(n) {
                    tag_context(&mut ctx, "aws:ResourceTag", tags);
                    tag_context(&mut ctx, "ssm:resourceTag", tags);
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
        "kms:Decrypt" => {
            // A direct Decrypt (KMS API Reference, Decrypt): on the key the request names
            // (or, for a symmetric ciphertext, the one it was made with: unknown here),
            // with the encryption context the request gives; no kms:ViaService.
            let key = req["KeyId"]
                .as_str()
                .and_then(|k| world.key(k))
                .unwrap_or_else(|| key_arn("unknown"));
            let mut ctx = BTreeMap::new();
            let context = req["EncryptionContext"].as_object();
            for (k, v) in context.into_iter().flatten() {
                ctx.insert(format!("kms:EncryptionContext:{k}"), v.clone());
            }
            let keys: Vec<&String> = context.into_iter().flat_map(|c| c.keys()).collect();
            ctx.insert("kms:EncryptionContextKeys".into(), json!(keys));
            b.push(op, key, ctx);
        }
        _ => b.push(op, "*".into(), BTreeMap::new()),
    }
}
