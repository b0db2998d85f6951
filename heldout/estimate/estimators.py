"""Estimates from membership masks and per-run metrics: arrays in, arrays out.

NumPy throughout, no I/O; only `top_influences`'s ``"bfloat16"`` engine (0/1 metrics at
scale) hands its matrix products to TensorFlow, imported when that engine runs.

Notation: ``membership[r, i]`` is True when run r trained on training example i, and
``values[r, j]`` is a per-run metric on example j (correctness 0/1, or a margin).

* Self-influence of training example i: ``mean(values[r, i] | in) - mean(values[r, i] | out)``.
  With correctness and random subsets this is Feldman & Zhang's memorization score.
* Influence of training example i on evaluation example j:
  ``mean(values[r, j] | membership[r, i]) - mean(values[r, j] | not membership[r, i])``,
  computed from one float32 matrix product per block of training x evaluation examples,
  so memory stays bounded whatever the number of examples.
* C-score of an example (Jiang et al. 2021): its expected accuracy under models that
  did not train on it, per subset ratio, averaged over the ratios.

Every estimate carries its in/out run counts, a standard error, a confidence interval
and a p-value for "different from zero" (`heldout.estimate.stats`). Examples with fewer than
``min_runs`` in-runs or out-runs get NaN rather than a number made from a few runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from heldout.errors import ParameterError
from heldout.estimate import stats
from heldout.estimate.config import DEFAULT_MIN_RUNS


@dataclasses.dataclass(frozen=True)
class SelfInfluence:
    """Per training example: the estimate and what it was estimated from.

    Every field is ``[num_train]``. ``score`` and the statistics are NaN where fewer than
    ``min_runs`` runs trained on, or held out, the example.
    """

    score: np.ndarray  # mean_in - mean_out
    mean_in: np.ndarray  # mean metric over runs that trained on the example
    mean_out: np.ndarray  # mean metric over runs that held it out
    num_in: np.ndarray  # runs that trained on the example
    num_out: np.ndarray  # runs that held it out
    stderr: np.ndarray  # standard error of score (unequal variances)
    p_value: np.ndarray  # two-sided test of score != 0 (Welch's t or z)
    ci_low: np.ndarray  # confidence interval of score
    ci_high: np.ndarray


def self_influence(membership: np.ndarray, values: np.ndarray,
                   min_runs: int = DEFAULT_MIN_RUNS, test: str = "welch",
                   level: float = 0.95) -> SelfInfluence:
    """Self-influence of each training example on its own metric.

    Args:
        membership: bool ``[num_runs, num_train]``.
        values: ``[num_runs, num_train]`` metric of every run on every training example.
        min_runs: fewest in-runs and out-runs an example needs to get a score.
        test: ``"welch"`` (Welch's t-test) or ``"z"`` (large-sample normal test).
        level: confidence level of the interval.

    Returns:
        A `SelfInfluence` with ``[num_train]`` fields.
    """
    membership = _check_membership(membership)
    values = np.asarray(values)
    if values.shape != membership.shape:
        raise ValueError(f"values has shape {values.shape}, expected membership's "
                         f"{membership.shape}")
    moments = _in_out_moments(membership, values)
    return _with_significance(**moments, min_runs=min_runs, test=test, level=level)


def memorization(membership: np.ndarray, correctness: np.ndarray,
                 min_runs: int = DEFAULT_MIN_RUNS, test: str = "welch",
                 level: float = 0.95) -> SelfInfluence:
    """Feldman-Zhang memorization: self-influence on correctness."""
    return self_influence(membership, np.asarray(correctness, dtype=bool), min_runs, test,
                          level)


def influence(membership: np.ndarray, values: np.ndarray, block_size: int = 4096,
              min_runs: int = 1) -> np.ndarray:
    """Influence of every training example on every evaluation example, as one matrix.

    Args:
        membership: bool ``[num_runs, num_train]``.
        values: ``[num_runs, num_eval]`` metric of every run on every evaluation example.
        block_size: training examples per block of the matrix products.
        min_runs: fewest in- and out-runs a training example needs (else a NaN row).

    Returns:
        float32 ``[num_train, num_eval]``.
    """
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    result = np.empty((membership.shape[1], values.shape[1]), np.float32)
    for rows, block in influence_blocks(membership, values, block_size, min_runs):
        result[rows] = block
    return result


def influence_blocks(membership: np.ndarray, values: np.ndarray, block_size: int = 4096,
                     min_runs: int = 1) -> Iterator[tuple[slice, np.ndarray]]:
    """Yields ``(rows, influence[rows])`` for consecutive blocks of training examples.

    Each block costs one float32 matrix product of ``[num_runs, block]`` by
    ``[num_runs, num_eval]``: the out-sum is the column sum minus the in-sum. The full
    matrix is never held unless the caller keeps it.
    """
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    num_runs, num_train = membership.shape
    column_sums = values.sum(axis=0, dtype=np.float64)[None, :]
    for start in range(0, num_train, block_size):
        rows = slice(start, min(start + block_size, num_train))
        mask = membership[:, rows]
        sum_in = mask.T.astype(np.float32) @ values  # [block, num_eval]
        num_in = mask.sum(axis=0)[:, None]
        num_out = num_runs - num_in
        # Means and their difference in float64 (in place, two [block, eval] buffers), so
        # that equal means give exactly 0 and scores compare exactly with thresholds;
        # 0/0 where a row has no in- or out-runs is NaN, the right answer.
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_in = sum_in.astype(np.float64)
            influence = np.subtract(column_sums, mean_in)
            influence /= -num_out
            mean_in /= num_in
            influence += mean_in
        del mean_in
        # Rounding leaves the out-sum slightly off zero when no run held the example
        # out; such rows, and rows from too few runs, have no estimate.
        undefined = (num_in < max(min_runs, 1)) | (num_out < max(min_runs, 1))
        influence[undefined[:, 0]] = np.nan
        yield rows, influence.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class InfluencePairs:
    """Influence of chosen (train, eval) pairs with its statistics; every field ``[num_pairs]``.

    ``eval`` indexes the columns of the values the pairs were computed from.
    """

    train: np.ndarray
    eval: np.ndarray
    score: np.ndarray
    num_in: np.ndarray
    num_out: np.ndarray
    stderr: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray

    def __len__(self) -> int:
        return len(self.train)

    def take(self, order: np.ndarray) -> InfluencePairs:
        """The pairs at positions `order`."""
        return InfluencePairs(**{f.name: getattr(self, f.name)[order]
                                 for f in dataclasses.fields(self)})


def pair_statistics(membership: np.ndarray, values: np.ndarray, train: np.ndarray,
                    eval_columns: np.ndarray, min_runs: int = DEFAULT_MIN_RUNS,
                    test: str = "welch", level: float = 0.95,
                    chunk_size: int = 8192) -> InfluencePairs:
    """Influence, counts, standard error, p-value and interval of each (train, eval) pair.

    Exact per pair (not from the blocked products), so it is cheap for the few pairs
    a caller keeps (top-k, above a threshold) and exact for any metric.
    """
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    train = np.asarray(train, dtype=np.int64)
    eval_columns = np.asarray(eval_columns, dtype=np.int64)
    parts = {name: np.empty(len(train)) for name in
             ("mean_in", "var_in", "num_in", "mean_out", "var_out", "num_out")}
    for start in range(0, len(train), chunk_size):
        chunk = slice(start, start + chunk_size)
        moments = _in_out_moments(membership[:, train[chunk]], values[:, eval_columns[chunk]])
        for name, value in moments.items():
            parts[name][chunk] = value
    estimate = _with_significance(**parts, min_runs=min_runs, test=test, level=level)
    return InfluencePairs(
        train=train, eval=eval_columns, score=estimate.score,
        num_in=estimate.num_in.astype(np.int64), num_out=estimate.num_out.astype(np.int64),
        stderr=estimate.stderr, p_value=estimate.p_value, ci_low=estimate.ci_low,
        ci_high=estimate.ci_high)


@dataclasses.dataclass(frozen=True)
class TopInfluences:
    """The most influential training examples of each evaluation example.

    Attributes:
        train: int64 ``[num_eval, k]`` training indices, highest influence first (-1 where
            an evaluation example has fewer than k defined scores, or, after
            `most_influential`, fewer than k positive scores above the rest).
        score: float32 ``[num_eval, k]`` their influence (NaN where ``train`` is -1).
        above_threshold: every pair with influence above the threshold (None when no
            threshold was given), as (train, eval column, score) arrays, eval-major.
        dense: float32 ``[num_train, num_eval]`` influence matrix, if it was kept.
    """

    train: np.ndarray
    score: np.ndarray
    above_threshold: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    dense: np.ndarray | None = None


ENGINES = ("auto", "numpy", "bfloat16")
# Runs per bfloat16 product: sums of <= 256 zeros and ones are exact in bfloat16.
_BF16_EXACT_RUNS = 256


def top_influences(membership: np.ndarray, values: np.ndarray, k: int,
                   threshold: float | None = None, block_size: int = 4096,
                   min_runs: int = DEFAULT_MIN_RUNS, keep_dense: bool = False,
                   engine: str = "auto") -> TopInfluences:
    """Top-k training examples per evaluation example, plus all pairs above `threshold`.

    Streams over blocks of training examples keeping a running top-k per column, so
    memory is ``O(block_size * num_eval)`` whatever ``num_train`` is (plus the whole
    matrix when `keep_dense`).

    Two engines give the same scores (to one float32 rounding) and the same top-k up to
    the order of tied scores:

    * ``"numpy"``: float32 matrix product, float64 means (`influence_blocks`).
    * ``"bfloat16"``, for 0/1 values (correctness) and at most 4096 runs only: TensorFlow
      matrix products of the 0/1 masks and values in bfloat16, 256 runs at a time (each
      partial count <= 256 is exact in bfloat16, and they are summed in float32), so the
      in-counts are exact integers; the score is then formed as
      ``(num_runs * sum_in - column_sum * num_in) / (num_in * num_out)``, whose numerator
      and denominator are integers below 2^24, so the float32 score is the exact influence
      correctly rounded. Top-k per block with `tf.math.top_k` merged into a running top-k
      of ``[num_eval, k]``; ties go to the lower training index.
    * ``"auto"`` (default): ``"bfloat16"`` where it applies, else ``"numpy"``. The choice
      depends on the values and the number of runs only, never on the number of examples,
      so shards of the eval examples (`heldout.estimate.merge`) take the same path as the
      whole and merge to the same result.

    Raises:
        ValueError: on ``k < 1``, an unknown `engine`, or ``engine="bfloat16"`` for
            values other than 0/1 or more than 4096 runs.
    """
    if k < 1:
        raise ParameterError("top_k", "expected a positive number", k)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: expected one of {ENGINES}")
    membership = _check_membership(membership)
    values = _check_values(membership, values)
    num_eval = values.shape[1]
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    exact_runs = membership.shape[0] ** 2 < 2**24
    if engine == "bfloat16" and not (binary and exact_runs):
        raise ValueError(f"engine='bfloat16' needs 0/1 values and at most 4096 runs, got "
                         f"{'0/1' if binary else 'non-0/1'} values and "
                         f"{membership.shape[0]} runs")
    if engine == "auto":
        engine = "bfloat16" if binary and exact_runs else "numpy"
    if engine == "bfloat16":
        return _top_influences_bfloat16(membership, values, k, threshold, block_size,
                                        min_runs, keep_dense)
    dense = np.empty((membership.shape[1], num_eval), np.float32) if keep_dense else None
    best_score = np.full((0, num_eval), -np.inf, np.float32)
    best_train = np.zeros((0, num_eval), np.int64)
    above_train, above_eval, above_score = [], [], []
    for rows, block in influence_blocks(membership, values, block_size, min_runs):
        if dense is not None:
            dense[rows] = block
        if threshold is not None:
            hit_train, hit_eval = np.nonzero(block > threshold)
            above_train.append(hit_train + rows.start)
            above_eval.append(hit_eval)
            above_score.append(block[hit_train, hit_eval])
        candidates = np.concatenate([best_score, np.nan_to_num(block, nan=-np.inf)])
        owners = np.concatenate(
            [best_train, np.broadcast_to(np.arange(rows.start, rows.stop)[:, None],
                                         block.shape)])
        keep = min(k, len(candidates))
        top = np.argpartition(-candidates, keep - 1, axis=0)[:keep]
        best_score = np.take_along_axis(candidates, top, axis=0)
        best_train = np.take_along_axis(owners, top, axis=0)
    order = np.argsort(-best_score, axis=0, kind="stable")
    best_score = np.take_along_axis(best_score, order, axis=0).T
    best_train = np.take_along_axis(best_train, order, axis=0).T
    return _pack_top(best_train, best_score, k, threshold,
                     (above_train, above_eval, above_score), dense)


def _pack_top(best_train: np.ndarray, best_score: np.ndarray, k: int,
              threshold: float | None, above: tuple[list, list, list],
              dense: np.ndarray | None) -> TopInfluences:
    """`TopInfluences` from a sorted ``[num_eval, <= k]`` top list (-inf: no score)."""
    num_eval = best_score.shape[0]
    if best_score.shape[1] < k:  # fewer training examples than k: pad
        padding = k - best_score.shape[1]
        best_score = np.concatenate([best_score, np.full((num_eval, padding), -np.inf,
                                                         np.float32)], axis=1)
        best_train = np.concatenate([best_train, np.full((num_eval, padding), -1)], axis=1)
    undefined = ~np.isfinite(best_score)
    best_score = np.where(undefined, np.nan, best_score).astype(np.float32)
    best_train = np.where(undefined, -1, best_train).astype(np.int64)
    pairs = None
    if threshold is not None:
        above_train, above_eval, above_score = above
        train_idx = np.concatenate(above_train) if above_train else np.zeros(0, np.int64)
        eval_idx = np.concatenate(above_eval) if above_eval else np.zeros(0, np.int64)
        scores = np.concatenate(above_score) if above_score else np.zeros(0, np.float32)
        order = np.lexsort((train_idx, eval_idx))
        pairs = (train_idx[order].astype(np.int64), eval_idx[order].astype(np.int64),
                 scores[order])
    return TopInfluences(train=best_train, score=best_score, above_threshold=pairs,
                         dense=dense)


def _top_influences_bfloat16(membership: np.ndarray, values: np.ndarray, k: int,
                             threshold: float | None, block_size: int, min_runs: int,
                             keep_dense: bool) -> TopInfluences:
    """`top_influences` for 0/1 values through exact bfloat16 TensorFlow products.

    Works on the transposed block ``[num_eval, block]`` so that the top-k runs along
    contiguous rows; see `top_influences` for why every step is exact.
    """
    import tensorflow as tf  # only this engine needs it

    num_runs, num_train = membership.shape
    num_eval = values.shape[1]
    chunks = -(-num_runs // _BF16_EXACT_RUNS)
    padded = chunks * _BF16_EXACT_RUNS
    # values^T in chunks of runs: [chunks, num_eval, 256], zero rows for padding runs.
    values_t = np.zeros((padded, num_eval), np.float32)
    values_t[:num_runs] = values
    values_t = tf.cast(tf.constant(values_t.reshape(chunks, _BF16_EXACT_RUNS, num_eval)
                                   .transpose(0, 2, 1)), tf.bfloat16)
    column_sums = tf.constant(values.sum(axis=0, dtype=np.float64).astype(np.float32))
    least = max(min_runs, 1)
    dense = np.empty((num_train, num_eval), np.float32) if keep_dense else None
    above: tuple[list, list, list] = ([], [], [])
    best_score = tf.zeros((num_eval, 0), tf.float32)
    best_train = tf.zeros((num_eval, 0), tf.int64)
    for start in range(0, num_train, block_size):
        stop = min(start + block_size, num_train)
        mask = np.zeros((padded, stop - start), np.float32)
        mask[:num_runs] = membership[:, start:stop]
        mask = tf.cast(tf.constant(mask.reshape(chunks, _BF16_EXACT_RUNS, -1)), tf.bfloat16)
        sum_in = tf.zeros((num_eval, stop - start), tf.float32)
        for chunk in range(chunks):
            sum_in += tf.cast(tf.matmul(values_t[chunk], mask[chunk]), tf.float32)
        num_in = membership[:, start:stop].sum(axis=0)
        num_out = num_runs - num_in
        numerator = (float(num_runs) * sum_in
                     - column_sums[:, None] * tf.constant(num_in, tf.float32)[None, :])
        defined = (num_in >= least) & (num_out >= least)
        # Undefined rows divide by 0 or a positive number: replaced below either way.
        denominator = np.where(defined, num_in * num_out, 1).astype(np.float32)
        score = numerator / tf.constant(denominator)[None, :]
        score = tf.where(tf.constant(defined)[None, :], score, -np.inf)
        if dense is not None or threshold is not None:
            block = np.where(defined[None, :], score.numpy(), np.nan)
            if dense is not None:
                dense[start:stop] = block.T
            if threshold is not None:
                hit_eval, hit_train = np.nonzero(block > threshold)
                above[0].append(hit_train + start)
                above[1].append(hit_eval)
                above[2].append(block[hit_eval, hit_train])
        top = tf.math.top_k(score, min(k, stop - start))
        # Earlier blocks first, so ties keep going to the lower training index.
        candidates = tf.concat([best_score, top.values], axis=1)
        owners = tf.concat([best_train, tf.cast(top.indices, tf.int64) + start], axis=1)
        merged = tf.math.top_k(candidates, min(k, candidates.shape[1]))
        best_score = merged.values
        best_train = tf.gather(owners, merged.indices, batch_dims=1)
    return _pack_top(best_train.numpy(), best_score.numpy(), k, threshold, above, dense)


def most_influential(top: TopInfluences, k: int) -> TopInfluences:
    """The top-`k` table with only the entries that are really among the most influential.

    `top` is a top-``(k + 1)`` table (`top_influences` with ``k + 1``). An entry stays
    only if its score is positive and strictly above the best score left out (the
    ``(k + 1)``-th): a zero or negative influence raises nothing, and an entry tied with
    one left out is "most influential" only by its index (with 0/1 correctness most
    scores are ties, so a plain top-k lists training examples 0, 1, 2, ... at score 0).
    Dropped entries become -1 / NaN, like undefined ones, and tables and CSVs leave
    them out. The result keeps `top`'s threshold pairs and dense matrix.

    Raises:
        ValueError: `top` does not have ``k + 1`` columns.
    """
    if top.train.shape[1] != k + 1:
        raise ValueError(f"most_influential: expected a top-{k + 1} table, got "
                         f"{top.train.shape[1]} columns")
    score = top.score[:, :k]
    left_out = np.nan_to_num(top.score[:, k:], nan=-np.inf)
    with np.errstate(invalid="ignore"):
        keep = (score > 0) & (score > left_out)
    return dataclasses.replace(
        top, train=np.where(keep, top.train[:, :k], -1).astype(np.int64),
        score=np.where(keep, score, np.nan).astype(np.float32))


def top_influence_pairs(membership: np.ndarray, values: np.ndarray, num_pairs: int,
                        block_size: int = 4096, min_runs: int = 1
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `num_pairs` (train, eval) pairs of highest influence overall, highest first.

    Returns:
        ``(train_indices, eval_indices, scores)``, each ``[num_pairs]``.
    """
    best_scores = np.empty(0, np.float32)
    best_train = best_eval = np.empty(0, np.int64)
    for rows, block in influence_blocks(membership, values, block_size, min_runs):
        flat = np.nan_to_num(block, nan=-np.inf).ravel()
        keep = min(num_pairs, flat.size)
        top = np.argpartition(-flat, keep - 1)[:keep]
        top = top[np.isfinite(flat[top])]
        train, evals = np.unravel_index(top, block.shape)
        best_scores = np.concatenate([best_scores, flat[top]])
        best_train = np.concatenate([best_train, train + rows.start])
        best_eval = np.concatenate([best_eval, evals])
        order = np.argsort(-best_scores, kind="stable")[:num_pairs]
        best_scores, best_train, best_eval = best_scores[order], best_train[order], best_eval[order]
    return best_train, best_eval, best_scores


@dataclasses.dataclass(frozen=True)
class CScore:
    """Consistency scores over the subset ratios of an experiment.

    Attributes:
        ratios: ``[num_ratios]`` subset ratios, increasing.
        train: ``[num_train]`` held-out accuracy averaged over the ratios where the
            example has at least ``min_runs`` out-runs (NaN if none).
        train_by_ratio: ``[num_ratios, num_train]`` held-out accuracy per ratio.
        num_out_by_ratio: ``[num_ratios, num_train]`` runs that held each example out.
        test: ``[num_test]`` accuracy over all runs, averaged over the ratios.
        test_by_ratio: ``[num_ratios, num_test]``.
    """

    ratios: np.ndarray
    train: np.ndarray
    train_by_ratio: np.ndarray
    num_out_by_ratio: np.ndarray
    test: np.ndarray
    test_by_ratio: np.ndarray


def cscore(ratios: Sequence[float], memberships: Sequence[np.ndarray],
           correctness_train: Sequence[np.ndarray], correctness_test: Sequence[np.ndarray],
           min_runs: int = DEFAULT_MIN_RUNS) -> CScore:
    """C-scores (Jiang et al. 2021) from the runs of each subset ratio.

    Args:
        ratios: the subset ratio of each group of runs.
        memberships: per ratio, bool ``[runs, num_train]``.
        correctness_train: per ratio, ``[runs, num_train]`` correctness on every
            training example.
        correctness_test: per ratio, ``[runs, num_test]``.
        min_runs: fewest held-out runs an example needs at a ratio to count there.
    """
    if not (len(ratios) == len(memberships) == len(correctness_train)
            == len(correctness_test)) or len(ratios) == 0:
        raise ValueError("cscore needs one membership and correctness array per ratio")
    order = np.argsort(ratios, kind="stable")
    train_by_ratio, num_out_by_ratio, test_by_ratio = [], [], []
    for r in order:
        membership = _check_membership(memberships[r])
        correct = np.asarray(correctness_train[r], dtype=bool)
        if correct.shape != membership.shape:
            raise ValueError(f"correctness_train has shape {correct.shape}, expected "
                             f"membership's {membership.shape}")
        num_out = (~membership).sum(axis=0)
        correct_out = np.concatenate([
            (correct[:, c] & ~membership[:, c]).sum(axis=0)
            for c in _column_blocks(membership.shape[1])])
        with np.errstate(invalid="ignore", divide="ignore"):
            held_out = correct_out / num_out
        train_by_ratio.append(np.where(num_out >= max(min_runs, 1), held_out, np.nan))
        num_out_by_ratio.append(num_out)
        test_by_ratio.append(np.asarray(correctness_test[r], dtype=np.float64).mean(axis=0))
    train_by_ratio = np.stack(train_by_ratio)
    test_by_ratio = np.stack(test_by_ratio)
    counted = np.isfinite(train_by_ratio).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        train = np.nansum(train_by_ratio, axis=0) / counted
    return CScore(ratios=np.asarray(ratios, dtype=np.float64)[order],
                  train=np.where(counted > 0, train, np.nan), train_by_ratio=train_by_ratio,
                  num_out_by_ratio=np.stack(num_out_by_ratio), test=test_by_ratio.mean(axis=0),
                  test_by_ratio=test_by_ratio)


def _with_significance(mean_in, var_in, num_in, mean_out, var_out, num_out, min_runs: int,
                       test: str, level: float) -> SelfInfluence:
    """Packs means and variances into a `SelfInfluence`, NaN below `min_runs`."""
    significance = stats.difference_test(mean_in, var_in, num_in, mean_out, var_out,
                                         num_out, test=test, level=level)
    enough = (num_in >= max(min_runs, 1)) & (num_out >= max(min_runs, 1))

    def defined(x):
        return np.where(enough, x, np.nan)

    with np.errstate(invalid="ignore"):
        stderr = np.sqrt(var_in / num_in + var_out / num_out)
    return SelfInfluence(
        score=defined(mean_in - mean_out), mean_in=mean_in, mean_out=mean_out,
        num_in=num_in, num_out=num_out, stderr=defined(stderr),
        p_value=defined(significance.p_value), ci_low=defined(significance.ci_low),
        ci_high=defined(significance.ci_high))


def _in_out_moments(membership: np.ndarray, values: np.ndarray, block: int = 2048
                    ) -> dict[str, np.ndarray]:
    """Per column: mean, unbiased variance and count of `values` over in- and out-runs.

    Works through blocks of columns in float64, so memory stays ``O(runs * block)``
    whatever the number of columns.
    """
    parts: dict[str, list[np.ndarray]] = {
        name: [] for name in ("mean_in", "var_in", "num_in", "mean_out", "var_out", "num_out")}
    for columns in _column_blocks(membership.shape[1], block):
        inside = membership[:, columns]
        column_values = values[:, columns].astype(np.float64)
        for side, mask in (("in", inside), ("out", ~inside)):
            count = mask.sum(axis=0)
            mean, var = _masked_mean_var(column_values, mask, count)
            parts[f"mean_{side}"].append(mean)
            parts[f"var_{side}"].append(var)
            parts[f"num_{side}"].append(count)
    return {name: np.concatenate(chunks) if chunks else np.zeros(0)
            for name, chunks in parts.items()}


def _column_blocks(num_columns: int, block: int = 2048) -> list[slice]:
    return [slice(start, min(start + block, num_columns))
            for start in range(0, num_columns, block)]


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
