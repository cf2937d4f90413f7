//! `bbfleet bake` on moto: the whole cycle (builder, signal, image, teardown), a timeout
//! and a `failed: <step>` signal that leave nothing behind, retention (the oldest beyond
//! `instance.baked_images_kept` go with their snapshots, the live launch template's image
//! stays), and `instance.ami = "baked"` in plan. The userdata does not run on moto: the
//! test writes the builder's signal.
//!
//! moto cannot tag a new image's snapshots on create: the kit's moto extension
//! (`testkit/moto_ext/images.py`) does it, as AWS does; `iam.rs` checks the bake calls
//! against the operator policy.

mod iam;

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use serde_json::json;
use testkit::harness::Harness;

use crate::KIT;

/// The harness config's instance profile, which RunInstances needs to exist (moto checks
/// it as AWS does). Global in moto, made once (a second create is refused and ignored).
/// IAM's query API, signed only as far as moto reads it (the service from the scope).
async fn instance_profile() {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
    http.post(&testkit::moto::moto().endpoint)
        .header("Authorization", auth)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("Action=CreateInstanceProfile&InstanceProfileName=bbfleet-runner&Version=2010-05-08")
        .send()
        .await
        .expect("moto IAM");
}

/// One fleet's bake test bed.
struct Bed {
    h: Harness,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

impl Bed {
    async fn new(fleet: &str) -> Bed {
        let h = Harness::new(KIT, fleet).await;
        instance_profile().await;
        let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
        let ssm = aws_sdk_ssm::Client::new(&h.sdk);
        Bed { h, ec2, ssm }
    }

    /// The harness config with `extra` lines in `[instance]` (it is the last table).
    fn config(&self, capacity: u32, extra: &str) -> String {
        let text = format!("{}{extra}\n", self.h.config(capacity, None));
        self.h.write_config(&text).to_str().unwrap().to_owned()
    }

    /// Starts `bbfleet bake` (Bitbucket credentials set: none may show).
    fn bake(&self, cfg: &str, extra: &[&str]) -> tokio::process::Child {
        let mut args = vec!["--config", cfg, "--output", "json", "bake"];
        args.extend_from_slice(extra);
        let mut cmd = self.h.command(&args, &Harness::token());
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("start bbfleet bake")
    }

    /// The fleet's builders (not terminated): (instance id, build id).
    async fn builders(&self) -> Vec<(String, String)> {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:bbfleet:fleet")
                    .values(&self.h.fleet)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values("bbfleet:bake")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                let build = i.tags().iter().find(|t| t.key() == Some("bbfleet:bake"));
                (
                    i.instance_id().unwrap().to_owned(),
                    build.and_then(|t| t.value()).unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits for the builder, then writes its signal as the userdata would.
    async fn signal(&self, value: &str) -> String {
        for _ in 0..300 {
            if let Some((id, build)) = self.builders().await.pop() {
                let name = format!("/bbfleet/{}/bake/{build}", self.h.fleet);
                self.ssm
                    .put_parameter()
                    .name(&name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .send()
                    .await
                    .unwrap();
                return id;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no builder appeared");
    }

    /// The fleet's images: (id, tags), oldest first by name.
    async fn images(&self) -> Vec<(String, Vec<(String, String)>, Vec<String>)> {
        let out = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name("tag:bbfleet:fleet")
                    .values(&self.h.fleet)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut images: Vec<_> = out
            .images()
            .iter()
            .map(|i| {
                let tags = i
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                    .collect();
                let snaps = i
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                    .collect();
                (
                    i.image_id().unwrap().to_owned(),
                    tags,
                    snaps,
                    i.name().unwrap().to_owned(),
                )
            })
            .collect();
        images.sort_by(|a, b| a.3.cmp(&b.3));
        images.into_iter().map(|(i, t, s, _)| (i, t, s)).collect()
    }

    async fn snapshot_exists(&self, id: &str) -> bool {
        self.ec2
            .describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
            .is_ok()
    }

    async fn bake_params(&self) -> usize {
        let path = format!("/bbfleet/{}/bake", self.h.fleet);
        let out = self
            .ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .send()
            .await;
        out.unwrap().parameters().len()
    }

    /// Nothing of a bake is left: no builder, no signal, no image.
    async fn assert_nothing_left(&self) {
        assert_eq!(
            self.builders().await,
            Vec::<(String, String)>::new(),
            "a builder is left"
        );
        assert_eq!(self.bake_params().await, 0, "a signal parameter is left");
        assert!(self.images().await.is_empty(), "an image is left");
    }
}

/// Waits for `child` and returns (exit code, stdout, stderr); no secret in either.
async fn finish(child: tokio::process::Child) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("bake finished within 120 s")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    for secret in ["fake-access-token", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} in output"
        );
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// A bake that the test signals `done`; returns its JSON result.
async fn bake_done(bed: &Bed, cfg: &str) -> serde_json::Value {
    let child = bed.bake(cfg, &[]);
    let builder = bed.signal("done").await;
    let (code, stdout, stderr) = finish(child).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("bake JSON");
    assert_eq!(doc["builder"], builder.as_str());
    doc
}

/// The one image of the fleet is `doc`'s, tagged (and its snapshots) on create.
async fn assert_baked_image(bed: &Bed, doc: &serde_json::Value) {
    let image = doc["image"].as_str().unwrap();
    let images = bed.images().await;
    assert_eq!(images.len(), 1);
    let (id, tags, snapshots) = &images[0];
    assert_eq!(id, image);
    let tag = |k: &str| tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.clone());
    assert_eq!(tag("bbfleet:fleet").as_deref(), Some("bakecycle"));
    assert_eq!(
        tag("bbfleet:source-ami"),
        doc["source_ami"].as_str().map(str::to_owned)
    );
    assert!(tag("bbfleet:baked-at").is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()));
    assert!(!snapshots.is_empty());
    let snaps = bed
        .ec2
        .describe_snapshots()
        .set_snapshot_ids(Some(snapshots.clone()))
        .send()
        .await
        .unwrap();
    for s in snaps.snapshots() {
        assert!(s
            .tags()
            .iter()
            .any(|t| t.key() == Some("bbfleet:fleet") && t.value() == Some("bakecycle")));
    }
}

/// The builder was launched from the first type in the first subnet with the fleet's
/// profile, IMDSv2 only, a ClientToken and the user data.
fn assert_builder_launch(bed: &Bed) {
    let run = bed.h.recorder.calls();
    let run = run
        .iter()
        .find(|c| c.operation == "ec2:RunInstances")
        .expect("RunInstances");
    for p in [
        "InstanceType=m6i.large",
        &format!("SubnetId={}", bed.h.subnets[0].0),
        "IamInstanceProfile.Name=bbfleet-runner",
        "MetadataOptions.HttpTokens=required",
        "ClientToken=",
        "UserData=",
    ] {
        assert!(run.body.contains(p), "RunInstances without {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_makes_a_tagged_image_plan_uses_it_and_nothing_else_is_left() {
    let bed = Bed::new("bakecycle").await;
    let token = Harness::token();
    // instance.ami = "baked" with no image yet: plan fails naming the key and the command.
    let cfg = bed.config(1, "ami = \"baked\"");
    let plan = bed.h.run(&["--config", &cfg, "plan"], &token).await;
    assert_eq!(plan.code, 1, "{}{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr.contains("instance.ami") && plan.stderr.contains("bbfleet bake"),
        "{}",
        plan.stderr
    );

    let doc = bake_done(&bed, &cfg).await;
    let image = doc["image"].as_str().unwrap().to_owned();
    let name = doc["name"].as_str().unwrap();
    assert!(
        name.starts_with("bbfleet-bakecycle-") && name.len() <= 128,
        "{name}"
    );
    assert_baked_image(&bed, &doc).await;
    assert!(bed.builders().await.is_empty(), "the builder is terminated");
    assert_eq!(bed.bake_params().await, 0, "the signal is deleted");

    assert_builder_launch(&bed);

    // plan with instance.ami = "baked": the new image.
    let plan = bed
        .h
        .run(&["--config", &cfg, "--output", "json", "plan"], &token)
        .await;
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains(&image), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_and_a_failed_step_leave_nothing_behind() {
    let bed = Bed::new("bakefail").await;
    let cfg = bed.config(0, "");
    let (code, stdout, stderr) = finish(bed.bake(&cfg, &["--timeout", "2s"])).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("sent no signal") && stderr.contains("within 2s"),
        "{stderr}"
    );
    assert!(stderr.contains("wait for the builder"), "{stderr}");
    bed.assert_nothing_left().await;

    let child = bed.bake(&cfg, &[]);
    bed.signal("failed: install docker").await;
    let (code, stdout, stderr) = finish(child).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("failed at step \"install docker\""),
        "{stderr}"
    );
    bed.assert_nothing_left().await;
    // JSON mode: the failure as a document too, naming the step.
    assert!(stdout.contains("install docker"), "{stdout}");

    // A bad --timeout is refused before any call.
    let run = bed
        .h
        .run(&["--config", &cfg, "bake", "--timeout", "soon"], &[])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_the_oldest_with_snapshots_but_keeps_the_live_image() {
    let bed = Bed::new("bakekeep").await;
    let cfg = bed.config(1, "ami = \"baked\"\nbaked_images_kept = 1");
    let first = bake_done(&bed, &cfg).await["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_snaps = bed.images().await[0].2.clone();
    let second = bake_done(&bed, &cfg).await;
    assert_eq!(second["deregistered"], json!([first]), "{second}");
    let second = second["image"].as_str().unwrap().to_owned();
    let ids: Vec<String> = bed.images().await.into_iter().map(|i| i.0).collect();
    assert_eq!(ids, std::slice::from_ref(&second));
    for s in &first_snaps {
        assert!(
            !bed.snapshot_exists(s).await,
            "snapshot {s} of {first} is left"
        );
    }

    // The launch template now names the second image: a third bake keeps it.
    bed.h.apply(&cfg, &[]).await.expect_code(0);
    let third = bake_done(&bed, &cfg).await;
    assert_eq!(third["deregistered"], json!([]), "{third}");
    let ids: Vec<String> = bed.images().await.into_iter().map(|i| i.0).collect();
    assert_eq!(ids, [second, third["image"].as_str().unwrap().to_owned()]);
    bed.h.destroy(&cfg).await.expect_code(0);
}

/// What a bake that crashed after its launch leaves: a builder and its signal.
async fn leftovers(bed: &Bed) -> (String, String) {
    let base = bed
        .ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap();
    let tags = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("bbfleet:fleet")
                .value("bakecrash")
                .build(),
        )
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("bbfleet:bake")
                .value("old")
                .build(),
        )
        .build();
    let left = bed
        .ec2
        .run_instances()
        .image_id(base.images()[0].image_id().unwrap())
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let left = left.instances()[0].instance_id().unwrap().to_owned();
    let signal = "/bbfleet/bakecrash/bake/old";
    bed.ssm
        .put_parameter()
        .name(signal)
        .value("done")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    (left, signal.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_a_crash_terminates_the_leftover_builder_and_signal() {
    let bed = Bed::new("bakecrash").await;
    let cfg = bed.config(0, "");
    let (left, signal) = leftovers(&bed).await;
    let signal = signal.as_str();
    // The leftover is terminated before the new builder starts: the one builder the test
    // then finds is the new one.
    let child = bed.bake(&cfg, &[]);
    let mut found = Vec::new();
    for _ in 0..300 {
        found = bed.builders().await;
        if found.iter().all(|(id, _)| *id != left) && !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(found.len(), 1, "{found:?}");
    bed.signal("done").await;
    let (code, stdout, stderr) = finish(child).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["cleaned"], json!([left, signal]), "{doc}");
    assert!(bed.builders().await.is_empty());
    assert_eq!(bed.bake_params().await, 0);
    assert_eq!(bed.images().await.len(), 1);
}
