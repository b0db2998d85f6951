"""heldout/runtime.py: a user sees only the toolkit's output, never TensorFlow's start-up
lines (oneDNN, CPU features, XLA service, cuInit), in a notebook or a CLI."""

import os
import subprocess
import sys

from tests.cli.runner import REPO_ROOT


def _run(code: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=environ)


def test_import_heldout_loads_no_tensorflow_and_prints_nothing():
    result = _run("import sys, heldout\n"
                  "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]" and result.stderr == ""


def test_using_heldout_then_tensorflow_prints_only_the_result():
    code = ("import heldout\n"
            "heldout.load_dataset  # its module imports TensorFlow, quietly\n"
            "import tensorflow as tf\n"
            "print(float(tf.function(lambda x: 2 * x, jit_compile=True)(tf.ones(3))[0]))\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.0"
    assert result.stderr == "", result.stderr  # no oneDNN, CPU feature or XLA lines
