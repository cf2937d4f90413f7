//! The templates rendered: clean bash, shellcheck-clean, and the longest legal config
//! still fits into a launch template.

use std::io::Write;
use std::process::{Command, Stdio};

use bbfleet::config::Os;
use bbfleet::userdata::{render, UserdataVars};

fn production_vars(fleet: &str) -> UserdataVars {
    UserdataVars::new(fleet, "eu-west-1", 4)
}

pub(super) fn shellcheck(name: &str, script: &str) {
    let child = Command::new("shellcheck")
        .args(["-s", "bash", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run shellcheck ({e}); install it: `apt-get install -y shellcheck` \
             (or see https://github.com/koalaman/shellcheck#installing)"
        ),
    };
    child
        .stdin
        .take()
        .expect("shellcheck stdin")
        .write_all(script.as_bytes())
        .expect("feed shellcheck");
    let out = child.wait_with_output().expect("shellcheck finished");
    assert!(
        out.status.success(),
        "shellcheck findings in the rendered {name} script:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_templates_render_to_clean_bash() {
    let vars = production_vars("ci");
    for (os, name, installer) in [
        (Os::Al2023, "al2023", "dnf install -y docker"),
        (Os::Ubuntu, "ubuntu", "apt-get install -y"),
    ] {
        let script = render(os, &vars).unwrap_or_else(|e| panic!("render {name}: {e}"));
        assert!(
            script.starts_with("#!/bin/bash\n"),
            "{name}: no bash shebang"
        );
        assert!(script.contains("set -euo pipefail"), "{name}");
        // The runner is not detached from cloud-init with nohup: systemd runs its agent.
        assert!(!script.contains("nohup"), "{name}: nohup");
        for line in [
            "ExecStart=/bin/bash $AGENT agent",
            "Restart=always",
            "WantedBy=multi-user.target",
            "systemctl enable --now bbfleet-runner.service",
            "readonly STATE_DIR='/var/lib/bbfleet'",
            "readonly CLAIM_TIMEOUT=1200",
        ] {
            assert!(script.contains(line), "{name}: {line:?} missing");
        }
        assert!(
            script.contains("'/bbfleet/ci'"),
            "{name}: SSM prefix missing"
        );
        assert!(script.contains(installer), "{name}: {installer} missing");
        assert!(
            script.contains("http://169.254.169.254"),
            "{name}: IMDS endpoint missing"
        );
        assert!(
            !script.contains("OAUTH_CLIENT_SECRET"),
            "{name}: mentions the runner secret"
        );
        // `{{.Names}}` is docker's own template syntax, escaped in the template.
        assert!(
            !script.replace("'{{.Names}}'", "").contains("{{"),
            "{name}: unrendered handlebars"
        );
        assert!(
            !script.contains("--overwrite"),
            "{name}: claims must never overwrite"
        );
        shellcheck(name, &script);
    }
}

/// The longest config the validation allows, for `os`: the longest fleet name (24
/// characters, mixed so gzip gains least), the longest region name, the most swap, and
/// every optional knob at its largest.
fn longest_config(os: &str) -> String {
    let labels: Vec<String> = (0..10)
        .map(|i| format!("\"label.{i}.{}\"", "x".repeat(40)))
        .collect();
    format!(
        r#"name = "a0b1c2d3e4f5g6h7i8j9k-l1"
region = "{region}"

[bitbucket]
workspace = "{slug}"
repository = "{slug}"
labels = [{labels}]
runner_image = "registry.example.com/{slug}/bitbucket-pipelines-runner:1"

[capacity]
default = 100
max = 100
[[capacity.schedule]]
days = "mon-fri"
hours = "07:00-19:00"
timezone = "America/Argentina/ComodRivadavia"
capacity = 100
[capacity.autoscale]
min = 100
max = 100
cooldown_seconds = 9223372036854775807

[spot]
instance_types = ["m6i.large", "m6a.large", "c6i.xlarge"]
subnets = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1", "subnet-0123456789abcdef2"]
allocation_strategy = "price-capacity-optimized"
fleet_role = "arn:aws-us-gov:iam::123456789012:role/{iam}"

[instance]
os = "{os}"
ami = "ssm:/{iam}"
instance_profile = "{iam}"
security_groups = ["sg-0123456789abcdef0", "sg-0123456789abcdef1", "sg-0123456789abcdef2", "sg-0123456789abcdef3", "sg-0123456789abcdef4"]
root_volume_gb = 16384
swap_gb = 64
claim_timeout_seconds = 86400

[kms]
key = "alias/{iam}"
"#,
        region = bbfleet::config::LONGEST_REGION,
        slug = "s".repeat(128),
        labels = labels.join(", "),
        iam = "r".repeat(128),
    )
}

#[test]
fn the_longest_legal_config_fits_into_a_launch_template() {
    for (os, name) in [(Os::Al2023, "al2023"), (Os::Ubuntu, "ubuntu")] {
        let config = bbfleet::config::Config::parse(&longest_config(name), "longest.toml")
            .unwrap_or_else(|e| panic!("{name}: the longest config is not legal: {e}"));
        assert_eq!(config.name.len(), 24);
        assert_eq!(config.instance.os, os);
        assert_eq!(config.instance.swap_gb, 64);
        let region = config.region.clone().expect("region");
        let vars = UserdataVars::from_config(&config, &region);
        let script = render(os, &vars).expect("render");
        assert!(script.contains(&format!("readonly REGION='{region}'")));
        assert!(script.contains("readonly SWAP_GB=64"));
        // instance.claim_timeout_seconds, rendered.
        assert_eq!(config.instance.claim_timeout_seconds, 86_400);
        assert!(script.contains("readonly CLAIM_TIMEOUT=86400"));
        let encoded =
            bbfleet::userdata::check_fits(os, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: script {} bytes, launch template user data {} bytes (gzip), {} in base64",
            script.len(),
            encoded.len(),
            encoded.base64().len()
        );
        assert!(
            encoded.len() <= bbfleet::userdata::LAUNCH_TEMPLATE_MAX_BYTES,
            "{name}: {} bytes",
            encoded.len()
        );
        assert_eq!(bbfleet::userdata::LAUNCH_TEMPLATE_MAX_BYTES, 12_288);
        bbfleet::userdata::check_config_fits(&config, &region).expect("fits");
    }
}
