//! A real `moto_server` on a free loopback port, one per process: every test of a test
//! binary shares it, so each test keeps to its own fleet, names and tags.
//!
//! The server runs under a shell watchdog that kills it when the test process exits
//! (or after an hour at most), and its working directory is a temp dir, since moto
//! writes files into its cwd.
//!
//! It is moto with the kit's extensions (`testkit/moto_ext/server.py`: ModifyFleet, the
//! on-demand part of a Spot Fleet, ...), run by the Python of `moto_server` (the
//! interpreter its `#!` line names, found on `PATH`). `MOTO_SERVER` overrides the whole
//! command: words separated by spaces, e.g. `/opt/venv/bin/python
//! /repo/testkit/moto_ext/server.py`, to which the launcher adds `-H 127.0.0.1 -p PORT`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    port: u16,
    _dir: tempfile::TempDir,
    _child: Child,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The moto server of this process, started on first use.
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(Moto::start)
}

/// A free loopback port (the OS picks it; there is a tiny window before the user binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

impl Moto {
    fn start() -> Moto {
        let dir = tempfile::tempdir().expect("temp dir for moto");
        let port = free_port();
        let command = server_command();
        let program = command.join(" ");
        let watchdog = r#"
            port=$1 dir=$2 parent=$3
            shift 3
            "$@" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
            m=$!
            trap 'kill $m 2>/dev/null' EXIT INT TERM
            i=0
            while kill -0 "$parent" 2>/dev/null && kill -0 "$m" 2>/dev/null && [ "$i" -lt 7200 ]; do
                sleep 0.5
                i=$((i + 1))
            done
        "#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(watchdog)
            .arg("moto-watchdog")
            .arg(port.to_string())
            .arg(dir.path())
            .arg(std::process::id().to_string())
            .args(&command)
            .current_dir(dir.path())
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("moto_recording"))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (pip install 'moto[server]'): {e}"));
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            _dir: dir,
            _child: child,
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self
                .get("/moto-api/")
                .is_some_and(|s| s.starts_with("HTTP/1.1 200") || s.starts_with("HTTP/1.0 200"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self._dir.path().join("moto.log")).unwrap_or_default();
        panic!(
            "moto_server did not become ready on port {} within 60 s; log:\n{log}",
            self.port
        );
    }

    /// One blocking HTTP/1.0 GET, returning the raw response.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).ok()?;
        Some(out)
    }
}

/// The command that runs the extended moto server (see the module's doc).
pub fn server_command() -> Vec<String> {
    if let Ok(command) = std::env::var("MOTO_SERVER") {
        return command.split_whitespace().map(str::to_owned).collect();
    }
    let script = crate::repo_root().join("testkit/moto_ext/server.py");
    vec![moto_python(), script.display().to_string()]
}

/// The interpreter of `moto_server` on `PATH` (its `#!` line), or `python3`.
fn moto_python() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            let first = text.lines().next()?.strip_prefix("#!")?.trim().to_owned();
            // `#!/usr/bin/env python3` names the interpreter after env.
            let mut words = first.split_whitespace();
            let head = words.next()?;
            Some(if head.ends_with("/env") {
                words.next()?.to_owned()
            } else {
                head.to_owned()
            })
        })
        .unwrap_or_else(|| "python3".to_owned())
}

/// Environment for any AWS client (bbfleet, the aws CLI) pointed at `endpoint`:
/// static fake credentials, us-east-1, no IMDS probing, no proxy for loopback.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_SESSION_TOKEN", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("AWS_MAX_ATTEMPTS", "2".to_owned()),
        ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
        ("no_proxy", "127.0.0.1,localhost".to_owned()),
    ]
}

/// Proxy variables a test must remove from a child's environment.
pub const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// SDK config for a test's own calls through a recording proxy at `endpoint`, one attempt
/// per call. It signs as the harness: the IAM evaluation learns from these calls (tags,
/// ids) but does not judge them by bbfleet's policies ([`crate::iam`]).
pub async fn harness_sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            crate::iam::HARNESS_ACCESS_KEY,
            "testing",
            None,
            None,
            "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}
