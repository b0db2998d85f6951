"""Estimates from membership masks and per-run metrics (SPEC §4): pure NumPy, no I/O.

Notation: ``membership[r, i]`` is True when run r trained on training example i, and
``values[r, j]`` is a per-run metric on example j (correctness 0/1, or a margin).

* Self-influence of training example i: ``mean(values[r, i] | in) - mean(values[r, i] | out)``.
  With correctness and random subsets this is Feldman & Zhang's memorization score.
* Influence of training example i on evaluation example j:
  ``mean(values[r, j] | membership[r, i]) - mean(values[r, j] | not membership[r, i])``,
  computed as two matrix products per block of training examples so memory stays
  bounded whatever the number of examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class SelfInfluence:
    """Per training example: the estimate and what it was estimated from.

    Every field is ``[num_train]``. ``score`` and ``stderr`` are NaN where fewer than
    ``min_runs`` runs trained on, or held out, the example.
    """

    score: np.ndarray  # mean_in - mean_out
    mean_in: np.ndarray  # mean metric over runs that trained on the example
    mean_out: np.ndarray  # mean metric over runs that held it out
    num_in: np.ndarray  # runs that trained on the example
    num_out: np.ndarray  # runs that held it out
    stderr: np.ndarray  # standard error of score (unequal variances, as Welch)


def self_influence(membership: np.ndarray, values: np.ndarray, min_runs: int = 1
                   ) -> SelfInfluence:
    """Self-influence of each training example on its own metric.

    Args:
        membership: bool ``[num_runs, num_train]``.
        values: ``[num_runs, num_train]`` metric of every run on every training example.
        min_runs: fewest in-runs and out-runs an example needs to get a score.

    Returns:
        A `SelfInfluence` with ``[num_train]`` fields.
    """
    membership = _check_membership(membership)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != membership.shape:
        raise ValueError(f"values has shape {values.shape}, expected membership's "
                         f"{membership.shape}")
    num_in = membership.sum(axis=0)
    num_out = membership.shape[0] - num_in
    mean_in, var_in = _masked_mean_var(values, membership, num_in)
    mean_out, var_out = _masked_mean_var(values, ~membership, num_out)
    enough = (num_in >= max(min_runs, 1)) & (num_out >= max(min_runs, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        stderr = np.sqrt(var_in / num_in + var_out / num_out)
    score = np.where(enough, mean_in - mean_out, np.nan)
    return SelfInfluence(score=score, mean_in=mean_in, mean_out=mean_out, num_in=num_in,
                         num_out=num_out, stderr=np.where(enough, stderr, np.nan))


def memorization(membership: np.ndarray, correctness: np.ndarray, min_runs: int = 1
                 ) -> SelfInfluence:
    """Feldman-Zhang memorization: self-influence on correctness."""
    return self_influence(membership, np.asarray(correctness, dtype=np.float64), min_runs)


def influence(membership: np.ndarray, values: np.ndarray, block_size: int = 4096
              ) -> np.ndarray:
    """Influence of every training example on every evaluation example.

    Args:
        membership: bool ``[num_runs, num_train]``.
        values: ``[num_runs, num_eval]`` metric of every run on every evaluation example.
        block_size: training examples per block of the matrix products.

    Returns:
        float32 ``[num_train, num_eval]``; NaN rows for training examples that every
        run, or no run, trained on.
    """
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    result = np.empty((membership.shape[1], values.shape[1]), np.float32)
    for rows, block in influence_blocks(membership, values, block_size):
        result[rows] = block
    return result


def influence_blocks(membership: np.ndarray, values: np.ndarray, block_size: int = 4096
                     ) -> Iterator[tuple[slice, np.ndarray]]:
    """Yields ``(rows, influence[rows])`` for consecutive blocks of training examples.

    Each block costs two float32 matrix products of ``[num_runs, block]`` by
    ``[num_runs, num_eval]``; the full matrix is never held unless the caller keeps it.
    """
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    num_runs, num_train = membership.shape
    column_sums = values.sum(axis=0, dtype=np.float64)
    for start in range(0, num_train, block_size):
        rows = slice(start, min(start + block_size, num_train))
        mask = membership[:, rows]
        sum_in = mask.T.astype(np.float32) @ values  # [block, num_eval]
        num_in = mask.sum(axis=0).astype(np.float64)[:, None]
        num_out = num_runs - num_in
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_in = sum_in / num_in
            mean_out = (column_sums[None, :] - sum_in) / num_out
        # Rounding leaves the "out" sum slightly off zero when no run held the example
        # out; such rows have no estimate.
        defined = (num_in > 0) & (num_out > 0)
        yield rows, np.where(defined, mean_in - mean_out, np.nan).astype(np.float32)


def top_influence_pairs(membership: np.ndarray, values: np.ndarray, num_pairs: int,
                        block_size: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `num_pairs` (train, eval) pairs of highest influence, highest first.

    Returns:
        ``(train_indices, eval_indices, scores)``, each ``[num_pairs]``.
    """
    best_scores = np.empty(0, np.float32)
    best_train = best_eval = np.empty(0, np.int64)
    for rows, block in influence_blocks(membership, values, block_size):
        block = np.nan_to_num(block, nan=-np.inf)
        flat = block.ravel()
        keep = min(num_pairs, flat.size)
        top = np.argpartition(-flat, keep - 1)[:keep]
        train, evals = np.unravel_index(top, block.shape)
        best_scores = np.concatenate([best_scores, flat[top]])
        best_train = np.concatenate([best_train, train + rows.start])
        best_eval = np.concatenate([best_eval, evals])
        order = np.argsort(-best_scores, kind="stable")[:num_pairs]
        best_scores, best_train, best_eval = best_scores[order], best_train[order], best_eval[order]
    return best_train, best_eval, best_scores


def _masked_mean_var(values: np.ndarray, mask: np.ndarray, counts: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and unbiased variance of `values` over the rows where `mask` holds."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, values, 0.0).sum(axis=0) / counts
        squares = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
        var = squares / (counts - 1)
    return mean, var


def _check_values(membership: np.ndarray, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != membership.shape[0]:
        raise ValueError(f"values has shape {values.shape}, expected "
                         f"[{membership.shape[0]}, num_eval]")
    return values


def _check_membership(membership: np.ndarray) -> np.ndarray:
    membership = np.asarray(membership)
    if membership.ndim != 2 or membership.dtype != bool:
        raise ValueError(f"membership must be a bool [num_runs, num_train] array, got "
                         f"dtype {membership.dtype} and shape {membership.shape}")
    return membership
