"""Restoring a run's model from its checkpoint and checking it against its aux arrays.

A run's checkpoint is ``tf.train.Checkpoint(model=..., epoch=..., global_step=...)``
written to ``<run_dir>/checkpoints/ckpt-<N>`` (the released Feldman-Zhang layout).
Restoring works by object-graph path, so the model must be built with the same
architecture; when it is not, the error names the variables that do not fit.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

from heldout import models as models_lib
from heldout import runs as runs_lib
from heldout import training
from heldout.data import Dataset

_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A run's model restored from its checkpoint, with what the checkpoint says of it."""

    model: tf.Module
    checkpoint_path: str
    epoch: int
    global_step: int


@dataclasses.dataclass(frozen=True)
class RunCheck:
    """A restored model evaluated on one split and compared with the run's aux arrays."""

    restored: RestoredRun
    split: str
    subset_fraction: float  # training examples the run trained on / all of them
    accuracy: float  # of the restored model on the split
    matches: int  # examples where the model's correctness equals the stored one
    total: int


def find_checkpoint(run_dir: str) -> str:
    """The checkpoint prefix (``.../checkpoints/ckpt-N``) of a run: the single one, or the latest.

    Raises:
        ValueError: the run has no checkpoint.
    """
    pattern = tf.io.gfile.join(run_dir, runs_lib.CHECKPOINT_DIRNAME, "ckpt-*.index")
    found = sorted(tf.io.gfile.glob(pattern),
                   key=lambda p: int(p.rsplit("ckpt-", 1)[1].split(".")[0]))
    if not found:
        raise ValueError(f"--run_dir={run_dir}: no checkpoint (expected {pattern})")
    return found[-1][:-len(".index")]


def checkpoint_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """Object-graph path -> shape of every value in a checkpoint (bookkeeping excluded)."""
    return {name[:-len(_VALUE_SUFFIX)]: tuple(shape)
            for name, shape in tf.train.list_variables(prefix)
            if name.endswith(_VALUE_SUFFIX)}


def expected_shapes(checkpoint: tf.train.Checkpoint) -> dict[str, tuple[int, ...]]:
    """What `checkpoint` would write: path -> shape (written to memory and listed)."""
    with tempfile.TemporaryDirectory(prefix="heldout-expected-") as directory:
        return checkpoint_shapes(checkpoint.write(os.path.join(directory, "ckpt")))


def describe_mismatch(expected: dict[str, tuple], found: dict[str, tuple], limit: int = 3
                      ) -> str:
    """A one-line account of the first variables that differ, or "" when they all fit."""
    problems = []
    for name in sorted(set(expected) | set(found)):
        if name in {"save_counter"}:
            continue
        if name not in found:
            problems.append(f"{name} {list(expected[name])} missing from the checkpoint")
        elif name not in expected:
            problems.append(f"{name} {list(found[name])} not in the model")
        elif expected[name] != found[name]:
            problems.append(f"{name} is {list(found[name])} in the checkpoint but "
                            f"{list(expected[name])} in the model")
    if not problems:
        return ""
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def restore_run_model(run_dir: str, arch: str, num_classes: int,
                      input_shape: tuple[int, ...], width: float = 1.0) -> RestoredRun:
    """Builds `arch` and restores the run's checkpoint into it, every variable matched.

    Raises:
        ValueError: no checkpoint, or it does not fit the architecture (names the first
            variables that do not match).
    """
    prefix = find_checkpoint(run_dir)
    model = models_lib.make_single(arch, num_classes, width)
    model(tf.zeros([1, *input_shape]), is_training=False)
    epoch = tf.Variable(0, dtype=tf.int64)
    global_step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, epoch=epoch, global_step=global_step)
    mismatch = describe_mismatch(expected_shapes(checkpoint), checkpoint_shapes(prefix))
    if mismatch:
        raise ValueError(f"{prefix} does not fit --arch={arch} with {num_classes} classes: "
                         f"{mismatch}")
    status = checkpoint.read(prefix)
    status.assert_existing_objects_matched()
    status.expect_partial()  # bookkeeping such as save_counter has no place in the model
    return RestoredRun(model=model, checkpoint_path=prefix, epoch=int(epoch.numpy()),
                       global_step=int(global_step.numpy()))


def check_run(run_dir: str, arch: str, data: Dataset, split: str = "test",
              width: float = 1.0, batch_size: int = 256) -> RunCheck:
    """Restores a run's model, evaluates it on `split`, and compares with its aux arrays.

    For ``split="train"`` every training example is evaluated, and compared with the
    stored ``correctness_train`` and ``correctness_removed`` by example index.

    Raises:
        ValueError: the split is unknown, or the run's files do not fit the data set.
    """
    if split not in ("train", "test"):
        raise ValueError(f"--split={split}: expected train or test")
    arrays = runs_lib.load_run(run_dir)
    restored = restore_run_model(run_dir, arch, data.num_classes, data.input_shape, width)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    stored = np.zeros(len(y), dtype=bool)
    parts = ("train", "removed") if split == "train" else ("test",)
    for part in parts:
        indices = arrays[f"index_{part}"]
        if len(indices) and indices.max() >= len(y):
            raise ValueError(f"{run_dir}: aux arrays index {indices.max() + 1} {split} "
                             f"examples, the data set has {len(y)}")
        stored[indices] = arrays[f"correctness_{part}"]
    if sum(len(arrays[f"index_{part}"]) for part in parts) != len(y):
        raise ValueError(f"{run_dir}: aux arrays cover a different number of {split} "
                         f"examples than the data set ({len(y)})")
    model = restored.model
    logits_fn = tf.function(lambda images: model(images, is_training=False)[None])
    predictions = training.predict_in_chunks(logits_fn, x, y, batch_size)[0]
    num_train = len(arrays["index_train"]) + len(arrays["index_removed"])
    return RunCheck(
        restored=restored, split=split,
        subset_fraction=len(arrays[runs_lib.SUBSET_INDICES]) / num_train,
        accuracy=float(predictions.correctness.mean()),
        matches=int((predictions.correctness == stored).sum()), total=len(y))
