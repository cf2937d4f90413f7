#!/usr/bin/env bash
# Installs the test tools into .venv (idempotent): moto's server and the aws CLI, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/aws ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5' 'awscli>=1.40,<2'
fi
.venv/bin/moto_server --help >/dev/null
