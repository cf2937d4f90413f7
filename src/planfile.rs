//! Saved plans: `plan --out FILE` writes the actions with a fingerprint of the world they
//! were made from; `apply FILE` runs them only if a fresh look at the world gives the same
//! fingerprint. The file holds names, ids and the rendered userdata, never a secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Capacity, Config};
use crate::plan::{self, Action, Desired, Plan, PlanOptions};
use crate::world::{hex, Observed};

pub use crate::world::WorldFingerprint;

/// The `format` field of every plan file.
pub const FORMAT: &str = "bbfleet-plan";

/// The plan file layout this bbfleet writes and reads (2: `rekey_parameter` gone,
/// `offer_runner` added; 3: fleet targets carry their on-demand part).
pub const FORMAT_VERSION: u32 = 3;

/// A plan written by `plan --out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The bbfleet that wrote it.
    pub bbfleet_version: String,
    /// When the plan was made (RFC 3339).
    pub created_at: String,
    /// Fleet name.
    pub fleet: String,
    /// AWS region the world was read in.
    pub region: String,
    /// sha256 of the validated config.
    pub config_fingerprint: String,
    /// `--force` was given (scale-down may remove busy runners).
    pub force: bool,
    /// The capacity the plan aims at.
    pub capacity: Capacity,
    /// The desired state, as resolved when planning (AMI, userdata, fleet request).
    pub desired: Desired,
    /// The actions, in execution order.
    pub actions: Vec<Action>,
    /// The plan's warnings.
    pub warnings: Vec<String>,
    /// What the plan was made from.
    pub observed: WorldFingerprint,
    /// sha256 of the document with this field empty: catches edits and truncation.
    pub checksum: String,
}

/// A plan file cannot be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum PlanfileError {
    /// Writing.
    #[error("cannot write the plan file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading.
    #[error("cannot read the plan file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a plan file, or a damaged one.
    #[error("{} is not a usable bbfleet plan file: {message}", path.display())]
    Garbled {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the JSON path when there is one.
        message: String,
    },
    /// Another layout version.
    #[error("{}: plan file format version {found}, but this bbfleet ({}) reads version {FORMAT_VERSION}; run plan again with this bbfleet", path.display(), env!("CARGO_PKG_VERSION"))]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// The checksum does not match: someone edited the file.
    #[error("{}: the checksum does not match: the plan file was changed after bbfleet wrote it; run plan again", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
    },
    /// Made for another fleet.
    #[error("the plan is for fleet {planned}, but the config is fleet {configured}")]
    Fleet {
        /// In the file.
        planned: String,
        /// In the config.
        configured: String,
    },
    /// Made from another config.
    #[error("the plan was made with a different configuration (fingerprint {planned}, now {now}): the config changed since the plan was made; run plan again")]
    Config {
        /// In the file (short).
        planned: String,
        /// Now (short).
        now: String,
    },
    /// Made in another region.
    #[error("the plan was made for region {planned}, but this run uses region {now}")]
    Region {
        /// In the file.
        planned: String,
        /// Now.
        now: String,
    },
    /// The world changed.
    #[error("the plan is stale: {} changed since the plan was made; run plan again", .changed.join(", "))]
    Stale {
        /// What changed, for people.
        changed: Vec<String>,
    },
    /// The world looks the same but planning again gives something else.
    #[error("the plan is stale: planning again from the world as it is now gives different {0}; run plan again")]
    Diverged(&'static str),
}

/// sha256 of the validated config (its JSON form; fields in declaration order).
pub fn config_fingerprint(config: &Config) -> String {
    sha256_json(config)
}

fn sha256_json<T: Serialize + ?Sized>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex(&Sha256::digest(bytes))
}

impl SavedPlan {
    /// A saved plan of `plan`, made from `observed` towards `desired`.
    pub fn new(
        config: &Config,
        region: &str,
        plan: &Plan,
        desired: &Desired,
        observed: &Observed,
        force: bool,
    ) -> SavedPlan {
        let mut saved = SavedPlan {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            bbfleet_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: jiff::Timestamp::now().to_string(),
            fleet: config.name.clone(),
            region: region.to_owned(),
            config_fingerprint: config_fingerprint(config),
            force,
            capacity: desired.capacity.clone(),
            desired: desired.clone(),
            actions: plan.actions.clone(),
            warnings: plan.warnings.clone(),
            observed: WorldFingerprint::of(observed),
            checksum: String::new(),
        };
        saved.seal();
        saved
    }

    /// Sets the checksum to match the contents (after a tool rewrote the plan on purpose).
    pub fn seal(&mut self) {
        self.checksum = self.compute_checksum();
    }

    fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum = String::new();
        sha256_json(&copy)
    }

    /// Writes the plan to `path` atomically (a temp file in the same directory, then a
    /// rename) with mode 0600, so a reader never sees half a plan.
    pub fn write(&self, path: &Path) -> Result<(), PlanfileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| PlanfileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        json.push(b'\n');
        let file_name = path
            .file_name()
            .ok_or_else(|| err(std::io::Error::other("the path names no file")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A temp file left by a killed run with our pid would block create_new.
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(())
    }

    /// Reads and checks a plan file: format, version, layout and checksum (no network).
    pub fn read(path: &Path) -> Result<SavedPlan, PlanfileError> {
        let bytes = std::fs::read(path).map_err(|source| PlanfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let garbled = |message: String| PlanfileError::Garbled {
            path: path.to_owned(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| garbled(format!("not JSON ({e})")))?;
        // Format and version first: a newer layout is reported as such, not as a stray field.
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(garbled(format!(
                "field format: expected {FORMAT:?} (is this a file written by bbfleet plan --out?)"
            )));
        }
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(PlanfileError::Version {
                    path: path.to_owned(),
                    found,
                })
            }
            None => return Err(garbled("field format_version: missing".to_owned())),
        }
        let saved: SavedPlan = serde_path_to_error::deserialize(value)
            .map_err(|e| garbled(format!("field {}: {}", e.path(), e.inner())))?;
        if saved.checksum != saved.compute_checksum() {
            return Err(PlanfileError::Checksum {
                path: path.to_owned(),
            });
        }
        Ok(saved)
    }

    /// Checks that the plan was made for this fleet and config (no network).
    pub fn check_config(&self, config: &Config) -> Result<(), PlanfileError> {
        if self.fleet != config.name {
            return Err(PlanfileError::Fleet {
                planned: self.fleet.clone(),
                configured: config.name.clone(),
            });
        }
        let now = config_fingerprint(config);
        if self.config_fingerprint != now {
            return Err(PlanfileError::Config {
                planned: self.config_fingerprint.chars().take(16).collect(),
                now: now.chars().take(16).collect(),
            });
        }
        Ok(())
    }

    /// Checks the plan against the world as it is now: the same region, the same
    /// fingerprint, and planning again gives exactly the saved desired state and actions
    /// (so an edited action or userdata cannot run). Returns what to execute.
    pub fn check_world(
        &self,
        config: &Config,
        region: &str,
        observed: &Observed,
    ) -> Result<(Plan, Desired), PlanfileError> {
        if self.region != region {
            return Err(PlanfileError::Region {
                planned: self.region.clone(),
                now: region.to_owned(),
            });
        }
        let now = WorldFingerprint::of(observed);
        if now.sha256 != self.observed.sha256 {
            return Err(PlanfileError::Stale {
                changed: self.observed.changed(&now),
            });
        }
        let image = observed
            .image
            .as_ref()
            .ok_or(PlanfileError::Diverged("a desired state (no AMI resolved)"))?;
        let desired = plan::desired(config, region, image, self.capacity.clone())
            .map_err(|_| PlanfileError::Diverged("a desired state (userdata)"))?;
        if desired != self.desired {
            return Err(PlanfileError::Diverged(
                "a desired state (launch template or fleet request)",
            ));
        }
        let replanned = plan::plan_apply(
            config,
            &desired,
            observed,
            PlanOptions { force: self.force },
        )
        .map_err(|_| PlanfileError::Diverged("a result (the planner refuses now)"))?;
        if replanned.actions != self.actions || replanned.warnings != self.warnings {
            return Err(PlanfileError::Diverged("actions"));
        }
        Ok((
            Plan {
                fleet: self.fleet.clone(),
                capacity: Some(self.capacity.clone()),
                actions: self.actions.clone(),
                warnings: self.warnings.clone(),
                notes: replanned.notes,
            },
            self.desired.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{FleetPhase, FleetState, Runner, RunnerStatus};

    fn runner(uuid: &str, name: &str, labels: &[&str]) -> Runner {
        Runner {
            status_since: None,
            uuid: uuid.into(),
            name: name.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            status: RunnerStatus::Online,
            busy: false,
        }
    }

    fn world() -> Observed {
        Observed {
            scope_name: "workspace acme".into(),
            account_uuid: "{a}".into(),
            scope_runner_count: 2,
            runners: vec![
                runner("{1}", "bbfleet-ci-1", &["self.hosted", "linux"]),
                runner("{2}", "bbfleet-ci-2", &["linux", "self.hosted"]),
            ],
            fleets: vec![FleetState {
                role: None,
                strategy: None,
                api: Default::default(),
                on_demand_target: 0,
                fulfilled: None,
                spot_fulfilled: None,
                target_at: None,
                capacity_errors: Vec::new(),
                id: "sfr-1".into(),
                state: FleetPhase::Active,
                target: 2,
                fingerprint: Some("f".into()),
                instance_ids: vec!["i-2".into(), "i-1".into()],
            }],
            ..Observed::default()
        }
    }

    /// A fresh account: the key exists, nothing else of the fleet.
    fn fresh() -> (Config, Observed) {
        use crate::world::{ImageInfo, SubnetInfo};
        let config = Config::parse(crate::config::tests::GOOD, "t").unwrap();
        let subnet = |id: &str, az: &str| SubnetInfo {
            id: id.into(),
            az: az.into(),
            vpc: "v".into(),
        };
        let observed = Observed {
            scope_name: "workspace acme".into(),
            account_uuid: "{a}".into(),
            key: Some(crate::world::KeyStatus::Usable { arn: "k".into() }),
            subnets: vec![
                subnet("subnet-0123abcd", "us-east-1a"),
                subnet("subnet-0123abce", "us-east-1b"),
            ],
            image: Some(ImageInfo {
                id: "ami-1".into(),
                root_device: "/dev/xvda".into(),
                architecture: "x86_64".into(),
            }),
            ..Observed::default()
        };
        (config, observed)
    }

    fn saved(config: &Config, observed: &Observed) -> SavedPlan {
        let capacity = Capacity {
            desired: 2,
            source: "default".into(),
        };
        let image = observed.image.as_ref().unwrap();
        let desired = plan::desired(config, "us-east-1", image, capacity).unwrap();
        let plan = plan::plan_apply(config, &desired, observed, PlanOptions::default()).unwrap();
        SavedPlan::new(config, "us-east-1", &plan, &desired, observed, false)
    }

    #[test]
    fn a_plan_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (config, observed) = fresh();
        let plan = saved(&config, &observed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        plan.write(&path).unwrap();
        plan.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SavedPlan::read(&path).unwrap(), plan);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_the_same_world_config_and_region_pass() {
        let (config, observed) = fresh();
        let plan = saved(&config, &observed);
        plan.check_config(&config).unwrap();
        let (p, d) = plan.check_world(&config, "us-east-1", &observed).unwrap();
        assert_eq!((p.actions, d), (plan.actions.clone(), plan.desired.clone()));

        let other = Config::parse(&crate::config::tests::GOOD.replace("\"ci\"", "\"cd\""), "t");
        assert!(matches!(
            plan.check_config(&other.unwrap()),
            Err(PlanfileError::Fleet { .. })
        ));
        let bigger = Config::parse(
            &crate::config::tests::GOOD.replace("max = 20", "max = 21"),
            "t",
        );
        assert!(matches!(
            plan.check_config(&bigger.unwrap()),
            Err(PlanfileError::Config { .. })
        ));
        assert!(matches!(
            plan.check_world(&config, "eu-west-1", &observed),
            Err(PlanfileError::Region { .. })
        ));

        let mut changed = observed.clone();
        changed.scope_runner_count = 1;
        changed
            .runners
            .push(runner("{9}", "bbfleet-ci-9", &["linux"]));
        let err = plan
            .check_world(&config, "us-east-1", &changed)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the plan is stale: the Bitbucket scope (workspace, repository, runner count), runners changed since the plan was made; run plan again"
        );

        // Sealed edits: the checksum passes, planning again does not.
        let mut edited = plan.clone();
        edited.actions.pop();
        edited.seal();
        assert!(matches!(
            edited.check_world(&config, "us-east-1", &observed),
            Err(PlanfileError::Diverged("actions"))
        ));
        let mut edited = plan.clone();
        edited.capacity.desired = 5;
        edited.seal();
        assert!(matches!(
            edited.check_world(&config, "us-east-1", &observed),
            Err(PlanfileError::Diverged(_))
        ));
    }

    #[test]
    fn the_fingerprint_ignores_order_and_sees_changes() {
        let a = world();
        let mut b = world();
        b.runners.reverse();
        b.runners[0].labels.reverse();
        b.fleets[0].instance_ids.reverse();
        assert_eq!(WorldFingerprint::of(&a), WorldFingerprint::of(&b));

        let mut c = world();
        c.runners[1].busy = true;
        c.fleets[0].target = 3;
        let (fa, fc) = (WorldFingerprint::of(&a), WorldFingerprint::of(&c));
        assert_ne!(fa.sha256, fc.sha256);
        assert_eq!(fa.changed(&fc), vec!["runners", "fleet requests"]);
    }
}
