//! `bbfleet bake` on moto: the whole cycle (builder, signal, image, teardown), a timeout
//! and a `failed: <step>` signal that leave nothing behind, retention (the oldest beyond
//! `instance.baked_images_kept` go with their snapshots, the live launch template's image
//! stays), and `instance.ami = "baked"` in plan. The userdata does not run on moto: the
//! test writes the builder's signal.
//!
//! moto 5 refuses CreateImage's `snapshot` TagSpecification (NotImplementedError), which
//! AWS applies to every snapshot of the image (EC2 API Reference, CreateImage). Until the
//! AWS-rules layer answers it, [`SnapshotTagShim`] sits between bbfleet and the recording
//! proxy: it sends that one call to moto without the snapshot specification and tags the
//! image's snapshots itself, as AWS would. The IAM rule test below checks CreateImage as
//! bbfleet sends it.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use serde_json::json;
use testkit::harness::Harness;
use testkit::iam::{evaluate, iam_requests, Fill};

use crate::iam::{call, policy};
use crate::KIT;

/// A pass-through proxy that emulates CreateImage's snapshot tags on moto (see the
/// module doc). Every other call goes to the recording proxy unchanged.
struct SnapshotTagShim {
    endpoint: String,
}

impl SnapshotTagShim {
    async fn start(h: &Harness) -> SnapshotTagShim {
        let recorder = h.recorder.endpoint.clone();
        let moto = testkit::moto::moto().endpoint.clone();
        let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, uri: axum::http::Uri, body: axum::body::Bytes| {
                let (recorder, moto, ec2, http) =
                    (recorder.clone(), moto.clone(), ec2.clone(), http.clone());
                async move { shim(&http, &ec2, (&recorder, &moto), headers, uri, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        SnapshotTagShim { endpoint }
    }
}

async fn shim(
    http: &reqwest::Client,
    ec2: &aws_sdk_ec2::Client,
    (recorder, moto): (&str, &str),
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let create_image = pairs
        .iter()
        .any(|(k, v)| k == "Action" && v == "CreateImage");
    let snapshot_spec = pairs
        .iter()
        .find(|(k, v)| k.ends_with(".ResourceType") && v == "snapshot")
        .map(|(k, _)| k.trim_end_matches("ResourceType").to_owned());
    let (base, body, snapshot_tags) = match (create_image, snapshot_spec) {
        (true, Some(spec)) => {
            let tags: Vec<(String, String)> = (1..=50)
                .map_while(|j| {
                    let get = |s: &str| {
                        pairs
                            .iter()
                            .find(|(k, _)| *k == format!("{spec}Tag.{j}.{s}"))
                            .map(|(_, v)| v.clone())
                    };
                    Some((get("Key")?, get("Value").unwrap_or_default()))
                })
                .collect();
            let kept = pairs.iter().filter(|(k, _)| !k.starts_with(&spec));
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish();
            (moto, body.into_bytes(), Some(tags))
        }
        _ => (recorder, body.to_vec(), None),
    };
    let mut req = http.post(format!("{base}{uri}")).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let res = req.send().await.expect("forward");
    let status = axum::http::StatusCode::from_u16(res.status().as_u16()).unwrap();
    let mut out_headers = axum::http::HeaderMap::new();
    if let Some(ct) = res.headers().get("content-type") {
        out_headers.insert("content-type", ct.to_str().unwrap().parse().unwrap());
    }
    let bytes = res.bytes().await.unwrap().to_vec();
    if let (Some(tags), true) = (snapshot_tags, status.is_success()) {
        let text = String::from_utf8_lossy(&bytes);
        let image = text
            .split("<imageId>")
            .nth(1)
            .and_then(|r| r.split("</imageId>").next())
            .expect("CreateImage answered an image id");
        tag_snapshots(ec2, image, &tags).await;
    }
    (status, out_headers, bytes)
}

async fn tag_snapshots(ec2: &aws_sdk_ec2::Client, image: &str, tags: &[(String, String)]) {
    let out = ec2.describe_images().image_ids(image).send().await.unwrap();
    let snapshots: Vec<String> = out.images()[0]
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    let tags: Vec<_> = tags
        .iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect();
    ec2.create_tags()
        .set_resources(Some(snapshots))
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
}

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
    shim: SnapshotTagShim,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

impl Bed {
    async fn new(fleet: &str) -> Bed {
        let h = Harness::new(KIT, fleet).await;
        instance_profile().await;
        let shim = SnapshotTagShim::start(&h).await;
        let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
        let ssm = aws_sdk_ssm::Client::new(&h.sdk);
        Bed { h, shim, ec2, ssm }
    }

    /// The harness config with `extra` lines in `[instance]` (it is the last table).
    fn config(&self, capacity: u32, extra: &str) -> String {
        let text = format!("{}{extra}\n", self.h.config(capacity, None));
        self.h.write_config(&text).to_str().unwrap().to_owned()
    }

    /// Starts `bbfleet bake` through the shim (Bitbucket credentials set: none may show).
    fn bake(&self, cfg: &str, extra: &[&str]) -> tokio::process::Child {
        let mut args = vec!["--config", cfg, "--output", "json", "bake"];
        args.extend_from_slice(extra);
        let mut cmd = self.h.command(&args, &Harness::token());
        cmd.env("AWS_ENDPOINT_URL", &self.shim.endpoint)
            .stdout(std::process::Stdio::piped())
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
    let images = bed.images().await;
    assert_eq!(images.len(), 1);
    let (id, tags, snapshots) = &images[0];
    assert_eq!(id, &image);
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
    assert!(bed.builders().await.is_empty(), "the builder is terminated");
    assert_eq!(bed.bake_params().await, 0, "the signal is deleted");

    // The builder was launched as the brief says: the first type, the first subnet, the
    // fleet's profile, IMDSv2, tagged on create with the fleet and the build.
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
    assert_eq!(ids, [second.clone()]);
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

#[test]
fn the_operator_policy_allows_the_bake_calls_only_for_the_fleet() {
    const FLEET: &str = "iamrules";
    let operator = policy("operator", &Fill::harness(FLEET));
    let tags = |spec: usize, rt: &str, pairs: &[(&str, &str)]| {
        let mut s = format!("&TagSpecification.{spec}.ResourceType={rt}");
        for (j, (k, v)) in pairs.iter().enumerate() {
            s.push_str(&format!(
                "&TagSpecification.{spec}.Tag.{}.Key={k}&TagSpecification.{spec}.Tag.{}.Value={v}",
                j + 1,
                j + 1
            ));
        }
        s
    };
    let builder = [
        ("bbfleet:fleet", FLEET),
        ("bbfleet:bake", "20261201T000000000Z"),
    ];
    let run = |tag_pairs: &[(&str, &str)], tokens: &str| {
        format!(
            "Action=RunInstances&ImageId=ami-0123456789abcdef0&SubnetId=subnet-1&IamInstanceProfile.Name=bbfleet-runner&MetadataOptions.HttpTokens={tokens}{}{}",
            tags(1, "instance", tag_pairs),
            tags(2, "volume", tag_pairs)
        )
    };
    let ok = format!("<x><instancesSet><item><instanceId>i-0b</instanceId><tagSet><item><key>bbfleet:fleet</key><value>{FLEET}</value></item><item><key>bbfleet:bake</key><value>b</value></item></tagSet></item></instancesSet></x>");
    let ok = ok.as_str();
    let image_tags = [
        ("bbfleet:fleet", FLEET),
        ("bbfleet:source-ami", "ami-1"),
        ("bbfleet:baked-at", "2026-12-01T00:00:00Z"),
    ];
    let create_image = format!(
        "Action=CreateImage&InstanceId=i-0b&Name=bbfleet-{FLEET}-x{}{}",
        tags(1, "image", &image_tags),
        tags(2, "snapshot", &image_tags)
    );
    let decide = |calls: Vec<testkit::iam::Recorded>| {
        let requests = iam_requests(&calls);
        let items: Vec<_> = requests.iter().map(|r| (operator.clone(), r)).collect();
        let decisions = evaluate(&items);
        requests
            .iter()
            .zip(decisions)
            .filter(|(r, _)| r.operation == calls.last().unwrap().operation)
            .map(|(r, d)| (format!("{} {}", r.action, r.resource), d.allowed()))
            .collect::<Vec<_>>()
    };
    let launch = call(
        "ec2:RunInstances",
        &run(&builder, "required"),
        ok,
        "testing",
    );
    let all_allowed = |v: Vec<(String, bool)>| v.iter().all(|(_, a)| *a);
    let d = decide(vec![launch.clone()]);
    assert!(all_allowed(d.clone()), "{d:?}");
    for bad in [
        run(&[("bbfleet:fleet", FLEET)], "required"),
        run(
            &[("bbfleet:fleet", "other"), ("bbfleet:bake", "b")],
            "required",
        ),
        run(&builder, "optional"),
    ] {
        let d = decide(vec![call("ec2:RunInstances", &bad, ok, "testing")]);
        assert!(!all_allowed(d.clone()), "{bad}: {d:?}");
    }
    let image_ok = "<x><imageId>ami-0new</imageId></x>";
    let d = decide(vec![
        launch.clone(),
        call("ec2:CreateImage", &create_image, image_ok, "testing"),
    ]);
    assert!(all_allowed(d.clone()), "{d:?}");
    let untagged = create_image.replace(&tags(2, "snapshot", &image_tags), "");
    let d = decide(vec![
        launch,
        call("ec2:CreateImage", &untagged, image_ok, "testing"),
    ]);
    assert!(!all_allowed(d.clone()), "snapshots untagged: {d:?}");
    // Deregister and delete: only what DescribeImages / DescribeSnapshots showed tagged.
    let described = |fleet: &str| {
        format!("<x><imagesSet><item><imageId>ami-0old</imageId><tagSet><item><key>bbfleet:fleet</key><value>{fleet}</value></item></tagSet></item></imagesSet><snapshotSet><item><snapshotId>snap-0old</snapshotId><tagSet><item><key>bbfleet:fleet</key><value>{fleet}</value></item></tagSet></item></snapshotSet></x>")
    };
    for (fleet, allowed) in [(FLEET, true), ("other", false)] {
        for (op, body) in [
            (
                "ec2:DeregisterImage",
                "Action=DeregisterImage&ImageId=ami-0old",
            ),
            (
                "ec2:DeleteSnapshot",
                "Action=DeleteSnapshot&SnapshotId=snap-0old",
            ),
        ] {
            let seen = call(
                "ec2:DescribeImages",
                "Action=DescribeImages",
                &described(fleet),
                "testing",
            );
            let d = decide(vec![seen, call(op, body, "<x/>", "testing")]);
            assert_eq!(all_allowed(d.clone()), allowed, "{op} of {fleet}'s: {d:?}");
        }
    }
}
