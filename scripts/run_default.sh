#!/usr/bin/env bash
# The embedded default, end to end: install, train 1000 runs on the digits data set at
# subset ratio 0.7 into ./experiments/digits, then estimate memorization and influence.
# Extra arguments go to train.py (e.g. --num_runs=200).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
bash scripts/install.sh
"$PYTHON" train.py "$@"
"$PYTHON" estimate.py --plot_dir=./experiments/digits/plots
