"""Readers of the published precomputed estimates and C-scores, checked on load.

Feldman & Zhang (2020) published, on their project page (``data/``):

* ``{cifar100,imagenet}_high_infl_pairs_infl0.15_mem0.25.npz``: the train/test pairs with
  influence >= 0.15 whose training example has memorization >= 0.25
  (`load_high_influence_pairs`).
* ``{cifar100,imagenet}_infl_matrix.npz``: memorization of every training example and,
  per class, the influence of that class's training examples on its test examples
  (`load_classwise_influence`, `dense_influence`).
* ``imagenet_index.npz``: the data order of the released ImageNet runs
  (`load_imagenet_index`).

Jiang et al. (2021) published C-scores (``cscores/``): ``cifar{10,100}-cscores-orig-order.npz``
and ``imagenet-cscores-with-filename.npz`` (`load_cscores`).

The CIFAR files are in the **original** data order (the order of the python pickles,
also torchvision's), not TFDS's. `to_dataset_order` maps them to a `Dataset`'s order
through its ``original_index`` (TFDS's ``id`` feature), checking the labels agree.

Every loader raises a one-line `ValueError` naming the file and the first missing key
(or the inconsistency) rather than a KeyError deep inside an analysis.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from heldout.data import imagenet as imagenet_lib
from heldout.data.dataset import Dataset
from heldout.data.imagenet import ImagenetIndex, load_imagenet_index

__all__ = ["HighInfluencePairs", "ClasswiseInfluence", "CScores", "ImagenetIndex",
           "load_high_influence_pairs", "load_classwise_influence", "dense_influence",
           "load_imagenet_index", "load_cscores", "to_dataset_order", "detect_kind",
           "PAIRS_KEYS", "CLASSWISE_KEYS", "CSCORE_KEYS"]

PAIRS_KEYS = ("tr_idx", "tt_idx", "infl", "mem")
CLASSWISE_KEYS = ("tr_mem", "tr_labels", "tt_labels")
CSCORE_KEYS = ("labels", "scores")
# The published selection of high-influence pairs.
PUBLISHED_MEM_THRESHOLD = 0.25
PUBLISHED_INFL_THRESHOLD = 0.15
_CLASS_MATRIX = re.compile(r"infl_matrix_class(\d+)$")
_DENSE_MAX_BYTES = 8 << 30  # refuse to assemble a bigger dense matrix by default
_BARE_ARRAY = "arr_0"  # the one key of a bare .npy read as an .npz


@dataclasses.dataclass(frozen=True)
class HighInfluencePairs:
    """Published high-influence pairs, each array ``[num_pairs]``.

    Attributes:
        tr_idx: int64 training indices. tt_idx: int64 test indices.
        infl: float64 influence of ``tr_idx`` on ``tt_idx``.
        mem: float64 memorization of ``tr_idx``.
    """

    tr_idx: np.ndarray
    tt_idx: np.ndarray
    infl: np.ndarray
    mem: np.ndarray


@dataclasses.dataclass(frozen=True)
class ClasswiseInfluence:
    """A published class-wise influence file.

    Attributes:
        tr_mem: float64 ``[num_train]`` memorization of every training example.
        tr_labels: int64 ``[num_train]``. tt_labels: int64 ``[num_test]``.
        matrices: per class K, ``[len(train_indices[K]), len(test_indices[K])]`` influence
            of the class's training examples on its test examples.
        train_indices: per class K, training indices of the rows (``tr_classidx_K``).
        test_indices: per class K, test indices of the columns (``tt_classidx_K``).
    """

    tr_mem: np.ndarray
    tr_labels: np.ndarray
    tt_labels: np.ndarray
    matrices: list[np.ndarray]
    train_indices: list[np.ndarray]
    test_indices: list[np.ndarray]

    @property
    def num_classes(self) -> int:
        return len(self.matrices)


@dataclasses.dataclass(frozen=True)
class CScores:
    """Published C-scores, each ``[num_train]``.

    Attributes:
        labels: int64 labels, or None for a file without them (MNIST's bare array).
        scores: float64 C-scores.
        filenames: ImageNet file names (str), or None for files without them.
        dataset_order: True when the scores are already in the data set's order (MNIST's
            ``mnist-cscores.npy`` is in TFDS order); False for the original data order
            (CIFAR) or, with `filenames`, an order given by the file names (ImageNet).
    """

    labels: np.ndarray | None
    scores: np.ndarray
    filenames: list[str] | None = None
    dataset_order: bool = False


def load_high_influence_pairs(path: str) -> HighInfluencePairs:
    """Reads a ``*_high_infl_pairs_*.npz`` (keys ``tr_idx, tt_idx, infl, mem``).

    Raises:
        ValueError: a key is missing, or the arrays differ in length.
    """
    arrays = imagenet_lib.read_npz_keys(path, PAIRS_KEYS, "high-influence pairs file")
    _same_length(path, arrays, PAIRS_KEYS)
    return HighInfluencePairs(
        tr_idx=arrays["tr_idx"].astype(np.int64), tt_idx=arrays["tt_idx"].astype(np.int64),
        infl=arrays["infl"].astype(np.float64), mem=arrays["mem"].astype(np.float64))


def load_classwise_influence(path: str) -> ClasswiseInfluence:
    """Reads a class-wise ``*_infl_matrix.npz``.

    The classes are 0..K-1 with K the number of ``infl_matrix_class{K}`` keys; each class
    needs all three of ``infl_matrix_class{K}``, ``tr_classidx_{K}``, ``tt_classidx_{K}``.

    Raises:
        ValueError: a key is missing (the first, named), or a matrix's shape does not fit
            its index arrays, or an index is out of range.
    """
    what = "class-wise influence file"
    arrays = imagenet_lib.read_npz_keys(path, CLASSWISE_KEYS, what)
    classes = sorted(int(m.group(1)) for key in arrays if (m := _CLASS_MATRIX.match(key)))
    num_classes = max(classes[-1] + 1 if classes else 0,
                      int(arrays["tr_labels"].max()) + 1 if len(arrays["tr_labels"]) else 0)
    required = [key for k in range(num_classes)
                for key in (f"infl_matrix_class{k}", f"tr_classidx_{k}", f"tt_classidx_{k}")]
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a {what}: missing key {missing[0]!r}")
    if len(arrays["tr_mem"]) != len(arrays["tr_labels"]):
        raise ValueError(f"{path}: tr_mem has {len(arrays['tr_mem'])} entries but tr_labels "
                         f"has {len(arrays['tr_labels'])}")
    matrices, train_indices, test_indices = [], [], []
    num_train, num_test = len(arrays["tr_labels"]), len(arrays["tt_labels"])
    for k in range(num_classes):
        matrix = arrays[f"infl_matrix_class{k}"]
        rows = arrays[f"tr_classidx_{k}"].astype(np.int64)
        columns = arrays[f"tt_classidx_{k}"].astype(np.int64)
        if matrix.shape != (len(rows), len(columns)):
            raise ValueError(f"{path}: infl_matrix_class{k} has shape {list(matrix.shape)}, "
                             f"expected [len(tr_classidx_{k}), len(tt_classidx_{k})] = "
                             f"[{len(rows)}, {len(columns)}]")
        for key, values, size in ((f"tr_classidx_{k}", rows, num_train),
                                  (f"tt_classidx_{k}", columns, num_test)):
            if len(values) and (values.min() < 0 or values.max() >= size):
                raise ValueError(f"{path}: {key} holds indices outside [0, {size})")
        matrices.append(matrix)
        train_indices.append(rows)
        test_indices.append(columns)
    return ClasswiseInfluence(
        tr_mem=arrays["tr_mem"].astype(np.float64),
        tr_labels=arrays["tr_labels"].astype(np.int64),
        tt_labels=arrays["tt_labels"].astype(np.int64),
        matrices=matrices, train_indices=train_indices, test_indices=test_indices)


def dense_influence(classwise: ClasswiseInfluence, dtype: type = np.float32,
                    fill_value: float = np.nan, max_bytes: int = _DENSE_MAX_BYTES
                    ) -> np.ndarray:
    """The ``[num_train, num_test]`` influence matrix assembled from the class blocks.

    Pairs of different classes were not estimated and hold `fill_value`. At CIFAR-100
    size (50,000 x 10,000) the float32 result is 2 GB; at ImageNet size it does not fit,
    so work with the class blocks there.

    Raises:
        ValueError: the result would exceed `max_bytes`.
    """
    shape = (len(classwise.tr_labels), len(classwise.tt_labels))
    size = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if size > max_bytes:
        raise ValueError(f"max_bytes={max_bytes}: the dense {shape[0]} x {shape[1]} influence "
                         f"matrix needs {size:,} bytes; use the class blocks instead")
    dense = np.full(shape, fill_value, dtype=dtype)
    for matrix, rows, columns in zip(classwise.matrices, classwise.train_indices,
                                     classwise.test_indices, strict=True):
        dense[np.ix_(rows, columns)] = matrix
    return dense


def load_cscores(path: str, require_filenames: bool = False) -> CScores:
    """Reads a published C-score file.

    Accepts ``cifar{10,100}-cscores-orig-order.npz`` (``labels``, ``scores``, original
    order), ``imagenet-cscores-with-filename.npz`` (also ``filenames``) and
    ``mnist-cscores.npy`` (a bare float array of scores in TFDS order, no labels).

    Raises:
        ValueError: a key is missing (``filenames`` only with `require_filenames`), the
            arrays differ in length, or the scores are not finite numbers in [0, 1]
            (NaN allowed for examples without one).
    """
    required = CSCORE_KEYS + (("filenames",) if require_filenames else ())
    arrays = imagenet_lib.read_npz_keys(path, (), "C-score file")
    if set(arrays) == {_BARE_ARRAY} and not require_filenames:
        return CScores(labels=None, scores=_scores(path, arrays[_BARE_ARRAY]),
                       dataset_order=True)
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a C-score file: missing key {missing[0]!r} "
                         f"(has {', '.join(sorted(arrays)) or 'no keys'})")
    _same_length(path, arrays, tuple(key for key in (*CSCORE_KEYS, "filenames")
                                     if key in arrays))
    filenames = arrays.get("filenames")
    return CScores(labels=_integers(path, "labels", arrays["labels"]),
                   scores=_scores(path, arrays["scores"]),
                   filenames=None if filenames is None else imagenet_lib.as_strings(
                       filenames))


def _scores(path: str, values: np.ndarray) -> np.ndarray:
    """C-scores as float64 ``[n]``, checked: numbers in [0, 1] or NaN."""
    if values.ndim != 1 or values.dtype.kind not in "fiu":
        raise ValueError(f"{path}: C-scores must be a vector of numbers, got dtype "
                         f"{values.dtype} and shape {list(values.shape)}")
    scores = values.astype(np.float64)
    bad = np.flatnonzero(np.isinf(scores) | (scores < 0) | (scores > 1))
    if len(bad):
        raise ValueError(f"{path}: C-score {scores[bad[0]]} at position {bad[0]} is not in "
                         "[0, 1]")
    return scores


def _integers(path: str, key: str, values: np.ndarray) -> np.ndarray:
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key} must be a vector of integers, got dtype "
                         f"{values.dtype} and shape {list(values.shape)}")
    return values.astype(np.int64)


def detect_kind(path: str) -> str:
    """Which published file `path` is, from its keys: ``pairs``, ``classwise``,
    ``imagenet_index`` or ``cscores``.

    Raises:
        ValueError: the keys fit none of them.
    """
    keys = set(imagenet_lib.read_npz_keys(path, (), "published file"))
    if keys == {_BARE_ARRAY}:  # a bare .npy: MNIST's C-scores
        return "cscores"
    # The ImageNet index also has tr_mem, tr_labels and tt_labels: test it before the
    # class-wise file.
    for kind, required in (("pairs", PAIRS_KEYS),
                           ("imagenet_index", imagenet_lib.INDEX_FILE_KEYS),
                           ("classwise", CLASSWISE_KEYS), ("cscores", CSCORE_KEYS)):
        if set(required) <= keys:
            return kind
    raise ValueError(f"{path}: not a published estimates file (keys {', '.join(sorted(keys))}"
                     "; expected the keys of high-influence pairs, a class-wise influence "
                     "matrix, the ImageNet index or C-scores)")


def to_dataset_order(values: np.ndarray, labels_original: np.ndarray, data: Dataset,
                     split: str = "train", name: str = "values") -> np.ndarray:
    """Reorders per-example `values` from the original data order to `data`'s order.

    Row ``i`` of the result is the example at position ``i`` of `data`'s split, whose
    original index is ``data.original_index_<split>[i]`` (TFDS ``id`` ``train_<n>``).

    Args:
        values: ``[num_examples, ...]`` in the original order (a published file's).
        labels_original: ``[num_examples]`` labels in the original order (the file's), checked
            against `data`'s labels after reordering.
        data: the data set whose order is wanted; needs its original index.
        split: ``train`` or ``test``.
        name: what `values` are, for messages.

    Raises:
        ValueError: `data` has no original index, sizes differ, or a label disagrees (names
            the first differing position and its original index).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    original = getattr(data, f"original_index_{split}")
    labels = getattr(data, f"y_{split}")
    if original is None:
        raise ValueError(f"{data.name}: has no original index for its {split} split (TFDS "
                         "'id' feature), so published files in the original order cannot be "
                         "mapped to it")
    if len(values) != len(labels_original) or len(values) != len(original):
        raise ValueError(f"{name}: {len(values)} values and {len(labels_original)} labels for "
                         f"the {len(original)} {split} examples of {data.name}")
    if original.min() < 0 or original.max() >= len(values):
        raise ValueError(f"{data.name}: original indices outside [0, {len(values)})")
    mapped = np.asarray(labels_original)[original]
    differ = np.flatnonzero(mapped != labels)
    if len(differ):
        i = differ[0]
        raise ValueError(f"{name}: labels disagree with {data.name} at {split} index {i} "
                         f"(original index {original[i]}): file label {mapped[i]}, data set "
                         f"label {labels[i]}")
    return np.asarray(values)[original]


def _same_length(path: str, arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> None:
    lengths = {key: len(arrays[key]) for key in keys}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: arrays differ in length ("
                         + ", ".join(f"{k} {n}" for k, n in lengths.items()) + ")")
