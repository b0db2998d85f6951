"""Estimators at CIFAR-10 scale, and against a plain dense NumPy implementation (SPEC §8).

Synthetic runs: 2000 runs x 50,000 training x 10,000 test examples at subset ratio 0.7
(correctness drawn so that held-out examples are less often right). Prints seconds and
peak memory (tracemalloc: NumPy allocations) of memorization, C-score and top-k
influence; then, on a size where the whole float64 problem fits, the same estimators
written as plain dense NumPy (two full matrix products, masked means over whole
arrays) side by side with heldout's, their ratio and their largest difference.

Target: each CIFAR-scale estimator under 3 minutes on 2 CPU cores, peak under 6 GiB.

Usage:
  python benchmarks/estimators.py [--num_runs=2000 --num_train=50000 --num_test=10000]
"""

import os
import resource
import sys
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from heldout.estimate import estimators  # noqa: E402

_NUM_RUNS = flags.DEFINE_integer("num_runs", 2000, "Runs.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50_000, "Training examples.")
_NUM_TEST = flags.DEFINE_integer("num_test", 10_000, "Test examples.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Top-k influence per test example.")
_RATIO = flags.DEFINE_float("ratio", 0.7, "Subset ratio.")


def synthetic_runs(num_runs: int, num_train: int, num_test: int, ratio: float, seed: int = 0):
    """Membership and correctness with some memorization and some train->test influence."""
    rng = np.random.default_rng(seed)
    membership = rng.random((num_runs, num_train), dtype=np.float32) < ratio
    difficulty = rng.random(num_train, dtype=np.float32)
    p_correct = np.where(membership, 0.99, 1.0 - difficulty)
    correctness_train = rng.random((num_runs, num_train), dtype=np.float32) < p_correct
    del p_correct
    # Each test example leans on one training example ("near duplicate").
    partner = rng.integers(0, num_train, num_test)
    p_test = np.where(membership[:, partner], 0.95, 0.6)
    correctness_test = rng.random((num_runs, num_test), dtype=np.float32) < p_test
    return membership, correctness_train, correctness_test, partner


def measure(name: str, function):
    tracemalloc.reset_peak()
    start = time.time()
    result = function()
    seconds = time.time() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**30
    print(f"  {name:<28} {seconds:8.2f} s   peak {peak:6.2f} GiB")
    return result, seconds


def dense_reference(membership, correctness_train, correctness_test):
    """The textbook implementation: whole float64 arrays, two full matrix products."""
    m = membership.astype(np.float64)
    c = correctness_train.astype(np.float64)
    t = correctness_test.astype(np.float64)
    num_in, num_out = m.sum(0), (1 - m).sum(0)
    memorization = (m * c).sum(0) / num_in - ((1 - m) * c).sum(0) / num_out
    cscore = ((1 - m) * c).sum(0) / num_out
    influence = (m.T @ t) / num_in[:, None] - ((1 - m).T @ t) / num_out[:, None]
    return memorization, cscore, influence


def main(argv):
    del argv
    tracemalloc.start()
    shape = (_NUM_RUNS.value, _NUM_TRAIN.value, _NUM_TEST.value)
    print(f"CIFAR-10 scale: {shape[0]} runs x {shape[1]} train x {shape[2]} test, "
          f"ratio {_RATIO.value}, {os.cpu_count()} CPUs")
    membership, correct_train, correct_test, partner = synthetic_runs(*shape, _RATIO.value)
    tracemalloc.reset_peak()
    inputs = sum(a.nbytes for a in (membership, correct_train, correct_test))
    print(f"  inputs: {inputs / 2**30:.2f} GiB")
    measure("memorization (+ Welch)", lambda: estimators.memorization(
        membership, correct_train))
    measure("C-score", lambda: estimators.cscore([_RATIO.value], [membership],
                                                 [correct_train], [correct_test]))
    top, _ = measure(f"top-{_TOP_K.value} influence", lambda: estimators.top_influences(
        membership, correct_test, _TOP_K.value))
    columns = np.repeat(np.arange(shape[2]), _TOP_K.value)
    measure(f"statistics of the top-{_TOP_K.value}", lambda: estimators.pair_statistics(
        membership, correct_test, top.train.ravel(), columns))
    found = np.mean(top.train[:, 0] == partner)
    print(f"  top-1 influence finds the planted partner for {found:.1%} of test examples")
    print(f"  process peak resident memory: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    small = (400, 5000, 2000)
    print(f"\nAgainst plain dense NumPy (float64, whole arrays), {small[0]} runs x {small[1]} "
          f"train x {small[2]} test:")
    membership, correct_train, correct_test, _ = synthetic_runs(*small, _RATIO.value, seed=1)
    (ref_mem, ref_cscore, ref_influence), ref_seconds = measure(
        "dense NumPy reference", lambda: dense_reference(membership, correct_train,
                                                         correct_test))

    def ours():
        return (estimators.memorization(membership, correct_train, min_runs=1).score,
                estimators.cscore([_RATIO.value], [membership], [correct_train],
                                  [correct_test], min_runs=1).train,
                estimators.influence(membership, correct_test))

    (mem, cscore, influence), our_seconds = measure("heldout (blocked, float32)", ours)
    difference = max(np.nanmax(np.abs(mem - ref_mem)), np.nanmax(np.abs(cscore - ref_cscore)),
                     np.nanmax(np.abs(influence - ref_influence)))
    print(f"  speed-up {ref_seconds / our_seconds:.1f}x, largest difference {difference:.1e}")


if __name__ == "__main__":
    app.run(main)
