"""Training the runs of an experiment into its directory, skipping the ones already done.

This is the job behind ``train.py``: find which requested runs are missing, train
them in groups of K models at once, and write each as a run directory (SPEC §3). It
is idempotent: complete runs are never retrained, and leftovers of interrupted runs
are redone from scratch with the same seeds, hence the same subsets.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import platform
import socket
import time
from collections.abc import Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout import data as data_lib
from heldout import runs as runs_lib
from heldout import subsets as subsets_lib
from heldout import training

EXPERIMENT_INFO_FILENAME = "experiment.json"
# What must agree between runs written into one experiment directory.
_SHARED_SETTINGS = ("dataset", "seed", "train_config")
# Training settings that change speed but not what a run computes.
_SPEED_ONLY_SETTINGS = ("models_at_once", "xla")


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What one call of `train_experiment` did."""

    experiment_dir: str
    subset: str
    trained: tuple[int, ...]  # run ids trained now
    already_complete: tuple[int, ...]  # run ids skipped because they were complete
    mean_test_accuracy: float  # over the runs trained now (NaN when none)
    seconds: float


def train_experiment(experiment_dir: str, dataset: str, config: training.TrainConfig,
                     subset_ratio: float, run_ids: Sequence[int], seed: int = 0,
                     data_dir: str | None = None, save_checkpoints: bool = False,
                     save_logits: bool = False, progress: bool = True) -> TrainSummary:
    """Trains every run of `run_ids` that is not yet complete in `experiment_dir`.

    Args:
        experiment_dir: where runs go (local path or gs://).
        dataset: data source spec, see `data.load_dataset`.
        config: how each run is trained.
        subset_ratio: fraction of the training set each run trains on, in (0, 1).
        run_ids: ids of the runs wanted; each id fixes its subset and seeds.
        seed: experiment seed.
        data_dir: TFDS data directory.
        save_checkpoints: also write each run's final model as a checkpoint.
        save_logits: also store float16 logits in the aux arrays.
        progress: show a progress bar.

    Raises:
        ValueError: a setting is invalid, or the directory holds runs made with other
            settings.
    """
    start = time.time()
    subset = subsets_lib.subset_name(subset_ratio)
    settings = {"dataset": dataset, "seed": seed, "train_config": {
        key: value for key, value in dataclasses.asdict(config).items()
        if key not in _SPEED_ONLY_SETTINGS}}
    _check_experiment_info(experiment_dir, settings)
    complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
    todo = [r for r in run_ids if r not in complete]
    already = tuple(r for r in run_ids if r in complete)
    if not todo:
        return TrainSummary(experiment_dir, subset, (), already, float("nan"),
                            time.time() - start)

    data = data_lib.load_dataset(dataset, data_dir=data_dir)
    _write_experiment_info(experiment_dir, settings)
    trainer = training.make_trainer(
        data, dataclasses.replace(config, models_at_once=min(config.models_at_once, len(todo))))
    group_size = trainer.num_models
    accuracies = []
    bar = _progress_bar(len(todo), progress)
    with concurrent.futures.ThreadPoolExecutor(8) as writers:
        for first in range(0, len(todo), group_size):
            group = todo[first:first + group_size]
            group_start = time.time()
            seeds = [subsets_lib.run_seeds(seed, subset, r) for r in group]
            subsets = [subsets_lib.subset_indices(data.num_train, subset, seed, r) for r in group]
            results = trainer.train(
                subsets, [s.init for s in seeds], [s.order for s in seeds],
                save_logits=save_logits, export_models=save_checkpoints,
                on_epoch=functools.partial(_advance, bar, len(group) / config.epochs))
            seconds_per_run = (time.time() - group_start) / len(group)
            pending = []
            for run_id, subset_indices, result in zip(group, subsets, results, strict=True):
                info = _run_info(settings, data, subset, run_id, subset_indices, result,
                                 seconds_per_run, len(group))
                accuracies.append(info["accuracy"]["test"])
                checkpoint = None
                if result.model is not None:
                    checkpoint = tf.train.Checkpoint(
                        model=result.model,
                        epoch=tf.Variable(config.epochs, dtype=tf.int64),
                        global_step=tf.Variable(result.steps, dtype=tf.int64))
                arrays = runs_lib.aux_arrays(
                    subset_indices, result.train.correctness, result.test.correctness,
                    margin_train=result.train.margin, margin_test=result.test.margin,
                    logodds_train=result.train.logodds, logodds_test=result.test.logodds,
                    logits_train=result.train.logits, logits_test=result.test.logits)
                pending.append(writers.submit(
                    runs_lib.save_run, runs_lib.run_dir(experiment_dir, subset, run_id),
                    arrays, info, checkpoint, config.epochs))
            for future in pending:
                future.result()
    bar.close()
    return TrainSummary(experiment_dir, subset, tuple(todo), already,
                        float(np.mean(accuracies)), time.time() - start)


def read_experiment_info(experiment_dir: str) -> dict:
    """The settings an experiment directory was created with, or {} (released runs)."""
    path = tf.io.gfile.join(experiment_dir, EXPERIMENT_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _check_experiment_info(experiment_dir: str, settings: dict) -> None:
    """Refuses to mix runs of different settings in one directory."""
    existing = read_experiment_info(experiment_dir)
    for key in _SHARED_SETTINGS:
        if existing and existing.get(key) != settings[key]:
            raise ValueError(
                f"--experiment_dir={experiment_dir} holds runs made with another {key} "
                f"({json.dumps(existing.get(key), sort_keys=True)}); use a new directory "
                "or the same settings")


def _write_experiment_info(experiment_dir: str, settings: dict) -> None:
    """Records the settings of an experiment directory, once."""
    if read_experiment_info(experiment_dir):
        return
    tf.io.gfile.makedirs(experiment_dir)
    runs_lib.write_atomically(tf.io.gfile.join(experiment_dir, EXPERIMENT_INFO_FILENAME),
                              json.dumps(settings, indent=2, sort_keys=True).encode())


def _run_info(settings: dict, data: data_lib.Dataset, subset: str, run_id: int,
              subset_indices: np.ndarray, result: training.TrainedRun,
              seconds_per_run: float, group_size: int) -> dict:
    """The ``run.json`` of one run: how it was made and how well it did."""
    in_subset = np.zeros(data.num_train, dtype=bool)
    in_subset[subset_indices] = True
    return {
        **settings,
        "subset": subset,
        "run_id": run_id,
        "num_train_examples": int(len(subset_indices)),
        "accuracy": {
            "train": float(result.train.correctness[in_subset].mean()),
            "removed": float(result.train.correctness[~in_subset].mean())
            if (~in_subset).any() else None,
            "test": float(result.test.correctness.mean()),
        },
        "seconds": seconds_per_run,
        "models_trained_together": group_size,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "sonnet": snt.__version__, "numpy": np.__version__},
    }


def _advance(bar, runs: float, _steps: int) -> None:
    """Moves the progress bar by the fraction of runs one epoch of a group stands for."""
    bar.update(runs)


def _progress_bar(total_runs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total_runs, desc="training", unit="run", disable=not enabled,
                mininterval=1.0, bar_format="{l_bar}{bar}| {n:.0f}/{total} runs "
                "[{elapsed}<{remaining}, {rate_fmt}]")
