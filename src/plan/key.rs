//! Phase 1, the key: the configured customer key is used, or created when it is an alias.

use super::{Action, PlanError};
use crate::config::Config;
use crate::world::{KeyStatus, Observed};

/// The key phase's hand-off.
pub(super) struct Key {
    /// `CreateKey`, when the alias has no key yet.
    pub actions: Vec<Action>,
    /// The key's ARN; `None` when this plan creates it.
    pub arn: Option<String>,
}

/// Uses, or plans to create, the configured key.
pub(super) fn plan(config: &Config, observed: &Observed) -> Result<Key, PlanError> {
    match &observed.key {
        Some(KeyStatus::Usable { arn }) => Ok(Key {
            actions: Vec::new(),
            arn: Some(arn.clone()),
        }),
        Some(KeyStatus::Unusable { reason }) => Err(PlanError::KeyUnusable {
            key: config.kms.key.clone(),
            reason: reason.clone(),
        }),
        Some(KeyStatus::Absent) | None => match config.kms.creatable_alias() {
            Some(alias) => Ok(Key {
                actions: vec![Action::CreateKey {
                    alias: alias.to_owned(),
                }],
                arn: None,
            }),
            None => Err(PlanError::KeyMissing {
                key: config.kms.key.clone(),
            }),
        },
    }
}

/// Whether a stored command is encrypted under the key: SSM reports the key as it was
/// given (the ARN, the key id, or the alias).
pub(super) fn on_key(reported: &str, arn: &str, configured: &str) -> bool {
    reported == arn || reported == configured || arn.ends_with(&format!("/{reported}"))
}
