//! A recording proxy in front of moto: every AWS request bbfleet sends passes through it
//! and is recorded (operation and body), so tests count write calls on the wire.
//!
//! It can also play a throttling AWS: with [`Recorder::throttle_every`] every n-th request
//! is answered, instead of being forwarded, with the service's own throttling error (SSM
//! and KMS: HTTP 400 `ThrottlingException` JSON; EC2: HTTP 503 `RequestLimitExceeded`
//! XML), deterministically. moto itself never throttles (AWS_NOTES.md B4).

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
    /// Answered with a throttling error by the proxy (never reached moto).
    pub throttled: bool,
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

/// Something to run when an operation first reaches the proxy, before it is forwarded.
type Hook = Box<dyn FnOnce() + Send>;

/// What the proxy saw, and how it misbehaves.
#[derive(Default)]
struct Shared {
    calls: Vec<AwsCall>,
    /// Answer every n-th request with a throttling error (0: never).
    throttle_every: u64,
    /// Requests counted towards `throttle_every` since it was set.
    counted: u64,
    /// One-shot hooks by operation (`kms:CreateKey`).
    hooks: Vec<(String, Hook)>,
    /// Pass DryRun RequestSpotFleet on to moto, which runs it for real (a broken endpoint).
    pass_fleet_dry_runs: bool,
}

/// The proxy.
#[derive(Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`: give this to bbfleet as AWS_ENDPOINT_URL.
    pub endpoint: String,
    shared: Arc<Mutex<Shared>>,
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// The service's throttling answer to `operation`, as AWS sends it.
fn throttling_response(operation: &str) -> Response<Body> {
    if operation.starts_with("ec2:") {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("content-type", "text/xml;charset=UTF-8")
            .body(Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
            ))
            .unwrap()
    } else {
        Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000")
            .body(Body::from(
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            ))
            .unwrap()
    }
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
    let mut call = AwsCall {
        operation: operation(&headers, &text),
        body: text,
        throttled: false,
    };
    // moto ignores DryRun on RequestSpotFleet and really creates the fleet (AWS_NOTES.md
    // B3); answer as AWS does for an allowed dry run instead of passing it on.
    let mut dry_fleet = call.operation == "ec2:RequestSpotFleet" && call.is_dry_run();
    let hooks: Vec<Hook> = {
        let mut shared = up.shared.lock().unwrap();
        dry_fleet &= !shared.pass_fleet_dry_runs;
        if shared.throttle_every > 0 {
            shared.counted += 1;
            call.throttled = shared.counted % shared.throttle_every == 0;
        }
        let (run, keep) = std::mem::take(&mut shared.hooks)
            .into_iter()
            .partition(|(op, _)| *op == call.operation);
        shared.hooks = keep;
        shared.calls.push(call.clone());
        run.into_iter().map(|(_, h)| h).collect()
    };
    for hook in hooks {
        hook();
    }
    if call.throttled {
        return throttling_response(&call.operation);
    }
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
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            shared: shared.clone(),
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
            shared,
            _stop: Arc::new(tx),
        }
    }

    /// From now on, answers every `n`-th request (counting from here) with the service's
    /// throttling error instead of forwarding it; 0 stops throttling.
    pub fn throttle_every(&self, n: u64) {
        let mut shared = self.shared.lock().unwrap();
        shared.throttle_every = n;
        shared.counted = 0;
    }

    /// Lets DryRun RequestSpotFleet through to moto, which ignores DryRun and makes the fleet.
    pub fn pass_fleet_dry_runs(&self) {
        self.shared.lock().unwrap().pass_fleet_dry_runs = true;
    }

    /// Runs `hook` once, when `operation` (`kms:CreateKey`) next reaches the proxy, before
    /// that request is forwarded: a deterministic point in the middle of a run.
    pub fn on_operation(&self, operation: &str, hook: impl FnOnce() + Send + 'static) {
        self.shared
            .lock()
            .unwrap()
            .hooks
            .push((operation.to_owned(), Box::new(hook)));
    }

    /// Every call so far (throttled ones included).
    pub fn calls(&self) -> Vec<AwsCall> {
        self.shared.lock().unwrap().calls.clone()
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
        self.shared.lock().unwrap().calls.clear();
    }
}
