#!/usr/bin/env bash
# Stop everything infra/local/up.sh started (only that stack's processes; never `ray stop`).
# Usage: infra/local/down.sh [--dir DIR]  (DIR relative to the repository root; default .local-stack)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m infra.local.stack down "$@"
