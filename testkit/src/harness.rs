//! One test's world: the shared moto server behind a recording proxy, a Bitbucket fake,
//! a temp dir with a config, and a way to run the real `bbfleet` binary against them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;

use aws_config::BehaviorVersion;
use bitbucket_fake::{FakeBitbucket, FakeConfig};

use crate::moto::{aws_env, moto};
use crate::recorder::Recorder;
use crate::Kit;

/// A test world.
pub struct Harness {
    /// Fleet name, unique in the process (checked): the tests share one moto.
    pub fleet: String,
    /// The binary run, and where the proxy dumps its calls.
    pub kit: Kit,
    /// The Bitbucket fake.
    pub fake: FakeBitbucket,
    /// The AWS recording proxy.
    pub recorder: Recorder,
    /// Temp dir holding the config.
    pub dir: tempfile::TempDir,
    /// Default subnets of us-east-1a, b, c in moto.
    pub subnets: Vec<(String, String)>,
    /// SDK config pointed at moto directly (for checks, not recorded).
    pub sdk: aws_config::SdkConfig,
    /// Everything any bbfleet run printed, for secret scans.
    pub transcript: std::sync::Mutex<String>,
}

/// Panics if another harness of this process took `fleet` already: the tests of a process
/// share one moto, where two tests of one fleet name would see each other's resources.
fn claim_fleet_name(fleet: &str) {
    static TAKEN: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let fresh = TAKEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(fleet.to_owned());
    assert!(
        fresh,
        "fleet name {fleet:?} is used by two tests of this process (they share one moto)"
    );
}

/// What a bbfleet run gave.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Harness {
    /// Starts the fake and the proxy, and looks up moto's default subnets.
    pub async fn new(kit: Kit, fleet: &str) -> Harness {
        Self::with_fake(kit, fleet, FakeConfig::default()).await
    }

    /// Same, with a configured fake.
    pub async fn with_fake(kit: Kit, fleet: &str, fake_config: FakeConfig) -> Harness {
        claim_fleet_name(fleet);
        let moto = moto();
        let fake = FakeBitbucket::start(fake_config)
            .await
            .expect("start the Bitbucket fake");
        let recorder = Recorder::start(&moto.endpoint, kit.dump_dir()).await;
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&moto.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let out = ec2
            .describe_subnets()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("default-for-az")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .expect("describe moto subnets");
        let mut subnets: Vec<(String, String)> = out
            .subnets()
            .iter()
            .map(|s| {
                (
                    s.subnet_id().unwrap().to_owned(),
                    s.availability_zone().unwrap().to_owned(),
                )
            })
            .filter(|(_, az)| ["us-east-1a", "us-east-1b", "us-east-1c"].contains(&az.as_str()))
            .collect();
        subnets.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(subnets.len(), 3, "moto's default subnets: {subnets:?}");
        Harness {
            fleet: fleet.to_owned(),
            kit,
            fake,
            recorder,
            dir: tempfile::tempdir().unwrap(),
            subnets,
            sdk,
            transcript: std::sync::Mutex::new(String::new()),
        }
    }

    /// A config for this fleet with `capacity` runners, workspace runners unless `repository`.
    pub fn config(&self, capacity: u32, repository: Option<&str>) -> String {
        let subnets: Vec<String> = self.subnets.iter().map(|(s, _)| format!("{s:?}")).collect();
        let repo = repository
            .map(|r| format!("repository = {r:?}\n"))
            .unwrap_or_default();
        format!(
            r#"name = "{fleet}"
region = "us-east-1"

[bitbucket]
workspace = "acme"
{repo}labels = ["self.hosted", "linux", "spot"]
api_url = "{api}"

[capacity]
default = {capacity}
max = 20

[spot]
instance_types = ["m6i.large", "m6a.large", "c6i.xlarge"]
subnets = [{subnets}]
fleet_role = "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role"

[instance]
os = "al2023"
instance_profile = "bbfleet-runner"
"#,
            fleet = self.fleet,
            api = self.fake.base_url(),
            subnets = subnets.join(", "),
        )
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("bbfleet.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The command `run` would run, not started (for tests that signal it).
    pub fn command(&self, args: &[&str], credentials: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.kit.bbfleet);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-aws-credentials"),
            )
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in aws_env(&self.recorder.endpoint) {
            cmd.env(k, v);
        }
        for (k, v) in credentials {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs bbfleet with `args`, a clean environment (fake AWS credentials to the proxy,
    /// `credentials` for Bitbucket), and no proxy variables.
    pub async fn run(&self, args: &[&str], credentials: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args, credentials);
        let out: Output = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
            .await
            .expect("bbfleet finished within 120 s")
            .expect("run bbfleet");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!(
            "$ bbfleet {}\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
        run
    }

    /// Bearer credentials the fake accepts.
    pub fn token() -> [(&'static str, &'static str); 1] {
        [("BITBUCKET_ACCESS_TOKEN", "fake-access-token")]
    }

    /// Panics if anything was written at the fake or at AWS (`after` names the step).
    pub fn assert_no_writes(&self, after: &str) {
        assert_eq!(self.fake.write_count(), 0, "Bitbucket writes after {after}");
        assert_eq!(
            self.recorder.writes(),
            Vec::<String>::new(),
            "AWS writes after {after}"
        );
    }

    /// `{uuid}`s of the fleet's workspace runners at the fake, in creation order.
    pub fn runner_uuids(&self) -> Vec<String> {
        self.runners(None)
            .iter()
            .map(|r| r["uuid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `apply --auto-approve` with `extra` arguments; panics unless it exits 0.
    pub async fn apply(&self, config: &str, extra: &[&str]) -> Run {
        let mut args = vec!["--config", config, "apply", "--auto-approve"];
        args.extend_from_slice(extra);
        let run = self.run(&args, &Self::token()).await;
        run.expect_code(0);
        run
    }

    /// `destroy --auto-approve`; panics unless it exits 0.
    pub async fn destroy(&self, config: &str) -> Run {
        let run = self
            .run(
                &["--config", config, "destroy", "--auto-approve"],
                &Self::token(),
            )
            .await;
        run.expect_code(0);
        run
    }

    /// Panics unless no SSM parameter is left under `/bbfleet/{fleet}`: not even the fleet
    /// lock's, which destroy deletes once it releases.
    pub async fn assert_no_parameter_left(&self) {
        let left = crate::world::parameters(self, &self.fleet, false).await;
        let names: Vec<&String> = left.iter().map(|(name, _)| name).collect();
        assert!(names.is_empty(), "parameters left: {names:?}");
    }

    /// Ids of a fleet request's active instances (either API), sorted.
    pub async fn fleet_members(&self, fleet_request_id: &str) -> Vec<String> {
        crate::world::fleet_instances(self, fleet_request_id)
            .await
            .into_iter()
            .collect()
    }

    /// The fleet's runners at the fake.
    pub fn runners(&self, repository: Option<&str>) -> Vec<serde_json::Value> {
        let prefix = format!("bbfleet-{}-", self.fleet);
        self.fake
            .runners("acme", repository)
            .into_iter()
            .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect()
    }
}

impl Run {
    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The fleet lock, read and written by hand (tests of `src/lock.rs`).
impl Harness {
    /// Writes lock generation `generation` with `value` (JSON), as another run would.
    pub async fn put_lock(&self, generation: u64, value: &serde_json::Value) {
        aws_sdk_ssm::Client::new(&self.sdk)
            .put_parameter()
            .name(format!("/bbfleet/{}/lock/{generation}", self.fleet))
            .value(value.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(false)
            .send()
            .await
            .expect("write a lock generation");
    }

    /// The fleet's lock generations and their values, oldest first.
    pub async fn lock_generations(&self) -> Vec<(u64, serde_json::Value)> {
        let out = aws_sdk_ssm::Client::new(&self.sdk)
            .get_parameters_by_path()
            .path(format!("/bbfleet/{}/lock", self.fleet))
            .max_results(10)
            .send()
            .await
            .expect("list the lock");
        assert!(out.next_token().is_none(), "more than 10 lock generations");
        let mut gens: Vec<(u64, serde_json::Value)> = out
            .parameters()
            .iter()
            .map(|p| {
                let name = p.name().unwrap();
                (
                    name.rsplit('/').next().unwrap().parse().unwrap(),
                    serde_json::from_str(p.value().unwrap()).unwrap(),
                )
            })
            .collect();
        gens.sort_by_key(|(g, _)| *g);
        gens
    }
}
