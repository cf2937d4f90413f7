//! The fake IMDSv2 itself, through curl.

use std::process::Command;

use testkit::imds::FakeImds;

/// `curl` against the fake IMDS: the HTTP status and body.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).expect("utf-8 from curl");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.to_owned(), body.to_owned())
}

#[test]
fn the_fake_imds_speaks_imdsv2_and_stops_when_dropped() {
    let imds = FakeImds::start("i-0123456789abcdef0");
    let url = |path: &str| format!("{}{path}", imds.endpoint);
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 21600";
    assert_eq!(curl(&["-X", "PUT", &url("/latest/api/token")]).0, "400");
    assert_eq!(
        curl(&[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 0",
            &url("/latest/api/token")
        ])
        .0,
        "400"
    );
    let (status, token) = curl(&["-X", "PUT", "-H", ttl, &url("/latest/api/token")]);
    assert_eq!(status, "200");
    let auth = format!("X-aws-ec2-metadata-token: {token}");
    let get = |path: &str| curl(&["-H", &auth, &url(path)]);
    assert_eq!(curl(&[&url("/latest/meta-data/instance-id")]).0, "401");
    assert_eq!(
        curl(&[
            "-H",
            "X-aws-ec2-metadata-token: forged",
            &url("/latest/meta-data/instance-id")
        ])
        .0,
        "401"
    );
    assert_eq!(
        get("/latest/meta-data/instance-id"),
        ("200".to_owned(), "i-0123456789abcdef0".to_owned())
    );
    assert_eq!(
        get("/latest/meta-data/placement/availability-zone"),
        ("200".to_owned(), "us-east-1a".to_owned())
    );
    assert_eq!(get("/latest/meta-data/spot/instance-action").0, "404");
    assert_eq!(
        get("/latest/meta-data/events/recommendations/rebalance").0,
        "404"
    );
    let action = r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#;
    imds.set_spot_instance_action(Some(action));
    imds.set_rebalance_recommendation(Some(r#"{"noticeTime": "2026-01-01T00:00:00Z"}"#));
    assert_eq!(
        get("/latest/meta-data/spot/instance-action"),
        ("200".to_owned(), action.to_owned())
    );
    assert_eq!(
        get("/latest/meta-data/events/recommendations/rebalance").0,
        "200"
    );
    imds.set_spot_instance_action(None);
    assert_eq!(get("/latest/meta-data/spot/instance-action").0, "404");

    let endpoint = imds.endpoint.clone();
    drop(imds);
    let address = endpoint.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "the fake IMDS still listens after drop"
    );
}
