#!/usr/bin/env bash
# The test suite: install, lint, then pytest (CPU only, offline) in two worker processes
# (pytest-xdist; a test file stays on one worker, so its module fixtures run once): many
# tests wait on subprocesses importing TensorFlow, which two workers overlap. Extra
# arguments go to pytest (a later -n overrides the 2; -n 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/install.sh
"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q -n 2 --dist loadfile tests "$@"
"$PYTHON" scripts/readme_commands.py
