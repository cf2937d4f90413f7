//! Counts of remote calls, by service and operation, for `-v` summaries and benchmarks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Whether a call changes the remote world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// Reads only.
    Read,
    /// Creates, changes or deletes something.
    Write,
}

/// A shared counter of calls, keyed by `service:Operation`.
#[derive(Debug, Clone, Default)]
pub struct CallStats {
    inner: Arc<Mutex<BTreeMap<(String, CallKind), u64>>>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CallSummary {
    /// Calls per `service:Operation`.
    pub calls: BTreeMap<String, u64>,
    /// Read calls in all.
    pub reads: u64,
    /// Write calls in all.
    pub writes: u64,
}

impl CallStats {
    /// Counts one call.
    pub fn record(&self, service: &str, operation: &str, kind: CallKind) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((format!("{service}:{operation}"), kind))
            .or_default() += 1;
    }

    /// The counts so far.
    pub fn summary(&self) -> CallSummary {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = CallSummary::default();
        for ((name, kind), n) in map.iter() {
            *s.calls.entry(name.clone()).or_default() += n;
            match kind {
                CallKind::Read => s.reads += n,
                CallKind::Write => s.writes += n,
            }
        }
        s
    }
}

/// AWS operations that only read, by name prefix.
pub fn aws_kind(operation: &str) -> CallKind {
    const READ: [&str; 4] = ["Describe", "Get", "List", "Lookup"];
    if READ.iter().any(|p| operation.starts_with(p)) {
        CallKind::Read
    } else {
        CallKind::Write
    }
}
