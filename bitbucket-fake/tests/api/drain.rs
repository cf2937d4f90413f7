//! What a drain-first scale-down needs of the fake: the internal state endpoint, the hook
//! that hands a runner a step just before its disable lands, and when requests arrived.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitbucket_fake::{FakeConfig, Fault, RecordedRequest};
use serde_json::{json, Value};

use super::{enc, send, Client, REPO, WS};

/// `(uuid, GET path, internal state path)` of a new runner in `scope` (`WS` or `REPO`).
async fn runner(c: &Client, scope: &str) -> (String, String, String) {
    let uuid = c.create(scope, "a").await.json()["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let item = format!("{scope}/pipelines-config/runners/{}", enc(&uuid));
    let state = format!("{}/state", item.replacen("/2.0/", "/internal/", 1));
    (uuid, item, state)
}

async fn put_state(c: &Client, state: &str, status: &str) -> Value {
    let r = c.req("PUT", state, Some(json!({ "status": status }))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// POSTs `body` to `/_fake/runners/{uuid}/step_on_disable`; the status.
async fn arm(c: &Client, uuid: &str, body: &str) -> u16 {
    let path = format!("/_fake/runners/{}/step_on_disable", enc(uuid));
    send(c.addr, "POST", &path, &[], Some(body.as_bytes()))
        .await
        .status
}

#[tokio::test]
async fn an_armed_disable_hands_the_runner_a_step_first_once() {
    let c = Client::new(FakeConfig::default()).await;
    for scope in [WS, REPO] {
        let (uuid, item, state) = runner(&c, scope).await;
        assert_eq!(arm(&c, &uuid, r#"{"busy": true}"#).await, 200);
        assert!(c.get(&item).await.json()["state"].get("step").is_none());
        // Enabling does not fire it.
        put_state(&c, &state, "ENABLED").await;
        assert!(c.get(&item).await.json()["state"].get("step").is_none());

        let r = put_state(&c, &state, "DISABLED").await;
        assert_eq!(r["state"]["status"], "DISABLED", "{scope}");
        assert_eq!(r["state"]["step"]["type"], "PIPELINE_STEP", "{scope}");
        let r = c.get(&item).await.json();
        assert_eq!(r["state"]["status"], "DISABLED");
        assert_eq!(r["state"]["step"]["type"], "PIPELINE_STEP");

        // Fired once: after the step ends, another disable finds the runner idle.
        assert!(c.fake.set_busy(&uuid, false));
        put_state(&c, &state, "ENABLED").await;
        let r = put_state(&c, &state, "DISABLED").await;
        assert!(r["state"].get("step").is_none(), "{r}");
    }
}

#[tokio::test]
async fn the_hook_is_disarmed_and_checked() {
    let c = Client::new(FakeConfig::default()).await;
    let (uuid, _, state) = runner(&c, WS).await;
    assert!(c.fake.set_step_on_disable(&uuid, true));
    assert_eq!(arm(&c, &uuid, r#"{"busy": false}"#).await, 200);
    let r = put_state(&c, &state, "DISABLED").await;
    assert!(r["state"].get("step").is_none(), "{r}");

    // Armed through the handle, and a step it already runs is kept as it is.
    put_state(&c, &state, "ENABLED").await;
    assert!(c.fake.set_busy(&uuid, true));
    let step = c.fake.runners("acme", None)[0]["state"]["step"].clone();
    assert!(c.fake.set_step_on_disable(&uuid, true));
    let r = put_state(&c, &state, "DISABLED").await;
    assert_eq!(r["state"]["step"], step);

    // Setting the status through the hooks is not a disable of the API.
    assert!(c.fake.set_busy(&uuid, false));
    assert!(c.fake.set_step_on_disable(&uuid, true));
    assert!(c.fake.set_status(&uuid, "DISABLED"));
    assert!(c.fake.runners("acme", None)[0]["state"]
        .get("step")
        .is_none());

    let nobody = "{00000000-0000-5000-8000-000000000000}";
    assert!(!c.fake.set_step_on_disable(nobody, true));
    assert_eq!(arm(&c, nobody, r#"{"busy": true}"#).await, 404);
    assert_eq!(arm(&c, &uuid, r#"{"busy": "yes"}"#).await, 400);
}

#[tokio::test]
async fn a_disabled_runner_keeps_its_step_until_it_is_cleared() {
    let c = Client::new(FakeConfig::default()).await;
    let (uuid, item, state) = runner(&c, REPO).await;
    assert!(c.fake.set_busy(&uuid, true));
    let step = c.get(&item).await.json()["state"]["step"].clone();
    assert_eq!(step["type"], "PIPELINE_STEP");
    let disabled = put_state(&c, &state, "DISABLED").await;
    assert_eq!(disabled["state"]["step"], step, "a running step finishes");
    let before = disabled["state"]["updated_on"].clone();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let r = put_state(&c, &state, "ENABLED").await;
    assert_eq!(r["state"]["status"], "ENABLED");
    assert_eq!(r["state"]["step"], step);
    assert_ne!(
        r["state"]["updated_on"], before,
        "the state change is dated"
    );
    assert!(c.fake.set_busy(&uuid, false));
    let r = c.get(&item).await.json();
    assert_eq!(r["state"]["status"], "ENABLED");
    assert!(r["state"].get("step").is_none());
}

fn micros(at: SystemTime) -> u64 {
    let us = at
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros();
    u64::try_from(us).expect("fits")
}

#[tokio::test]
async fn requests_carry_the_time_they_arrived() {
    let c = Client::new(FakeConfig::default()).await;
    let start = SystemTime::now();
    let (_, item, _) = runner(&c, WS).await;
    assert_eq!(c.get(&item).await.status, 200);
    let end = SystemTime::now();
    let recs = c.fake.requests();
    assert_eq!(recs.len(), 2);
    assert!(start <= recs[0].at && recs[0].at <= recs[1].at && recs[1].at <= end);

    // Over HTTP: `at_us`, microseconds since the epoch, which read back as the record.
    let listed = send(c.addr, "GET", "/_fake/requests", &[], None)
        .await
        .json();
    let at_us: Vec<u64> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["at_us"].as_u64().expect("at_us"))
        .collect();
    assert_eq!(at_us, recs.iter().map(|r| micros(r.at)).collect::<Vec<_>>());
    let back: Vec<RecordedRequest> = serde_json::from_value(listed).expect("records");
    assert_eq!(micros(back[1].at), at_us[1]);
    assert_eq!((back[1].method.as_str(), back[1].status), ("GET", 200));
}

#[tokio::test]
async fn a_slow_request_is_dated_when_it_arrived_not_when_it_was_answered() {
    let c = Client::new(FakeConfig::default()).await;
    c.fake.inject(Fault::Delay {
        duration: Duration::from_millis(400),
        count: 1,
        path_contains: Some("/workspaces/acme$".to_owned()),
    });
    let (addr, auth) = (c.addr, c.auth.clone());
    let slow = tokio::spawn(async move {
        let headers = [("Authorization", auth.as_str())];
        send(addr, "GET", "/2.0/workspaces/acme", &headers, None).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.get("/2.0/repositories/acme/app").await.status, 200);
    assert_eq!(slow.await.expect("slow request").status, 200);
    let recs = c.fake.requests();
    let paths: Vec<&str> = recs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/2.0/repositories/acme/app", "/2.0/workspaces/acme"]
    );
    assert!(recs[1].at < recs[0].at, "the slow one arrived first");
}
