"""Estimates of one experiment directory: read its runs, estimate, save, and tabulate.

This is the job behind ``estimate.py``. Arrays are saved to an ``.npz`` (keys below)
so that notebooks and plots can pick them up without recomputing.

Keys of the saved file:
  ``run_ids`` ``[runs]``; ``mem_score``, ``mem_stderr``, ``mem_num_in``, ``mem_num_out``,
  ``mem_mean_in``, ``mem_mean_out`` ``[num_train]``; ``influence`` ``[num_train,
  num_test]`` (float32, when asked); ``pair_train``, ``pair_test``, ``pair_score``
  ``[num_pairs]``: the highest-influence (train, test) pairs, highest first;
  ``test_accuracy`` ``[runs]``.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import tensorflow as tf

from heldout import estimators, plots
from heldout import runs as runs_lib
from heldout.data import Dataset


@dataclasses.dataclass(frozen=True)
class Estimates:
    """Memorization and influence of one subset design of an experiment."""

    experiment_dir: str
    subset: str
    run_ids: np.ndarray
    skipped_runs: tuple[int, ...]  # incomplete run folders that were not used
    memorization: estimators.SelfInfluence
    influence: np.ndarray | None  # float32 [num_train, num_test], if computed
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (train, test, score), best first
    test_accuracy: np.ndarray  # [runs]
    seconds: float


def choose_subset(experiment_dir: str, subset: str | None) -> str:
    """The subset folder to estimate from: `subset`, or the only one present.

    Raises:
        ValueError: the directory holds no runs, `subset` is not among its folders, or
            there are several and none was chosen.
    """
    present = runs_lib.list_subsets(experiment_dir)
    if not present:
        raise ValueError(f"--experiment_dir={experiment_dir}: no runs found (expected "
                         f"<subset>/<run_id>/{runs_lib.AUX_FILENAME})")
    if subset is None:
        if len(present) > 1:
            raise ValueError(f"--experiment_dir={experiment_dir} holds several subset "
                             f"folders ({', '.join(present)}); choose one with --subset")
        return present[0]
    if subset not in present:
        raise ValueError(f"--subset={subset}: not in {experiment_dir} (found "
                         f"{', '.join(present)})")
    return subset


def estimate_experiment(experiment_dir: str, subset: str | None = None,
                        num_pairs: int = 20, dense_influence: bool = True,
                        min_runs: int = 1, progress: bool = True) -> Estimates:
    """Memorization of every training example and train-to-test influence.

    Args:
        experiment_dir: the experiment directory (local or gs://).
        subset: subset folder to use; None when there is only one.
        num_pairs: how many of the highest-influence pairs to keep.
        dense_influence: also keep the whole ``[num_train, num_test]`` matrix.
        min_runs: fewest in- and out-runs an example needs to get a score.
        progress: show a progress bar while reading runs.
    """
    start = time.time()
    subset = choose_subset(experiment_dir, subset)
    experiment = runs_lib.load_experiment(experiment_dir, subset, progress=progress)
    membership = experiment.membership
    memorization = estimators.memorization(membership, experiment.correctness_train, min_runs)
    correctness_test = experiment.correctness_test.astype(np.float32)
    pairs = estimators.top_influence_pairs(membership, correctness_test, num_pairs)
    influence = estimators.influence(membership, correctness_test) if dense_influence else None
    return Estimates(
        experiment_dir=experiment_dir, subset=subset, run_ids=experiment.run_ids,
        skipped_runs=experiment.skipped, memorization=memorization, influence=influence,
        pairs=pairs, test_accuracy=experiment.correctness_test.mean(axis=1),
        seconds=time.time() - start)


def save_estimates(estimates: Estimates, path: str) -> None:
    """Writes `estimates` to an ``.npz`` at `path` (keys in the module docstring)."""
    memorization = estimates.memorization
    arrays = {
        "run_ids": estimates.run_ids, "test_accuracy": estimates.test_accuracy,
        "mem_score": memorization.score, "mem_stderr": memorization.stderr,
        "mem_num_in": memorization.num_in, "mem_num_out": memorization.num_out,
        "mem_mean_in": memorization.mean_in, "mem_mean_out": memorization.mean_out,
        "pair_train": estimates.pairs[0], "pair_test": estimates.pairs[1],
        "pair_score": estimates.pairs[2],
    }
    if estimates.influence is not None:
        arrays["influence"] = estimates.influence
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        tf.io.gfile.makedirs(parent)
    runs_lib.write_atomically(path, buffer.getvalue())


def plot_estimates(estimates: Estimates, plot_dir: str, data: Dataset | None = None,
                   pairs_per_test: int = 4) -> list[str]:
    """Writes the PNG figures of `estimates` into `plot_dir`; returns their paths.

    The histogram needs only the scores; the image grids need the data set's images.
    """
    paths = [plots.plot_memorization_histogram(
        estimates.memorization.score, f"{plot_dir}/memorization_histogram.png",
        title=f"Memorization, {estimates.subset} subsets, {len(estimates.run_ids)} runs")]
    if data is None or not plots.is_image_data(data.x_train):
        return paths
    paths.append(plots.plot_top_memorized(
        data.x_train, data.y_train, estimates.memorization.score,
        f"{plot_dir}/top_memorized.png"))
    pair_train, pair_test, pair_score = estimates.pairs
    if estimates.influence is not None:
        # Each top test example with its own most influential training examples.
        tests = list(dict.fromkeys(int(t) for t in pair_test))[:6]
        column = np.nan_to_num(estimates.influence[:, tests], nan=-np.inf)
        best = np.argsort(-column, axis=0, kind="stable")[:pairs_per_test]
        pair_train = best.T.ravel()
        pair_test = np.repeat(tests, best.shape[0])
        pair_score = column[best, np.arange(len(tests))].T.ravel()
    paths.append(plots.plot_influence_pairs(
        data.x_train, data.y_train, data.x_test, data.y_test, pair_train, pair_test,
        pair_score, f"{plot_dir}/influence_pairs.png", per_test=pairs_per_test))
    return paths


def format_report(estimates: Estimates, labels_train: np.ndarray | None = None,
                  labels_test: np.ndarray | None = None, top: int = 10) -> str:
    """A readable summary: runs used, the most memorized examples, the top influence pairs."""
    memorization = estimates.memorization
    lines = [
        f"{estimates.experiment_dir}/{estimates.subset}: {len(estimates.run_ids)} runs used"
        + (f", {len(estimates.skipped_runs)} incomplete skipped" if estimates.skipped_runs
           else "")
        + f", mean test accuracy {estimates.test_accuracy.mean():.4f}, "
        f"{estimates.seconds:.1f} s",
        "",
        f"Top {top} memorized training examples (memorization = P[correct | in] - "
        "P[correct | out]):",
        f"{'index':>7} {'label':>5} {'score':>7} {'stderr':>7} {'P_in':>6} {'P_out':>6} "
        f"{'runs_in':>7} {'runs_out':>8}",
    ]
    scores = np.nan_to_num(memorization.score, nan=-np.inf)
    for i in np.argsort(-scores, kind="stable")[:top]:
        label = "-" if labels_train is None else str(labels_train[i])
        lines.append(
            f"{i:>7} {label:>5} {memorization.score[i]:>7.3f} {memorization.stderr[i]:>7.3f} "
            f"{memorization.mean_in[i]:>6.3f} {memorization.mean_out[i]:>6.3f} "
            f"{memorization.num_in[i]:>7} {memorization.num_out[i]:>8}")
    finite = np.isfinite(memorization.score)
    lines += [
        f"Examples with memorization > 0.25: {int((memorization.score[finite] > 0.25).sum())}"
        f" of {int(finite.sum())}",
        "",
        f"Top {min(top, len(estimates.pairs[2]))} train -> test influence pairs:",
        f"{'train':>7} {'label':>5} {'test':>6} {'label':>5} {'influence':>9}",
    ]
    for train, test, score in zip(*(a[:top] for a in estimates.pairs), strict=True):
        train_label = "-" if labels_train is None else str(labels_train[train])
        test_label = "-" if labels_test is None else str(labels_test[test])
        lines.append(f"{train:>7} {train_label:>5} {test:>6} {test_label:>5} {score:>9.3f}")
    return "\n".join(lines)
