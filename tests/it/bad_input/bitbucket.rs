//! Bitbucket answers that are wrong.

use bitbucket_fake::Fault;
use testkit::harness::Harness;

use super::{check_all, edit, on_runners, Case, RUNNERS};
use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bitbucket_answers() {
    let h = Harness::new(KIT, "badapi").await;
    // Another team's runner, so pages have a runner for faults to break.
    let other = reqwest::Client::new()
        .post(format!("{}/workspaces/acme/{RUNNERS}", h.fake.base_url()))
        .bearer_auth("fake-access-token")
        .json(&serde_json::json!({"name": "team-b-1", "labels": ["self.hosted", "linux"]}))
        .send()
        .await
        .unwrap();
    assert!(other.status().is_success());
    let list = "GET /2.0/workspaces/acme/pipelines-config/runners";
    let cases = vec![
        Case::new(
            "malformed_json",
            &[
                list,
                "not JSON: EOF while parsing",
                "body starts: \"{\\\"values\\\": [\"",
            ],
        )
        .fault(Fault::MalformedJson {
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "html_error_page",
            &[
                list,
                "502",
                "an HTML page, not the API's JSON",
                "still failed after 6 attempts",
            ],
        )
        .fault(Fault::HtmlError {
            count: 6,
            path_contains: on_runners(),
        }),
        Case::new(
            "runner_without_uuid",
            &[list, "values[0]: missing field `uuid`"],
        )
        .fault(Fault::MissingField {
            field: "uuid".to_owned(),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "labels_a_string",
            &[
                list,
                "values[0].labels: invalid type: string \"linux\", expected a sequence",
            ],
        )
        .fault(Fault::WrongType {
            field: "labels".to_owned(),
            value: serde_json::json!("linux"),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "status_a_number",
            &[
                list,
                "values[0].state.status: invalid type: integer `5`, expected a string",
            ],
        )
        .fault(Fault::WrongType {
            field: "state.status".to_owned(),
            value: serde_json::json!(5),
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "workspace_without_uuid",
            &["GET /2.0/workspaces/acme: missing field `uuid`"],
        )
        .fault(Fault::MissingField {
            field: "uuid".to_owned(),
            count: 1,
            path_contains: Some("/workspaces/acme$".to_owned()),
        }),
        Case::new("huge_page", &[list, "response larger than 8 MB"]).fault(Fault::HugeBody {
            bytes: 50 << 20,
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new(
            "page_beyond_pagelen",
            &[
                list,
                "a page holds 5000 runners, more than the 100 asked for",
            ],
        )
        .fault(Fault::OversizedPage {
            values: 5000,
            count: 1,
            path_contains: on_runners(),
        }),
        Case::new("looping_next", &[list, "pagination loop"])
            .fault(Fault::LoopingNext { count: 2 }),
        Case::new(
            "next_to_another_origin",
            &[
                list,
                "leaves the API's origin (http://bitbucket.example.com)",
                "not following it with credentials",
            ],
        )
        .fault(Fault::NextLink {
            url: "http://bitbucket.example.com/2.0/x?page=2".to_owned(),
            count: 1,
        }),
        Case::new(
            "forbidden_403",
            &["(403)", "Access denied.", "read:runner:bitbucket"],
        )
        .fault(Fault::ClientError {
            status: 403,
            message: "Access denied.".to_owned(),
            count: 2,
            path_contains: Some("/workspaces/acme".to_owned()),
        }),
        Case::new(
            "unauthorized_401",
            &["did not accept the access token", "(401)"],
        )
        .fault(Fault::ClientError {
            status: 401,
            message: "Token is invalid, expired, or not supported for this endpoint.".to_owned(),
            count: 2,
            path_contains: Some("/workspaces/acme".to_owned()),
        }),
        Case::new(
            "unknown_workspace_404",
            &["Bitbucket has no workspace nope", "404"],
        )
        .config(edit(
            &h.config(2, None),
            "workspace = \"acme\"",
            "workspace = \"nope\"",
        )),
    ];
    check_all(&h, &cases).await;
}
