"""Our estimates beside the published ones: correlation, top-k and threshold agreement.

A researcher who trained their own CIFAR-100 runs wants to know at once how close their
memorization and influence estimates came to Feldman & Zhang's (SPEC §10).
`compare_estimates` compares two aligned vectors of one estimate (Spearman and Pearson
with scipy, overlap of the top-k, counts above the published thresholds found by each,
the largest disagreements by example); `format_comparison` prints it;
`plot_comparison` draws the scatter. `compare_to_published` does the alignment for
each kind of published file (`heldout.store.published`), in the data set's order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.stats

from heldout.data.dataset import Dataset
from heldout.estimate import plots
from heldout.estimate.pipeline import Estimates
from heldout.store import published as published_lib

# The thresholds of the published high-influence pairs (mem >= 0.25, infl >= 0.15).
THRESHOLDS = {"memorization": published_lib.PUBLISHED_MEM_THRESHOLD,
              "influence": published_lib.PUBLISHED_INFL_THRESHOLD}
DEFAULT_TOP_K = 100
DEFAULT_DISAGREEMENTS = 10


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One estimate of ours against the published one, over the examples both define.

    Attributes:
        name: what is compared (``memorization``, ``influence``, ``cscore``).
        ids: ``[n]`` example ids of the compared entries (a training index, or for pairs a
            ``[n, 2]`` array of (train, test) indices), in the data set's order.
        ours, published: ``[n]`` the two estimates, finite.
        num_dropped: entries left out because one of the two is undefined (NaN).
        spearman, spearman_p, pearson, pearson_p: correlations and their two-sided
            p-values (NaN with fewer than 3 entries or a constant side).
        top_k: k of the top-k comparison (at most n).
        top_k_overlap: entries in both top-k sets (highest values first).
        threshold: the published threshold for this estimate (None: not applicable).
        above_ours, above_published, above_both: entries with a value >= threshold.
        disagreements: positions into ``ids`` of the largest ``|ours - published|``,
            largest first.
    """

    name: str
    ids: np.ndarray
    ours: np.ndarray
    published: np.ndarray
    num_dropped: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float
    top_k: int
    top_k_overlap: int
    threshold: float | None
    above_ours: int
    above_published: int
    above_both: int
    disagreements: np.ndarray

    @property
    def num_common(self) -> int:
        return len(self.ours)

    @property
    def top_k_agreement(self) -> float:
        """Fraction of the top-k of the published estimate that is in our top-k."""
        return self.top_k_overlap / self.top_k if self.top_k else float("nan")


def compare_estimates(ours: np.ndarray, published: np.ndarray, *, ids: np.ndarray | None = None,
                      name: str = "memorization", top_k: int = DEFAULT_TOP_K,
                      threshold: float | None = None,
                      num_disagreements: int = DEFAULT_DISAGREEMENTS) -> Comparison:
    """Compares two aligned estimates of the same examples.

    Args:
        ours: ``[n]`` our estimate (NaN where undefined).
        published: ``[n]`` the published estimate of the same examples, same order.
        ids: ``[n]`` (or ``[n, 2]`` for pairs) example ids to report; default
            ``arange(n)``.
        name: what is compared; its published threshold (`THRESHOLDS`) is the default
            `threshold`.
        top_k: size of the top sets compared (at most the number of common examples).
        threshold: count entries >= this in each; None: `THRESHOLDS` of `name`, if any.
        num_disagreements: largest disagreements to list.

    Raises:
        ValueError: lengths differ, `top_k` < 1, or no example is defined in both.
    """
    ours = np.asarray(ours, np.float64)
    published = np.asarray(published, np.float64)
    if ours.shape != published.shape or ours.ndim != 1:
        raise ValueError(f"ours and published must be vectors of equal length, got shapes "
                         f"{ours.shape} and {published.shape}")
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected a positive number")
    if num_disagreements < 0:
        raise ValueError(f"num_disagreements={num_disagreements}: expected >= 0")
    ids = np.arange(len(ours)) if ids is None else np.asarray(ids)
    if len(ids) != len(ours):
        raise ValueError(f"ids has {len(ids)} entries, the estimates {len(ours)}")
    defined = np.isfinite(ours) & np.isfinite(published)
    if not defined.any():
        raise ValueError(f"{name}: no example has both estimates defined")
    ours, published, ids = ours[defined], published[defined], ids[defined]
    n = len(ours)
    spearman = pearson = (float("nan"), float("nan"))
    if n >= 3 and np.ptp(ours) > 0 and np.ptp(published) > 0:
        spearman = tuple(map(float, scipy.stats.spearmanr(ours, published)))
        pearson = tuple(map(float, scipy.stats.pearsonr(ours, published)))
    k = min(top_k, n)
    top_ours = np.argsort(-ours, kind="stable")[:k]
    top_published = np.argsort(-published, kind="stable")[:k]
    if threshold is None:
        threshold = THRESHOLDS.get(name)
    above_ours = ours >= threshold if threshold is not None else np.zeros(n, bool)
    above_published = published >= threshold if threshold is not None else np.zeros(n, bool)
    gap = np.abs(ours - published)
    return Comparison(
        name=name, ids=ids, ours=ours, published=published, num_dropped=int((~defined).sum()),
        spearman=spearman[0], spearman_p=spearman[1], pearson=pearson[0],
        pearson_p=pearson[1], top_k=k,
        top_k_overlap=len(np.intersect1d(top_ours, top_published)), threshold=threshold,
        above_ours=int(above_ours.sum()), above_published=int(above_published.sum()),
        above_both=int((above_ours & above_published).sum()),
        disagreements=np.argsort(-gap, kind="stable")[:num_disagreements])


def format_comparison(comparison: Comparison) -> str:
    """A few readable lines: correlations, top-k, threshold counts, largest disagreements."""
    c = comparison
    lines = [f"{c.name}: {c.num_common} examples in both"
             + (f" ({c.num_dropped} undefined in one, left out)" if c.num_dropped else ""),
             f"  Spearman {c.spearman:.3f} (p={c.spearman_p:.2g}), Pearson {c.pearson:.3f} "
             f"(p={c.pearson_p:.2g})",
             f"  top-{c.top_k}: {c.top_k_overlap} in both ({c.top_k_agreement:.0%})"]
    if c.threshold is not None:
        lines.append(f"  >= {c.threshold:g}: ours {c.above_ours}, published "
                     f"{c.above_published}, both {c.above_both}")
    if len(c.disagreements):
        lines.append("  largest disagreements (example: ours vs published):")
        for position in c.disagreements:
            lines.append(f"    {_id_text(c.ids[position])}: {c.ours[position]:+.3f} vs "
                         f"{c.published[position]:+.3f}")
    return "\n".join(lines)


def plot_comparison(comparison: Comparison, path: str) -> str:
    """Scatter PNG of ours (x) against published (y), with the threshold lines."""
    c = comparison
    return plots.plot_estimate_scatter(
        c.ours, c.published, path, x_label=f"{c.name} (ours)",
        y_label=f"{c.name} (published)", threshold=c.threshold,
        title=f"{c.name}: Spearman {c.spearman:.3f}, Pearson {c.pearson:.3f}, "
              f"n={c.num_common}")


def compare_to_published(estimates: Estimates, published_path: str, data: Dataset | None = None,
                         *, top_k: int = DEFAULT_TOP_K,
                         num_disagreements: int = DEFAULT_DISAGREEMENTS) -> list[Comparison]:
    """Compares `estimates` with a published file, for every estimate both have.

    * class-wise influence file (``*_infl_matrix.npz``): memorization against ``tr_mem``;
      influence (dense output) against every class block entry whose test example we
      estimated.
    * high-influence pairs: memorization of their training examples, and influence of
      the pairs (dense output, or our top-k where the pair is in it).
    * C-score file: our training C-scores against ``scores``.
    * ImageNet index: memorization against ``tr_mem`` (same order as the runs).

    Published CIFAR files are in the original data order; when `data` has an original
    index (TFDS ``id``), indices are mapped to `data`'s order and labels checked (class-wise
    and C-score files carry labels). Without it, the orders are taken to be the same.

    Raises:
        ValueError: the file is not a published one, the estimates lack what it compares
            (names the estimator), or labels disagree.
    """
    kind = published_lib.detect_kind(published_path)
    options = dict(top_k=top_k, num_disagreements=num_disagreements)
    comparisons = []
    if kind == "classwise":
        classwise = published_lib.load_classwise_influence(published_path)
        train_pos = _positions(data, "train", classwise.tr_labels, published_path)
        test_pos = _positions(data, "test", classwise.tt_labels, published_path)
        mem = np.full(len(classwise.tr_mem), np.nan)
        mem[train_pos[np.arange(len(mem))]] = classwise.tr_mem
        comparisons.append(compare_estimates(_memorization(estimates), mem, **options))
        if estimates.influence is not None and estimates.influence.matrix is not None:
            ours, theirs, ids = [], [], []
            column_of = _column_lookup(estimates.influence.eval_indices,
                                       len(classwise.tt_labels))
            for matrix, rows, columns in zip(classwise.matrices, classwise.train_indices,
                                             classwise.test_indices, strict=True):
                r, t = train_pos[rows], column_of[test_pos[columns]]
                keep = t >= 0
                block = estimates.influence.matrix[np.ix_(r, t[keep])]
                ours.append(block.ravel())
                theirs.append(matrix[:, keep].ravel())
                ids.append(np.stack(np.broadcast_arrays(
                    r[:, None], test_pos[columns][keep][None]), -1).reshape(-1, 2))
            comparisons.append(compare_estimates(
                np.concatenate(ours), np.concatenate(theirs), ids=np.concatenate(ids),
                name="influence", **options))
    elif kind == "pairs":
        pairs = published_lib.load_high_influence_pairs(published_path)
        train_pos = _positions(data, "train", None, published_path)
        test_pos = _positions(data, "test", None, published_path)
        tr, tt = train_pos[pairs.tr_idx], test_pos[pairs.tt_idx]
        unique, first = np.unique(tr, return_index=True)
        comparisons.append(compare_estimates(
            _memorization(estimates)[unique], pairs.mem[first], ids=unique, **options))
        if estimates.influence is not None:
            comparisons.append(compare_estimates(
                _influence_at(estimates, tr, tt), pairs.infl, ids=np.stack([tr, tt], -1),
                name="influence", **options))
    elif kind == "cscores":
        scores = published_lib.load_cscores(published_path)
        if estimates.cscore is None:
            raise ValueError(f"--compare_to={published_path}: a C-score file needs "
                             "--estimator=cscore")
        train_pos = _positions(data, "train", scores.labels, published_path)
        theirs = np.full(len(scores.scores), np.nan)
        theirs[train_pos[np.arange(len(theirs))]] = scores.scores
        comparisons.append(compare_estimates(estimates.cscore.train, theirs, name="cscore",
                                             **options))
    else:  # imagenet_index: the runs' own order
        index = published_lib.load_imagenet_index(published_path)
        if index.tr_mem is None:
            raise ValueError(f"{published_path}: has no tr_mem to compare with")
        comparisons.append(compare_estimates(_memorization(estimates), index.tr_mem,
                                             **options))
    return comparisons


def _id_text(value: np.ndarray) -> str:
    value = np.atleast_1d(value)
    return f"train {value[0]} -> test {value[1]}" if len(value) == 2 else f"train {value[0]}"


def _memorization(estimates: Estimates) -> np.ndarray:
    if estimates.memorization is None:
        raise ValueError("comparing with published memorization needs --estimator="
                         "memorization")
    return estimates.memorization.score


def _positions(data: Dataset | None, split: str, labels: np.ndarray | None, path: str):
    """Position in `data`'s split of each original index: an array indexed by original
    index, or the identity when `data` has no original index (orders taken as equal)."""
    original = None if data is None else getattr(data, f"original_index_{split}")
    if original is None:
        return _Identity()
    if labels is not None:  # checks labels, names the first mismatch
        published_lib.to_dataset_order(np.zeros(len(labels)), labels, data, split, path)
    positions = np.empty(len(original), np.int64)
    positions[original] = np.arange(len(original))
    return positions


class _Identity:
    """Stands for ``arange(n)``: indexing returns the indices."""

    def __getitem__(self, indices):
        return np.asarray(indices)


def _column_lookup(eval_indices: np.ndarray, num_test: int) -> np.ndarray:
    """Column of each test index in our influence arrays, -1 where not estimated."""
    lookup = np.full(max(num_test, int(eval_indices.max()) + 1), -1, np.int64)
    lookup[eval_indices] = np.arange(len(eval_indices))
    return lookup


def _influence_at(estimates: Estimates, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Our influence of each (train, test) pair; NaN where we did not estimate it."""
    influence = estimates.influence
    column_of = _column_lookup(influence.eval_indices, int(test.max()) + 1)
    columns = column_of[test]
    known = columns >= 0
    result = np.full(len(train), np.nan)
    if influence.matrix is not None:
        result[known] = influence.matrix[train[known], columns[known]]
        return result
    for i in np.flatnonzero(known):  # top-k only: the pair's score if it is in the top-k
        hit = np.flatnonzero(influence.top.train[columns[i]] == train[i])
        if len(hit):
            result[i] = influence.top.score[columns[i], hit[0]]
    return result


def summary_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """`format_comparison` of each, as lines."""
    return [line for c in comparisons for line in format_comparison(c).splitlines()]
