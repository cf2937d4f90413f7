//! End-to-end tests of the fake over real HTTP, with a tiny HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bitbucket_fake::{AuthKind, FakeBitbucket, FakeConfig, Fault};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Beside the crate root, not `tests/drain.rs`: cargo would build that as a test of its own.
#[path = "api/drain.rs"]
mod drain;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn decode_chunked(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some(pos) = data.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size_line = String::from_utf8_lossy(&data[..pos]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .expect("chunk size");
        data = &data[pos + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
    out
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    stream.write_all(&bytes).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response timeout")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("numeric status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = decode_chunked(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn dev() -> String {
    basic("dev@example.com", "fake-api-token")
}

struct Client {
    fake: FakeBitbucket,
    addr: SocketAddr,
    auth: String,
}

impl Client {
    async fn new(cfg: FakeConfig) -> Client {
        let fake = FakeBitbucket::start(cfg).await.expect("start");
        let addr = fake.local_addr();
        Client {
            fake,
            addr,
            auth: dev(),
        }
    }
    async fn req(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let body = body.map(|b| b.to_string());
        let mut headers = vec![
            ("Authorization", self.auth.as_str()),
            ("Accept", "application/json"),
        ];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        send(
            self.addr,
            method,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        )
        .await
    }
    async fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None).await
    }
    async fn create(&self, scope: &str, name: &str) -> Resp {
        self.req(
            "POST",
            &format!("{scope}/pipelines-config/runners"),
            Some(json!({"name": name, "labels": ["self.hosted", "linux", "spot"]})),
        )
        .await
    }
    /// Path and query of an absolute `next` URL of this server.
    fn local_target(&self, url: &str) -> String {
        let prefix = format!("http://{}", self.addr);
        url.strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{url} does not start with {prefix}"))
            .to_owned()
    }
}

const WS: &str = "/2.0/workspaces/acme";
const REPO: &str = "/2.0/repositories/acme/app";

fn enc(uuid: &str) -> String {
    uuid.replace('{', "%7B").replace('}', "%7D")
}

#[tokio::test]
async fn auth_is_required() {
    let c = Client::new(FakeConfig::default()).await;
    let path = "/2.0/workspaces/acme/pipelines-config/runners";

    let r = send(c.addr, "GET", path, &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Bitbucket.org HTTP\"")
    );

    let bad = basic("dev@example.com", "wrong");
    let r = send(c.addr, "GET", path, &[("Authorization", &bad)], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["message"],
        "Token is invalid, expired, or not supported for this endpoint."
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Bitbucket.org HTTP\"")
    );

    // The user's API token sent as Bearer is rejected.
    let r = send(
        c.addr,
        "GET",
        path,
        &[("Authorization", "Bearer fake-api-token")],
        None,
    )
    .await;
    assert_eq!(r.status, 401);

    // Auth comes before 404s.
    let r = send(c.addr, "GET", "/2.0/workspaces/nope", &[], None).await;
    assert_eq!(r.status, 401);

    let r = send(
        c.addr,
        "GET",
        path,
        &[("Authorization", "Bearer fake-access-token")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = c.get(path).await;
    assert_eq!(r.status, 200);

    let kinds: Vec<AuthKind> = c.fake.requests().iter().map(|r| r.auth).collect();
    assert_eq!(
        kinds,
        vec![
            AuthKind::None,
            AuthKind::Invalid,
            AuthKind::Invalid,
            AuthKind::None,
            AuthKind::Bearer,
            AuthKind::Basic
        ]
    );
    let statuses: Vec<u16> = c.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 401, 401, 401, 200, 200]);
    assert_eq!(c.fake.write_count(), 0);
}

#[tokio::test]
async fn create_returns_secret_once() {
    let c = Client::new(FakeConfig::default()).await;
    let r = c.create(WS, "ci-1").await;
    assert_eq!(r.status, 200);
    let runner = r.json();
    let uuid = runner["uuid"].as_str().expect("uuid").to_owned();
    assert!(uuid.starts_with('{') && uuid.ends_with('}') && uuid.len() == 38);
    assert_eq!(&uuid[15..16], "5", "version-5 style: {uuid}");
    let secret = runner["oauth_client"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(secret.starts_with("fake-secret-"));
    assert_eq!(secret.len(), "fake-secret-".len() + 40);
    let id = runner["oauth_client"]["id"].as_str().expect("id");
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(
        runner["oauth_client"]["token_endpoint"],
        "https://auth.atlassian.com/oauth/token"
    );
    assert_eq!(runner["oauth_client"]["audience"], "api.atlassian.com");
    assert_eq!(runner["state"]["status"], "UNREGISTERED");
    assert_eq!(runner["state"]["cordoned"], false);
    assert!(runner["state"].get("version").is_none());
    assert!(runner["state"].get("step").is_none());
    assert_eq!(runner["labels"], json!(["self.hosted", "linux", "spot"]));
    let created = runner["created_on"].as_str().expect("created_on");
    assert!(created.ends_with('Z'));
    assert_eq!(
        created.split('.').nth(1).map(str::len),
        Some(7),
        "{created}"
    );
    assert_eq!(runner["created_on"], runner["updated_on"]);
    assert_eq!(c.fake.issued_secrets(), vec![secret.clone()]);

    let item = format!("{WS}/pipelines-config/runners/{}", enc(&uuid));
    let r = c.get(&item).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(&secret));
    assert!(r.json()["oauth_client"].get("secret").is_none());
    assert_eq!(r.json()["oauth_client"]["id"], id);

    let r = c.get(&format!("{WS}/pipelines-config/runners")).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(&secret));
    assert_eq!(r.json()["values"][0]["uuid"], uuid.as_str());

    let r = c
        .req(
            "PUT",
            &item,
            Some(json!({"name": "ci-renamed", "labels": ["self.hosted", "linux"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(&secret));
    assert_eq!(r.json()["name"], "ci-renamed");
    assert_eq!(r.json()["labels"], json!(["self.hosted", "linux"]));

    let listed = c.fake.runners("acme", None);
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].to_string().contains(&secret));
    assert!(!format!("{:?}", c.fake.requests()).contains(&secret));
    let admin = send(c.addr, "GET", "/_fake/requests", &[], None).await;
    assert_eq!(admin.status, 200);
    assert!(!admin.text().contains(&secret));
    let admin = send(c.addr, "GET", "/_fake/runners?workspace=acme", &[], None).await;
    assert_eq!(admin.status, 200);
    assert!(!admin.text().contains(&secret));
    assert_eq!(admin.json()[0]["uuid"], uuid.as_str());
    assert_eq!(c.fake.write_count(), 2);
}

#[tokio::test]
async fn pagination_over_25_runners() {
    let c = Client::new(FakeConfig::default()).await;
    let mut created = Vec::new();
    for i in 0..25 {
        let r = c.create(WS, &format!("r{i}")).await;
        assert_eq!(r.status, 200);
        created.push(r.json()["uuid"].as_str().expect("uuid").to_owned());
    }
    let mut seen = Vec::new();
    let mut target = format!("{WS}/pipelines-config/runners?pagelen=10");
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "runaway pagination");
        let r = c.get(&target).await;
        assert_eq!(r.status, 200);
        let page = r.json();
        assert_eq!(page["size"], 25);
        assert_eq!(page["pagelen"], 10);
        assert_eq!(page["page"], pages);
        if pages >= 2 {
            let prev = page["previous"].as_str().expect("previous");
            assert!(prev.contains(&format!("page={}", pages - 1)), "{prev}");
        } else {
            assert!(page.get("previous").is_none());
        }
        for v in page["values"].as_array().expect("values") {
            seen.push(v["uuid"].as_str().expect("uuid").to_owned());
        }
        match page.get("next").and_then(Value::as_str) {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("http://{}/2.0/", c.addr)),
                    "{next}"
                );
                assert!(next.contains(&format!("page={}", pages + 1)), "{next}");
                assert!(next.contains("pagelen=10"), "{next}");
                target = c.local_target(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "creation order");

    let r = c
        .get(&format!("{WS}/pipelines-config/runners?page=3&pagelen=10"))
        .await;
    assert_eq!(r.json()["values"].as_array().map(Vec::len), Some(5));
    let r = c
        .get(&format!("{WS}/pipelines-config/runners?page=4&pagelen=10"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["values"], json!([]));
    assert!(r.json().get("next").is_none());

    // Default pagelen is 10.
    let r = c.get(&format!("{WS}/pipelines-config/runners/")).await;
    assert_eq!(r.json()["pagelen"], 10);
    assert_eq!(r.json()["values"].as_array().map(Vec::len), Some(10));

    let r = c
        .get(&format!("{WS}/pipelines-config/runners?pagelen=500"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["pagelen"], 100);
    assert_eq!(r.json()["values"].as_array().map(Vec::len), Some(25));
    assert!(r.json().get("next").is_none());

    for bad in ["pagelen=0", "pagelen=-1", "pagelen=abc", "page=0", "page=x"] {
        let r = c.get(&format!("{WS}/pipelines-config/runners?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["type"], "error");
    }
}

#[tokio::test]
async fn runner_limit_per_scope() {
    let c = Client::new(FakeConfig::default()).await;
    for i in 0..100 {
        let r = c.create(WS, &format!("r{i}")).await;
        assert_eq!(r.status, 200, "create {i}: {}", r.text());
    }
    let r = c.create(WS, "one-too-many").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Runner limit exceeded: a workspace may have at most 100 runners"
    );
    // Repository runners are counted separately.
    let r = c.create(REPO, "repo-runner").await;
    assert_eq!(r.status, 200);
    assert_eq!(c.fake.runners("acme", None).len(), 100);
    assert_eq!(c.fake.runners("acme", Some("app")).len(), 1);

    let small = Client::new(FakeConfig {
        runner_limit: 2,
        ..FakeConfig::default()
    })
    .await;
    assert_eq!(small.create(REPO, "a").await.status, 200);
    assert_eq!(small.create(REPO, "b").await.status, 200);
    let r = small.create(REPO, "c").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "Runner limit exceeded: a repository may have at most 2 runners"
    );
}

#[tokio::test]
async fn delete_get_and_unknown_runners() {
    let c = Client::new(FakeConfig::default()).await;
    let uuid = c.create(WS, "x").await.json()["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let item = format!("{WS}/pipelines-config/runners/{}", enc(&uuid));

    // Raw braces and %7B both work, with or without trailing slash.
    let raw = format!("{WS}/pipelines-config/runners/{uuid}");
    assert_eq!(c.get(&raw).await.status, 200);
    assert_eq!(c.get(&format!("{raw}/")).await.status, 200);
    assert_eq!(c.get(&item).await.status, 200);
    assert_eq!(
        c.get(&item.replace("%7B", "%7b").replace("%7D", "%7d"))
            .await
            .status,
        200
    );
    let recorded = c.fake.requests();
    assert!(recorded.iter().skip(1).all(|r| r.path.contains(&uuid)));
    // Workspace by UUID.
    let by_uuid = format!(
        "/2.0/workspaces/{}/pipelines-config/runners/{}",
        enc("{11111111-2222-4333-8444-555555555555}"),
        enc(&uuid)
    );
    assert_eq!(c.get(&by_uuid).await.status, 200);

    // A bare UUID (no braces) is not accepted.
    let bare = format!(
        "{WS}/pipelines-config/runners/{}",
        uuid.trim_matches(|c| c == '{' || c == '}')
    );
    assert_eq!(c.get(&bare).await.status, 404);

    // Other scope: 404.
    let other = format!("{REPO}/pipelines-config/runners/{}", enc(&uuid));
    assert_eq!(c.get(&other).await.status, 404);
    assert_eq!(c.req("DELETE", &other, None).await.status, 404);

    let r = c.req("DELETE", &item, None).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = c.req("DELETE", &item, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(c.get(&item).await.status, 404);
    let r = c.req("PUT", &item, Some(json!({"name": "y"}))).await;
    assert_eq!(r.status, 404);

    let unknown = format!(
        "{WS}/pipelines-config/runners/{}",
        enc("{00000000-0000-5000-8000-000000000000}")
    );
    let r = c.get(&unknown).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");

    // Unknown workspace and repository.
    let r = c.get("/2.0/workspaces/nope/pipelines-config/runners").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    let r = c
        .get("/2.0/repositories/acme/nope/pipelines-config/runners")
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn create_validation_and_conflict() {
    let c = Client::new(FakeConfig::default()).await;
    let path = format!("{WS}/pipelines-config/runners");
    let cases = [
        json!({"labels": ["self.hosted", "linux"]}),
        json!({"name": "", "labels": ["self.hosted", "linux"]}),
        json!({"name": 5, "labels": ["self.hosted", "linux"]}),
        json!({"name": "a", "labels": "linux"}),
        json!({"name": "a", "labels": ["self.hosted", "Linux"]}),
        json!({"name": "a", "labels": ["self.hosted", "linux", "a-b"]}),
        json!({"name": "a", "labels": ["self.hosted", "linux", ""]}),
        json!({"name": "a", "labels": ["self.hosted", "linux", 3]}),
        json!({"name": "a", "labels": ["self.hosted", "linux", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11"]}),
        json!({"name": "a", "uuid": "not-a-uuid"}),
        json!(["not", "an", "object"]),
    ];
    for body in cases {
        let r = c.req("POST", &path, Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["type"], "error");
        assert!(r.json()["error"]["message"].is_string());
    }
    let r = send(
        c.addr,
        "POST",
        &path,
        &[
            ("Authorization", &dev()),
            ("Content-Type", "application/json"),
        ],
        Some(b"{not json"),
    )
    .await;
    assert_eq!(r.status, 400);

    // Ten custom labels plus self.hosted and platform labels are fine.
    let ok = json!({"name": "a", "labels": ["self.hosted", "linux", "linux.arm64", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10"]});
    assert_eq!(c.req("POST", &path, Some(ok)).await.status, 200);

    let uuid = "{12345678-1234-5234-8234-123456789abc}";
    let r = c
        .req("POST", &path, Some(json!({"name": "u", "uuid": uuid})))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uuid"], uuid);
    let r = c
        .req("POST", &path, Some(json!({"name": "u", "uuid": uuid})))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(c.fake.issued_secrets().len(), 2);
}

#[tokio::test]
async fn rate_limit_and_server_error_faults() {
    let c = Client::new(FakeConfig::default()).await;
    let list = format!("{WS}/pipelines-config/runners");

    c.fake.inject(Fault::RateLimit {
        retry_after: Some(3),
        count: 2,
        path_contains: None,
    });
    for _ in 0..2 {
        let r = c.get(&list).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("3"));
        assert!(r
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"));
        assert_eq!(r.text(), "Rate limit for this resource has been exceeded");
    }
    assert_eq!(c.get(&list).await.status, 200);

    c.fake.inject(Fault::RateLimit {
        retry_after: None,
        count: 1,
        path_contains: Some("/repositories/".to_owned()),
    });
    assert_eq!(c.get(&list).await.status, 200, "path filter not matched");
    let r = c.get(&format!("{REPO}/pipelines-config/runners")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), None);

    c.fake.inject(Fault::ServerError {
        status: 500,
        count: 1,
        path_contains: None,
    });
    c.fake.inject(Fault::ServerError {
        status: 503,
        count: 1,
        path_contains: None,
    });
    assert_eq!(c.create(WS, "x").await.status, 500);
    assert_eq!(c.create(WS, "x").await.status, 503);
    assert_eq!(c.create(WS, "x").await.status, 200);
    assert!(c.fake.issued_secrets().len() == 1);

    let statuses: Vec<u16> = c.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200, 200, 429, 500, 503, 200]);
    assert_eq!(c.fake.write_count(), 3);

    // Over HTTP.
    let r = send(
        c.addr,
        "POST",
        "/_fake/faults",
        &[],
        Some(br#"{"kind":"rate_limit","retry_after":1,"count":1}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = c.get(&list).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = send(
        c.addr,
        "POST",
        "/_fake/faults",
        &[],
        Some(br#"{"kind":"server_error","status":500,"count":1}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&list).await.status, 500);

    // Random faults at rate 1.0 and off again.
    let r = send(
        c.addr,
        "POST",
        "/_fake/faults",
        &[],
        Some(br#"{"kind":"random","rate_429":1.0,"rate_500":0,"retry_after":null}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&list).await.status, 429);
    c.fake.set_random_faults(0.0, 1.0, None);
    assert_eq!(c.get(&list).await.status, 500);
    c.fake.set_random_faults(0.0, 0.0, None);
    assert_eq!(c.get(&list).await.status, 200);

    let stats = send(c.addr, "GET", "/_fake/stats", &[], None).await.json();
    assert_eq!(stats["requests"], c.fake.requests().len());
    assert_eq!(stats["writes"], 3);
}

#[tokio::test]
async fn other_faults() {
    let c = Client::new(FakeConfig::default()).await;
    let list = format!("{WS}/pipelines-config/runners");
    c.create(WS, "a").await;

    c.fake.inject(Fault::MalformedJson {
        count: 1,
        path_contains: None,
    });
    let r = c.get(&list).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"values\": [");

    c.fake.inject(Fault::HtmlError {
        count: 1,
        path_contains: None,
    });
    let r = c.get(&list).await;
    assert_eq!(r.status, 502);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert_eq!(r.text(), "<html><body>Bad gateway</body></html>");

    c.fake.inject(Fault::LoopingNext { count: 2 });
    for _ in 0..2 {
        let r = c.get(&format!("{list}?pagelen=10")).await;
        let next = r.json()["next"].as_str().expect("next").to_owned();
        assert!(next.contains("page=1&pagelen=10"), "{next}");
    }
    assert!(c.get(&list).await.json().get("next").is_none());

    c.fake.inject(Fault::Delay {
        duration: Duration::from_millis(300),
        count: 1,
        path_contains: None,
    });
    let t = Instant::now();
    assert_eq!(c.get(&list).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(c.get(&list).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(300));

    // Faults do not touch the admin interface.
    c.fake.inject(Fault::ServerError {
        status: 500,
        count: 1,
        path_contains: None,
    });
    assert_eq!(
        send(c.addr, "GET", "/_fake/stats", &[], None).await.status,
        200
    );
    assert_eq!(c.get(&list).await.status, 500);
}

#[tokio::test]
async fn repository_scope_is_separate() {
    let c = Client::new(FakeConfig::default()).await;
    let ws_runner = c.create(WS, "ws").await.json();
    let repo_runner = c.create(REPO, "repo").await.json();
    let by_uuid = format!(
        "/2.0/repositories/acme/{}/pipelines-config/runners",
        enc("{66666666-7777-4888-9999-000000000000}")
    );
    let r = c.get(&by_uuid).await;
    assert_eq!(r.json()["size"], 1);
    assert_eq!(r.json()["values"][0]["uuid"], repo_runner["uuid"]);
    let r = c.get(&format!("{WS}/pipelines-config/runners")).await;
    assert_eq!(r.json()["size"], 1);
    assert_eq!(r.json()["values"][0]["uuid"], ws_runner["uuid"]);
    let repo_item = format!(
        "{REPO}/pipelines-config/runners/{}",
        enc(repo_runner["uuid"].as_str().expect("uuid"))
    );
    assert_eq!(c.get(&repo_item).await.status, 200);
    let ws_item = format!(
        "{WS}/pipelines-config/runners/{}",
        enc(repo_runner["uuid"].as_str().expect("uuid"))
    );
    assert_eq!(c.get(&ws_item).await.status, 404);

    let r = c.get("/2.0/repositories/acme/app").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uuid"], "{66666666-7777-4888-9999-000000000000}");
    assert_eq!(r.json()["full_name"], "acme/app");
    let r = c.get("/2.0/workspaces/acme/").await;
    assert_eq!(r.json()["uuid"], "{11111111-2222-4333-8444-555555555555}");
    assert_eq!(r.json()["slug"], "acme");
    let r = c
        .get(&format!(
            "/2.0/workspaces/{}",
            enc("{11111111-2222-4333-8444-555555555555}")
        ))
        .await;
    assert_eq!(r.json()["slug"], "acme");
    assert_eq!(c.get("/2.0/workspaces/nope").await.status, 404);
    assert_eq!(c.get("/2.0/repositories/acme/nope").await.status, 404);
}

#[tokio::test]
async fn oauth_client_credentials() {
    let c = Client::new(FakeConfig::default()).await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let client = basic("fake-client-id", "fake-client-secret");

    let r = send(
        c.addr,
        "POST",
        "/site/oauth2/access_token",
        &[form[0], ("Authorization", &client)],
        Some(b"grant_type=client_credentials"),
    )
    .await;
    assert_eq!(r.status, 200);
    let tok = r.json();
    assert_eq!(tok["token_type"], "bearer");
    assert_eq!(tok["expires_in"], 7200);
    assert_eq!(tok["state"], "client_credentials");
    assert!(tok["refresh_token"].is_string());
    assert!(tok["scopes"].is_string());
    let token = tok["access_token"].as_str().expect("token").to_owned();

    let bearer = format!("Bearer {token}");
    let list = format!("{WS}/pipelines-config/runners");
    let r = send(c.addr, "GET", &list, &[("Authorization", &bearer)], None).await;
    assert_eq!(r.status, 200);

    let bad = basic("fake-client-id", "nope");
    let r = send(
        c.addr,
        "POST",
        "/site/oauth2/access_token",
        &[form[0], ("Authorization", &bad)],
        Some(b"grant_type=client_credentials"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.json()["error_description"].is_string());

    let r = send(
        c.addr,
        "POST",
        "/site/oauth2/access_token",
        &[form[0], ("Authorization", &client)],
        Some(b"grant_type=password"),
    )
    .await;
    assert_eq!(r.status, 400);

    c.fake.expire_oauth_tokens();
    let r = send(c.addr, "GET", &list, &[("Authorization", &bearer)], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "Access token expired.");

    // The token endpoint is recorded but is not an API write.
    assert_eq!(c.fake.write_count(), 0);
    let recs = c.fake.requests();
    assert_eq!(recs[0].path, "/site/oauth2/access_token");
    assert_eq!(recs[0].auth, AuthKind::Basic);
    assert!(recs[0].body.is_none());
}

#[tokio::test]
async fn test_hooks_and_admin_http() {
    let c = Client::new(FakeConfig::default()).await;
    let uuid = c.create(WS, "a").await.json()["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let item = format!("{WS}/pipelines-config/runners/{}", enc(&uuid));
    let bare = uuid.trim_matches(|c| c == '{' || c == '}').to_owned();

    assert!(c.fake.set_status(&bare, "ONLINE"));
    assert!(!c.fake.set_status(&uuid, "BOGUS"));
    assert!(!c
        .fake
        .set_status("{00000000-0000-5000-8000-000000000000}", "ONLINE"));
    assert!(c.fake.set_cordoned(&uuid, true));
    assert!(c
        .fake
        .set_version(&uuid, Some(("3.9.0".into(), "3.10.0".into()))));
    assert!(c.fake.set_busy(&uuid, true));
    let r = c.get(&item).await.json();
    assert_eq!(r["state"]["status"], "ONLINE");
    assert_eq!(r["state"]["cordoned"], true);
    assert_eq!(
        r["state"]["version"],
        json!({"version": "3.9.0", "current": "3.10.0"})
    );
    assert_eq!(r["state"]["step"]["type"], "PIPELINE_STEP");
    assert!(r["state"]["updated_on"] != r["created_on"] || r["state"]["status"] == "ONLINE");

    let path = format!("/_fake/runners/{}/busy", enc(&uuid));
    let r = send(c.addr, "POST", &path, &[], Some(br#"{"busy":false}"#)).await;
    assert_eq!(r.status, 200);
    let path = format!("/_fake/runners/{}/status", enc(&uuid));
    let r = send(
        c.addr,
        "POST",
        &path,
        &[],
        Some(br#"{"status":"DISABLED"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["oauth_client"].get("secret").is_none());
    let r = c.get(&item).await.json();
    assert_eq!(r["state"]["status"], "DISABLED");
    assert!(r["state"].get("step").is_none());

    let r = send(
        c.addr,
        "POST",
        "/_fake/runners/%7Bnope%7D/status",
        &[],
        Some(br#"{"status":"ONLINE"}"#),
    )
    .await;
    assert_eq!(r.status, 404);

    let r = send(c.addr, "GET", "/_fake/requests", &[], None)
        .await
        .json();
    assert_eq!(r.as_array().map(Vec::len), Some(3));
    assert_eq!(r[0]["method"], "POST");
    assert_eq!(r[0]["auth"], "Basic");
    assert_eq!(r[0]["body"]["name"], "a");
    c.fake.clear_requests();
    assert!(c.fake.requests().is_empty());
    assert_eq!(c.fake.write_count(), 0);

    // Internal state endpoint.
    let internal = format!(
        "/internal/workspaces/acme/pipelines-config/runners/{}/state",
        enc(&uuid)
    );
    let r = c
        .req("PUT", &internal, Some(json!({"status": "ENABLED"})))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&item).await.json()["state"]["status"], "ENABLED");
}

#[tokio::test]
async fn schedules() {
    let c = Client::new(FakeConfig {
        schedule_limit: 2,
        ..FakeConfig::default()
    })
    .await;
    let path = format!("{REPO}/pipelines_config/schedules");
    let body = json!({
        "type": "pipeline_schedule", "enabled": true,
        "target": {"type": "pipeline_ref_target", "ref_type": "branch", "ref_name": "main",
                   "selector": {"type": "custom", "pattern": "resize-fleet"}},
        "cron_pattern": "0 0 * * * ? *"
    });
    let r = c.req("POST", &path, Some(body.clone())).await;
    assert_eq!(r.status, 201);
    let s = r.json();
    assert_eq!(s["enabled"], true);
    assert_eq!(s["cron_pattern"], "0 0 * * * ? *");
    let id = s["uuid"].as_str().expect("uuid").to_owned();

    let mut bad = body.clone();
    bad["cron_pattern"] = json!("0 * * * *");
    assert_eq!(c.req("POST", &path, Some(bad)).await.status, 400);
    let mut bad = body.clone();
    bad["target"]["ref_type"] = json!("tag");
    assert_eq!(c.req("POST", &path, Some(bad)).await.status, 400);
    let mut bad = body.clone();
    bad["target"]
        .as_object_mut()
        .expect("obj")
        .remove("selector");
    assert_eq!(c.req("POST", &path, Some(bad)).await.status, 400);

    let item = format!("{path}/{}", enc(&id));
    let r = c.req("PUT", &item, Some(json!({"enabled": false}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["enabled"], false);
    assert_eq!(r.json()["cron_pattern"], "0 0 * * * ? *");
    assert_eq!(c.get(&item).await.json()["enabled"], false);
    assert_eq!(
        c.get(&format!("{item}/executions")).await.json()["values"],
        json!([])
    );
    assert_eq!(c.get(&path).await.json()["size"], 1);

    assert_eq!(c.req("POST", &path, Some(body.clone())).await.status, 201);
    let r = c.req("POST", &path, Some(body.clone())).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");

    assert_eq!(c.req("DELETE", &item, None).await.status, 204);
    assert_eq!(c.req("DELETE", &item, None).await.status, 404);
    // The hyphenated path is not the schedules path.
    assert_eq!(
        c.get(&format!("{REPO}/pipelines-config/schedules"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let fake = FakeBitbucket::start(FakeConfig::default())
        .await
        .expect("start");
    let addr = fake.local_addr();
    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/2.0"));
    assert!(fake
        .oauth_token_url()
        .ends_with("/site/oauth2/access_token"));
    assert!(fake.admin_url().ends_with("/_fake"));
    fake.shutdown();
    fake.wait_stopped(Duration::from_secs(5)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn binary_ready_file_and_admin_shutdown() {
    let dir = std::env::temp_dir().join(format!("bbfake-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bitbucket-fake"))
        .args([
            "--workspace",
            "other",
            "--repository",
            "svc",
            "--max-lifetime-secs",
            "60",
            "--ready-file",
        ])
        .arg(&ready)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut base = String::new();
    for _ in 0..300 {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            base = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/2.0"),
        "{base}"
    );
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches("/2.0")
        .parse()
        .expect("addr");
    let r = send(
        addr,
        "GET",
        "/2.0/repositories/other/svc",
        &[("Authorization", &dev())],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["full_name"], "other/svc");
    let r = send(
        addr,
        "GET",
        "/2.0/workspaces/acme",
        &[("Authorization", &dev())],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(addr, "POST", "/_fake/shutdown", &[], None).await;
    assert_eq!(r.status, 200);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after shutdown")
        .expect("wait");
    assert!(status.success());
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out).await.expect("stdout");
    }
    assert_eq!(out.trim(), format!("bitbucket-fake listening on {base}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_hourly_limit_sends_rate_limit_headers_then_429() {
    let c = Client::new(FakeConfig {
        hourly_limit: Some(5),
        ..FakeConfig::default()
    })
    .await;
    let list = format!("{WS}/pipelines-config/runners");
    for i in 1..=5 {
        let r = c.get(&list).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(r.header("x-ratelimit-resource"), Some("api"));
        // Near the limit from 80 % used (the 4th request of 5).
        let near = r.header("x-ratelimit-nearlimit");
        assert_eq!(near, (i >= 4).then_some("true"), "request {i}");
    }
    let r = c.get(&list).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.text(), "Rate limit for this resource has been exceeded");

    // Without a limit: no headers.
    let plain = Client::new(FakeConfig::default()).await;
    let r = plain.get(&list).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

#[tokio::test]
async fn bad_answer_faults() {
    let c = Client::new(FakeConfig::default()).await;
    let list = format!("{WS}/pipelines-config/runners");
    c.create(WS, "a").await;

    // A 4xx with the error envelope, only where the path matches.
    c.fake.inject(Fault::ClientError {
        status: 403,
        message: "Access denied.".to_owned(),
        count: 1,
        path_contains: Some("pipelines-config".to_owned()),
    });
    assert_eq!(c.get(WS).await.status, 200);
    let r = c.get(&list).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["message"], "Access denied.");
    assert_eq!(c.get(&list).await.status, 200);
    // A path filter ending in `$` matches the end of the path only.
    c.fake.inject(Fault::ClientError {
        status: 404,
        message: "No such workspace.".to_owned(),
        count: 1,
        path_contains: Some("/workspaces/acme$".to_owned()),
    });
    assert_eq!(c.get(&list).await.status, 200);
    assert_eq!(c.get(WS).await.status, 404);

    // A field removed from every runner of a page, and from a single runner.
    c.fake.inject(Fault::MissingField {
        field: "uuid".to_owned(),
        count: 2,
        path_contains: None,
    });
    let page = c.get(&list).await.json();
    assert_eq!(page["values"][0]["name"], "a");
    assert!(page["values"][0].get("uuid").is_none(), "{page}");
    let r = c.create(WS, "b").await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("uuid").is_none());
    assert_eq!(c.fake.runners("acme", None).len(), 2, "the create happened");

    // A nested field of the wrong type.
    c.fake.inject(Fault::WrongType {
        field: "state.status".to_owned(),
        value: json!(5),
        count: 1,
        path_contains: None,
    });
    let page = c.get(&list).await.json();
    assert_eq!(page["values"][1]["state"]["status"], 5);
    assert_eq!(
        c.get(&list).await.json()["values"][1]["state"]["status"],
        "UNREGISTERED"
    );

    // A page far beyond its pagelen.
    c.fake.inject(Fault::OversizedPage {
        values: 500,
        count: 1,
        path_contains: None,
    });
    let page = c.get(&format!("{list}?pagelen=10")).await.json();
    assert_eq!(page["values"].as_array().unwrap().len(), 500);
    assert_eq!(page["values"][499]["name"], "a");

    // The next link points where the fault says.
    c.fake.inject(Fault::NextLink {
        url: "http://other.example/2.0/x".to_owned(),
        count: 1,
    });
    assert_eq!(
        c.get(&list).await.json()["next"],
        "http://other.example/2.0/x"
    );
    assert!(c.get(&list).await.json().get("next").is_none());

    // Only the second POST gets a truncated answer; its runner is created all the same.
    c.fake.inject(Fault::OnMethod {
        method: "POST".to_owned(),
        skip: 1,
        fault: Box::new(Fault::TruncatedAnswer {
            count: 1,
            path_contains: None,
        }),
    });
    assert_eq!(c.get(&list).await.status, 200);
    c.create(WS, "c").await.json();
    let r = c.create(WS, "d").await;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_slice::<Value>(&r.body).is_err(),
        "{}",
        r.text()
    );
    assert_eq!(c.fake.runners("acme", None).len(), 4);
    c.create(WS, "e").await.json();

    // A huge body, streamed without Content-Length.
    c.fake.inject(Fault::HugeBody {
        bytes: 3 << 20,
        count: 1,
        path_contains: None,
    });
    let r = c.get(&list).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_none());
    assert!(r.body.len() >= 3 << 20, "{} bytes", r.body.len());
    assert_eq!(r.json()["values"], json!([]));

    // Over the admin interface, with a method filter.
    let r = send(
        c.addr,
        "POST",
        "/_fake/faults",
        &[("Content-Type", "application/json")],
        Some(br#"{"kind": "missing_field", "field": "name", "method": "get"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.get(&list).await.json()["values"][0].get("name").is_none());
    for bad in [
        r#"{"kind": "client_error", "status": 500}"#,
        r#"{"kind": "wrong_type", "field": "labels"}"#,
        r#"{"kind": "next_link", "url": "x", "method": "GET"}"#,
    ] {
        let r = send(
            c.addr,
            "POST",
            "/_fake/faults",
            &[("Content-Type", "application/json")],
            Some(bad.as_bytes()),
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

/// Sends one request and returns every byte the server answered before closing.
async fn send_raw(addr: SocketAddr, method: &str, target: &str, auth: &str, body: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A reset instead of a clean close also means "no answer".
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the server neither answered nor closed the connection");
    raw
}

#[tokio::test]
async fn faults_after_processing_lose_the_answer_of_a_done_write() {
    let c = Client::new(FakeConfig::default()).await;
    let list = format!("{WS}/pipelines-config/runners");
    let on_post = |fault: Fault| Fault::OnMethod {
        method: "POST".to_owned(),
        skip: 0,
        fault: Box::new(fault),
    };

    // Processed, then 503: the runner exists, its secret was only in the lost answer.
    c.fake.inject(on_post(Fault::ProcessedThenServerError {
        status: 503,
        count: 1,
        path_contains: Some("pipelines-config/runners".to_owned()),
    }));
    assert_eq!(c.get(&list).await.status, 200, "a GET is not touched");
    let r = c.create(WS, "a").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    let secrets = c.fake.issued_secrets();
    assert_eq!(secrets.len(), 1, "the create was handled");
    assert!(
        !r.text().contains(&secrets[0]),
        "the secret is not in the 503"
    );
    let runners = c.fake.runners("acme", None);
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0]["name"], "a");
    assert_eq!(c.fake.requests().last().map(|r| r.status), Some(503));

    // Processed, then the connection closes without a byte of the answer.
    c.fake.inject(on_post(Fault::ProcessedThenDrop {
        count: 1,
        path_contains: None,
    }));
    let raw = send_raw(
        c.addr,
        "POST",
        &list,
        &c.auth,
        r#"{"name": "b", "labels": ["self.hosted", "linux"]}"#,
    )
    .await;
    assert!(
        raw.is_empty(),
        "an answer was sent: {}",
        String::from_utf8_lossy(&raw)
    );
    let names: Vec<Value> = c
        .fake
        .runners("acme", None)
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("a"), json!("b")],
        "the dropped create was done"
    );
    assert_eq!(c.fake.issued_secrets().len(), 2);
    let last = c.fake.requests().last().cloned().expect("recorded");
    assert_eq!((last.method.as_str(), last.status), ("POST", 0));

    // Each fault was used up: the next create is answered, and other connections never
    // noticed.
    let r = c.create(WS, "c").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "c");
    assert_eq!(c.get(&list).await.json()["size"], 3);

    // A path filter keeps the fault to its path: the workspace POST is answered.
    c.fake.inject(Fault::ProcessedThenServerError {
        status: 500,
        count: 1,
        path_contains: Some("/repositories/".to_owned()),
    });
    assert_eq!(c.create(WS, "d").await.status, 200);
    assert_eq!(c.create(REPO, "e").await.status, 500);
    assert_eq!(c.fake.runners("acme", Some("app")).len(), 1);

    // Over the admin interface.
    for (spec, status) in [
        (r#"{"kind": "processed_drop", "method": "POST"}"#, 200),
        (r#"{"kind": "processed_server_error", "status": 502}"#, 200),
        (r#"{"kind": "processed_server_error", "status": 404}"#, 400),
    ] {
        let r = send(
            c.addr,
            "POST",
            "/_fake/faults",
            &[("Content-Type", "application/json")],
            Some(spec.as_bytes()),
        )
        .await;
        assert_eq!(r.status, status, "{spec}: {}", r.text());
    }
    // The 502 applies to anything, so the GET takes it; the drop waits for a POST.
    assert_eq!(c.get(&list).await.status, 502);
    let raw = send_raw(
        c.addr,
        "POST",
        &list,
        &c.auth,
        r#"{"name": "f", "labels": ["self.hosted", "linux"]}"#,
    )
    .await;
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(c.fake.runners("acme", None).len(), 5);
}
