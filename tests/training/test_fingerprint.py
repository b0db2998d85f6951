"""The digits default still writes the aux arrays it wrote before the trainer redesign.

Trains runs 0-2 of the embedded default (``python train.py``'s settings) through the
library and compares their aux arrays, bit for bit, with the fingerprints stored for
this CPU's instruction set (``benchmarks/results/digits_default_250*.json``: XLA compiles
for the host, so AVX-512 and AVX2 machines round differently), using the functions of
``benchmarks/digits_fingerprint.py``. On a CPU with no stored file the test is skipped.
"""

import importlib.util
import json
import os

import pytest

import heldout
from heldout.training.config import TrainConfig

_BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def _fingerprint_module():
    path = os.path.join(_BENCHMARKS, "digits_fingerprint.py")
    spec = importlib.util.spec_from_file_location("digits_fingerprint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_digits_default_is_bit_identical_to_the_stored_fingerprint(tmp_path):
    fingerprint = _fingerprint_module()
    stored_file = fingerprint.default_file()
    if stored_file is None:
        pytest.skip(f"no fingerprints stored for a CPU with {fingerprint.instruction_set()}")
    summary = heldout.train_experiment(str(tmp_path), "digits", TrainConfig(), 0.7, [0, 1, 2],
                                       progress=False)
    assert summary.trained == (0, 1, 2)
    found = fingerprint.experiment_fingerprints(str(tmp_path), "0.7")
    with open(stored_file) as f:
        stored = json.load(f)
    assert sorted(found) == ["0", "1", "2"]
    assert fingerprint.compare(stored, found) == []
    # The comparison can fail: another run's fingerprint differs from run 0's.
    assert fingerprint.compare({"0": stored["1"]}, {"0": found["0"]})
