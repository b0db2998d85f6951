"""Dataset: the train and test arrays of one data set, with a stable per-example index."""

from __future__ import annotations

import dataclasses

import numpy as np


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
