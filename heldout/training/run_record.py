"""What training writes beside a run's aux arrays: its record and its checkpoints.

`run_record` builds the run's `RunRecord` (``run.json``, owned by
`heldout.store.records`) from the trained run, including each checkpoint's learning
rate, which the trainer knows and later readers (TracIn) must not re-derive;
`run_checkpoints` gives the checkpoints to write, in the one object graph of
`heldout.models.checkpoints.run_checkpoint`.
"""

from __future__ import annotations

import os
import platform
import socket
import time

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.data.dataset import Dataset
from heldout.models import checkpoints as checkpoints_lib
from heldout.store import records
from heldout.store import targets as targets_lib
from heldout.training import core


def run_record(data: Dataset, subset: str, run_id: int, subset_indices: np.ndarray,
               result: core.TrainedRun, epochs: int, seconds_per_run: float, group_size: int,
               targets: targets_lib.TargetSet | None = None) -> records.RunRecord:
    """The record of one trained run: how it was made and how well it did; the
    experiment's settings are added by `records.RunRecord.with_settings`.

    Args:
        data: the data set (its size splits accuracy into trained-on and removed).
        subset, run_id: the run's design folder and id.
        subset_indices: the training examples it trained on.
        result: the trained run; with an exported model, its checkpoints are recorded.
        epochs: epochs trained (the final model's checkpoint number).
        seconds_per_run, group_size: training time per run, and runs trained together.
        targets: the target set a ``drop-<name>`` run leaves out.
    """
    in_subset = np.zeros(data.num_train, dtype=bool)
    in_subset[subset_indices] = True
    saved, final = (), None
    if result.model is not None:
        saved = tuple(records.CheckpointRecord(s.epoch, s.steps, s.learning_rate)
                      for s in result.snapshots)
        final = records.CheckpointRecord(epochs, result.steps, result.final_learning_rate)
    return records.RunRecord(
        subset=subset, run_id=run_id, num_train_examples=int(len(subset_indices)),
        optimizer_steps=result.steps,
        accuracy=records.Accuracy(
            train=float(result.train.correctness[in_subset].mean()),
            removed=float(result.train.correctness[~in_subset].mean())
            if (~in_subset).any() else None,
            test=float(result.test.correctness.mean())),
        seconds=seconds_per_run, models_trained_together=group_size,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), host=socket.gethostname(),
        pid=os.getpid(),
        versions={"python": platform.python_version(), "tensorflow": tf.__version__,
                  "sonnet": snt.__version__, "numpy": np.__version__},
        targets=None if targets is None else {
            "name": targets.name, "groups": {g: list(v) for g, v in targets.groups.items()}},
        checkpoints=saved, final_checkpoint=final)


def run_checkpoints(result: core.TrainedRun, epochs: int
                    ) -> list[tuple[int, tf.train.Checkpoint]]:
    """``(epoch, checkpoint)`` of every model of `result` to write as ``ckpt-<epoch>``:
    the snapshots saved during training, then the final model; none when the trainer
    exported no model."""
    if result.model is None:
        return []
    models = [(s.epoch, s.steps, s.model) for s in result.snapshots]
    models.append((epochs, result.steps, result.model))
    return [(epoch, checkpoints_lib.run_checkpoint(model, epoch, steps))
            for epoch, steps, model in models]
