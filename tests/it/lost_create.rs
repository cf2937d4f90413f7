//! A lost answer to a runner registration never leaves a duplicate runner: Bitbucket
//! registers the runner, then answers 5xx or closes the connection, so the runner's secret
//! (only in that answer) is lost. One apply through that fault on every registration ends
//! with exactly one runner per slot, each with its command stored, no orphan, and a next
//! plan with no changes; the runners registered by the lost requests are deleted by that
//! same apply, not left for the next one.

use bitbucket_fake::Fault;
use testkit::harness::Harness;
use testkit::world::{bbfleet, convergence_problems};

use crate::KIT;

/// Runners the apply registers.
const CAPACITY: usize = 3;

/// The first answer to each of the `CAPACITY` registrations is lost through `lost`
/// (`count` = CAPACITY); `lost_status` is what the fake records for such a request.
async fn apply_through_lost_answers(fleet: &str, lost: Fault, lost_status: u16) {
    let h = Harness::new(KIT, fleet).await;
    let path = h.write_config(&h.config(CAPACITY as u32, None));
    let cfg = path.to_str().unwrap();
    h.fake.inject(Fault::OnMethod {
        method: "POST".to_owned(),
        skip: 0,
        fault: Box::new(lost),
    });
    let run = bbfleet(
        &h,
        &["-vv", "--config", cfg, "apply", "--auto-approve"],
        &[],
    )
    .await;
    let out = format!("--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 0, "{out}");

    // Every lost answer was to a registration Bitbucket did: one runner more each.
    let requests = h.fake.requests();
    let posts: Vec<u16> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pipelines-config/runners"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        posts.iter().filter(|s| **s == lost_status).count(),
        CAPACITY,
        "lost answers: {posts:?}"
    );
    assert_eq!(
        posts.iter().filter(|s| **s == 200).count(),
        CAPACITY,
        "answered registrations: {posts:?}"
    );
    assert_eq!(h.fake.issued_secrets().len(), 2 * CAPACITY);

    // This apply, not a later one, removed the runners whose secret was lost.
    let runners = h.fake.runners("acme", None);
    assert_eq!(
        runners.len(),
        CAPACITY,
        "runners right after the apply: {runners:#?}\n{out}"
    );
    let deletes = requests.iter().filter(|r| r.method == "DELETE").count();
    assert_eq!(deletes, CAPACITY, "one DELETE per lost registration");
    assert_eq!(
        run.stderr
            .matches("Bitbucket registered a runner but its answer was lost")
            .count(),
        CAPACITY,
        "each deletion is reported:\n{out}"
    );

    // N runners, N commands, no orphan runner or parameter, the next plan has no changes.
    let problems = convergence_problems(&h, cfg, CAPACITY).await;
    assert!(problems.is_empty(), "after one apply: {problems:#?}\n{out}");

    // No runner secret, lost or kept, in any output (debug logs included).
    let transcript = h.transcript.lock().unwrap().clone();
    for secret in h.fake.issued_secrets() {
        assert!(!transcript.contains(&secret), "a runner secret was printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_answered_5xx_after_processing_leave_no_duplicate() {
    apply_through_lost_answers(
        "lost-5xx",
        Fault::ProcessedThenServerError {
            status: 503,
            count: CAPACITY,
            path_contains: Some("pipelines-config/runners".to_owned()),
        },
        503,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_whose_connection_dropped_after_processing_leave_no_duplicate() {
    apply_through_lost_answers(
        "lost-drop",
        Fault::ProcessedThenDrop {
            count: CAPACITY,
            path_contains: Some("pipelines-config/runners".to_owned()),
        },
        0,
    )
    .await;
}
