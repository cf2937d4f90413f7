//! A recording proxy in front of moto: every AWS request bbfleet sends passes through it
//! and is recorded (operation and body), so tests count write calls on the wire.
//!
//! It can also play a throttling AWS: with [`Recorder::throttle_every`] every n-th request
//! of each service is answered, instead of being forwarded, with the service's own throttling error (SSM
//! and KMS: HTTP 400 `ThrottlingException` JSON; EC2: HTTP 503 `RequestLimitExceeded`
//! XML), deterministically. moto itself never throttles (AWS_NOTES.md B4).
//!
//! It can play a distant AWS too: with [`Recorder::delay`] every answer (moto's, the rules
//! layer's or a throttling one) is held back that long, as a round trip to a Region would.

use std::path::{Path, PathBuf};
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
    /// The access key id the request was signed with (from `Authorization`), which tells
    /// the principal: bbfleet's runs use `testing`, instance roles their own.
    pub access_key: String,
    /// HTTP status of the answer (0 while the call is in flight).
    pub status: u16,
    /// When the request arrived (to order AWS calls against the Bitbucket fake's).
    pub at: std::time::SystemTime,
    /// The answer's body, as the client got it (from moto or from the rules layer).
    pub response: String,
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
pub struct Shared {
    calls: Vec<AwsCall>,
    /// Answer every n-th request with a throttling error (0: never).
    throttle_every: u64,
    /// Requests of each service (`ec2`, `ssm`, `kms`) counted towards `throttle_every`
    /// since it was set: per service, so each one meets its throttling error however the
    /// concurrent calls interleave.
    counted: std::collections::HashMap<String, u64>,
    /// One-shot hooks by operation (`kms:CreateKey`).
    hooks: Vec<(String, Hook)>,
    /// Latency added to every request before it is answered ([`Recorder::delay`]).
    delay: std::time::Duration,
    /// The AWS-rules layer's state and settings.
    pub rules: crate::aws_rules::Rules,
    /// Calls forgotten by [`Recorder::clear`]: positions count from the first call ever.
    cleared: usize,
    /// This proxy's number in the process: its calls form one transcript in the IAM dumps.
    /// (Not its address: a dropped proxy's memory is reused by the next one, which would
    /// merge two tests' transcripts.)
    id: u64,
}

/// The proxy.
#[derive(Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT`: give this to bbfleet as AWS_ENDPOINT_URL.
    pub endpoint: String,
    shared: Arc<Mutex<Shared>>,
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

/// Where the proxy forwards to, and what it shares with its handle.
#[derive(Clone)]
pub struct Upstream {
    /// moto's base URL.
    pub base: String,
    /// A client for moto (no proxy).
    pub http: reqwest::Client,
    /// What the proxy saw, and its settings.
    pub shared: Arc<Mutex<Shared>>,
    /// Where every completed call is dumped for the IAM evaluation ([`crate::iam::dump`]).
    dumps: Option<PathBuf>,
}

/// The service's throttling answer to `operation`, as AWS sends it.
pub fn throttling_response(operation: &str) -> Answer {
    if operation.starts_with("ec2:") {
        ec2_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )
    } else {
        json_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
        )
    }
}

/// An EC2 (query protocol) error answer, as AWS sends it.
pub fn ec2_error(status: StatusCode, code: &str, message: &str) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/xml;charset=UTF-8".parse().unwrap());
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
        message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    (status, headers, Bytes::from(body))
}

/// An SSM/KMS (JSON protocol) error answer, as AWS sends it.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-amz-json-1.1".parse().unwrap(),
    );
    headers.insert(
        "x-amzn-requestid",
        "00000000-0000-0000-0000-000000000000".parse().unwrap(),
    );
    let body = serde_json::json!({"__type": code, "message": message}).to_string();
    (status, headers, Bytes::from(body))
}

/// The access key id of a SigV4 `Authorization` header (`... Credential=AKID/date/...`).
fn access_key(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
        .unwrap_or_default()
        .to_owned()
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
        access_key: access_key(&headers),
        status: 0,
        at: std::time::SystemTime::now(),
        response: String::new(),
    };
    let (index, hooks, delay): (usize, Vec<Hook>, std::time::Duration) = {
        let mut shared = up.shared.lock().unwrap();
        if shared.throttle_every > 0 {
            let service = call
                .operation
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            let n = shared.counted.entry(service).or_default();
            *n += 1;
            let n = *n;
            call.throttled = n % shared.throttle_every == 0;
        }
        let (run, keep) = std::mem::take(&mut shared.hooks)
            .into_iter()
            .partition(|(op, _)| *op == call.operation);
        shared.hooks = keep;
        shared.calls.push(call.clone());
        (
            shared.cleared + shared.calls.len() - 1,
            run.into_iter().map(|(_, h)| h).collect(),
            shared.delay,
        )
    };
    for hook in hooks {
        hook();
    }
    // The round trip first: the rules layer then judges the request as it reaches "AWS".
    tokio::time::sleep(delay).await;
    let (status, headers, bytes) = if call.throttled {
        throttling_response(&call.operation)
    } else if let Some(answer) = crate::aws_rules::before(&up, &call).await {
        answer
    } else {
        // The layer may change what moto gets (a Spot part clipped to the capacity left).
        let clip = crate::aws_rules::rewrite(&up, &call).await;
        let body = clip.as_ref().map_or(body, |c| Bytes::from(c.body.clone()));
        let answer = send_upstream(&up, method, &uri, &headers, body).await;
        crate::aws_rules::after(&up, &call, clip.as_ref(), answer).await
    };
    {
        call.status = status.as_u16();
        call.response = String::from_utf8_lossy(&bytes).into_owned();
        let mut shared = up.shared.lock().unwrap();
        // For the IAM evaluation (also when a test cleared the list meanwhile).
        if let Some(dir) = &up.dumps {
            crate::iam::dump(dir, shared.id, &up.base, &call);
        }
        let cleared = shared.cleared;
        if let Some(c) = index
            .checked_sub(cleared)
            .and_then(|i| shared.calls.get_mut(i))
        {
            *c = call;
        }
    }
    let mut out = Response::builder().status(status);
    for (k, v) in headers.iter() {
        out = out.header(k, v);
    }
    out.body(Body::from(bytes)).unwrap()
}

/// An answer: status, headers (without framing ones) and body.
pub type Answer = (StatusCode, HeaderMap, Bytes);

/// Forwards a request to moto and reads its whole answer.
async fn send_upstream(
    up: &Upstream,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Answer {
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
            let status = r.status();
            let mut out = HeaderMap::new();
            for (k, v) in r.headers() {
                if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                    out.insert(k.clone(), v.clone());
                }
            }
            (status, out, r.bytes().await.unwrap_or_default())
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            HeaderMap::new(),
            Bytes::from(e.to_string()),
        ),
    }
}

impl Recorder {
    /// Starts a proxy to `upstream` on a free loopback port, on the current runtime,
    /// dumping every call into `dumps` (if any) for the IAM evaluation; it stops when the
    /// last clone is dropped.
    pub async fn start(upstream: &str, dumps: Option<&Path>) -> Recorder {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let shared = Arc::new(Mutex::new(Shared {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Shared::default()
        }));
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            shared: shared.clone(),
            dumps: dumps.map(Path::to_path_buf),
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

    /// From now on, answers every `n`-th request of each service (counting from here) with
    /// the service's throttling error instead of forwarding it; 0 stops throttling.
    pub fn throttle_every(&self, n: u64) {
        let mut shared = self.shared.lock().unwrap();
        shared.throttle_every = n;
        shared.counted.clear();
    }

    /// From now on, holds every request `latency` long before answering it (a round trip to
    /// a Region; zero, the default, answers at once).
    pub fn delay(&self, latency: std::time::Duration) {
        self.shared.lock().unwrap().delay = latency;
    }

    /// Changes the AWS-rules layer's settings (`rules.ssm_rate`, ...).
    pub fn rules(&self, change: impl FnOnce(&mut crate::aws_rules::Rules)) {
        change(&mut self.shared.lock().unwrap().rules);
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
        let mut shared = self.shared.lock().unwrap();
        shared.cleared += shared.calls.len();
        shared.calls.clear();
    }
}
