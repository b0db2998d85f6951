"""Running the CLIs as a user does: subprocesses of this checkout, with one-line errors."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# The smallest training that still exercises the whole path (digits, K = 4 at once).
TINY = ["--num_runs=6", "--models_at_once=4", "--epochs=3", "--progress=false"]


def run_cli(script: str, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``python <script> <args>`` from the repository root and captures its output."""
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environ)


def run_many(commands: Mapping[str, tuple[Sequence[str], Mapping[str, str] | None]],
             workers: int = 3) -> dict[str, subprocess.CompletedProcess]:
    """Runs independent CLI commands a few at a time: name -> (argv, extra environment)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run_cli, *argv, env=env)
                   for name, (argv, env) in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A non-zero exit whose stderr ends in one ``<cli>: error:`` line holding `fragments`,
    with no traceback anywhere; returns that line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def random_experiment(directory, num_runs: int = 8, num_train: int = 20, num_test: int = 6,
                      seed: int = 4, accuracy: float = 0.6) -> str:
    """Complete runs of a ``0.5`` folder with random membership and correctness (estimating
    needs no model): each run trains on half the examples; each prediction is correct
    with probability `accuracy`."""
    import numpy as np

    from heldout.store import runs

    rng = np.random.default_rng(seed)
    for r in range(num_runs):
        subset = np.sort(rng.choice(num_train, num_train // 2, replace=False))
        runs.save_run(runs.run_dir(str(directory), "0.5", r),
                      runs.aux_arrays(subset, rng.random(num_train) < accuracy,
                                      rng.random(num_test) < accuracy))
    return str(directory)
