//! Repository runners over OAuth, through Bitbucket's rate limits and server errors.

use testkit::harness::Harness;

use crate::KIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_runners_over_oauth_survive_rate_limits() {
    let h = Harness::new(KIT, "repo").await;
    let config = h.write_config(&h.config(2, Some("app")));
    let cfg = config.to_str().unwrap();
    let token_url = h.fake.oauth_token_url();
    let oauth = [
        ("BITBUCKET_OAUTH_CLIENT_ID", "fake-client-id"),
        ("BITBUCKET_OAUTH_CLIENT_SECRET", "fake-client-secret"),
        ("BITBUCKET_OAUTH_TOKEN_URL", token_url.as_str()),
        ("BBFLEET_LOG", "bbfleet=debug"),
    ];
    // Bitbucket often sends 429 without Retry-After, and 5xx happen.
    h.fake.inject(bitbucket_fake::Fault::RateLimit {
        retry_after: None,
        count: 2,
        path_contains: Some("runners".into()),
    });
    h.fake.inject(bitbucket_fake::Fault::RateLimit {
        retry_after: Some(1),
        count: 1,
        path_contains: None,
    });
    h.fake.inject(bitbucket_fake::Fault::ServerError {
        status: 503,
        count: 1,
        path_contains: Some("runners".into()),
    });
    h.run(&["--config", cfg, "apply", "--auto-approve"], &oauth)
        .await
        .expect_code(0);
    let runners = h.runners(Some("app"));
    assert_eq!(runners.len(), 2);
    assert!(
        h.fake.runners("acme", None).is_empty(),
        "workspace scope untouched"
    );
    let ssm = aws_sdk_ssm::Client::new(&h.sdk);
    let params = ssm
        .get_parameters_by_path()
        .path("/bbfleet/repo/runners")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(params.parameters().len(), 2);
    for p in params.parameters() {
        assert!(p
            .value()
            .unwrap()
            .contains("REPOSITORY_UUID={66666666-7777-4888-9999-000000000000}"));
    }
    h.run(&["--config", cfg, "destroy", "--auto-approve"], &oauth)
        .await
        .expect_code(0);
    assert!(h.runners(Some("app")).is_empty());
    let transcript = h.transcript.lock().unwrap().clone();
    assert!(
        transcript.contains("rate limited"),
        "debug logs show the retries"
    );
    assert!(
        !transcript.contains("fake-client-secret"),
        "the OAuth consumer secret was printed"
    );
    for s in h.fake.issued_secrets() {
        assert!(
            !transcript.contains(s.as_str()),
            "a runner secret was printed"
        );
    }
}
