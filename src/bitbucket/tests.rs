//! Tests of the Bitbucket client: the pure helpers, and the client against the fake
//! Bitbucket (budget, 429s, lost answers to a runner registration).

use super::transport::{error_message, parse_retry_after};
use super::*;

#[test]
fn retry_after_takes_seconds_and_dates() {
    assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn backoff_is_bounded() {
    let p = RetryPolicy::default();
    for attempt in 1..40 {
        assert!(p.backoff(attempt) <= p.cap);
    }
}

#[test]
fn error_messages_come_from_the_envelope() {
    let body = br#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"required":["runner:write"],"granted":["runner"]}}}"#;
    let m = error_message(body);
    assert!(
        m.contains("lack one or more") && m.contains("runner:write"),
        "{m}"
    );
    assert_eq!(
        error_message(b"<html><body>Bad gateway</body></html>"),
        "an HTML page, not the API's JSON (a proxy or outage page?): \"<html><body>Bad gateway</body></html>\""
    );
}

#[test]
fn urls_encode_braces() {
    let bb = Bitbucket::new(
        "http://127.0.0.1:9/2.0",
        Credentials::AccessToken("t".to_owned().into()),
        RetryPolicy::default(),
        CallStats::default(),
    )
    .unwrap();
    let url = bb.url(&[
        "workspaces",
        "acme",
        "pipelines-config",
        "runners",
        "{ab-1}",
    ]);
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:9/2.0/workspaces/acme/pipelines-config/runners/%7Bab-1%7D"
    );
}

fn client(fake: &bitbucket_fake::FakeBitbucket, max_retry_after: Duration) -> Bitbucket {
    Bitbucket::new(
        &fake.base_url(),
        Credentials::AccessToken("fake-access-token".to_owned().into()),
        RetryPolicy {
            base: Duration::from_millis(10),
            max_retry_after,
            ..RetryPolicy::default()
        },
        CallStats::default(),
    )
    .unwrap()
}

fn acme() -> Scope {
    Scope {
        workspace: "acme".to_owned(),
        repository: None,
    }
}

async fn fake(hourly_limit: Option<usize>) -> bitbucket_fake::FakeBitbucket {
    bitbucket_fake::FakeBitbucket::start(bitbucket_fake::FakeConfig {
        hourly_limit,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fits_the_budget_is_not_held_back() {
    let fake = fake(Some(1000)).await;
    let bb = client(&fake, Duration::from_secs(1));
    let scope = acme();
    let calls = (0..40).map(|_| bb.list_runners(&scope));
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(bb.budget_waits(), 0);
    assert_eq!(fake.requests().len(), 40);
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_hourly_budget_are_not_sent() {
    // The limit comes from Bitbucket's X-RateLimit-Limit header.
    let fake = fake(Some(3)).await;
    let bb = client(&fake, Duration::from_secs(1));
    for _ in 0..3 {
        bb.list_runners(&acme()).await.unwrap();
    }
    let err = bb.list_runners(&acme()).await.unwrap_err();
    assert!(matches!(err, BitbucketError::OverBudget { .. }), "{err}");
    assert!(err.to_string().contains("3 of 3 requests"), "{err}");
    assert_eq!(fake.requests().len(), 3, "the fourth request was sent");
    assert!(fake.requests().iter().all(|r| r.status == 200));
    fake.shutdown();

    // Without headers, the configured budget counts.
    let fake = self::fake(None).await;
    let bb = client(&fake, Duration::from_secs(1)).with_hourly_budget(2);
    bb.list_runners(&acme()).await.unwrap();
    bb.workspace("acme").await.unwrap();
    let err = bb.workspace("acme").await.unwrap_err();
    assert!(err.to_string().contains("budget is used up"), "{err}");
    assert_eq!(fake.requests().len(), 2);
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_client_through_the_budget() {
    let fake = fake(None).await;
    fake.inject(bitbucket_fake::Fault::RateLimit {
        retry_after: Some(1),
        count: 1,
        path_contains: None,
    });
    let bb = client(&fake, Duration::from_secs(5));
    bb.list_runners(&acme()).await.unwrap();
    assert!(bb.budget_waits() >= 1);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
    fake.shutdown();
}

fn labels() -> Vec<String> {
    vec!["self.hosted".to_owned(), "linux".to_owned()]
}

/// (method, status) of every request the fake recorded.
fn calls(fake: &bitbucket_fake::FakeBitbucket) -> Vec<(String, u16)> {
    fake.requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect()
}

fn on_post(fault: bitbucket_fake::Fault) -> bitbucket_fake::Fault {
    bitbucket_fake::Fault::OnMethod {
        method: "POST".to_owned(),
        skip: 0,
        fault: Box::new(fault),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_may_have_reached_bitbucket_is_checked_before_it_is_sent_again() {
    use bitbucket_fake::Fault;
    let owned = |c: &[(&str, u16)]| -> Vec<(String, u16)> {
        c.iter().map(|(m, s)| ((*m).to_owned(), *s)).collect()
    };
    let cases = [
        (
            "processed, then 500",
            Fault::ProcessedThenServerError {
                status: 500,
                count: 1,
                path_contains: None,
            },
            owned(&[("POST", 500), ("GET", 200), ("DELETE", 204), ("POST", 200)]),
        ),
        (
            "processed, then the connection dropped",
            Fault::ProcessedThenDrop {
                count: 1,
                path_contains: None,
            },
            owned(&[("POST", 0), ("GET", 200), ("DELETE", 204), ("POST", 200)]),
        ),
        (
            "500 before processing",
            Fault::ServerError {
                status: 500,
                count: 1,
                path_contains: None,
            },
            owned(&[("POST", 500), ("GET", 200), ("POST", 200)]),
        ),
        (
            "429: never processed, retried without a listing",
            Fault::RateLimit {
                retry_after: None,
                count: 1,
                path_contains: None,
            },
            owned(&[("POST", 429), ("POST", 200)]),
        ),
    ];
    for (case, fault, expected) in cases {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(1));
        fake.inject(on_post(fault));
        let created = bb
            .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(calls(&fake), expected, "{case}");
        let runners = fake.runners("acme", None);
        assert_eq!(runners.len(), 1, "{case}: {runners:#?}");
        assert_eq!(runners[0]["uuid"], created.runner.uuid.as_str(), "{case}");
        fake.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_runner_the_lost_create_registered_is_deleted() {
    let fake = fake(None).await;
    let bb = client(&fake, Duration::from_secs(1));
    let scope = acme();
    let name = "bbfleet-x-1";
    // Same name: one known before, one busy, one online; another name.
    let mut keep = Vec::new();
    for n in [name, name, name, "bbfleet-x-2"] {
        keep.push(bb.create_runner(&scope, n, &labels(), &[]).await.unwrap());
    }
    assert!(fake.set_busy(&keep[1].runner.uuid, true));
    assert!(fake.set_status(&keep[2].runner.uuid, "ONLINE"));
    let existing = [crate::world::Runner::from(&keep[0].runner)];
    fake.inject(on_post(bitbucket_fake::Fault::ProcessedThenServerError {
        status: 502,
        count: 1,
        path_contains: None,
    }));
    let created = bb
        .create_runner(&scope, name, &labels(), &existing)
        .await
        .unwrap();
    let left: Vec<String> = fake
        .runners("acme", None)
        .iter()
        .map(|r| r["uuid"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut wanted: Vec<String> = keep.iter().map(|c| c.runner.uuid.clone()).collect();
    wanted.push(created.runner.uuid.clone());
    assert_eq!(left, wanted, "only the lost runner was deleted");
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_creates_are_bounded_and_leave_no_runner() {
    let fake = fake(None).await;
    let bb = client(&fake, Duration::from_secs(1));
    fake.inject(on_post(bitbucket_fake::Fault::ProcessedThenServerError {
        status: 500,
        count: 1000,
        path_contains: None,
    }));
    let err = bb
        .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
        .await
        .unwrap_err();
    let max = RetryPolicy::default().max_attempts as usize;
    assert!(
        matches!(err, BitbucketError::Exhausted { attempts, .. } if attempts as usize == max),
        "{err}"
    );
    let posts = calls(&fake).iter().filter(|(m, _)| m == "POST").count();
    let deletes = calls(&fake).iter().filter(|(m, _)| m == "DELETE").count();
    assert_eq!((posts, deletes), (max, max));
    assert!(
        fake.runners("acme", None).is_empty(),
        "the last lost runner was deleted too"
    );
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_not_sent_again_while_the_runners_cannot_be_listed() {
    let fake = fake(None).await;
    let bb = client(&fake, Duration::from_secs(1));
    fake.inject(on_post(bitbucket_fake::Fault::ServerError {
        status: 503,
        count: 1,
        path_contains: None,
    }));
    fake.inject(bitbucket_fake::Fault::OnMethod {
        method: "GET".to_owned(),
        skip: 0,
        fault: Box::new(bitbucket_fake::Fault::ServerError {
            status: 500,
            count: 1000,
            path_contains: None,
        }),
    });
    let err = bb
        .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, BitbucketError::Unconfirmed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("registering runner bbfleet-x-1 in workspace acme may have succeeded")
            && text.contains("still failed after 6 attempts"),
        "{text}"
    );
    let posts = calls(&fake).iter().filter(|(m, _)| m == "POST").count();
    assert_eq!(posts, 1, "sent once");
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_without_a_listing() {
    // A port nobody listens on: every attempt is refused before anything is sent.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let bb = Bitbucket::new(
        &format!("http://127.0.0.1:{port}/2.0"),
        Credentials::AccessToken("fake-access-token".to_owned().into()),
        RetryPolicy {
            base: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        CallStats::default(),
    )
    .unwrap();
    let err = bb
        .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
        .await
        .unwrap_err();
    // A listing would have been refused too, giving `Unconfirmed`.
    assert!(
        matches!(err, BitbucketError::Exhausted { ref call, attempts: 6, .. } if call.starts_with("POST ")),
        "{err}"
    );
}

#[test]
fn the_internal_api_sits_beside_the_configured_base() {
    let internal = |base: &str| {
        let bb = Bitbucket::new(
            base,
            Credentials::AccessToken("t".to_owned().into()),
            RetryPolicy::default(),
            CallStats::default(),
        )
        .unwrap();
        bb.internal_url(&["workspaces", "acme", "{ab-1}", "state"])
            .to_string()
    };
    let tail = "workspaces/acme/%7Bab-1%7D/state";
    for (base, want) in [
        (
            "https://api.bitbucket.org/2.0",
            "https://api.bitbucket.org/internal/",
        ),
        (
            "https://api.bitbucket.org/2.0/",
            "https://api.bitbucket.org/internal/",
        ),
        ("http://127.0.0.1:9/2.0", "http://127.0.0.1:9/internal/"),
        (
            "https://proxy.example/bitbucket/v2",
            "https://proxy.example/bitbucket/internal/",
        ),
        ("https://proxy.example", "https://proxy.example/internal/"),
    ] {
        assert_eq!(internal(base), format!("{want}{tail}"), "{base}");
    }
}

#[test]
fn state_updated_on_is_read_as_a_timestamp() {
    let runner = |updated_on: Option<&str>| Runner {
        uuid: "{ab-1}".to_owned(),
        name: "bbfleet-x-1".to_owned(),
        labels: Vec::new(),
        state: RunnerState {
            updated_on: updated_on.map(str::to_owned),
            ..RunnerState::default()
        },
    };
    let at = runner(Some("2026-03-02T10:15:30.123456Z")).state_updated_on();
    assert_eq!(at, Some("2026-03-02T10:15:30.123456Z".parse().unwrap()));
    let nanos = runner(Some("2026-03-02T10:15:30.123456789Z")).state_updated_on();
    assert_eq!(nanos.map(|t| t.subsec_nanosecond()), Some(123_456_789));
    assert_eq!(runner(Some("yesterday")).state_updated_on(), None);
    assert_eq!(runner(None).state_updated_on(), None);
}

fn app() -> Scope {
    Scope {
        workspace: "acme".to_owned(),
        repository: Some("app".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_and_enabling_go_to_the_internal_api_and_read_back() {
    for (scope, prefix) in [
        (acme(), "workspaces/acme"),
        (app(), "repositories/acme/app"),
    ] {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(1));
        let uuid = bb
            .create_runner(&scope, "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap()
            .runner
            .uuid;
        fake.clear_requests();
        let bare = crate::names::bare_uuid(&uuid);
        for (enabled, status) in [(false, "DISABLED"), (true, "ENABLED")] {
            assert!(bb.set_runner_enabled(&scope, &bare, enabled).await.unwrap());
            let read = bb.get_runner(&scope, &bare).await.unwrap().unwrap();
            assert_eq!((read.uuid.as_str(), read.status()), (uuid.as_str(), status));
            assert!(read.state_updated_on().is_some(), "{read:?}");
        }
        let sent: Vec<(String, String, Option<serde_json::Value>)> = fake
            .requests()
            .into_iter()
            .map(|r| (r.method, r.path, r.body))
            .collect();
        let state = format!("/internal/{prefix}/pipelines-config/runners/{uuid}/state");
        let item = format!("/2.0/{prefix}/pipelines-config/runners/{uuid}");
        let put = |s: &str| Some(serde_json::json!({ "status": s }));
        let get = || ("GET".to_owned(), item.clone(), None);
        let expected = vec![
            ("PUT".to_owned(), state.clone(), put("DISABLED")),
            get(),
            ("PUT".to_owned(), state.clone(), put("ENABLED")),
            get(),
        ];
        assert_eq!(sent, expected, "{scope}");
        let counted = bb.stats.summary().calls;
        assert_eq!(counted.get("bitbucket:PUT runner state"), Some(&2));
        assert_eq!(counted.get("bitbucket:GET runner"), Some(&2));
        fake.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_is_gone_is_false_or_none() {
    let fake = fake(None).await;
    let bb = client(&fake, Duration::from_secs(1));
    let gone = "{00000000-0000-5000-8000-000000000000}";
    for scope in [acme(), app()] {
        assert!(!bb.set_runner_enabled(&scope, gone, false).await.unwrap());
        assert!(!bb.set_runner_enabled(&scope, gone, true).await.unwrap());
        assert_eq!(bb.get_runner(&scope, gone).await.unwrap(), None);
    }
    // Each 404 of the state endpoint is confirmed by a GET of the runner.
    let methods: Vec<(String, u16)> = calls(&fake);
    let round = [
        ("PUT", 404),
        ("GET", 404),
        ("PUT", 404),
        ("GET", 404),
        ("GET", 404),
    ];
    let expected: Vec<(String, u16)> = round
        .iter()
        .chain(round.iter())
        .map(|(m, s)| ((*m).to_owned(), *s))
        .collect();
    assert_eq!(methods, expected);
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_of_the_state_endpoint_for_a_listed_runner_is_an_error() {
    let fake = fake(None).await;
    let bb = client(&fake, Duration::from_secs(1));
    let created = bb
        .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
        .await
        .unwrap();
    fake.inject(bitbucket_fake::Fault::ClientError {
        status: 404,
        message: "Resource not found".to_owned(),
        count: 1,
        path_contains: Some("/state".to_owned()),
    });
    let err = bb
        .set_runner_enabled(&acme(), &created.runner.uuid, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BitbucketError::Unexpected { status: 404, ref call, .. } if call.starts_with("PUT /internal/")),
        "{err}"
    );
    assert!(err.to_string().contains("was not disabled"), "{err}");
    fake.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_put_is_retried_after_a_429_or_a_5xx() {
    use bitbucket_fake::Fault;
    let state = || Some("/state".to_owned());
    let cases = [
        Fault::RateLimit {
            retry_after: Some(1),
            count: 1,
            path_contains: state(),
        },
        // Replaying a PUT of a state is safe: done twice, it is done once.
        Fault::ProcessedThenServerError {
            status: 500,
            count: 1,
            path_contains: state(),
        },
    ];
    for fault in cases {
        let fake = fake(None).await;
        let bb = client(&fake, Duration::from_secs(5));
        let uuid = bb
            .create_runner(&acme(), "bbfleet-x-1", &labels(), &[])
            .await
            .unwrap()
            .runner
            .uuid;
        fake.clear_requests();
        fake.inject(fault.clone());
        assert!(bb.set_runner_enabled(&acme(), &uuid, false).await.unwrap());
        let lost = fake.requests()[0].status;
        assert!(matches!(lost, 429 | 500), "{fault:?}");
        assert_eq!(
            calls(&fake),
            [("PUT".to_owned(), lost), ("PUT".to_owned(), 200)]
        );
        assert_eq!(fake.runners("acme", None)[0]["state"]["status"], "DISABLED");
        fake.shutdown();
    }
}
