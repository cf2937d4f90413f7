//! A real `moto_server` on a free loopback port, one per process: every test of a test
//! binary shares it, so each test keeps to its own fleet, names and tags.
//!
//! The server runs under a shell watchdog that kills it when the test process exits
//! (or after an hour at most), and its working directory is a temp dir, since moto
//! writes files into its cwd.

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
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        let watchdog = r#"
            "$0" -H 127.0.0.1 -p "$1" >"$2/moto.log" 2>&1 &
            m=$!
            trap 'kill $m 2>/dev/null' EXIT INT TERM
            i=0
            while kill -0 "$3" 2>/dev/null && kill -0 "$m" 2>/dev/null && [ "$i" -lt 7200 ]; do
                sleep 0.5
                i=$((i + 1))
            done
        "#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(watchdog)
            .arg(&program)
            .arg(port.to_string())
            .arg(dir.path())
            .arg(std::process::id().to_string())
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
