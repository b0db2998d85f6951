#!/usr/bin/env bash
# The test suite: install, lint, then pytest (CPU only, offline). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/install.sh
"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q tests "$@"
