"""Complete runs that lack the checkpoints or logits a request asks for: found, refused
or set aside, retrained with the same seeds, and compared with the arrays they replace.

Checkpoints, snapshots and logits cannot be added to a run already complete; retraining
it (same seeds and settings) must give bit-identical aux arrays, which `compare_and_remove`
counts, so a retrain that changed a run's numbers would show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from heldout.errors import ParameterError
from heldout.store import designs, files, layout, records
from heldout.store import runs as runs_lib
from heldout.training.config import TrainConfig


def lacking(experiment_dir: str, subset: str, run_ids: Sequence[int], config: TrainConfig,
            save_checkpoints: bool, save_logits: bool) -> list[int]:
    """Complete runs among `run_ids` without the checkpoints (final and every
    ``config.checkpoint_every`` epochs) or logits asked for."""
    if not (save_checkpoints or save_logits):
        return []
    complete = set(runs_lib.list_runs(experiment_dir, subset)[0]) & set(run_ids)
    snapshots = set(range(config.checkpoint_every, config.epochs, config.checkpoint_every)
                    ) if config.checkpoint_every else set()
    found = []
    for run_id in sorted(complete):
        directory = runs_lib.run_dir(experiment_dir, subset, run_id)
        if save_checkpoints:
            # With snapshots (TracIn's), the record must also hold the final model's
            # learning rate, which runs of earlier versions did not record.
            recorded = snapshots | ({config.epochs} if snapshots else set())
            saved = set(records.read_run_record(directory).saved_epochs())
            final = layout.RunDir(directory).checkpoint(config.epochs) + ".index"
            if not tf.io.gfile.exists(final) or not recorded <= saved:
                found.append(run_id)
                continue
        if save_logits and not any(
                key.startswith(runs_lib.LOGITS_PREFIX) for key in runs_lib.load_run(directory)):
            found.append(run_id)
    return found


def refusal(experiment_dir: str, found: Mapping[str, Sequence[int]], checkpoint_every: int,
            save_checkpoints: bool, save_logits: bool) -> ParameterError:
    """The one-line error saying which runs lack what, and the two ways forward."""
    wanted = []
    if save_checkpoints:
        wanted.append(f"checkpoints (saved every {checkpoint_every} epochs)"
                      if checkpoint_every else "checkpoints")
    if save_logits:
        wanted.append("logits")
    where = "; ".join(f"{subset} runs {designs.format_run_ids(ids)}"
                      for subset, ids in found.items())
    return ParameterError(
        "save_checkpoints" if save_checkpoints else "save_logits",
        f"{sum(map(len, found.values()))} requested runs of {experiment_dir} are already "
        f"complete without {' or '.join(wanted)} ({where}); use a new experiment_dir, or "
        f"add retrain_complete to retrain them with {' and '.join(wanted)} (same seeds and "
        "settings: their aux arrays come out bit-identical, which is checked)")


def set_aside(experiment_dir: str, subset: str, run_ids: Sequence[int]) -> dict[int, str]:
    """Moves the aux arrays of runs to be retrained aside; returns run id -> where."""
    moved = {}
    for run_id in run_ids:
        run = layout.RunDir(runs_lib.run_dir(experiment_dir, subset, run_id))
        files.makedirs_for(run.set_aside)
        tf.io.gfile.rename(run.aux_arrays, run.set_aside, overwrite=True)
        moved[run_id] = run.set_aside
    return moved


def compare_and_remove(experiment_dir: str, subset: str, before: Mapping[int, str]) -> int:
    """How many retrained runs have aux arrays equal to the ones set aside; removes those."""
    identical = 0
    for run_id, path in before.items():
        directory = runs_lib.run_dir(experiment_dir, subset, run_id)
        if not runs_lib.run_complete(directory):
            continue  # not retrained (claimed elsewhere): keep the earlier arrays aside
        new, old = runs_lib.load_run(directory), files.read_npz(path)
        identical += all(np.array_equal(old[key], new[key]) and old[key].dtype == new[key].dtype
                         for key in old if key in new)
        tf.io.gfile.remove(path)
    return identical
