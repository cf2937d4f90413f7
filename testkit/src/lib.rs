//! bbfleet's test kit: real emulators on loopback for the integration tests (`tests/it`),
//! the benchmark (`benches/fleet.rs`) and the demo's AWS-rules proxy
//! (`examples/aws_rules_proxy.rs`).
//!
//! - [`moto`]: one real `moto_server` per process, shared by every test of that process;
//! - [`recorder`]: a recording proxy in front of moto, with the AWS-rules layer of
//!   [`aws_rules`], where moto answers otherwise than AWS;
//! - [`harness`]: one test's world (moto behind a proxy, a Bitbucket fake, a config) and
//!   the real `bbfleet` binary run against it; [`world`]: checks of that world;
//! - [`imds`]: a fake IMDSv2 for the userdata scripts;
//! - [`iam`]: the IAM evaluation of every AWS request the tests made.
//!
//! The kit does not depend on bbfleet. What only bbfleet's test targets know, the path of
//! the binary and their temp dir, comes in through a [`Kit`], made by [`kit!`] in them.
#![warn(missing_docs)]

pub mod aws_rules;
pub mod harness;
pub mod iam;
pub mod imds;
pub mod moto;
pub mod recorder;
pub mod world;

/// What the kit takes from the package whose test targets use it.
#[derive(Debug, Clone, Copy)]
pub struct Kit {
    /// The `bbfleet` binary a [`harness::Harness`] runs.
    pub bbfleet: &'static str,
    /// The directory where every recording proxy appends the AWS calls it saw, for the
    /// IAM evaluation ([`iam::dump`]); `None`: no dumps.
    pub dumps: Option<&'static str>,
}

impl Kit {
    /// [`Kit::dumps`] as a path.
    pub fn dump_dir(&self) -> Option<&'static std::path::Path> {
        self.dumps.map(std::path::Path::new)
    }
}

/// The [`Kit`] of a test target (integration test or benchmark) of the bbfleet package:
/// `CARGO_BIN_EXE_bbfleet`, and the dumps in `CARGO_TARGET_TMPDIR/aws-requests`
/// (`target/tmp/aws-requests`, which `scripts/test.sh` empties before the suite). Both
/// are read where the macro is used, when that target is compiled.
#[macro_export]
macro_rules! kit {
    () => {
        $crate::Kit {
            bbfleet: env!("CARGO_BIN_EXE_bbfleet"),
            dumps: Some(concat!(env!("CARGO_TARGET_TMPDIR"), "/aws-requests")),
        }
    };
}

/// The repository's root: the kit lives in its `testkit/` directory.
pub(crate) fn repo_root() -> &'static std::path::Path {
    let kit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit)
}
