#!/usr/bin/env bash
# The test command: every unit and integration test, against a real moto server (started
# by the tests on a free loopback port) and the project's Bitbucket fake.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The SDK honours proxy variables; tests only talk to loopback.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo test --workspace --locked "$@"
