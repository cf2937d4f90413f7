//! A fake IMDSv2 on a free loopback port, for running the userdata scripts in tests.
//!
//! `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` (1..=21600,
//! else 400); every `GET /latest/meta-data/...` needs a token it issued (else 401).
//! It serves `instance-id`, `placement/availability-zone`, and the spot notices
//! `spot/instance-action` and `events/recommendations/rebalance` (404 until set).
//! The server thread stops when the handle is dropped, or after [`MAX_LIFETIME`].

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a fake IMDS serves, even if its handle is leaked.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// One request as the fake saw it, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// `/latest/meta-data/instance-id`, ...
    pub path: String,
    /// The status the fake answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    instance_id: String,
    availability_zone: String,
    tokens: HashSet<String>,
    spot_instance_action: Option<String>,
    rebalance_recommendation: Option<String>,
    requests: Vec<ImdsRequest>,
}

/// A running fake IMDS; dropping it stops the server.
pub struct FakeImds {
    /// `http://127.0.0.1:PORT`, the value for `UserdataVars::imds_endpoint`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeImds {
    /// Serves `instance_id` in `us-east-1a`.
    pub fn start(instance_id: &str) -> FakeImds {
        FakeImds::start_in(instance_id, "us-east-1a")
    }

    /// Serves `instance_id` in `availability_zone`.
    pub fn start_in(instance_id: &str, availability_zone: &str) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake IMDS on loopback");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("fake IMDS address")
        );
        let state = Arc::new(Mutex::new(State {
            instance_id: instance_id.to_owned(),
            availability_zone: availability_zone.to_owned(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || serve(&listener, &state, &stop))
        };
        FakeImds {
            endpoint,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets (or with `None` clears) the body of `spot/instance-action`, e.g.
    /// `{"action": "terminate", "time": "2026-01-01T00:02:00Z"}`.
    pub fn set_spot_instance_action(&self, body: Option<&str>) {
        self.state().spot_instance_action = body.map(str::to_owned);
    }

    /// Sets (or with `None` clears) the body of `events/recommendations/rebalance`, e.g.
    /// `{"noticeTime": "2026-01-01T00:00:00Z"}`.
    pub fn set_rebalance_recommendation(&self, body: Option<&str>) {
        self.state().rebalance_recommendation = body.map(str::to_owned);
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<ImdsRequest> {
        self.state().requests.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, state: &Mutex<State>, stop: &AtomicBool) {
    let deadline = Instant::now() + MAX_LIFETIME;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            // One connection at a time is enough: each script talks to its own IMDS, in turn.
            Ok((stream, _)) => {
                let _ = handle(stream, state);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();

    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body_len = header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::io::copy(
        &mut reader.by_ref().take(body_len.min(64 * 1024)),
        &mut std::io::sink(),
    )?;

    let (status, body) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let answer = respond(&mut state, &method, &path, &header);
        state.requests.push(ImdsRequest {
            method,
            path,
            status: answer.0,
        });
        answer
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The instance identity document, as EC2 formats it (pretty-printed JSON).
fn identity_document(state: &State) -> String {
    let az = &state.availability_zone;
    let region = az.trim_end_matches(|c: char| c.is_ascii_lowercase());
    format!(
        "{{\n  \"accountId\" : \"123456789012\",\n  \"availabilityZone\" : \"{az}\",\n  \"instanceId\" : \"{}\",\n  \"region\" : \"{region}\"\n}}",
        state.instance_id
    )
}

fn respond<'h>(
    state: &mut State,
    method: &str,
    path: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> (u16, String) {
    match (method, path) {
        ("PUT", "/latest/api/token") => {
            let ttl =
                header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u32>().ok());
            if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
                return (400, String::new());
            }
            let token = format!("fake-imds-token-{}", state.tokens.len() + 1);
            state.tokens.insert(token.clone());
            (200, token)
        }
        ("PUT", _) => (403, String::new()),
        ("GET", _) => {
            let Some(item) = path
                .strip_prefix("/latest/meta-data/")
                .or_else(|| path.strip_prefix("/latest/"))
            else {
                return (404, String::new());
            };
            if !header("x-aws-ec2-metadata-token").is_some_and(|t| state.tokens.contains(t)) {
                return (401, String::new());
            }
            let found = match item {
                "instance-id" => Some(state.instance_id.clone()),
                "services/partition" => Some("aws".to_owned()),
                // EC2 User Guide, "Instance identity documents" (moto's account).
                "dynamic/instance-identity/document" => Some(identity_document(state)),
                "placement/availability-zone" => Some(state.availability_zone.clone()),
                "spot/instance-action" => state.spot_instance_action.clone(),
                "events/recommendations/rebalance" => state.rebalance_recommendation.clone(),
                _ => None,
            };
            match found {
                Some(body) => (200, body),
                None => (404, String::new()),
            }
        }
        _ => (405, String::new()),
    }
}
