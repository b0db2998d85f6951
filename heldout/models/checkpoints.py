"""Restoring a run's model from its checkpoint and checking it against its aux arrays.

A run's checkpoint is ``tf.train.Checkpoint(model=..., epoch=..., global_step=...)``
written to ``<run_dir>/checkpoints/ckpt-<N>`` (the released Feldman-Zhang layout);
`run_checkpoint` builds that object graph, for writing and for restoring alike.
Restoring works by object-graph path, so the model must be built with the same
architecture; when it is not, the error names the variables that do not fit.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.models import predict as predict_lib
from heldout.models import registry
from heldout.store import layout as layout_lib
from heldout.store import runs as runs_lib

_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


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


def run_checkpoint(model: tf.Module, epoch: int = 0, global_step: int = 0
                   ) -> tf.train.Checkpoint:
    """The object graph of every run checkpoint: `model`, and int64 ``epoch`` and
    ``global_step`` variables (the released layout; the one place it is built).

    Saving it writes a run's checkpoint; reading a checkpoint into it (``.read(prefix)``)
    fills `model` and leaves the stored counters in ``.epoch`` and ``.global_step``.
    """
    return tf.train.Checkpoint(model=model, epoch=tf.Variable(epoch, dtype=tf.int64),
                               global_step=tf.Variable(global_step, dtype=tf.int64))


def find_checkpoint(run_dir: str) -> str:
    """The checkpoint prefix (``.../checkpoints/ckpt-N``) of a run: the single one, or the latest.

    Raises:
        ValueError: the run has no checkpoint.
    """
    pattern = layout_lib.RunDir(run_dir).checkpoint_indexes
    found = sorted(tf.io.gfile.glob(pattern),
                   key=lambda p: int(p.rsplit("ckpt-", 1)[1].split(".")[0]))
    if not found:
        raise ParameterError("run_dir", f"no checkpoint (expected {pattern})", run_dir)
    return found[-1][:-len(".index")]


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Variable shapes of a checkpoint on disk, by object-graph path.

    Args:
        path: a checkpoint prefix (``.../ckpt-20``) or a directory holding a ``checkpoint``
            state file; local or gs://.

    Returns:
        ``{path: shape}`` with the ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix removed, e.g.
        ``{"model/conv1/conv/w": (3, 3, 3, 96), "epoch": (), ...}``; the object graph
        itself (``_CHECKPOINTABLE_OBJECT_GRAPH``) is left out.
    """
    shapes = {}
    for key, shape in tf.train.list_variables(path):
        if not key.endswith(_VARIABLE_SUFFIX):
            continue
        shapes[key[:-len(_VARIABLE_SUFFIX)]] = tuple(shape)
    return shapes


def checkpoint_variable_shapes(model: tf.Module, epoch: int = 0,
                               global_step: int = 0) -> dict[str, tuple[int, ...]]:
    """The keys and shapes a checkpoint of `model` has, in the released layout.

    Writes `run_checkpoint` of `model` to a temporary directory and lists it (see
    `checkpoint_shapes`), so the answer is exactly what TF would store, including
    ``save_counter``. Sonnet creates variables on the first call,
    so call the model once before (``is_training=False`` changes no variable).

    Raises:
        ValueError: the model has not been built yet (a linear or convolution layer has no
            weights).
    """
    unbuilt = [module.name for module in (model, *model.submodules)
               if isinstance(module, snt.Linear | snt.Conv2D) and not hasattr(module, "w")]
    if unbuilt:
        raise ValueError(f"model {model.name!r} is not built yet ({unbuilt[0]} has no weights): "
                         "call it once on inputs of the right shape first")
    checkpoint = run_checkpoint(model, epoch, global_step)
    with tempfile.TemporaryDirectory() as directory:
        # save(), not write(): save() creates the ``save_counter`` the released files hold.
        return checkpoint_shapes(checkpoint.save(f"{directory}/ckpt"))


def describe_shape_mismatch(expected: Mapping[str, Sequence[int]],
                            found: Mapping[str, Sequence[int]]) -> list[str]:
    """Lines naming every key missing from, extra in, or of another shape in `found`.

    Args:
        expected: ``{path: shape}`` of the model (e.g. `checkpoint_variable_shapes`).
        found: ``{path: shape}`` of a checkpoint (e.g. `checkpoint_shapes`).

    Returns:
        One readable line per difference, sorted by key; empty when the two agree.
    """
    lines = []
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            lines.append(f"missing from checkpoint: {key} {list(expected[key])}")
        elif key not in expected:
            lines.append(f"not in model: {key} {list(found[key])}")
        elif tuple(expected[key]) != tuple(found[key]):
            lines.append(f"shape differs: {key} model {list(expected[key])}, "
                         f"checkpoint {list(found[key])}")
    return lines


def restore_run_model(run_dir: str, arch: str, num_classes: int,
                      input_shape: tuple[int, ...], width: float = 1.0,
                      prefix: str | None = None) -> RestoredRun:
    """Builds `arch` and restores the run's checkpoint into it, every variable matched.

    Args:
        prefix: a checkpoint of the run (``.../ckpt-5``); default: the latest.

    Raises:
        ValueError: no checkpoint, or it does not fit the architecture (names the first
            variables that do not match).
    """
    prefix = prefix or find_checkpoint(run_dir)
    if not tf.io.gfile.exists(prefix + ".index"):
        raise ValueError(f"{prefix}: no such checkpoint")
    model = registry.build_single(arch, num_classes, width)
    model(tf.zeros([1, *input_shape]), is_training=False)
    mismatch = [line for line in describe_shape_mismatch(checkpoint_variable_shapes(model),
                                                         checkpoint_shapes(prefix))
                if "save_counter" not in line]  # bookkeeping, not part of the model
    if mismatch:
        more = f" (and {len(mismatch) - 3} more)" if len(mismatch) > 3 else ""
        raise ValueError(f"{prefix} does not fit --arch={arch} with {num_classes} classes: "
                         + "; ".join(mismatch[:3]) + more)
    checkpoint = run_checkpoint(model)
    try:
        status = checkpoint.read(prefix)
    except (IndexError, tf.errors.OpError) as e:  # a truncated file: "Read less bytes ..."
        raise ValueError(f"{prefix}: unreadable checkpoint ({e}); expected the complete "
                         "files a finished run writes") from e
    status.assert_existing_objects_matched()
    status.expect_partial()  # bookkeeping such as save_counter has no place in the model
    return RestoredRun(model=model, checkpoint_path=prefix,
                       epoch=int(checkpoint.epoch.numpy()),
                       global_step=int(checkpoint.global_step.numpy()))


def check_run(run_dir: str, arch: str, data: Dataset, split: str = "test",
              width: float = 1.0, batch_size: int = 256) -> RunCheck:
    """Restores a run's model, evaluates it on `split`, and compares with its aux arrays.

    For ``split="train"`` every training example is evaluated, and compared with the
    stored ``correctness_train`` and ``correctness_removed`` by example index.

    Raises:
        ValueError: the split is unknown, or the run's files do not fit the data set.
    """
    if split not in ("train", "test"):
        raise ParameterError("split", "expected train or test", split)
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
    logits_fn = tf.function(lambda images: model(images, is_training=False)[None],
                            autograph=False)
    predictions = predict_lib.predict_in_chunks(logits_fn, x, y, batch_size)[0]
    num_train = len(arrays["index_train"]) + len(arrays["index_removed"])
    return RunCheck(
        restored=restored, split=split,
        subset_fraction=len(arrays[runs_lib.SUBSET_INDICES]) / num_train,
        accuracy=float(predictions.correctness.mean()),
        matches=int((predictions.correctness == stored).sum()), total=len(y))
