"""Dataset: the train and test arrays of one data set, with a stable per-example index.

A `Dataset` checks its arrays when it is made, so nothing downstream trains on them
unchecked: finite real inputs, integer labels in ``[0, num_classes)``, train and test
examples of one shape. The sources also refuse empty splits (`check_not_empty`) and
bound the class count (`check_class_count`): a stray label of 1,000,000 would otherwise build a
million-way output layer before anything fails.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from heldout.errors import ParameterError

# Most classes a data set may have unless the caller raises the limit (`max_classes`).
DEFAULT_MAX_CLASSES = 10_000


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one data set.

    Attributes:
        name: the source spec this data set was loaded from (``digits``, ``npz:...``).
        x_train: float32 inputs ``[num_train, ...]`` (images NHWC, or flat vectors).
        y_train: int64 labels ``[num_train]``.
        x_test: float32 inputs ``[num_test, ...]``.
        y_test: int64 labels ``[num_test]``.
        num_classes: number of classes; labels are in ``[0, num_classes)``.
        original_index_train: where each training example sits in the original
            distribution of the data (e.g. TFDS ``id`` feature or ``load_digits`` row),
            or None when the source has no such notion.
        original_index_test: the same for the test examples.

    The stable per-example ``index`` of a split is the position in its arrays
    (``index_train[i] == i``): it is what run files store.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    original_index_train: np.ndarray | None = None
    original_index_test: np.ndarray | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            _check_split(self.name, split, getattr(self, f"x_{split}"),
                         getattr(self, f"y_{split}"), self.num_classes)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"dataset={self.name}: x_test holds examples of shape "
                f"{self.x_test.shape[1:]} but x_train of shape {self.x_train.shape[1:]}; "
                "expected one shape")

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    @property
    def index_train(self) -> np.ndarray:
        return np.arange(self.num_train, dtype=np.int64)

    @property
    def index_test(self) -> np.ndarray:
        return np.arange(self.num_test, dtype=np.int64)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def check_not_empty(data: Dataset) -> None:
    """Refuses a data set with no training or no test example (nothing to train or to
    evaluate). Not part of `Dataset` itself: trainers use empty ones to carry shapes.

    Raises:
        ValueError: naming the empty split.
    """
    for split in ("train", "test"):
        if len(getattr(data, f"y_{split}")) == 0:
            raise ParameterError("dataset", f"x_{split} is empty; expected at least one "
                                 f"{split} example", data.name)


def check_class_count(source: str, num_classes: int,
                      max_classes: int = DEFAULT_MAX_CLASSES) -> None:
    """Refuses a class count above `max_classes` (a model gets one output per class).

    Raises:
        ParameterError: (``max_classes``, the parameter that raises the limit) naming the
            source and the count.
    """
    if not max_classes >= 1:
        raise ParameterError("max_classes", "expected a positive number", max_classes)
    if num_classes > max_classes:
        raise ParameterError(
            "max_classes", f"{source}: labels give {num_classes:,} classes, above the limit "
            f"of {max_classes:,}; expected smaller labels (or a higher max_classes)",
            f"{max_classes:,}")


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Refuses empty, non-finite, complex or mislabelled arrays of one split."""
    if len(x) != len(y):
        raise ParameterError("dataset", f"x_{split} has {len(x)} rows but y_{split} has "
                             f"{len(y)}", name)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
            or x.dtype == np.bool_):
        raise ParameterError("dataset", f"x_{split} has dtype {x.dtype}; expected real "
                             "numbers", name)
    if len(x) and np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise ParameterError("dataset", f"x_{split} holds NaN or infinity (example {row}); "
                                 "expected finite real numbers", name)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ParameterError("dataset", f"y_{split} has dtype {y.dtype} and shape {y.shape}; "
                             "expected a 1-D array of integer labels", name)
    if not num_classes >= 1:
        raise ParameterError("dataset", f"num_classes={num_classes}; expected a positive "
                             "number", name)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ParameterError("dataset", f"y_{split} holds label {bad}; expected labels in "
                             f"[0, num_classes={num_classes})", name)
