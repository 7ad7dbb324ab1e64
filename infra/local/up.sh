#!/usr/bin/env bash
# Start the local stack (or reuse a healthy one): S3 server, MLflow server, Ray head on 127.0.0.1.
# Usage: infra/local/up.sh [--dir DIR]  (DIR relative to the repository root; default .local-stack),
# then `source .local-stack/stack.env`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m infra.local.stack up "$@"
