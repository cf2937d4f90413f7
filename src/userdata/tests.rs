use std::io::Read;

use super::*;

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip of UTF-8");
    text
}

fn render_one(template: &str, data: serde_json::Value) -> Result<String, String> {
    let mut hb = registry();
    hb.register_template_string("t", template)
        .map_err(|e| e.to_string())?;
    hb.render("t", &data).map_err(|e| e.to_string())
}

#[test]
fn shell_quote_makes_one_single_quoted_word() {
    assert_eq!(shell_quote("ci").as_deref(), Some("'ci'"));
    assert_eq!(shell_quote("").as_deref(), Some("''"));
    assert_eq!(shell_quote("it's").as_deref(), Some(r"'it'\''s'"));
    assert_eq!(shell_quote("''").as_deref(), Some(r"''\'''\'''"));
    assert_eq!(
        shell_quote("$(id) `id` \\ \n;").as_deref(),
        Some("'$(id) `id` \\ \n;'")
    );
    assert_eq!(shell_quote("a\0b"), None);
}

#[test]
fn the_helpers_quote_strings_and_write_only_whole_numbers() {
    let data = serde_json::json!({"s": "a'b", "n": 42, "neg": -1, "f": 1.5, "t": "7"});
    assert_eq!(
        render_one("{{sh s}}", data.clone()),
        Ok(r"'a'\''b'".to_owned())
    );
    assert_eq!(render_one("{{sh n}}", data.clone()), Ok("'42'".to_owned()));
    assert_eq!(render_one("{{int n}}", data.clone()), Ok("42".to_owned()));
    for refused in ["{{int neg}}", "{{int f}}", "{{int t}}", "{{int s}}"] {
        let err = render_one(refused, data.clone()).expect_err(refused);
        assert!(err.contains("is not a whole number"), "{refused}: {err}");
    }
    // Strict: a missing value is an error, through a helper too.
    for missing in ["{{sh nope}}", "{{int nope}}", "{{nope}}"] {
        assert!(render_one(missing, data.clone()).is_err(), "{missing}");
    }
    let nul = render_one("{{sh s}}", serde_json::json!({"s": "a\u{0}b"})).unwrap_err();
    assert!(nul.contains("s holds a NUL byte"), "{nul}");
    // A bare expression is quoted as well (the templates use none, see below).
    assert_eq!(render_one("{{s}}", data), Ok(r"'a'\''b'".to_owned()));
}

#[test]
fn every_value_in_the_templates_goes_through_a_helper() {
    for (name, text) in [
        ("al2023", AL2023),
        ("ubuntu", UBUNTU),
        ("common", COMMON),
        ("agent", AGENT),
        ("bake", BAKE),
    ] {
        let mut rest = text;
        let mut expressions = 0;
        while let Some(i) = rest.find("{{") {
            let escaped = rest[..i].ends_with('\\');
            let tail = &rest[i + 2..];
            let end = tail.find("}}").expect("closed expression");
            let expression = &tail[..end];
            if !escaped {
                expressions += 1;
                assert!(
                    expression.starts_with("sh ")
                        || expression.starts_with("int ")
                        || expression == "> common"
                        || expression == "> agent",
                    "{name}: {{{{{expression}}}}} is neither {{{{sh x}}}}, {{{{int x}}}} nor a partial"
                );
                // Never inside quotes written by the template: the helper quotes.
                let before = rest[..i].chars().last();
                assert!(
                    !matches!(before, Some('\'' | '"')),
                    "{name}: {{{{{expression}}}}} is quoted by the template"
                );
            }
            rest = &tail[end + 2..];
        }
        // The agent's part takes its values from common's rendered block.
        assert!(
            expressions > 0 || name == "agent",
            "{name}: no expressions found"
        );
    }
}

#[test]
fn the_launch_template_encoding_is_gzip_of_the_script_and_deterministic() {
    let vars = UserdataVars::new("ci", "eu-west-1", 4);
    for os in [Os::Al2023, Os::Ubuntu] {
        let script = render(os, &vars).unwrap();
        let a = launch_template_user_data(&script);
        let b = launch_template_user_data(&script);
        assert_eq!(a, b, "the same script, the same bytes");
        assert_eq!(a.base64(), b.base64());
        // gzip magic, deflate, no flags, mtime 0, OS 255: nothing of the moment of encoding.
        assert_eq!(a.bytes[..4], [0x1f, 0x8b, 8, 0]);
        assert_eq!(a.bytes[4..8], [0, 0, 0, 0]);
        assert_eq!(a.bytes[9], 255);
        assert_eq!(gunzip(&a.bytes), script);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.base64())
            .unwrap();
        assert_eq!(decoded, a.bytes);
        assert_eq!(a.script_len(), script.len());
        assert!(a.len() < script.len() / 2, "{os:?}: {} bytes", a.len());
        assert_eq!(check_fits(os, &vars).unwrap(), a);
    }
}

#[test]
fn user_data_over_the_limit_is_refused_naming_the_cause() {
    let vars = UserdataVars::new("ci", "eu-west-1", 4);
    let script = render(Os::Ubuntu, &vars).unwrap();
    let size = launch_template_user_data(&script).len();
    assert!(fits_within(Os::Ubuntu, &vars, &script, size).is_ok());
    let err = fits_within(Os::Ubuntu, &vars, &script, size - 1)
        .unwrap_err()
        .to_string();
    for want in [
        "ubuntu script for fleet \"ci\" in eu-west-1",
        &format!("{size} bytes gzip-compressed"),
        &format!("at most {}", size - 1),
        "EC2 refuses more than 16384",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}

fn bake_vars() -> UserdataVars {
    UserdataVars {
        bake: Some(BakeVars {
            signal_parameter: "/bbfleet/ci/bake/it's".to_owned(),
            runner_image: "registry.example.com/runner:1".to_owned(),
        }),
        ..UserdataVars::new("ci", "eu-west-1", 4)
    }
}

#[test]
fn only_a_builder_script_has_the_bake_part_and_both_know_the_marker() {
    let stock = UserdataVars::new("ci", "eu-west-1", 4);
    for os in [Os::Al2023, Os::Ubuntu] {
        let host = render(os, &stock).expect("render a host's script");
        let builder = render(os, &bake_vars()).expect("render a builder's script");
        for script in [&host, &builder] {
            assert!(script.contains("readonly BAKED_MARKER='/etc/bbfleet/baked'"));
            assert_eq!(BAKED_MARKER, "/etc/bbfleet/baked");
            assert!(script.ends_with("\nbootstrap\n"), "{os:?}");
        }
        assert!(!host.contains("BAKING=1"));
        assert!(!host.contains("bake_image() {"));
        assert!(!host.contains("--overwrite"));
        assert!(builder.contains("BAKING=1"));
        assert!(builder.contains(r"readonly SIGNAL='/bbfleet/ci/bake/it'\''s'"));
        assert!(builder.contains("readonly RUNNER_IMAGE='registry.example.com/runner:1'"));
        // The one overwrite: the signal parameter, never a claim.
        assert_eq!(builder.matches("--overwrite").count(), 1);
        assert!(builder.contains("--name \"$SIGNAL\" --type String --value \"$1\" --overwrite"));
        check_fits(os, &bake_vars()).expect("a builder's script fits");
    }
}
