//! The customer-managed KMS key that encrypts runner commands.

use aws_sdk_kms::types::{KeyManagerType, KeySpec, KeyState, KeyUsageType, Tag};

use super::AwsError;
use crate::names::FLEET_TAG;

use crate::world::KeyStatus;

/// Looks the key up and checks it is customer managed, enabled and symmetric.
pub async fn describe(kms: &aws_sdk_kms::Client, key: &str) -> Result<KeyStatus, AwsError> {
    let out = match kms.describe_key().key_id(key).send().await {
        Ok(o) => o,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_not_found_exception()) =>
        {
            return Ok(KeyStatus::Absent)
        }
        Err(e) => return Err(AwsError::call("kms:DescribeKey", e)),
    };
    let Some(md) = out.key_metadata() else {
        return Err(AwsError::Reference {
            field: "kms.key".to_owned(),
            message: format!("DescribeKey returned no metadata for {key}"),
        });
    };
    let problem = if md.key_manager() != Some(&KeyManagerType::Customer) {
        Some("is AWS managed; bbfleet needs a customer managed key".to_owned())
    } else if md.key_state() != Some(&KeyState::Enabled) {
        Some(format!(
            "is {} (must be Enabled)",
            md.key_state().map_or("in an unknown state", |s| s.as_str())
        ))
    } else if md
        .key_usage()
        .is_some_and(|u| *u != KeyUsageType::EncryptDecrypt)
        || md
            .key_spec()
            .is_some_and(|s| *s != KeySpec::SymmetricDefault)
    {
        Some("is not a symmetric encryption key (SSM SecureString needs SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)".to_owned())
    } else {
        None
    };
    Ok(match problem {
        Some(p) => KeyStatus::Unusable {
            reason: format!("kms.key {key} ({}) {p}", md.key_id()),
        },
        None => KeyStatus::Usable {
            arn: md.arn().unwrap_or(md.key_id()).to_owned(),
        },
    })
}

/// Creates the fleet's key under `alias`, or adopts the one an interrupted run created
/// (tagged with the fleet and the alias, but with no alias yet). Returns the key ARN.
pub async fn create(
    kms: &aws_sdk_kms::Client,
    alias: &str,
    fleet: &str,
) -> Result<String, AwsError> {
    let key_arn = match find_unaliased(kms, alias, fleet).await? {
        Some(arn) => {
            tracing::info!(%arn, "adopting the key an interrupted run created");
            arn
        }
        None => {
            let tag = |k: &str, v: &str| {
                Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .map_err(|e| AwsError::build("kms:CreateKey", e))
            };
            let out = kms
                .create_key()
                .description(format!("bbfleet {fleet}: Bitbucket runner commands in SSM"))
                .key_usage(KeyUsageType::EncryptDecrypt)
                .key_spec(KeySpec::SymmetricDefault)
                .tags(tag(FLEET_TAG, fleet)?)
                .tags(tag(ALIAS_TAG, alias)?)
                .send()
                .await
                .map_err(|e| AwsError::call("kms:CreateKey", e))?;
            let md = out.key_metadata().ok_or_else(|| AwsError::Answer {
                operation: "kms:CreateKey",
                problem: "returned no key metadata".to_owned(),
            })?;
            md.arn().unwrap_or(md.key_id()).to_owned()
        }
    };
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(&key_arn)
        .send()
        .await
        .map_err(|e| AwsError::call("kms:CreateAlias", e))?;
    Ok(key_arn)
}

/// Tag recording which alias a created key is meant for.
const ALIAS_TAG: &str = "bbfleet:alias";

async fn find_unaliased(
    kms: &aws_sdk_kms::Client,
    alias: &str,
    fleet: &str,
) -> Result<Option<String>, AwsError> {
    let mut aliased = std::collections::HashSet::new();
    let mut pages = kms.list_aliases().limit(100).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("kms:ListAliases", e))?;
        aliased.extend(
            page.aliases()
                .iter()
                .filter_map(|a| a.target_key_id().map(str::to_owned)),
        );
    }
    let mut pages = kms.list_keys().limit(1000).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::call("kms:ListKeys", e))?;
        for key in page.keys() {
            let (Some(id), Some(arn)) = (key.key_id(), key.key_arn()) else {
                continue;
            };
            if aliased.contains(id) {
                continue;
            }
            let tags = match kms.list_resource_tags().key_id(id).send().await {
                Ok(t) => t,
                // Keys we may not read the tags of are not ours.
                Err(_) => continue,
            };
            let has = |k: &str, v: &str| {
                tags.tags()
                    .iter()
                    .any(|t| t.tag_key() == k && t.tag_value() == v)
            };
            if has(FLEET_TAG, fleet)
                && has(ALIAS_TAG, alias)
                && matches!(describe(kms, id).await?, KeyStatus::Usable { .. })
            {
                return Ok(Some(arn.to_owned()));
            }
        }
    }
    Ok(None)
}
