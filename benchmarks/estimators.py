"""Estimators at CIFAR-10 scale, and against a plain dense NumPy implementation.

Synthetic runs: 2000 runs x 50,000 training x 10,000 test examples at subset ratio 0.7
(correctness drawn so that held-out examples are less often right). Prints seconds and
peak memory of memorization, C-score, top-k influence (both engines, interleaved, side
by side) and top-k ridge datamodels; then, on a size where the whole float64 problem
fits, the same estimators written as plain dense NumPy (two full matrix products, masked
means over whole arrays) side by side with heldout's, their ratio and their largest
difference.

Memory: "peak" is the process's resident set sampled every 5 ms during the step, minus
its size before the step (so NumPy and TensorFlow buffers both count; the inputs do not).
Roofline (issue 17): the machine's TensorFlow matrix-product rate is measured in this
process at the start and the end (`benchmarks/roofline.py`, best of both, float32 and
bfloat16), and each estimator made of matrix products is printed beside the floor its
products imply at that rate.

Target: each CIFAR-scale estimator under 3 minutes on 2 CPU cores, peak under 6 GiB;
top-10 influence at most 12 s.

Usage:
  python benchmarks/estimators.py [--num_runs=2000 --num_train=50000 --num_test=10000]
"""

import os
import resource
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import roofline  # noqa: E402
from heldout.estimate import datamodels, estimators  # noqa: E402

_NUM_RUNS = flags.DEFINE_integer("num_runs", 2000, "Runs.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50_000, "Training examples.")
_NUM_TEST = flags.DEFINE_integer("num_test", 10_000, "Test examples.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Top-k influence per test example.")
_RATIO = flags.DEFINE_float("ratio", 0.7, "Subset ratio.")
_DATAMODEL_ENGINES = flags.DEFINE_list("datamodel_engines", ["tensorflow", "numpy"],
                                        "Engines of fit_datamodels to measure, in order.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds of the two influence engines.")


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


class _PeakRSS:
    """Samples the resident set size in a thread; `peak` is the largest seen since start."""

    def __init__(self, interval: float = 0.005):
        self._interval, self._stop, self.peak = interval, threading.Event(), 0
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def measure(name: str, function):
    with _PeakRSS() as memory:
        start = time.time()
        result = function()
        seconds = time.time() - start
    peak = (memory.peak - memory.base) / 2**30
    print(f"  {name:<44} {seconds:8.2f} s   peak {peak:6.2f} GiB")
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
    rate_start = {d: roofline.matmul_rate(d) for d in roofline.DTYPES}
    shape = (_NUM_RUNS.value, _NUM_TRAIN.value, _NUM_TEST.value)
    print(f"CIFAR-10 scale: {shape[0]} runs x {shape[1]} train x {shape[2]} test, "
          f"ratio {_RATIO.value}, {os.cpu_count()} CPUs")
    membership, correct_train, correct_test, partner = synthetic_runs(*shape, _RATIO.value)
    inputs = sum(a.nbytes for a in (membership, correct_train, correct_test))
    print(f"  inputs: {inputs / 2**30:.2f} GiB")
    results = {}
    _, results["memorization"] = measure("memorization (+ Welch)", lambda: (
        estimators.memorization(membership, correct_train)))
    _, results["cscore"] = measure("C-score", lambda: estimators.cscore(
        [_RATIO.value], [membership], [correct_train], [correct_test]))
    k = _TOP_K.value
    tops, seconds = {}, {"numpy": [], "bfloat16": []}
    for _ in range(_ROUNDS.value):  # interleaved: both engines see the same load
        for engine in ("numpy", "bfloat16"):
            tops[engine], spent = measure(
                f"top-{k} influence, engine={engine}", lambda engine=engine: (
                    estimators.top_influences(membership, correct_test, k, engine=engine)))
            seconds[engine].append(spent)
    top = tops["bfloat16"]
    score_difference = np.nanmax(np.abs(top.score - tops["numpy"].score))
    same = np.mean(top.train == tops["numpy"].train)
    print(f"  engines agree: largest score difference {score_difference:.1e}, "
          f"{same:.2%} of top-{k} indices identical (the rest: ties)")
    columns = np.repeat(np.arange(shape[2]), k)
    measure(f"statistics of the top-{k}", lambda: estimators.pair_statistics(
        membership, correct_test, top.train.ravel(), columns))
    found = np.mean(top.train[:, 0] == partner)
    print(f"  top-1 influence finds the planted partner for {found:.1%} of test examples")
    outputs = correct_test.astype(np.float32)
    fits = {}
    for engine in _DATAMODEL_ENGINES.value:
        fits[engine], results[f"datamodels {engine}"] = measure(
            f"datamodels (ridge, LOO, top-{k}), {engine}", lambda engine=engine: (
                datamodels.fit_datamodels(membership, outputs, top_k=k, engine=engine)))
    model = fits[_DATAMODEL_ENGINES.value[0]]
    for engine, other in list(fits.items())[1:]:
        print(f"  datamodels {engine} vs {_DATAMODEL_ENGINES.value[0]}: largest top weight "
              f"difference {np.max(np.abs(other.top_weights - model.top_weights)):.1e}, "
              f"{np.mean(other.top_train == model.top_train):.2%} of indices identical")
    found = np.mean(model.top_train[:, 0] == partner)
    print(f"  datamodel top-1 weight is the planted partner for {found:.1%} of test "
          f"examples; lambdas chosen: {np.unique(model.lam).tolist()}")
    print(f"  process peak resident memory: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    rate_end = {d: roofline.matmul_rate(d) for d in roofline.DTYPES}
    rate = {d: max(rate_start[d], rate_end[d]) for d in roofline.DTYPES}
    print("\nRoofline: TensorFlow matrix-product rate in this process (GFLOP/s, start / "
          "end): " + ", ".join(f"{d} {rate_start[d] / 1e9:.0f} / {rate_end[d] / 1e9:.0f}"
                               for d in roofline.DTYPES))
    runs, train, test = shape
    influence_flop = 2.0 * runs * train * test  # one product: out-sums from column sums
    for spent in seconds["numpy"]:
        print("  " + roofline.roofline_line(f"top-{k} influence (numpy engine)", spent,
                                            influence_flop, rate["float32"], "float32"))
    for spent in seconds["bfloat16"]:
        for dtype in ("bfloat16", "float32"):
            print("  " + roofline.roofline_line(f"top-{k} influence (bfloat16 engine)", spent,
                                                influence_flop, rate[dtype], dtype))
    lambdas = len(datamodels.DEFAULT_LAMBDAS)
    datamodel_flop = (2.0 * runs**2 * train + 2.0 * runs * train * test  # M M^T, M^T alpha
                      + lambdas * 2.0 * runs**2 * test + 2 * 4.0 * runs**3)  # LOO, 2 eigh
    for engine in _DATAMODEL_ENGINES.value:
        print("  " + roofline.roofline_line(f"datamodels ({engine})",
                                            results[f"datamodels {engine}"], datamodel_flop,
                                            rate["float32"], "float32"))
    print(f"  memorization {results['memorization']:.2f} s, C-score {results['cscore']:.2f} s:"
          " elementwise passes, no matrix product (memory-bound; no matmul floor)")

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

    (mem, cscore, influence), our_seconds = measure("heldout (blocked)", ours)
    difference = max(np.nanmax(np.abs(mem - ref_mem)), np.nanmax(np.abs(cscore - ref_cscore)),
                     np.nanmax(np.abs(influence - ref_influence)))
    print(f"  speed-up {ref_seconds / our_seconds:.1f}x, largest difference {difference:.1e}")
    fast = estimators.top_influences(membership, correct_test, _TOP_K.value, min_runs=1,
                                     keep_dense=True, engine="bfloat16")
    print(f"  bfloat16 engine against the float64 reference: largest difference "
          f"{np.nanmax(np.abs(fast.dense - ref_influence)):.1e}")


if __name__ == "__main__":
    app.run(main)
