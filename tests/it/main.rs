//! bbfleet's integration tests, one test binary: one module per area, each against the
//! real `bbfleet` binary, a real moto server and the Bitbucket fake (the `testkit` crate).
//!
//! Every test of this binary shares one moto server (`testkit::moto`) and tests run in
//! parallel, so each keeps to its own fleet name (`Harness::new` refuses a name taken in
//! the process), its own names, tags and CIDRs, and counts or lists only what is its own.
//!
//! `scripts/test.sh` runs the suite, then `iam::every_request_the_suite_made_is_allowed`
//! (ignored in a plain run): the IAM evaluation of every AWS request the suite made.

mod aws_rules;
mod bad_input;
mod bake;
mod crash;
mod cycle;
mod day_two;
mod drift;
mod economics;
mod flaky;
mod fleet_api;
mod iam;
mod lock;
mod lock_fence;
mod lost_create;
mod metrics;
mod perf;
mod planfile;
mod policies;
mod preflight;
mod resize;
mod rotation;
mod secrets;
mod subnets;
mod userdata;

/// The test kit for this package's test targets: this build's `bbfleet` binary, and the
/// AWS request dumps of the IAM evaluation in `target/tmp/aws-requests`.
const KIT: testkit::Kit = testkit::kit!();
