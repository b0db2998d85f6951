"""Evaluating a run's restored model on indexed TFRecords, streamed, matched by index.

The released ImageNet ResNet-50 runs are checked the way the published demo
does: restore the checkpoint, predict every example of a split, and compare the
correctness with the run's ``aux_arrays.npz``. At ImageNet scale the split cannot be held
in memory (1.28M training images), so `evaluate_run_streaming` reads the TFRecords as a
stream of batches (`heldout.data.imagenet.imagenet_dataset`: the published center crop,
[0, 1] pixels, ImageNet mean/std) and matches each prediction to the stored one through
the record's ``index`` feature, whatever order the records are in.
"""

from __future__ import annotations

import dataclasses
import time
import weakref

import numpy as np
import tensorflow as tf

from heldout.data import imagenet as imagenet_lib
from heldout.models import checkpoints
from heldout.progress import Progress
from heldout.store import runs as runs_lib

# model -> its compiled prediction function, so evaluating several splits traces once.
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class StreamingCheck:
    """A run's restored model evaluated on streamed records and compared by index.

    Attributes:
        restored: the restored model and its checkpoint.
        split: ``train`` (the run's train + removed examples) or ``test``.
        matches: evaluated examples whose correctness equals the stored one.
        total: examples evaluated (all records, or `max_examples`).
        num_examples: examples of the split in the run's aux arrays.
        correct: evaluated examples the model classifies correctly.
        seconds: wall time of the evaluation (restoring excluded).
    """

    restored: checkpoints.RestoredRun
    split: str
    matches: int
    total: int
    num_examples: int
    correct: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def examples_per_second(self) -> float:
        return self.total / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        return (f"{self.split}: accuracy {self.accuracy:.4f} on {self.total} examples "
                f"({self.examples_per_second:.0f}/s); {self.matches} out of {self.total} "
                "predictions match")


def stored_correctness(arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    """Stored correctness of every example of `split`, by example index.

    For ``train`` it joins ``correctness_train`` and ``correctness_removed``.

    Raises:
        ValueError: `split` is unknown, or the indices do not cover 0..N-1 once each.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    parts = ("train", "removed") if split == "train" else ("test",)
    indices = np.concatenate([arrays[f"index_{p}"] for p in parts]).astype(np.int64)
    values = np.concatenate([arrays[f"correctness_{p}"] for p in parts]).astype(bool)
    if len(indices) and not np.array_equal(np.sort(indices), np.arange(len(indices))):
        raise ValueError(f"the aux arrays' {split} indices are not 0..{len(indices) - 1} "
                         "once each")
    stored = np.zeros(len(indices), bool)
    stored[indices] = values
    return stored


def evaluate_run_streaming(run_dir: str, arch: str, records_pattern: str, *,
                           split: str = "test", num_classes: int = 1000,
                           image_size: int = 224, max_examples: int | None = None,
                           batch_size: int = 64, progress: bool = True,
                           label_offset: int = 1,
                           mean_std: imagenet_lib.MeanStd | None = imagenet_lib.IMAGENET_MEAN_STD,
                           crop_fraction: float = imagenet_lib.CENTER_CROP_FRACTION,
                           width: float = 1.0,
                           restored: checkpoints.RestoredRun | None = None) -> StreamingCheck:
    """Restores a run's model, streams `records_pattern`, compares with the aux arrays.

    Args:
        run_dir: the run (``aux_arrays.npz`` and ``checkpoints/``).
        arch: the model (``resnet50`` for the released ImageNet runs).
        records_pattern: glob of indexed TFRecords of the split (``.../validation-*``).
        split: which of the run's splits the records are: ``test`` or ``train``.
        num_classes: classes of the model.
        image_size: side of the model's input images, in pixels.
        max_examples: stop after this many records (a quick partial check); None: all.
        batch_size: examples per forward pass.
        progress: show a progress bar (examples, rate, ETA).
        label_offset: the stored label of class 0 (1 in the published records).
        mean_std: per-channel normalization of the [0, 1] pixels (ImageNet's by default).
        crop_fraction: side of the center crop, as a fraction of the shorter side.
        width: width multiplier of `arch`.
        restored: the run's model already restored (`checkpoints.restore_run_model`), to
            evaluate several splits with one restore; None: restore it here.

    Returns:
        A `StreamingCheck`; ``str()`` of it ends with "N out of M predictions match".

    Raises:
        ValueError: an argument is out of range, the run has no checkpoint or it does not
            fit `arch`, the records cannot be read, or a record's index is not an example
            of the run's split.
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples={max_examples}: expected a positive number or None")
    stored = stored_correctness(runs_lib.load_run(run_dir), split)
    if restored is None:
        restored = checkpoints.restore_run_model(run_dir, arch, num_classes,
                                                 (image_size, image_size, 3), width)
    dataset = imagenet_lib.imagenet_dataset(
        records_pattern, batch_size, image_size, crop_fraction=crop_fraction,
        mean_std=mean_std, label_offset=label_offset)
    predicted_classes = _predictor(restored.model)

    wanted = len(stored) if max_examples is None else min(max_examples, len(stored))
    bar = Progress(wanted, f"{split} examples", "img", enabled=progress)
    matches = correct = total = 0
    start = time.monotonic()
    try:
        for images, labels, indices in dataset:
            keep = min(len(indices), wanted - total)
            if keep <= 0:
                break
            predicted = predicted_classes(images[:keep]).numpy()
            labels, indices = labels.numpy()[:keep], indices.numpy()[:keep]
            if indices.min() < 0 or indices.max() >= len(stored):
                bad = indices[(indices < 0) | (indices >= len(stored))][0]
                raise ValueError(f"{records_pattern}: record index {bad} is not one of the "
                                 f"{len(stored)} {split} examples of {run_dir}")
            is_correct = predicted == labels
            correct += int(is_correct.sum())
            matches += int((is_correct == stored[indices]).sum())
            total += keep
            bar.note(match=f"{matches}/{total}")
            bar.advance(keep)
    finally:
        bar.close()
    return StreamingCheck(restored=restored, split=split, matches=matches, total=total,
                          num_examples=len(stored), correct=correct,
                          seconds=time.monotonic() - start)


def _predictor(model: tf.Module):
    """``images -> predicted classes`` of `model`, compiled once per model."""
    if model not in _PREDICTORS:
        @tf.function(reduce_retracing=True, autograph=False)
        def predicted_classes(images: tf.Tensor) -> tf.Tensor:
            return tf.argmax(model(images, is_training=False), axis=-1)

        _PREDICTORS[model] = predicted_classes
    return _PREDICTORS[model]

