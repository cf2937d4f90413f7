//! `bbfleet bake`: a fleet host image with Docker, the aws CLI, the runner image and the
//! host settings in place, so that a host boots straight into its claim.
//!
//! One builder instance boots the base AMI (`instance.ami`, resolved as `plan` does; for
//! `"baked"` the OS's default) with the userdata in bake mode ([`crate::userdata::BakeVars`]):
//! it installs and pulls, writes [`crate::userdata::BAKED_MARKER`], then the signal
//! parameter `/bbfleet/{fleet}/bake/{build}` (`done` or `failed: <step>`). bbfleet waits
//! for the signal (bounded), images the builder, waits for the image, and always
//! terminates the builder and deletes the signal. After a success, the fleet's images
//! beyond `instance.baked_images_kept` go, oldest first, with their snapshots; an image a
//! launch template version names is kept.
//!
//! A re-run after a crash first cleans up: leftover builders (found by their
//! `bbfleet:bake` tag) are terminated, leftover signals deleted, a `failed` leftover image
//! deregistered with its snapshots, and a `pending` one waited for (it was made from a
//! builder that signalled `done`, so it becomes an ordinary baked image).

use std::time::Duration;

use crate::aws::images::{self, BakedImage, BuilderSpec, BAKED_AT_TAG, SOURCE_AMI_TAG};
use crate::aws::{ec2, ssm, Aws, AwsError};
use crate::config::Config;
use crate::names::FLEET_TAG;
use crate::userdata::{self, BakeVars, UserdataError, UserdataVars};

/// How long `bake` waits for the builder's signal unless told (`--timeout`).
pub const DEFAULT_TIMEOUT: &str = "20m";
/// How long `bake` waits for the image to be available unless told (`--image-timeout`).
pub const DEFAULT_IMAGE_TIMEOUT: &str = "30m";
/// How often the signal parameter is read.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// `bake`'s settings.
#[derive(Debug, Clone)]
pub struct BakeOptions {
    /// Most time for the builder's signal.
    pub timeout: Duration,
    /// Most time for the image to become available.
    pub image_timeout: Duration,
}

/// A bake that worked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Baked {
    /// The new image.
    pub image: String,
    /// Its name.
    pub name: String,
    /// The base AMI it was built on.
    pub source_ami: String,
    /// The build id (tag `bbfleet:bake`, signal `/bbfleet/{fleet}/bake/{build}`).
    pub build: String,
    /// The builder instance (terminated).
    pub builder: String,
    /// Leftovers of an earlier run that were cleaned up (instances, parameters, images).
    pub cleaned: Vec<String>,
    /// Older images deregistered by retention, with their snapshots.
    pub deregistered: Vec<String>,
    /// Snapshots deleted by retention.
    pub deleted_snapshots: Vec<String>,
}

/// Why a bake failed. Every variant is reported after the builder was terminated and the
/// signal deleted.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// An AWS call.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The userdata.
    #[error(transparent)]
    Userdata(#[from] UserdataError),
    /// The builder signalled a failure.
    #[error("bake {build}: the builder {builder} failed at step {step:?}; it was terminated and nothing is left behind (its log: /var/log/cloud-init-output.log on the builder, gone with it; re-run `bbfleet bake` once the cause is fixed)")]
    Failed {
        /// Build id.
        build: String,
        /// Builder instance.
        builder: String,
        /// The step the builder named.
        step: String,
    },
    /// No signal in time.
    #[error("bake {build}: the builder {builder} sent no signal to {signal} within {timeout} (step \"wait for the builder\"); it was terminated and nothing is left behind. A slow mirror needs a larger --timeout")]
    Timeout {
        /// Build id.
        build: String,
        /// Builder instance.
        builder: String,
        /// The signal parameter.
        signal: String,
        /// `--timeout`, as given.
        timeout: String,
    },
    /// The image did not become available.
    #[error("bake {build}: image {image} did not become available (step \"wait for the image\"): {reason}; it was deregistered and the builder terminated")]
    Image {
        /// Build id.
        build: String,
        /// The image.
        image: String,
        /// The waiter's answer.
        reason: String,
    },
}

/// The signal parameter of `build`.
pub fn signal_parameter(fleet: &str, build: &str) -> String {
    format!("{}/{build}", bake_path(fleet))
}

/// Where the fleet's bake signals live.
pub fn bake_path(fleet: &str) -> String {
    format!("{}/bake", crate::names::ssm_prefix(fleet))
}

/// A build id from `now`: `YYYYMMDDTHHMMSSmmmZ`, within AWS's ClientToken (64 ASCII
/// characters), tag value, SSM name and AMI name rules.
pub fn build_id(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// The image name: `bbfleet-{fleet}-{build}`: letters, numbers and `-` only, at most
/// 8 + 64 + 1 + 19 characters, within CreateImage's 3-128.
pub fn image_name(fleet: &str, build: &str) -> String {
    format!("bbfleet-{fleet}-{build}")
}

/// Bakes one image; `progress` gets a line per step.
pub async fn bake(
    config: &Config,
    aws: &Aws,
    opts: &BakeOptions,
    progress: &dyn Fn(String),
) -> Result<Baked, BakeError> {
    let fleet = config.name.as_str();
    let cleaned = clean_leftovers(config, aws, opts, progress).await?;
    let base = crate::observe::resolve_base_image(config, aws).await?;
    let now = jiff::Timestamp::now();
    let build = build_id(now);
    let signal = signal_parameter(fleet, &build);
    let vars = UserdataVars {
        bake: Some(BakeVars {
            signal_parameter: signal.clone(),
            runner_image: config.bitbucket.runner_image.clone(),
        }),
        ..UserdataVars::from_config(config, &aws.region)
    };
    let user_data = userdata::check_fits(config.instance.os, &vars)?.base64();
    let spec = BuilderSpec {
        fleet: fleet.to_owned(),
        build: build.clone(),
        image_id: base.id.clone(),
        root_device: base.root_device.clone(),
        root_volume_gb: config.instance.root_volume_gb,
        instance_type: config.spot.instance_types[0].clone(),
        subnet: config.spot.subnets[0].clone(),
        instance_profile: config.instance.instance_profile.clone(),
        security_groups: config.instance.security_groups.clone(),
        user_data,
    };
    let builder = images::run_builder(&aws.ec2, &spec).await?;
    progress(format!(
        "Builder {builder} launched from {} (build {build}); waiting for {signal}",
        base.id
    ));
    let made = image_builder(config, aws, opts, &builder, &build, &base.id, now, progress).await;
    // Whatever happened: the builder and the signal go.
    let teardown = tear_down(aws, &builder, &signal).await;
    let image = made?;
    teardown?;
    progress(format!(
        "Image {image} is available; builder {builder} terminated"
    ));
    let (deregistered, deleted_snapshots) = retain(config, aws, &image).await?;
    Ok(Baked {
        image,
        name: image_name(fleet, &build),
        source_ami: base.id,
        build,
        builder,
        cleaned,
        deregistered,
        deleted_snapshots,
    })
}

/// Waits for the signal, images the builder and waits for the image; returns its id.
#[allow(clippy::too_many_arguments)]
async fn image_builder(
    config: &Config,
    aws: &Aws,
    opts: &BakeOptions,
    builder: &str,
    build: &str,
    base: &str,
    now: jiff::Timestamp,
    progress: &dyn Fn(String),
) -> Result<String, BakeError> {
    let signal = signal_parameter(&config.name, build);
    wait_signal(aws, &signal, opts.timeout)
        .await?
        .map_err(|outcome| match outcome {
            Outcome::Failed(step) => BakeError::Failed {
                build: build.to_owned(),
                builder: builder.to_owned(),
                step,
            },
            Outcome::Timeout => BakeError::Timeout {
                build: build.to_owned(),
                builder: builder.to_owned(),
                signal: signal.clone(),
                timeout: humantime(opts.timeout),
            },
        })?;
    let baked_at = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let tags = [
        (FLEET_TAG, config.name.as_str()),
        (SOURCE_AMI_TAG, base),
        (BAKED_AT_TAG, baked_at.as_str()),
    ];
    let name = image_name(&config.name, build);
    let image = images::create_image(&aws.ec2, builder, &name, &tags).await?;
    progress(format!(
        "The builder signalled done; image {image} ({name}) is being made"
    ));
    if let Err(reason) = images::wait_available(&aws.ec2, &image, opts.image_timeout).await {
        remove_image(aws, &config.name, &image).await?;
        return Err(BakeError::Image {
            build: build.to_owned(),
            image,
            reason,
        });
    }
    Ok(image)
}

/// What the signal said, when it was not `done`.
enum Outcome {
    Failed(String),
    Timeout,
}

/// Reads `signal` until it says `done` (`Ok(Ok)`), `failed: <step>` or anything else
/// (`Failed`), or `timeout` passed.
async fn wait_signal(
    aws: &Aws,
    signal: &str,
    timeout: Duration,
) -> Result<Result<(), Outcome>, AwsError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match ssm::get_string(&aws.ssm, signal).await? {
            Some(v) if v.trim() == "done" => return Ok(Ok(())),
            Some(v) => {
                let step = v.trim();
                let step = step.strip_prefix("failed:").unwrap_or(step).trim();
                // The builder writes only a step name; cut anything longer for the message.
                return Ok(Err(Outcome::Failed(step.chars().take(200).collect())));
            }
            None => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Err(Outcome::Timeout));
        }
        tokio::time::sleep(POLL_EVERY.min(deadline - now)).await;
    }
}

/// Terminates the builder and deletes the signal (each tried; the first error returned).
async fn tear_down(aws: &Aws, builder: &str, signal: &str) -> Result<(), AwsError> {
    let terminated = ec2::terminate(&aws.ec2, &[builder.to_owned()]).await;
    let deleted = ssm::delete(&aws.ssm, &[signal.to_owned()]).await;
    terminated.and(deleted)
}

/// Deregisters `image` and deletes its snapshots that carry the fleet's tag.
async fn remove_image(aws: &Aws, fleet: &str, image: &str) -> Result<Vec<String>, AwsError> {
    let snapshots = images::baked_images(&aws.ec2, fleet)
        .await?
        .into_iter()
        .find(|i| i.id == image)
        .map(|i| i.snapshots)
        .unwrap_or_default();
    remove(aws, fleet, image, &snapshots).await
}

async fn remove(
    aws: &Aws,
    fleet: &str,
    image: &str,
    snapshots: &[String],
) -> Result<Vec<String>, AwsError> {
    let ours = images::fleet_snapshots(&aws.ec2, fleet, snapshots).await?;
    images::deregister(&aws.ec2, image).await?;
    for s in &ours {
        images::delete_snapshot(&aws.ec2, s).await?;
    }
    Ok(ours)
}

/// Leftovers of a run that crashed: builders, signals, failed or pending images.
async fn clean_leftovers(
    config: &Config,
    aws: &Aws,
    opts: &BakeOptions,
    progress: &dyn Fn(String),
) -> Result<Vec<String>, AwsError> {
    let fleet = config.name.as_str();
    let mut cleaned = Vec::new();
    let builders: Vec<String> = images::builders(&aws.ec2, fleet)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    if !builders.is_empty() {
        progress(format!(
            "Terminating leftover builder(s) of an earlier bake: {}",
            builders.join(", ")
        ));
        ec2::terminate(&aws.ec2, &builders).await?;
        cleaned.extend(builders);
    }
    let signals: Vec<String> = ssm::list_path(&aws.ssm, &bake_path(fleet), true)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    if !signals.is_empty() {
        ssm::delete(&aws.ssm, &signals).await?;
        cleaned.extend(signals);
    }
    for image in images::baked_images(&aws.ec2, fleet).await? {
        cleaned.extend(clean_image(aws, fleet, &image, opts, progress).await?);
    }
    Ok(cleaned)
}

/// A `failed` image is removed; a `pending` one waited for (removed if it fails).
async fn clean_image(
    aws: &Aws,
    fleet: &str,
    image: &BakedImage,
    opts: &BakeOptions,
    progress: &dyn Fn(String),
) -> Result<Option<String>, AwsError> {
    match image.state.as_str() {
        "pending" => {
            progress(format!(
                "Waiting for image {} of an earlier bake to be available",
                image.id
            ));
            if images::wait_available(&aws.ec2, &image.id, opts.image_timeout)
                .await
                .is_ok()
            {
                return Ok(None);
            }
            remove_image(aws, fleet, &image.id).await?;
            Ok(Some(image.id.clone()))
        }
        "failed" | "error" | "invalid" => {
            remove(aws, fleet, &image.id, &image.snapshots).await?;
            Ok(Some(image.id.clone()))
        }
        _ => Ok(None),
    }
}

/// Deregisters the fleet's images beyond `instance.baked_images_kept`, oldest first, with
/// their snapshots; never `new` nor an image a version of the fleet's launch template
/// names. Returns the images and snapshots removed.
async fn retain(
    config: &Config,
    aws: &Aws,
    new: &str,
) -> Result<(Vec<String>, Vec<String>), AwsError> {
    let fleet = config.name.as_str();
    let all = images::baked_images(&aws.ec2, fleet).await?;
    let lt = ec2::find_launch_template(&aws.ec2, &crate::names::launch_template(fleet)).await?;
    let live = match lt {
        Some(lt) => images::template_images(&aws.ec2, &lt.id).await?,
        None => Vec::new(),
    };
    let doomed = beyond_kept(&all, config.instance.baked_images_kept as usize, new, &live);
    let (mut images_gone, mut snapshots_gone) = (Vec::new(), Vec::new());
    for image in doomed {
        snapshots_gone.extend(remove(aws, fleet, &image.id, &image.snapshots).await?);
        images_gone.push(image.id.clone());
    }
    Ok((images_gone, snapshots_gone))
}

/// Of `all` (oldest first), the images beyond the newest `kept`, except `new` and `live`.
pub fn beyond_kept<'a>(
    all: &'a [BakedImage],
    kept: usize,
    new: &str,
    live: &[String],
) -> Vec<&'a BakedImage> {
    let excess = all.len().saturating_sub(kept.max(1));
    all.iter()
        .take(excess)
        .filter(|i| i.id != new && !live.contains(&i.id))
        .collect()
}

/// `d` as `20m`, `90s`.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, at: &str) -> BakedImage {
        BakedImage {
            id: id.into(),
            name: format!("bbfleet-ci-{at}"),
            state: "available".into(),
            baked_at: at.into(),
            snapshots: vec![format!("snap-{id}")],
        }
    }

    #[test]
    fn retention_drops_the_oldest_beyond_the_count_but_never_a_live_one() {
        let all: Vec<_> = (1..=5)
            .map(|n| image(&format!("ami-{n}"), &format!("2026-01-0{n}")))
            .collect();
        let ids = |v: Vec<&BakedImage>| v.into_iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(beyond_kept(&all, 3, "ami-5", &[])), ["ami-1", "ami-2"]);
        assert_eq!(
            ids(beyond_kept(&all, 3, "ami-5", &["ami-1".into()])),
            ["ami-2"]
        );
        assert_eq!(
            ids(beyond_kept(&all, 5, "ami-5", &[])),
            Vec::<String>::new()
        );
        assert_eq!(ids(beyond_kept(&all, 0, "ami-5", &[])).len(), 4);
    }

    #[test]
    fn names_fit_aws_rules() {
        let t: jiff::Timestamp = "2026-12-01T17:48:56.123Z".parse().unwrap();
        let build = build_id(t);
        assert_eq!(build, "20261201T174856123Z");
        let name = image_name(&"f".repeat(64), &build);
        assert!((3..=128).contains(&name.len()));
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(
            signal_parameter("ci", &build),
            "/bbfleet/ci/bake/20261201T174856123Z"
        );
        assert_eq!(humantime(Duration::from_secs(1200)), "20m");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }
}
