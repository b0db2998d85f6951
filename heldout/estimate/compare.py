"""Our estimates beside the published ones: correlation, top-k and threshold agreement.

A researcher who trained their own CIFAR-100 runs wants to know at once how close their
memorization and influence estimates came to Feldman & Zhang's.
`compare_estimates` compares two aligned vectors of one estimate (Spearman and Pearson
with scipy, overlap of the top-k, counts above the published thresholds found by each,
the largest disagreements by example); `format_comparison` prints it;
`plot_comparison` draws the scatter. `compare_to_published` does the alignment for
each kind of published file (`heldout.store.published`), in the data set's order.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence

import numpy as np
import scipy.stats

from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
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


# What each kind of published file compares, and the estimator that must be computed.
_NEEDED_ESTIMATOR = {"classwise": "memorization", "pairs": "memorization",
                     "imagenet_index": "memorization", "cscores": "cscore"}
PARAMETER = "compare_to"


def check_comparable(published_path: str, num_train: int, num_test: int, *,
                     data: Dataset | None = None, estimators: Sequence[str] | None = None,
                     imagenet_index: str | None = None) -> str:
    """Checks, before anything is computed or written, that `published_path` can be
    compared with estimates of a data set of `num_train` training and `num_test` test
    examples; returns its kind (`published.detect_kind`).

    The file is read (safely: no pickle) and its indices and lengths are checked against
    the data set: a pairs file whose ``tr_idx``/``tt_idx`` fall outside it, a C-score file
    or class-wise file of another size, or an ImageNet C-score file whose file names are
    not in `imagenet_index`, is refused here rather than failing after the estimates
    are saved.

    Args:
        published_path: the published file.
        num_train, num_test: sizes of the data set's splits (the runs' index space).
        data: the data set, if loaded: with an original index (TFDS ``id``), CIFAR files
            in the original order are mapped through it and their labels checked.
        estimators: the estimators that will be computed; None: not checked.
        imagenet_index: the published ``imagenet_index.npz``, needed to place the
            ImageNet C-scores (ordered by file name) in the runs' order.

    Raises:
        ParameterError: (parameter ``compare_to``, or ``imagenet_index``) one line naming
            the file and what does not fit.
    """
    return _checked(published_path, num_train, num_test, data, estimators, imagenet_index)[0]


def check_estimates_comparable(published_path: str, estimates: Estimates,
                               data: Dataset | None = None,
                               imagenet_index: str | None = None) -> str:
    """`check_comparable` for estimates already computed (merged parts, say), with the
    sizes and estimators taken from them: call it before they are saved."""
    num_train, num_test = _sizes(estimates, data)
    return _checked(published_path, num_train, num_test, data, _computed(estimates),
                    imagenet_index)[0]


def _checked(path: str, num_train: int, num_test: int, data: Dataset | None,
             estimators: Sequence[str] | None, imagenet_index: str | None
             ) -> tuple[str, _Aligned]:
    """`check_comparable`'s work: the kind and the file placed in the data set's order."""
    try:
        kind = published_lib.detect_kind(path)
        if estimators is not None and _NEEDED_ESTIMATOR[kind] not in estimators:
            raise ValueError(f"{path}: a {kind} file compares {_NEEDED_ESTIMATOR[kind]}, "
                             "which is not among the estimators "
                             f"({', '.join(estimators) or 'none'})")
        return kind, _load_aligned(path, kind, num_train, num_test, data, imagenet_index)
    except ParameterError:
        raise
    except ValueError as e:
        raise ParameterError(PARAMETER, str(e)) from None


@dataclasses.dataclass(frozen=True)
class _Aligned:
    """A published file's values placed at positions of the data set (NaN: absent)."""

    memorization: np.ndarray | None = None  # [num_train]
    cscore: np.ndarray | None = None  # [num_train]
    pairs: published_lib.HighInfluencePairs | None = None  # positions in the data set
    classwise: published_lib.ClasswiseInfluence | None = None
    train_pos: object = None
    test_pos: object = None


def _load_aligned(path: str, kind: str, num_train: int, num_test: int, data: Dataset | None,
                  imagenet_index: str | None) -> _Aligned:
    """Reads the published file and places it in the data set's order, checking it fits."""
    if kind == "classwise":
        classwise = published_lib.load_classwise_influence(path)
        _check_size(path, "tr_labels", len(classwise.tr_labels), num_train, "training")
        _check_size(path, "tt_labels", len(classwise.tt_labels), num_test, "test")
        train_pos = _positions(data, "train", classwise.tr_labels, path)
        test_pos = _positions(data, "test", classwise.tt_labels, path)
        mem = np.full(num_train, np.nan)
        mem[train_pos[np.arange(num_train)]] = classwise.tr_mem
        return _Aligned(memorization=mem, classwise=classwise, train_pos=train_pos,
                        test_pos=test_pos)
    if kind == "pairs":
        pairs = published_lib.load_high_influence_pairs(path)
        for key, values, size, split in (("tr_idx", pairs.tr_idx, num_train, "training"),
                                         ("tt_idx", pairs.tt_idx, num_test, "test")):
            if len(values) and (values.min() < 0 or values.max() >= size):
                bad = values[(values < 0) | (values >= size)][0]
                raise ValueError(f"{path}: {key} holds index {bad}, outside the {size} "
                                 f"{split} examples of the data set (a file of another "
                                 "data set?)")
        train_pos = _positions(data, "train", None, path)
        test_pos = _positions(data, "test", None, path)
        return _Aligned(pairs=dataclasses.replace(
            pairs, tr_idx=train_pos[pairs.tr_idx], tt_idx=test_pos[pairs.tt_idx]))
    if kind == "cscores":
        scores = published_lib.load_cscores(path)
        _check_size(path, "scores", len(scores.scores), num_train, "training")
        if scores.filenames is not None:
            return _Aligned(cscore=_by_filename(path, scores, imagenet_index))
        if scores.dataset_order:
            return _Aligned(cscore=scores.scores)
        train_pos = _positions(data, "train", scores.labels, path)
        theirs = np.full(num_train, np.nan)
        theirs[train_pos[np.arange(num_train)]] = scores.scores
        return _Aligned(cscore=theirs)
    index = published_lib.load_imagenet_index(path)  # imagenet_index: the runs' own order
    _check_size(path, "tr_filenames", len(index.tr_filenames), num_train, "training")
    if index.tr_mem is None:
        raise ValueError(f"{path}: has no tr_mem to compare with")
    return _Aligned(memorization=index.tr_mem)


def _check_size(path: str, key: str, size: int, expected: int, split: str) -> None:
    if size != expected:
        raise ValueError(f"{path}: {key} has {size} entries, the data set has {expected} "
                         f"{split} examples (a file of another data set?)")


def _by_filename(path: str, scores: published_lib.CScores, imagenet_index: str | None
                 ) -> np.ndarray:
    """ImageNet C-scores (one per file name) in the order of the published index."""
    if imagenet_index is None:
        raise ParameterError(
            "imagenet_index", f"{path} orders its C-scores by file name; the published "
                              "imagenet_index.npz is needed to place them in the runs' order")
    index = published_lib.load_imagenet_index(imagenet_index)
    position = {posixpath.basename(name): i for i, name in enumerate(index.tr_filenames)}
    if len(position) != len(index.tr_filenames):
        raise ParameterError("imagenet_index", "repeats a training file name",
                                    imagenet_index)
    result = np.full(len(index.tr_filenames), np.nan)
    rows = np.array([position.get(posixpath.basename(name), -1) for name in scores.filenames])
    if (rows < 0).any():
        missing = scores.filenames[int(np.flatnonzero(rows < 0)[0])]
        raise ValueError(f"{path}: file name {missing} is not in {imagenet_index}")
    labels = index.tr_labels[rows]
    differ = np.flatnonzero(labels != scores.labels)
    if len(differ):
        i = differ[0]
        raise ValueError(f"{path}: {scores.filenames[i]} has label {scores.labels[i]}, "
                         f"{imagenet_index} says {labels[i]}")
    result[rows] = scores.scores
    return result


def compare_to_published(estimates: Estimates, published_path: str, data: Dataset | None = None,
                         *, top_k: int = DEFAULT_TOP_K,
                         num_disagreements: int = DEFAULT_DISAGREEMENTS,
                         imagenet_index: str | None = None) -> list[Comparison]:
    """Compares `estimates` with a published file, for every estimate both have.

    * class-wise influence file (``*_infl_matrix.npz``): memorization against ``tr_mem``;
      influence (dense output) against every class block entry whose test example we
      estimated.
    * high-influence pairs: memorization of their training examples, and influence of
      the pairs (dense output, or our top-k where the pair is in it).
    * C-score file: our training C-scores against ``scores`` (CIFAR: original order;
      MNIST's bare ``.npy``: TFDS order; ImageNet: by file name through
      `imagenet_index`).
    * ImageNet index: memorization against ``tr_mem`` (same order as the runs).

    Published CIFAR files are in the original data order; when `data` has an original
    index (TFDS ``id``), indices are mapped to `data`'s order and labels checked (class-wise
    and C-score files carry labels). Without it, the orders are taken to be the same.
    Everything `check_comparable` checks is checked first; call it before computing to
    refuse an unusable file before any output is written.

    Raises:
        ValueError: the file is not a published one or does not fit the data set, the
            estimates lack what it compares (names the estimator), or labels disagree.
    """
    num_train, num_test = _sizes(estimates, data)
    _, aligned = _checked(published_path, num_train, num_test, data, _computed(estimates),
                          imagenet_index)
    options = dict(top_k=top_k, num_disagreements=num_disagreements)
    comparisons = []
    if aligned.memorization is not None:
        comparisons.append(compare_estimates(_memorization(estimates), aligned.memorization,
                                             **options))
    if aligned.cscore is not None:
        comparisons.append(compare_estimates(estimates.cscore.train, aligned.cscore,
                                             name="cscore", **options))
    classwise = aligned.classwise
    if (classwise is not None and estimates.influence is not None
            and estimates.influence.matrix is not None):
        ours, theirs, ids = [], [], []
        train_pos, test_pos = aligned.train_pos, aligned.test_pos
        column_of = _column_lookup(estimates.influence.eval_indices, num_test)
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
    if aligned.pairs is not None:
        tr, tt = aligned.pairs.tr_idx, aligned.pairs.tt_idx
        unique, first = np.unique(tr, return_index=True)
        comparisons.append(compare_estimates(
            _memorization(estimates)[unique], aligned.pairs.mem[first], ids=unique,
            **options))
        if estimates.influence is not None:
            comparisons.append(compare_estimates(
                _influence_at(estimates, tr, tt), aligned.pairs.infl,
                ids=np.stack([tr, tt], -1), name="influence", **options))
    return comparisons


def _computed(estimates: Estimates) -> tuple[str, ...]:
    return tuple(name for name in ("memorization", "cscore")
                 if getattr(estimates, name) is not None)


def _sizes(estimates: Estimates, data: Dataset | None) -> tuple[int, int]:
    """(num_train, num_test) of the data set the estimates are of."""
    if data is not None:
        return data.num_train, data.num_test
    num_train = num_test = 0
    if estimates.memorization is not None:
        num_train = len(estimates.memorization.score)
    if estimates.cscore is not None:
        num_train, num_test = len(estimates.cscore.train), len(estimates.cscore.test)
    if estimates.influence is not None:
        num_test = max(num_test, int(estimates.influence.eval_indices.max()) + 1)
        if estimates.influence.matrix is not None:
            num_train = estimates.influence.matrix.shape[0]
    return num_train, num_test


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
    index, or the identity when `data` has no original index of its split alone (orders
    taken as equal: the data set's own index, which runs store).

    Published files number each split 0..n-1 in the original order (CIFAR's ``id``
    ``train_<n>``); an original index that is not a permutation of its split's range
    (the digits' rows of ``load_digits``, train and test interleaved) is not that order.
    """
    original = None if data is None else getattr(data, f"original_index_{split}")
    if original is None or not _is_permutation(original):
        if data is not None and labels is not None:  # same order: the labels must agree
            ours = getattr(data, f"y_{split}")
            differ = np.flatnonzero(np.asarray(labels) != ours) if len(labels) == len(
                ours) else np.array([min(len(labels), len(ours))])
            if len(differ):
                i = int(differ[0])
                raise ValueError(f"{path}: labels disagree with {data.name} at {split} index "
                                 f"{i} (file label {labels[i] if i < len(labels) else '-'}, "
                                 f"data set label {ours[i] if i < len(ours) else '-'})")
        return _Identity()
    if labels is not None:  # checks labels, names the first mismatch
        published_lib.to_dataset_order(np.zeros(len(labels)), labels, data, split, path)
    positions = np.empty(len(original), np.int64)
    positions[original] = np.arange(len(original))
    return positions


def _is_permutation(values: np.ndarray) -> bool:
    """Whether `values` holds each of ``0..len(values)-1`` once."""
    seen = np.zeros(len(values), bool)
    inside = (values >= 0) & (values < len(values))
    seen[values[inside]] = True
    return bool(inside.all() and seen.all())


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
