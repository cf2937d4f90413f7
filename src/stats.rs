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
    /// Peak resident set size of this process so far, in KiB (Linux `VmHWM`, the same
    /// figure as `getrusage`'s `ru_maxrss`); absent where `/proc` is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
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
        s.peak_rss_kib = peak_rss_kib();
        s
    }
}

/// This process's peak resident set size in KiB, from `/proc/self/status`.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_comes_from_vm_hwm() {
        let status = "Name:\tbbfleet\nVmPeak:\t  123456 kB\nVmHWM:\t   18236 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(18236));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }

    #[test]
    fn summary_splits_reads_and_writes() {
        let stats = CallStats::default();
        stats.record("bitbucket", "GET runners", CallKind::Read);
        stats.record("ssm", "PutParameter", aws_kind("PutParameter"));
        stats.record("ssm", "PutParameter", aws_kind("PutParameter"));
        let s = stats.summary();
        assert_eq!((s.reads, s.writes), (1, 2));
        assert_eq!(s.calls["ssm:PutParameter"], 2);
        assert_eq!(aws_kind("DescribeSpotFleetRequests"), CallKind::Read);
    }
}
