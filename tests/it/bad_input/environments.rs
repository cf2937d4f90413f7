//! Environments and command-line values that are wrong.

use testkit::harness::Harness;

use super::{check_all, edit, Case};
use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environments_and_arguments() {
    let h = Harness::new(KIT, "badenv").await;
    let cases = vec![
        Case::new(
            "no_credentials",
            &[
                "no Bitbucket credentials in the environment",
                "BITBUCKET_ACCESS_TOKEN",
            ],
        )
        .env(&[]),
        Case::new(
            "half_basic",
            &["BITBUCKET_EMAIL is set but BITBUCKET_API_TOKEN is not"],
        )
        .env(&[("BITBUCKET_EMAIL", "dev@example.com")]),
        Case::new(
            "conflicting_modes",
            &[
                "conflicting Bitbucket credentials",
                "BITBUCKET_ACCESS_TOKEN",
            ],
        )
        .env(&[
            ("BITBUCKET_EMAIL", "dev@example.com"),
            ("BITBUCKET_API_TOKEN", "canary-token-1"),
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-2"),
        ]),
        Case::new("empty_token", &["BITBUCKET_ACCESS_TOKEN is set but empty"])
            .env(&[("BITBUCKET_ACCESS_TOKEN", "  ")]),
        Case::new(
            "oauth_id_without_secret",
            &["BITBUCKET_OAUTH_CLIENT_ID is set but BITBUCKET_OAUTH_CLIENT_SECRET is not"],
        )
        .env(&[("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id")]),
        Case::new(
            "oauth_token_url_http",
            &["BITBUCKET_OAUTH_TOKEN_URL", "must be https"],
        )
        .env(&[
            ("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id"),
            ("BITBUCKET_OAUTH_CLIENT_SECRET", "canary-secret-1"),
            (
                "BITBUCKET_OAUTH_TOKEN_URL",
                "http://bitbucket.example.com/site/oauth2/access_token",
            ),
        ]),
        Case::new("api_url_env_http", &["BITBUCKET_API_URL", "must be https"]).env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-3"),
            ("BITBUCKET_API_URL", "http://bitbucket.example.com/2.0"),
        ]),
        Case::new("api_url_env_garbage", &["BITBUCKET_API_URL"]).env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-4"),
            ("BITBUCKET_API_URL", "not a url"),
        ]),
        Case::new(
            "wrong_token_401",
            &["did not accept the access token", "401"],
        )
        .env(&[("BITBUCKET_ACCESS_TOKEN", "canary-token-5")]),
        // No `region` in the config: the SDK's chain finds AWS_REGION, which is checked
        // before any call, the error naming the variable.
        Case::new(
            "aws_region_env_with_shell",
            &["AWS_REGION: \"eu-west-1'; touch pwned; '\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[
            ("BITBUCKET_ACCESS_TOKEN", "canary-token-6"),
            ("AWS_REGION", "eu-west-1'; touch pwned; '"),
        ])
        .offline(),
        Case::new(
            "aws_region_env_render_userdata",
            &["AWS_REGION: \"eu-west-1\\n\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[("AWS_REGION", "eu-west-1\n")])
        .args(&["--config", "{config}", "render-userdata"])
        .offline(),
        Case::new(
            "aws_region_env_validate",
            &["AWS_REGION: \"$(id)\" is not an AWS region name"],
        )
        .config(edit(&h.config(2, None), "region = \"us-east-1\"\n", ""))
        .env(&[("AWS_REGION", "$(id)")])
        .args(&["--config", "{config}", "validate"])
        .offline(),
        Case::new("capacity_above_max", &["--capacity", "50", "20"]).args(&[
            "--config",
            "{config}",
            "apply",
            "--auto-approve",
            "--capacity",
            "50",
        ]),
        Case::new(
            "at_garbage",
            &["--at: \"yesterday-ish\" is not an RFC 3339 instant"],
        )
        .args(&[
            "--config",
            "{config}",
            "apply",
            "--auto-approve",
            "--at",
            "yesterday-ish",
        ]),
        Case::new(
            "autoscale_interval_garbage",
            &["--interval", "\"soon\" is not a duration"],
        )
        .config(edit(
            &h.config(2, None),
            "max = 20\n",
            "max = 20\n[capacity.autoscale]\nmin = 1\n",
        ))
        .args(&[
            "--config",
            "{config}",
            "autoscale",
            "--once",
            "--interval",
            "soon",
        ]),
    ];
    check_all(&h, &cases).await;
}
