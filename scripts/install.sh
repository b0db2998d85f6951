#!/usr/bin/env bash
# Installs heldout and what it needs into the active Python (a venv if one is active).
# TensorFlow: the CPU build unless some TensorFlow build is already installed, so a
# GPU user who installed `tensorflow[and-cuda]` first keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import tensorflow" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet "tensorflow-cpu>=2.21"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
