//! One request to the API: building, signing, counting and sending it, reading the
//! answer (bounded), and wording a failed answer as a [`BitbucketError`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use super::retry::{Failure, Replay, Step, Wait};
use super::{Bitbucket, BitbucketError, Credentials};
use crate::stats::CallKind;

/// Longest body excerpt quoted in an error.
const MAX_EXCERPT: usize = 300;
/// Largest answer read: a page of 100 runners is about 100 KB, so this only stops a
/// broken or hostile server from filling memory.
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// What a request sends.
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    /// Nothing.
    None,
    /// A JSON document.
    Json(&'a serde_json::Value),
}

/// A request to the API, as every attempt sends it.
pub(super) struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The full URL.
    pub url: Url,
    /// What is sent.
    pub body: Body<'a>,
    /// What a 404 says is missing.
    pub what: &'a str,
    /// The operation, as the call statistics count it.
    pub op: &'a str,
}

impl Request<'_> {
    /// Method and path, as errors name the call.
    pub(super) fn call(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }
}

/// An answer, read.
struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    bytes: Vec<u8>,
}

impl Bitbucket {
    /// The API base with `segments` appended, each percent-encoded.
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            // The base always has a path, so this cannot fail; the fallback keeps the base.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty();
                path.extend(segments);
            }
        }
        url
    }

    /// The base of Bitbucket's undocumented `internal` API with `segments` appended, each
    /// percent-encoded: the configured base with its last path segment replaced by
    /// `internal`, so `https://api.bitbucket.org/2.0` gives `https://api.bitbucket.org/internal`
    /// (BITBUCKET_API.md §2.6: the internal paths mirror `/2.0`'s). A base whose last segment
    /// is not `2.0` (a proxy's `https://proxy/bitbucket/v2`) has that segment replaced the same
    /// way (`https://proxy/bitbucket/internal`); a base without a path gives `/internal`.
    pub(super) fn internal_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // The base always has a path, so this cannot fail; the fallback keeps the base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().pop().push("internal").extend(segments);
        }
        url
    }

    /// Sends a request and reads its answer as `T`.
    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
    ) -> Result<T, BitbucketError> {
        let call = format!("{method} {}", url.path());
        // Answers to writes may hold a runner's OAuth secret: never quote them.
        let quotable = method == Method::GET;
        let bytes = self.send(method, url, body, what, op).await?;
        parse(&call, quotable, &bytes)
    }

    /// Sends an idempotent request with retries; returns the body of a 2xx answer.
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        what: &str,
        op: &str,
    ) -> Result<Vec<u8>, BitbucketError> {
        let req = Request {
            method,
            url,
            body,
            what,
            op,
        };
        self.exchange(&req, 0, Replay::Safe)
            .await
            .map_err(|f| f.into_error(req.call()))
    }

    /// Sends with retries, `used` of the attempts already spent; returns the body of a
    /// 2xx answer. With `Replay::Unsafe`, a failure that may have reached Bitbucket (5xx,
    /// timeout, connection lost after connecting) is not retried but returned as
    /// `Failure::Unanswered`, after its back-off; 429s and refused connections are retried.
    pub(super) async fn exchange(
        &self,
        req: &Request<'_>,
        used: u32,
        replay: Replay,
    ) -> Result<Vec<u8>, Failure> {
        let call = req.call();
        // OAuth: after a 401 the access token is renewed once per request.
        let renewed = AtomicBool::new(false);
        self.retried(&call, used, replay, |attempt| {
            self.attempt(req, &call, attempt, &renewed)
        })
        .await
    }

    /// One attempt: signs the request, waits for the hourly budget, counts and sends it,
    /// and says what its answer means.
    async fn attempt(
        &self,
        req: &Request<'_>,
        call: &str,
        attempt: u32,
        renewed: &AtomicBool,
    ) -> Step<Vec<u8>> {
        let mut http = self
            .http
            .request(req.method.clone(), req.url.clone())
            .header("Accept", "application/json");
        if let Body::Json(v) = req.body {
            http = http.json(v);
        }
        let http = match self.auth(http).await {
            Ok(h) => h,
            Err(e) => return Step::Done(Err(e)),
        };
        if let Err(over) = self.budget.acquire().await {
            return Step::Done(Err(BitbucketError::OverBudget {
                call: call.to_owned(),
                message: over.to_string(),
            }));
        }
        let kind = if req.method == Method::GET {
            CallKind::Read
        } else {
            CallKind::Write
        };
        self.stats.record("bitbucket", req.op, kind);
        let started = Instant::now();
        let response = match http.send().await {
            Ok(r) => r,
            Err(e) => return self.transport_failure(call, attempt, e),
        };
        match self.read_reply(call, response, started).await {
            Ok(reply) => self.judge(req, call, attempt, reply, renewed).await,
            Err(e) => Step::Done(Err(e)),
        }
    }

    /// A request that got no answer: retried after the back-off.
    fn transport_failure(&self, call: &str, attempt: u32, e: reqwest::Error) -> Step<Vec<u8>> {
        // A connect error (refused, DNS, connect timeout) sent nothing; anything later (a
        // timeout, a connection closed before the answer) may have been processed.
        let reached = !e.is_connect();
        let lost = e.without_url().to_string();
        tracing::debug!(%call, attempt, error = %lost, "Bitbucket request failed; retrying");
        Step::Retry {
            wait: Wait::Sleep(self.retry.backoff(attempt)),
            lost,
            reached,
        }
    }

    /// Reads an answer, taking in its rate-limit headers.
    async fn read_reply(
        &self,
        call: &str,
        response: reqwest::Response,
        started: Instant,
    ) -> Result<Reply, BitbucketError> {
        let status = response.status();
        tracing::debug!(%call, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "bitbucket");
        self.budget.observe(response.headers());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes =
            read_limited(response)
                .await
                .map_err(|message| BitbucketError::InvalidResponse {
                    call: call.to_owned(),
                    message,
                })?;
        Ok(Reply {
            status,
            retry_after,
            bytes,
        })
    }

    /// What an answer means: the body of a 2xx, a retry, or the error it reports.
    async fn judge(
        &self,
        req: &Request<'_>,
        call: &str,
        attempt: u32,
        reply: Reply,
        renewed: &AtomicBool,
    ) -> Step<Vec<u8>> {
        let status = reply.status;
        if status.is_success() {
            return Step::Done(Ok(reply.bytes));
        }
        let message = error_message(&reply.bytes);
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                match self.retry.rate_limit_wait(reply.retry_after, attempt) {
                    Err(last) => Step::Done(Err(BitbucketError::Exhausted {
                        call: call.to_owned(),
                        attempts: attempt,
                        last,
                    })),
                    Ok(wait) => {
                        tracing::debug!(%call, attempt, wait_ms = wait.as_millis() as u64, "rate limited; every request backs off");
                        Step::Retry {
                            wait: Wait::PauseClient(wait),
                            lost: "rate limited (429)".to_owned(),
                            reached: false,
                        }
                    }
                }
            }
            s if s.is_server_error() => {
                let wait = self.retry.server_error_wait(reply.retry_after, attempt);
                tracing::debug!(%call, attempt, status = s.as_u16(), "server error; retrying");
                Step::Retry {
                    wait: Wait::Sleep(wait),
                    lost: format!("status {s}: {message}"),
                    // Bitbucket may have done the work before failing to answer.
                    reached: true,
                }
            }
            StatusCode::UNAUTHORIZED
                if matches!(self.credentials, Credentials::OAuth { .. })
                    && !renewed.swap(true, Ordering::Relaxed) =>
            {
                // The access token may have expired early: get a new one, once.
                self.token.forget().await;
                Step::Again
            }
            s => Step::Done(Err(self.status_error(s, req, call, message))),
        }
    }

    /// The error a 4xx (or another unexpected status) reports.
    fn status_error(
        &self,
        status: StatusCode,
        req: &Request<'_>,
        call: &str,
        message: String,
    ) -> BitbucketError {
        let call = call.to_owned();
        match status {
            StatusCode::BAD_REQUEST => BitbucketError::BadRequest { call, message },
            StatusCode::UNAUTHORIZED => BitbucketError::Unauthorized {
                kind: self.credentials.kind(),
                call,
                message,
            },
            StatusCode::FORBIDDEN => BitbucketError::Forbidden { call, message },
            StatusCode::NOT_FOUND => BitbucketError::NotFound {
                what: req.what.to_owned(),
                call,
            },
            StatusCode::CONFLICT => BitbucketError::Conflict { call, message },
            s => BitbucketError::Unexpected {
                call,
                status: s.as_u16(),
                message,
            },
        }
    }
}

/// Reads an answer as `T`, naming the field that does not fit; the body is quoted in
/// the error only when `quotable`.
pub(super) fn parse<T: DeserializeOwned>(
    call: &str,
    quotable: bool,
    bytes: &[u8],
) -> Result<T, BitbucketError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match (path.as_str(), inner.is_data()) {
            // A field of the right JSON, but missing or of the wrong type: name it.
            (p, true) if p != "." => format!("{p}: {inner}"),
            (_, true) => inner.to_string(),
            _ if quotable => format!("not JSON: {inner} (body starts: {})", excerpt(bytes)),
            _ => format!(
                "not JSON: {inner} (body of {} bytes not quoted: it may hold a secret)",
                bytes.len()
            ),
        };
        BitbucketError::InvalidResponse {
            call: call.to_owned(),
            message,
        }
    })
}

/// The body, at most `MAX_RESPONSE_BYTES` of it; a body cut short by the connection
/// reads as what arrived (it then fails to parse, naming the cause).
pub(super) async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "response larger than {} MB; not reading further (a page of runners is far smaller)",
            MAX_RESPONSE_BYTES >> 20
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut out = Vec::new();
    // Bounded: every chunk adds bytes, and more than the limit ends the loop.
    while let Ok(Some(chunk)) = response.chunk().await {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The error envelope's message (and scope detail), or a body excerpt.
pub(super) fn error_message(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
        detail: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(Envelope { error }) => {
            let msg = error.message.unwrap_or_else(|| "(no message)".to_owned());
            truncate(&with_detail(msg, error.detail))
        }
        Err(_) if looks_like_html(bytes) => format!(
            "an HTML page, not the API's JSON (a proxy or outage page?): {}",
            excerpt(bytes)
        ),
        Err(_) => excerpt(bytes),
    }
}

/// `msg` with the envelope's `detail`: a text, or the required and granted scopes.
fn with_detail(msg: String, detail: Option<serde_json::Value>) -> String {
    match detail {
        Some(serde_json::Value::String(s)) if !s.is_empty() => format!("{msg} ({s})"),
        Some(serde_json::Value::Object(o)) if o.contains_key("required") => {
            let scopes = |k: &str| o.get(k).map(|v| v.to_string()).unwrap_or_default();
            format!(
                "{msg} (required scopes {}, granted {})",
                scopes("required"),
                scopes("granted")
            )
        }
        _ => msg,
    }
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_EXCERPT {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(MAX_EXCERPT).collect::<String>())
    }
}

/// The body on one line, at most `MAX_EXCERPT` characters, quoted.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        "(empty body)".to_owned()
    } else {
        format!("{:?}", truncate(&flat))
    }
}
