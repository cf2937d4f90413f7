#!/usr/bin/env bash
# The benchmark: builds the release binary, then runs it against a real moto server and
# the project's Bitbucket fake (100 ms latency per request), all on loopback, and prints
# the Markdown report of BENCHMARKS.md (also saved to target/bench-report.md).
# Then the simulator on the shipped 30-day trace (benches/simulate.rs).
# Not part of scripts/test.sh. Usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The SDK honours proxy variables; the bench only talks to loopback.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo bench --locked --bench fleet --bench simulate | tee target/bench-report.md
