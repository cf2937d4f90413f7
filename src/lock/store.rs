//! The lock in SSM: listing the generations and writing one with `Overwrite=false`.

use jiff::Timestamp;

use super::record::{parse_generation, Generation, LockValue};
use crate::aws::{ssm, AwsError};
use crate::names;

/// The fleet's lock generations, oldest first (one GetParametersByPath call per page).
pub async fn list(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Vec<Generation>, AwsError> {
    let mut out = Vec::new();
    for p in ssm::list_path(ssm, &names::lock_path(fleet), false).await? {
        let Some(generation) = parse_generation(fleet, &p.name) else {
            continue;
        };
        let value = LockValue::parse(&p.value).unwrap_or_else(|e| {
            // Someone wrote this by hand: treat it as held until its write time + TTL,
            // so a mistake blocks for a while but not for ever.
            tracing::warn!(parameter = %p.name, error = %e, "unreadable fleet lock value");
            LockValue::unreadable(p.last_modified.unwrap_or(Timestamp::UNIX_EPOCH))
        });
        out.push(Generation {
            generation,
            name: p.name,
            value,
            written: p.last_modified,
        });
    }
    out.sort_by_key(|g| g.generation);
    Ok(out)
}

/// Writes one generation with `Overwrite=false`: `Ok(false)` when the name exists (lost race).
pub(super) async fn put(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
    generation: u64,
    value: &LockValue,
) -> Result<bool, AwsError> {
    let name = names::lock_parameter(fleet, generation);
    let text = serde_json::to_string(value).map_err(|e| AwsError::Encode {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let description = format!("bbfleet {fleet}: fleet lock, generation {generation}");
    ssm::create_string(ssm, fleet, &name, Some(description), &text).await
}
