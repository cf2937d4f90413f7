//! Names and tags: how everything bbfleet owns is found again from the fleet name alone.

/// Tag key carried by every AWS resource bbfleet creates.
pub const FLEET_TAG: &str = "bbfleet:fleet";
/// The tag on a runner's stored command naming the one instance that may read it (its
/// instance ARN), or `free` ([`HOLDER_FREE`]): `policies/instance.json` lets an instance
/// read a command only while the tag names it, and set the tag only from free to itself
/// and back.
pub const HOLDER_TAG: &str = "bbfleet:holder";
/// [`HOLDER_TAG`]'s value while no instance holds the runner.
pub const HOLDER_FREE: &str = "free";
/// Tag on the spot fleet request: fingerprint of the configuration it was requested with.
pub const CONFIG_TAG: &str = "bbfleet:config";
/// Tag on a fleet request: when bbfleet last set its target (RFC 3339). The fallback
/// judges unfulfilled spot capacity by it, found again without local state.
pub const TARGET_AT_TAG: &str = "bbfleet:target-at";

/// SSM prefix of a fleet: `/bbfleet/{fleet}`.
pub fn ssm_prefix(fleet: &str) -> String {
    format!("/bbfleet/{fleet}")
}

/// SSM path holding the fleet's runner commands (no trailing slash).
pub fn runners_path(fleet: &str) -> String {
    format!("/bbfleet/{fleet}/runners")
}

/// The claim generation bbfleet writes `free` when it stores a runner's command: the offer
/// that lets hosts see the runner (they list claims, not commands); never pruned.
pub const OFFER_GENERATION: u64 = 0;

/// Name of one claim generation: `/bbfleet/{fleet}/claims/{runner}/{generation}`.
pub fn claim(fleet: &str, runner_uuid: &str, generation: u64) -> String {
    format!(
        "{}/{}/{generation}",
        claims_path(fleet),
        bare_uuid(runner_uuid)
    )
}

/// SSM path holding the fleet's claims (no trailing slash).
pub fn claims_path(fleet: &str) -> String {
    format!("/bbfleet/{fleet}/claims")
}

/// SSM name of the autoscaler's state (last change), a plain String.
pub fn autoscale_state(fleet: &str) -> String {
    format!("/bbfleet/{fleet}/autoscale")
}

/// SSM path holding the fleet lock's generations (no trailing slash).
pub fn lock_path(fleet: &str) -> String {
    format!("/bbfleet/{fleet}/lock")
}

/// SSM name of one generation of the fleet lock.
pub fn lock_parameter(fleet: &str, generation: u64) -> String {
    format!("{}/{generation}", lock_path(fleet))
}

/// SSM name of one runner's command: the UUID without braces, lower case.
pub fn runner_parameter(fleet: &str, runner_uuid: &str) -> String {
    format!("{}/{}", runners_path(fleet), bare_uuid(runner_uuid))
}

/// Launch template name of a fleet.
pub fn launch_template(fleet: &str) -> String {
    format!("bbfleet-{fleet}")
}

/// Default KMS alias of a fleet.
pub fn default_key_alias(fleet: &str) -> String {
    format!("alias/bbfleet-{fleet}")
}

/// Name of the fleet's runner number `n`.
pub fn runner_name(fleet: &str, n: u32) -> String {
    format!("bbfleet-{fleet}-{n}")
}

/// The slot number of a runner of this fleet, or `None` if the name is not exactly
/// `bbfleet-{fleet}-{n}` (n a positive decimal without leading zeros).
pub fn runner_slot(fleet: &str, name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("bbfleet-")?
        .strip_prefix(fleet)?
        .strip_prefix('-')?;
    if rest.is_empty() || rest.starts_with('0') || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// A UUID without braces, lower case: `{ABC-1}` -> `abc-1`.
pub fn bare_uuid(uuid: &str) -> String {
    uuid.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// A UUID with braces, lower case: `abc-1` -> `{abc-1}`.
pub fn braced_uuid(uuid: &str) -> String {
    format!("{{{}}}", bare_uuid(uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_names_belong_to_exactly_one_fleet() {
        assert_eq!(runner_slot("ci", "bbfleet-ci-7"), Some(7));
        assert_eq!(runner_slot("ci", "bbfleet-ci2-1"), None);
        assert_eq!(runner_slot("ci", "bbfleet-ci-x-1"), None);
        assert_eq!(runner_slot("ci", "team-laptop"), None);
        assert_eq!(runner_slot("ci", "bbfleet-ci-07"), None);
        assert_eq!(runner_slot("ci", "bbfleet-ci-"), None);
        assert_eq!(runner_slot("ci-x", "bbfleet-ci-x-1"), Some(1));
    }

    #[test]
    fn parameter_names_hold_bare_lower_case_uuids() {
        assert_eq!(
            runner_parameter("ci", "{0F3C-AB}"),
            "/bbfleet/ci/runners/0f3c-ab"
        );
        assert_eq!(braced_uuid("0F3C"), "{0f3c}");
    }
}
