#!/usr/bin/env bash
# The test command: every unit and integration test (the integration tests are one binary,
# tests/it), against a real moto server (started by the tests on a free loopback port,
# shared by all of them) and the project's Bitbucket fake; then the IAM evaluation of every
# AWS request those tests made (tests/it/iam.rs, ignored in a plain `cargo test`: it needs
# the dumps of the whole run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The SDK honours proxy variables; tests only talk to loopback.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
# The recording proxies append every AWS request here: `CARGO_TARGET_TMPDIR/aws-requests`
# of the test targets (`testkit::kit!`, testkit/src/lib.rs).
rm -rf target/tmp/aws-requests
cargo test --workspace --locked "$@"
# The whole suite must have left dumps (the test fails without any); a partial run
# (`scripts/test.sh --test it cycle::`) is evaluated when it made AWS requests. The same
# package selection as above (`--workspace`), so nothing is built again.
if [ $# -eq 0 ] || compgen -G 'target/tmp/aws-requests/*.jsonl' >/dev/null; then
    cargo test --workspace --locked --test it -- --ignored iam::every_request_the_suite_made_is_allowed
fi
