//! Counts of remote calls, by service and operation, for `-v` summaries and benchmarks.
//!
//! It also holds a fault-injection hook for crash-safety tests: with
//! `BBFLEET_FAULT_AFTER_WRITES=k` the process stops abruptly, as if killed, just before it
//! sends write number k+1. Every remote call passes through [`CallStats::record`] before
//! it goes on the wire, so that is the one place that sees writes in the order they are sent.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Testing hook: stop abruptly right after this many writes were sent (unset: never).
pub const FAULT_AFTER_WRITES_ENV: &str = "BBFLEET_FAULT_AFTER_WRITES";

/// Exit code of a run stopped by [`FAULT_AFTER_WRITES_ENV`] (distinct from 0, 1 and 2).
pub const FAULT_EXIT_CODE: i32 = 86;

/// The fault-injection setting is not a number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{FAULT_AFTER_WRITES_ENV}: {value:?} is not a number of writes (a testing hook: leave it unset, or give 0, 1, 2, ...)")]
pub struct FaultHookError {
    /// The value found.
    pub value: String,
}

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
    inner: Arc<Mutex<Counts>>,
    /// Stop the process before write number k+1 (see [`FAULT_AFTER_WRITES_ENV`]).
    fault_after_writes: Option<u64>,
}

#[derive(Debug, Default)]
struct Counts {
    calls: BTreeMap<(String, CallKind), u64>,
    writes: u64,
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
    /// Counters that read the fault-injection hook from the environment (`get` looks a
    /// variable up); unset or empty means no hook, and nothing else changes.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<CallStats, FaultHookError> {
        let fault_after_writes = match get(FAULT_AFTER_WRITES_ENV) {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| FaultHookError { value: v.clone() })?,
            ),
        };
        Ok(CallStats {
            fault_after_writes,
            ..CallStats::default()
        })
    }

    /// Counts one call, just before it is sent. With the fault hook set and `k` writes
    /// already sent, a write stops the process here instead (exit code [`FAULT_EXIT_CODE`]).
    pub fn record(&self, service: &str, operation: &str, kind: CallKind) {
        let mut counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if kind == CallKind::Write {
            if self.fault_after_writes == Some(counts.writes) {
                // Like a kill: no cleanup, no undo, no stats file. The lock stays held, so
                // no other task counts (and sends) another write meanwhile; writes already
                // counted may or may not have reached the server, as with a real crash.
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "bbfleet: {FAULT_AFTER_WRITES_ENV}={}: stopping before write {} ({service}:{operation})",
                    counts.writes,
                    counts.writes + 1
                );
                let _ = err.flush();
                std::process::exit(FAULT_EXIT_CODE);
            }
            counts.writes += 1;
        }
        *counts
            .calls
            .entry((format!("{service}:{operation}"), kind))
            .or_default() += 1;
    }

    /// The counts so far.
    pub fn summary(&self) -> CallSummary {
        let counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = CallSummary::default();
        for ((name, kind), n) in counts.calls.iter() {
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

    #[test]
    fn fault_hook_is_read_from_the_environment() {
        let env = |v: Option<&str>| {
            let v = v.map(str::to_owned);
            move |k: &str| (k == FAULT_AFTER_WRITES_ENV).then(|| v.clone()).flatten()
        };
        assert_eq!(
            CallStats::from_env(env(None)).unwrap().fault_after_writes,
            None
        );
        assert_eq!(
            CallStats::from_env(env(Some("")))
                .unwrap()
                .fault_after_writes,
            None
        );
        assert_eq!(
            CallStats::from_env(env(Some(" 7 ")))
                .unwrap()
                .fault_after_writes,
            Some(7)
        );
        let err = CallStats::from_env(env(Some("-1"))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("BBFLEET_FAULT_AFTER_WRITES: \"-1\""));
    }

    #[test]
    fn without_the_hook_writes_are_only_counted() {
        // A stats value with the hook set is exercised by tests/it/crash.rs (it exits the process).
        let stats = CallStats::from_env(|_| None).unwrap();
        for _ in 0..1000 {
            stats.record("ssm", "PutParameter", CallKind::Write);
        }
        assert_eq!(stats.summary().writes, 1000);
    }
}
