//! Performance behaviour that needs no clock: an apply at Parameter Store's real rate
//! converges (the benchmark, `benches/fleet.rs`, reports how long it takes against the
//! bound that rate sets), and a no-op plan reads the claims of a large fleet whole.

use testkit::aws_rules::SSM_STANDARD_TPS;
use testkit::harness::Harness;
use testkit::world::convergence_problems;

use crate::KIT;

/// Throttling answers the proxy sent.
fn throttled(h: &Harness) -> usize {
    h.recorder
        .calls()
        .iter()
        .filter(|c| c.status == 400 && c.response.contains("ThrottlingException"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_runners_converge_at_parameter_stores_standard_rate() {
    let h = Harness::new(KIT, "perf-tps").await;
    h.recorder.rules(|r| r.ssm_rate = Some(SSM_STANDARD_TPS));
    let text = h.config(100, None).replace("max = 20", "max = 100");
    let path = h.write_config(&text);
    let cfg = path.to_str().unwrap();
    // Two metered writes a runner (command, offer): 200 against a burst of 40.
    let run = h.apply(cfg, &[]).await;
    assert!(
        throttled(&h) > 0,
        "the apply never met the rate; the test proves nothing\n{}",
        run.stderr
    );
    let problems = convergence_problems(&h, cfg, 100).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // The claims of 100 runners (more than a page of either listing) are all read: a
    // second apply at the same rate has nothing to do.
    h.recorder.clear();
    let again = h
        .run(
            &[
                "--config",
                cfg,
                "plan",
                "--detailed-exitcode",
                "--no-preflight",
            ],
            &Harness::token(),
        )
        .await;
    again.expect_code(0);
    assert!(h.recorder.writes().is_empty(), "{:?}", h.recorder.writes());
    h.destroy(cfg).await;
}
