#!/usr/bin/env bash
# The test command: every unit and integration test, against a real moto server (started
# by the tests on a free loopback port) and the project's Bitbucket fake; then the IAM
# evaluation of every AWS request those tests made (tests/iam.rs, ignored in a plain
# `cargo test`: it needs the dumps of the whole run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The SDK honours proxy variables; tests only talk to loopback.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
# The recording proxy appends every AWS request here (tests/support/iam.rs).
rm -rf target/tmp/aws-requests
cargo test --workspace --locked "$@"
# The whole suite must have left dumps (the test fails without any); a partial run
# (`scripts/test.sh --test cycle`) is evaluated when it made AWS requests.
if [ $# -eq 0 ] || compgen -G 'target/tmp/aws-requests/*.jsonl' >/dev/null; then
    cargo test --locked --test iam -- --ignored every_request_the_suite_made_is_allowed
fi
