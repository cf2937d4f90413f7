//! The dumps: every AWS call a recording proxy completed, one JSON line each, in one
//! file per test process; read back after the whole suite.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::recorder::AwsCall;

static DUMP: Mutex<()> = Mutex::new(());

/// Appends one completed call of proxy `proxy` (in front of moto at `upstream`) to this
/// process's dump file in `dir` (`<binary>-<pid>.jsonl`), as one JSON line.
pub fn dump(dir: &Path, proxy: u64, upstream: &str, call: &AwsCall) {
    let exe = std::env::current_exe().ok();
    let name = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test".to_owned());
    let line = json!({
        "proxy": proxy,
        "upstream": upstream,
        "operation": call.operation,
        "body": call.body,
        "access_key": call.access_key,
        "throttled": call.throttled,
        "status": call.status,
        "response": call.response,
    });
    let _guard = DUMP.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{name}-{}.jsonl", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// One recorded call, read back from a dump.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `file:line` of the dump, for messages.
    pub origin: String,
    /// The proxy (one per test harness; `file#number`).
    pub proxy: String,
    /// The moto behind the proxy: resources and tags are learned per moto.
    pub upstream: String,
    /// `ec2:RequestSpotFleet`, `ssm:PutParameter`, ...
    pub operation: String,
    /// The request body.
    pub body: String,
    /// The access key id the request was signed with (who made it).
    pub access_key: String,
    /// Answered with a throttling error by the proxy (never reached moto).
    pub throttled: bool,
    /// HTTP status of the answer.
    pub status: u16,
    /// The answer's body.
    pub response: String,
}

/// Every dump file in `dir`, each as its calls in order.
pub fn load_dumps(dir: &Path) -> Vec<(PathBuf, Vec<Recorded>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let calls = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let v: Value = serde_json::from_str(l).ok()?;
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Some(Recorded {
                    origin: format!("{file}:{}", i + 1),
                    proxy: format!("{file}#{}", v["proxy"]),
                    upstream: s("upstream"),
                    operation: s("operation"),
                    body: s("body"),
                    access_key: s("access_key"),
                    throttled: v["throttled"].as_bool().unwrap_or(false),
                    status: v["status"].as_u64().unwrap_or(0) as u16,
                    response: s("response"),
                })
            })
            .collect();
        out.push((path, calls));
    }
    out
}
