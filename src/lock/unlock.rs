//! Reading the lock for `status` and `unlock`, and `unlock --force`.

use jiff::Timestamp;

use super::identity::Identity;
use super::record::{next_generation, LockState, LockValue};
use super::store::{list, put};
use super::LockError;
use crate::aws::AwsError;

/// Who holds the lock now, if anyone (for `status` and `unlock`).
pub async fn holder(ssm: &aws_sdk_ssm::Client, fleet: &str) -> Result<Option<LockValue>, AwsError> {
    Ok(list(ssm, fleet)
        .await?
        .pop()
        .map(|g| g.value)
        .filter(|v| v.state == LockState::Held))
}

/// Releases the lock whoever holds it (`unlock --force`); returns the holder it released,
/// `None` when it was not held.
pub async fn force_release(
    ssm: &aws_sdk_ssm::Client,
    fleet: &str,
) -> Result<Option<LockValue>, LockError> {
    let me = Identity::current();
    for _ in 0..10 {
        let generations = list(ssm, fleet).await?;
        let Some(newest) = generations.last() else {
            return Ok(None);
        };
        if newest.value.state == LockState::Released {
            return Ok(None);
        }
        let value = LockValue::released(&me, "unlock", Timestamp::now());
        if put(ssm, fleet, next_generation(&generations), &value).await? {
            return Ok(Some(newest.value.clone()));
        }
    }
    Err(LockError::Contended {
        fleet: fleet.to_owned(),
        attempts: 10,
    })
}
