//! `bbfleet policy NAME`: the IAM documents of `policies/`, filled in from the config.
//! Offline: no credentials, no network. Values the config cannot give come from flags.

use std::collections::BTreeMap;

use crate::config::Config;

/// The documents, as shipped in `policies/`.
pub const DOCUMENTS: &[(&str, &str)] = &[
    ("operator", include_str!("../policies/operator.json")),
    ("instance", include_str!("../policies/instance.json")),
    (
        "spot-fleet-trust",
        include_str!("../policies/spot-fleet-trust.json"),
    ),
    (
        "instance-trust",
        include_str!("../policies/instance-trust.json"),
    ),
    (
        "bitbucket-oidc-trust",
        include_str!("../policies/bitbucket-oidc-trust.json"),
    ),
];

/// The placeholders, each with where its value comes from.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "ACCOUNT_ID",
        "--account-id, else the account of spot.fleet_role",
    ),
    ("REGION", "region in the config, else AWS_REGION"),
    ("FLEET", "name in the config"),
    (
        "KMS_KEY_ARN",
        "--kms-key-arn, else kms.key when it is a key ARN, else every key of the account (key/*)",
    ),
    ("FLEET_ROLE_ARN", "spot.fleet_role"),
    (
        "INSTANCE_ROLE",
        "--instance-role, else the name of instance.instance_profile",
    ),
    ("WORKSPACE", "bitbucket.workspace (the slug)"),
    (
        "WORKSPACE_UUID",
        "--workspace-uuid, else bitbucket.workspace when it is a {uuid}",
    ),
    ("REPOSITORY_UUID", "--repository-uuid"),
];

/// Values the config does not hold.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// 12-digit account id.
    pub account_id: Option<String>,
    /// The fleet key's ARN.
    pub kms_key_arn: Option<String>,
    /// The runner instance role's name.
    pub instance_role: Option<String>,
    /// Workspace UUID (braces optional).
    pub workspace_uuid: Option<String>,
    /// Repository UUID (braces optional).
    pub repository_uuid: Option<String>,
}

/// A policy could not be filled in.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No such document.
    #[error("unknown policy {0:?}: one of operator, instance, spot-fleet-trust, instance-trust, bitbucket-oidc-trust")]
    Unknown(String),
    /// A value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A placeholder has no value.
    #[error("{document} needs ${{{name}}}: {source_hint}")]
    Missing {
        /// Document name.
        document: String,
        /// Placeholder.
        name: String,
        /// Where the value comes from.
        source_hint: &'static str,
    },
}

fn strip_braces(s: &str) -> &str {
    s.trim_start_matches('{').trim_end_matches('}')
}

fn checked(flag: &str, value: &str, ok: impl Fn(char) -> bool) -> Result<String, PolicyError> {
    if value.is_empty() || !value.chars().all(ok) {
        return Err(PolicyError::Invalid(format!(
            "{flag}: {value:?} is not valid"
        )));
    }
    Ok(value.to_owned())
}

fn uuid(flag: &str, value: &str) -> Result<String, PolicyError> {
    checked(flag, strip_braces(value), |c| {
        c.is_ascii_hexdigit() || c == '-'
    })
}

/// Characters an ARN (or a region) may bring into a policy document.
fn arn_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || ":/-_+=,.@*".contains(c)
}

/// The placeholder values for `config` in `region`.
pub fn values(
    config: &Config,
    region: &str,
    o: &Overrides,
) -> Result<BTreeMap<&'static str, String>, PolicyError> {
    let mut v = BTreeMap::new();
    v.insert("REGION", checked("region", region, arn_safe)?);
    v.insert("FLEET", config.name.clone());
    if let Some(a) = account_id(config, o)? {
        v.insert("ACCOUNT_ID", a);
    }
    v.insert(
        "FLEET_ROLE_ARN",
        checked("spot.fleet_role", &config.spot.fleet_role, arn_safe)?,
    );
    if let Some(k) = kms_key_arn(config, region, o, v.get("ACCOUNT_ID"))? {
        v.insert("KMS_KEY_ARN", k);
    }
    let role = o.instance_role.clone().unwrap_or_else(|| {
        let p = &config.instance.instance_profile;
        p.rsplit('/').next().unwrap_or(p).to_owned()
    });
    v.insert(
        "INSTANCE_ROLE",
        checked("--instance-role", &role, |c| {
            c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
        })?,
    );
    let ws = &config.bitbucket.workspace;
    v.insert("WORKSPACE", ws.clone());
    let ws_uuid = o
        .workspace_uuid
        .clone()
        .or_else(|| ws.starts_with('{').then(|| ws.clone()));
    if let Some(u) = ws_uuid {
        v.insert("WORKSPACE_UUID", uuid("--workspace-uuid", &u)?);
    }
    if let Some(u) = &o.repository_uuid {
        v.insert("REPOSITORY_UUID", uuid("--repository-uuid", u)?);
    }
    Ok(v)
}

/// `--account-id`, else the account of `spot.fleet_role` (when it has one).
fn account_id(config: &Config, o: &Overrides) -> Result<Option<String>, PolicyError> {
    let account = match &o.account_id {
        Some(a) => Some(a.clone()),
        None => config
            .spot
            .fleet_role
            .strip_prefix("arn:aws:iam::")
            .and_then(|r| r.split(':').next())
            .map(str::to_owned),
    };
    let Some(a) = account else {
        return Ok(None);
    };
    let a = checked("--account-id", &a, |c| c.is_ascii_digit())?;
    if a.len() != 12 {
        return Err(PolicyError::Invalid(format!(
            "--account-id: {a:?} is not a 12-digit account id"
        )));
    }
    Ok(Some(a))
}

/// `--kms-key-arn`, else `kms.key` when it is a key ARN, else every key of `account`.
fn kms_key_arn(
    config: &Config,
    region: &str,
    o: &Overrides,
    account: Option<&String>,
) -> Result<Option<String>, PolicyError> {
    let key = match &o.kms_key_arn {
        Some(k) => Some(k.clone()),
        None if config.kms.key.starts_with("arn:") && config.kms.key.contains(":key/") => {
            Some(config.kms.key.clone())
        }
        None => account.map(|a| format!("arn:aws:kms:{region}:{a}:key/*")),
    };
    let Some(k) = key else {
        return Ok(None);
    };
    if !k.starts_with("arn:aws") {
        return Err(PolicyError::Invalid(format!(
            "--kms-key-arn: {k:?} is not a key ARN"
        )));
    }
    checked("--kms-key-arn", &k, arn_safe).map(Some)
}

/// Replaces every `${NAME}` placeholder (IAM's own `${ec2:...}` variables stay).
pub fn fill(
    document: &str,
    text: &str,
    values: &BTreeMap<&'static str, String>,
) -> Result<String, PolicyError> {
    let mut out = text.to_owned();
    for (name, hint) in PLACEHOLDERS {
        let token = format!("${{{name}}}");
        if !out.contains(&token) {
            continue;
        }
        let value = values.get(name).ok_or_else(|| PolicyError::Missing {
            document: document.to_owned(),
            name: (*name).to_owned(),
            source_hint: hint,
        })?;
        out = out.replace(&token, value);
    }
    Ok(out)
}

/// The named document, filled in.
pub fn render(
    name: &str,
    config: &Config,
    region: &str,
    o: &Overrides,
) -> Result<String, PolicyError> {
    let (_, text) = DOCUMENTS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| PolicyError::Unknown(name.to_owned()))?;
    fill(&format!("{name}.json"), text, &values(config, region, o)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_in_the_documents_is_known() {
        for (name, text) in DOCUMENTS {
            let mut rest = *text;
            while let Some(i) = rest.find("${") {
                let end = rest[i..].find('}').expect("closed placeholder") + i;
                let p = &rest[i + 2..end];
                assert!(
                    p.starts_with("ec2:") || PLACEHOLDERS.iter().any(|(k, _)| *k == p),
                    "{name}.json: unknown placeholder ${{{p}}}"
                );
                rest = &rest[end..];
            }
        }
    }

    #[test]
    fn a_missing_value_names_the_placeholder_and_the_flag() {
        let err = fill("x.json", "\"${REPOSITORY_UUID}\"", &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.json needs ${REPOSITORY_UUID}: --repository-uuid"
        );
        assert!(uuid("--workspace-uuid", "{ab\"c}").is_err());
        assert_eq!(uuid("--x", "{0f3c-aa}").unwrap(), "0f3c-aa");
    }
}
