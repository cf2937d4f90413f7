//! A recording proxy in front of moto: every AWS request bbfleet sends passes through it
//! and is recorded (operation and body), so tests count write calls on the wire.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};

/// One recorded AWS call.
#[derive(Debug, Clone)]
pub struct AwsCall {
    /// `ec2:RequestSpotFleet`, `ssm:PutParameter`, ...
    pub operation: String,
    /// The request body (query-encoded for EC2, JSON for SSM/KMS).
    pub body: String,
}

impl AwsCall {
    /// An EC2 request with `DryRun=true`.
    pub fn is_dry_run(&self) -> bool {
        self.body.split('&').any(|kv| kv == "DryRun=true")
    }

    /// Describe/Get/List calls and DryRun requests only read.
    pub fn is_write(&self) -> bool {
        let op = self.operation.split(':').nth(1).unwrap_or("");
        !self.is_dry_run()
            && !["Describe", "Get", "List"]
                .iter()
                .any(|p| op.starts_with(p))
    }
}

/// The proxy.
#[derive(Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`: give this to bbfleet as AWS_ENDPOINT_URL.
    pub endpoint: String,
    calls: Arc<Mutex<Vec<AwsCall>>>,
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
    calls: Arc<Mutex<Vec<AwsCall>>>,
}

fn operation(headers: &HeaderMap, body: &str) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        // "AmazonSSM.PutParameter", "TrentService.CreateKey"
        let (service, op) = target.split_once('.').unwrap_or(("aws", target));
        let service = match service {
            "AmazonSSM" => "ssm",
            "TrentService" => "kms",
            other => other,
        };
        return format!("{service}:{op}");
    }
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("Unknown");
    format!("ec2:{action}")
}

async fn forward(
    State(up): State<Upstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let text = String::from_utf8_lossy(&body).into_owned();
    let call = AwsCall {
        operation: operation(&headers, &text),
        body: text,
    };
    // moto ignores DryRun on RequestSpotFleet and really creates the fleet (AWS_NOTES.md
    // B3); answer as AWS does for an allowed dry run instead of passing it on.
    let dry_fleet = call.operation == "ec2:RequestSpotFleet" && call.is_dry_run();
    up.calls.lock().unwrap().push(call);
    if dry_fleet {
        return Response::builder()
            .status(StatusCode::PRECONDITION_FAILED)
            .header("content-type", "text/xml")
            .body(Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>DryRunOperation</Code><Message>Request would have succeeded, but DryRun flag is set.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
            ))
            .unwrap();
    }
    let url = format!(
        "{}{}",
        up.base,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut req = up.http.request(method, url).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(r) => {
            let mut out = Response::builder().status(r.status());
            for (k, v) in r.headers() {
                if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from(r.bytes().await.unwrap_or_default()))
                .unwrap()
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(e.to_string()))
            .unwrap(),
    }
}

impl Recorder {
    /// Starts a proxy to `upstream` on a free loopback port, on the current runtime;
    /// it stops when the last clone is dropped.
    pub async fn start(upstream: &str) -> Recorder {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            calls: calls.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Recorder {
            endpoint,
            calls,
            _stop: Arc::new(tx),
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Write calls so far.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(AwsCall::is_write)
            .map(|c| c.operation)
            .collect()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}
