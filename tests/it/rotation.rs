//! Rotation against a real moto server and the Bitbucket fake: runner commands that are not
//! SecureStrings on the fleet key (a plain String, one on AWS's managed key, one on another
//! customer key) are made for real; `apply` replaces each runner by a new one and retires
//! the old runner with its command, claims and host, so no older value of a live runner's
//! secret stays in any parameter's history. A fourth runner, on the fleet key, stays.

use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_ssm::types::{Parameter, ParameterHistory, ParameterType};
use testkit::harness::Harness;

use crate::drift::{bare, claim_hosts, state};
use crate::KIT;

const FLEET: &str = "rotate";

fn command_of(uuid: &str) -> String {
    format!("/bbfleet/{FLEET}/runners/{}", bare(uuid))
}

/// Every version of a parameter, decrypted (`None`: the parameter does not exist).
async fn history(ssm: &aws_sdk_ssm::Client, name: &str) -> Option<Vec<ParameterHistory>> {
    let mut versions = Vec::new();
    let mut pages = ssm
        .get_parameter_history()
        .name(name)
        .with_decryption(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => versions.extend(page.parameters().to_vec()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                return None
            }
            Err(e) => panic!("history of {name}: {e:?}"),
        }
    }
    Some(versions)
}

/// Every parameter of the fleet (commands, claims, the lock), decrypted.
async fn everything(ssm: &aws_sdk_ssm::Client) -> Vec<Parameter> {
    let mut out = Vec::new();
    let mut pages = ssm
        .get_parameters_by_path()
        .path(format!("/bbfleet/{FLEET}"))
        .recursive(true)
        .with_decryption(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        out.extend(page.unwrap().parameters().to_vec());
    }
    out
}

async fn decrypted(ssm: &aws_sdk_ssm::Client, name: &str) -> String {
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    out.parameter().unwrap().value().unwrap().to_owned()
}

/// A: deleted and stored again as a plain String (on AWS a String cannot become a
/// SecureString in place, so this is how one comes about); B: overwritten under AWS's
/// managed key; C: overwritten under another customer key. Returns the old values and
/// the other key's id.
async fn make_drift(
    h: &Harness,
    ssm: &aws_sdk_ssm::Client,
    uuids: &[String],
) -> (Vec<String>, String) {
    assert_eq!(uuids.len(), 3);
    let kms = aws_sdk_kms::Client::new(&h.sdk);
    let other = kms.create_key().send().await.unwrap();
    let other = other.key_metadata().unwrap().key_id().to_owned();
    let mut old = Vec::new();
    for (k, uuid) in uuids.iter().enumerate() {
        let name = command_of(uuid);
        let value = decrypted(ssm, &name).await;
        let put = ssm.put_parameter().name(&name).value(&value);
        match k {
            0 => {
                ssm.delete_parameter().name(&name).send().await.unwrap();
                put.r#type(ParameterType::String).send().await.unwrap();
            }
            1 => {
                put.r#type(ParameterType::SecureString)
                    .key_id("alias/aws/ssm")
                    .overwrite(true)
                    .send()
                    .await
                    .unwrap();
            }
            _ => {
                put.r#type(ParameterType::SecureString)
                    .key_id(&other)
                    .overwrite(true)
                    .send()
                    .await
                    .unwrap();
            }
        }
        old.push(value);
    }
    // The positive control: history keeps an overwritten value.
    let b = history(ssm, &command_of(&uuids[1])).await.unwrap();
    assert_eq!(b.len(), 2, "{b:?}");
    (old, other)
}

/// `plan` names each runner to rotate and why, and writes nothing.
async fn plan_says_why(h: &Harness, cfg: &str, other: &str) {
    h.fake.clear_requests();
    h.recorder.clear();
    let plan = h
        .run(
            &["--config", cfg, "plan", "--detailed-exitcode"],
            &Harness::token(),
        )
        .await;
    plan.expect_code(2);
    h.assert_no_writes("plan");
    let names: Vec<String> = h
        .runners(None)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    for (name, why) in names.iter().zip([
        "a String, not a SecureString on the fleet key".to_owned(),
        "on key alias/aws/ssm, not the fleet key".to_owned(),
        format!("on key {other}, not the fleet key"),
    ]) {
        let line = format!("  ~ runner {name}: rotate: its command is {why}");
        assert!(
            plan.stdout.contains(&line),
            "missing {line:?} in\n{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout.contains("Plan: 3 to add, 3 to change, "),
        "{}",
        plan.stdout
    );
}

/// No older value anywhere: not in a live parameter, nor in any version of one; the old
/// runners' claims are gone.
async fn no_old_value_anywhere(
    ssm: &aws_sdk_ssm::Client,
    old_uuids: &[String],
    old_values: &[String],
) {
    let live = everything(ssm).await;
    assert!(
        !live.iter().any(|p| p.name().unwrap().contains("/claims/")
            && old_uuids
                .iter()
                .any(|u| p.name().unwrap().contains(&bare(u)))),
        "the old runners' claims are deleted"
    );
    for p in &live {
        let name = p.name().unwrap();
        for v in history(ssm, name).await.unwrap_or_default() {
            let value = v.value().unwrap_or_default();
            assert!(
                !old_values.iter().any(|old| old == value),
                "an old command in {name} version {}",
                v.version()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_off_the_fleet_key_rotate_their_runners_and_leave_no_old_value_in_history() {
    let h = Harness::new(KIT, FLEET).await;
    let path = h.write_config(&h.config(4, None));
    let cfg = path.to_str().unwrap();
    let token = Harness::token();
    let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let kms = aws_sdk_kms::Client::new(&h.sdk);
    h.apply(cfg, &[]).await;
    let fleet_key = kms
        .describe_key()
        .key_id(format!("alias/bbfleet-{FLEET}"))
        .send()
        .await
        .unwrap();
    let fleet_key = fleet_key.key_metadata().unwrap().arn().unwrap().to_owned();
    let mut old_uuids = h.runner_uuids();
    assert_eq!(old_uuids.len(), 4);
    let mut hosts = claim_hosts(&h, &old_uuids).await;
    let (kept, kept_host) = (old_uuids.pop().unwrap(), hosts.pop().unwrap());
    let (old_values, other) = make_drift(&h, &ssm, &old_uuids).await;

    plan_says_why(&h, cfg, &other).await;
    h.apply(cfg, &[]).await;
    let now = h.runner_uuids();
    assert_eq!(now.len(), 4, "{now:?}");
    assert!(now.contains(&kept), "the runner on the fleet key stays");
    assert_eq!(state(&ec2, &kept_host).await, InstanceStateName::Running);
    for (uuid, host) in old_uuids.iter().zip(&hosts) {
        assert!(!now.contains(uuid), "the old runner {uuid} is deleted");
        assert!(history(&ssm, &command_of(uuid)).await.is_none(), "{uuid}");
        assert_eq!(state(&ec2, host).await, InstanceStateName::Terminated);
    }
    for uuid in &now {
        let versions = history(&ssm, &command_of(uuid)).await.expect(uuid);
        assert_eq!(versions.len(), 1, "one version of {uuid}: {versions:?}");
        assert_eq!(versions[0].r#type(), Some(&ParameterType::SecureString));
        assert_eq!(versions[0].key_id(), Some(fleet_key.as_str()));
    }
    no_old_value_anywhere(&ssm, &old_uuids, &old_values).await;

    let again = h
        .run(&["--config", cfg, "plan", "--detailed-exitcode"], &token)
        .await;
    again.expect_code(0);
    h.destroy(cfg).await;
    let t = h.transcript.lock().unwrap();
    for secret in h.fake.issued_secrets() {
        assert!(!t.contains(&secret), "a runner secret was printed");
    }
}
