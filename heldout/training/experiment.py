"""Training the runs of an experiment into its directory, skipping the ones already done.

This is the job behind ``train.py``: find which requested runs are missing, train
them in groups of K models at once, and write each as a run directory. It
is idempotent: complete runs are never retrained, and leftovers of interrupted runs
are redone from scratch with the same seeds, hence the same subsets.

`train_experiment` checks the settings and hands the work to parts with one job each:
`_RunQueue` (which run ids are still to train, claimed group by group), `_GroupTrainer`
(one group of runs through the trainer), `_RunWriter` (runs to the writer threads, the
settings recorded before the first) and `_train_groups` (the loop that overlaps them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from heldout.data import sources as data_lib
from heldout.data.imagenet import StreamingData
from heldout.errors import ParameterError
from heldout.progress import Progress
from heldout.store import coordination, files, records
from heldout.store import designs as subsets_lib
from heldout.store import experiment_info as info_lib
from heldout.store import layout as layout_lib
from heldout.store import runs as runs_lib
from heldout.store import targets as targets_lib
from heldout.store.layout import EXPERIMENT_INFO_FILENAME
from heldout.training import core as training
from heldout.training import run_record as run_record_lib
from heldout.training import streaming
from heldout.training.select import make_trainer

# Training settings that change speed but not what a run computes.
_SPEED_ONLY_SETTINGS = ("models_at_once", "concurrent_programs", "chunk_models", "xla",
                        "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What one call of `train_experiment` did."""

    experiment_dir: str
    subset: str
    trained: tuple[int, ...]  # run ids trained now
    already_complete: tuple[int, ...]  # run ids skipped because they were complete
    mean_test_accuracy: float  # over the runs trained now (NaN when none)
    seconds: float
    claimed_elsewhere: tuple[int, ...] = ()  # skipped: another worker held their claim
    still_claimed: tuple[int, ...] = ()  # of those, not complete when this call ended

    @property
    def exit_status(self) -> int:
        """0, or `coordination.EXIT_RUNS_CLAIMED_ELSEWHERE` when runs of `run_ids` are
        still missing because other workers claim them (retry later)."""
        return coordination.EXIT_RUNS_CLAIMED_ELSEWHERE if self.still_claimed else 0


class NonFiniteRunError(ValueError):
    """A run's predictions are NaN or infinite: training diverged; it was not written."""


def train_experiment(experiment_dir: str, dataset: str, config: training.TrainConfig,
                     subset: str | float, run_ids: Sequence[int], seed: int = 0,
                     data_dir: str | None = None, save_checkpoints: bool = False,
                     save_logits: bool = False, progress: bool = True,
                     targets: targets_lib.TargetSet | None = None,
                     data: data_lib.Dataset | StreamingData | None = None,
                     claim_runs: bool = True,
                     lease_seconds: float = coordination.DEFAULT_LEASE_SECONDS,
                     settle_seconds: float = 1.0) -> TrainSummary:
    """Trains every run of `run_ids` that is not yet complete in `experiment_dir`.

    Args:
        experiment_dir: where runs go (local path or gs://).
        dataset: data source spec, see `data.load_dataset`.
        config: how each run is trained.
        subset: the design: a ratio in (0, 1) (``0.7``: random subsets of that
            fraction), ``"full"``, or ``"drop-<name>"`` (all but `targets`).
        run_ids: ids of the runs wanted; each id fixes its subset and seeds.
        seed: experiment seed.
        data_dir: TFDS data directory.
        save_checkpoints: also write each run's final model as a checkpoint.
        save_logits: also store float16 logits in the aux arrays.
        progress: show a progress bar.
        targets: the target set a ``drop-<name>`` design leaves out.
        data: the data set already loaded from `dataset`, to avoid loading it again; a
            `StreamingData` (``imagenet.streaming_data(dataset)``) streams the records
            instead (`heldout.training.streaming`: data sets too big for memory).
        claim_runs: claim runs before training them, so concurrent workers on one
            directory do not train the same run (`coordination.Claims`).
        lease_seconds: a claim not renewed for this long is taken as abandoned.
        settle_seconds: wait between writing claims and reading them back.

    Both arms of a targeted experiment (``full`` and ``drop-<name>``) take the same
    number of optimizer steps: every epoch has ``ceil(num_train / batch_size)`` steps
    in both, so the drop arm, whose examples fill fewer batches, continues from the
    start of its shuffled order (a few examples are seen twice in its last batch).

    Settings: the first call records `dataset`, `seed`, `config` (without speed-only
    fields) and a fingerprint of the data in ``experiment.json`` (create-if-absent, read
    back and compared, so of racing workers with different settings exactly one
    proceeds); every later call compares. A first attempt that fails before any run of
    the directory is written (a refused setting, every run diverged) takes its record
    back, so the corrected command is not refused. A directory with runs but no
    ``experiment.json`` (released runs) is refused: their settings are unknown.

    Returns:
        A `TrainSummary`; its `exit_status` is non-zero when runs are still missing
        because other workers claim them.

    Raises:
        ValueError: a setting is invalid, or the directory holds runs made with other
            settings (`experiment_info.SettingsMismatchError`, naming the keys) or
            without ``experiment.json``.
        NonFiniteRunError: a run's predictions are not finite (the runs of its group
            with finite predictions are written first).
    """
    start = time.time()
    subset = subsets_lib.design_name(subset)
    if subset.startswith(subsets_lib.DROP_PREFIX):
        if targets is None or targets.drop_subset != subset:
            raise ParameterError("targets", f"subset={subset} needs its target set "
                                 "(target_indices or targets)")
    settings = info_lib.ExperimentInfo(dataset, seed, {
        key: value for key, value in dataclasses.asdict(config).items()
        if key not in _SPEED_ONLY_SETTINGS})
    stored = info_lib.read_experiment_info(experiment_dir)
    if stored is None and runs_lib.list_subsets(experiment_dir):
        raise ValueError(f"experiment_dir={experiment_dir} holds runs but no "
                         f"{EXPERIMENT_INFO_FILENAME}, so their settings are unknown (released "
                         "runs can be read, not added to); train into a new experiment_dir")
    info_lib.check_settings(experiment_dir, stored, settings)  # before loading the data
    fingerprint = None  # of in-memory data given by the caller, hashed once
    if data is not None and not isinstance(data, StreamingData):
        fingerprint = info_lib.check_data(experiment_dir, data)  # also with nothing to train
    complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
    todo = [r for r in run_ids if r not in complete]
    already = tuple(r for r in run_ids if r in complete)
    if not todo:
        return TrainSummary(experiment_dir, subset, (), already, float("nan"),
                            time.time() - start)

    data = data or data_lib.load_dataset(dataset, data_dir=data_dir)
    streamed = isinstance(data, StreamingData)
    settings = dataclasses.replace(settings, data=data.fingerprint() if streamed
                                   else fingerprint or info_lib.data_fingerprint(data))
    created = info_lib.record_experiment_info(experiment_dir, settings, settle_seconds)
    try:
        # Always the full K: every group, padded if short, runs the same compiled program,
        # so a run's numbers do not depend on how many runs were left to train with it.
        trainer = (streaming.StreamingTrainer(data, config) if streamed
                   else make_trainer(data, config))
        claims = (coordination.Claims.for_subset(experiment_dir, subset,
                                                 lease_seconds=lease_seconds,
                                                 settle_seconds=settle_seconds)
                  if claim_runs else None)
        queue = _RunQueue(experiment_dir, subset, todo, trainer.num_models, claims)
        bar = Progress(len(todo), "training", enabled=progress)
        with (concurrent.futures.ThreadPoolExecutor(_writer_threads(experiment_dir)) as threads,
              claims.heartbeat() if claims else contextlib.nullcontext()):
            writer = _RunWriter(experiment_dir, subset, settings, threads, settle_seconds)
            group = _GroupTrainer(trainer, data, config, subset, seed, targets,
                                  save_checkpoints, save_logits, bar)
            written = _train_groups(queue, group, writer)
        bar.close()
    except BaseException:
        if created and not runs_lib.list_subsets(experiment_dir):
            # A failed first attempt (refused, or every run diverged) takes its record
            # back, so the corrected command is not refused for these settings.
            info_lib.remove_experiment_info(experiment_dir)
        raise
    return TrainSummary(experiment_dir, subset, tuple(written), already + tuple(queue.finished),
                        float(np.mean(list(written.values()))) if written else float("nan"),
                        time.time() - start, tuple(queue.claimed_elsewhere),
                        queue.still_claimed())


class _RunQueue:
    """The runs of one subset still to train, handed out group by group: each group
    claimed (when there are claims) and free of runs other workers hold or finished.

    Only the claimer thread calls `next_group` while training runs, and the queue's
    lists are read when it is done (`_train_groups` waits for it).
    """

    def __init__(self, experiment_dir: str, subset: str, run_ids: Sequence[int],
                 group_size: int, claims: coordination.Claims | None):
        self.experiment_dir, self.subset = experiment_dir, subset
        self.pending = list(run_ids)
        self.group_size = group_size
        self.claims = claims
        self.finished: list[int] = []  # completed by other workers since the first listing
        self.claimed_elsewhere: list[int] = []  # skipped: another worker held their claim

    def next_group(self) -> list[int]:
        """Claims the next group of runs nobody else holds or finished (up to K)."""
        group = []
        while self.pending and len(group) < self.group_size:
            wanted = self.group_size - len(group)
            batch, self.pending = self.pending[:wanted], self.pending[wanted:]
            batch = [r for r in batch if r not in self._complete()]
            won = self.claims.claim(batch) if self.claims else batch
            self.claimed_elsewhere.extend(r for r in batch if r not in won)
            if self.claims and won:
                # A worker writes a run before releasing its claim, so a run finished
                # between the listing above and our claim shows up complete now.
                complete = self._complete()
                finished = [r for r in won if r in complete]
                self.claims.release(finished)
                self.finished += finished
                won = [r for r in won if r not in complete]
                for run_id in won:  # ours alone now: what a killed writer left goes
                    runs_lib.remove_leftovers(
                        runs_lib.run_dir(self.experiment_dir, self.subset, run_id))
            group += won
        return group

    def release(self, group: Sequence[int]) -> None:
        """Gives up the claims of `group` (trained and written, or abandoned)."""
        if self.claims:
            self.claims.release(group)

    def still_claimed(self) -> tuple[int, ...]:
        """Runs skipped for other workers' claims and still not complete."""
        if not self.claimed_elsewhere:
            return ()
        return tuple(sorted(set(self.claimed_elsewhere) - self._complete()))

    def _complete(self) -> set[int]:
        return set(runs_lib.list_runs(self.experiment_dir, self.subset)[0])


class _RunWriter:
    """Writes trained runs on writer threads. Before the first run it writes it records
    the experiment's settings again (created if absent, else compared): a worker whose
    record a failed first attempt of another took back still writes no run without one."""

    def __init__(self, experiment_dir: str, subset: str, settings: info_lib.ExperimentInfo,
                 threads: concurrent.futures.Executor, settle_seconds: float):
        self.experiment_dir, self.subset = experiment_dir, subset
        self.settings = settings
        self.threads = threads
        self.settle_seconds = settle_seconds
        self.recorded = False

    def submit(self, runs: Sequence[_TrainedRun], diverged: Mapping[int, int],
               learning_rate: float) -> _WrittenGroup:
        """Hands `runs` to the writer threads; returns the writes in flight."""
        if runs and not self.recorded:
            info_lib.record_experiment_info(self.experiment_dir, self.settings,
                                            self.settle_seconds)
            self.recorded = True
        pending = [(run.run_id, run.test_accuracy, self.threads.submit(
            runs_lib.save_run, runs_lib.run_dir(self.experiment_dir, self.subset, run.run_id),
            run.arrays, run.record.with_settings(self.settings.to_json()),
            checkpoints=run.checkpoints))
            for run in runs]
        return _WrittenGroup(pending, dict(diverged), self.experiment_dir, self.subset,
                             learning_rate)


def _train_groups(queue: _RunQueue, group_trainer: _GroupTrainer, writer: _RunWriter
                  ) -> dict[int, float]:
    """The group loop: while group g trains (TensorFlow, without the GIL), a thread
    claims group g + 1 (the claims' settle wait) and the writers write group g - 1.

    Returns:
        Run id -> test accuracy of the runs this worker wrote.

    Raises:
        NonFiniteRunError: after the group with diverged runs is written (no later group
            is trained).
    """
    written: dict[int, float] = {}
    with concurrent.futures.ThreadPoolExecutor(1) as claimer:
        upcoming = claimer.submit(queue.next_group)
        previous: tuple[list[int], _WrittenGroup] | None = None
        try:
            while True:
                group = upcoming.result()
                upcoming = None
                if not group:
                    break
                upcoming = claimer.submit(queue.next_group)
                try:
                    runs, diverged = group_trainer.train(group)
                    in_flight = writer.submit(runs, diverged, group_trainer.config.learning_rate)
                except BaseException:
                    queue.release(group)
                    raise
                # Kept before the last group is finished, so that if finishing it fails,
                # the `finally` below still waits for this group's writes and releases it.
                finishing, previous = previous, (group, in_flight)
                if finishing is not None:
                    written.update(_finish(queue, *finishing))
                if in_flight.diverged:
                    break  # finished and reported below, before any further group
        finally:
            if upcoming is not None:  # claimed ahead but not trained: give the runs back
                with contextlib.suppress(Exception):
                    queue.release(upcoming.result())
            if previous is not None:
                finishing, previous = previous, None
                written.update(_finish(queue, *finishing))
    return written


def _finish(queue: _RunQueue, group: list[int], in_flight: _WrittenGroup) -> dict[int, float]:
    """Waits for a group's writes and releases its claims; returns its runs written."""
    try:
        return in_flight.wait()
    finally:
        queue.release(group)


# Threads writing runs: on a local disk a write is Python work (zip, json) that holds the
# interpreter lock, and 8 writers starved the thread that hands the next group to the
# trainer (1000 digits runs: 2.0-3.1 s of hand-over per 1000 runs with 8, 0.9-1.0 s with
# 2); to remote stores (gs://) a write mostly waits on the network, so more overlap.
LOCAL_WRITER_THREADS = 2
REMOTE_WRITER_THREADS = 8


def _writer_threads(experiment_dir: str) -> int:
    """Writer threads for runs stored in `experiment_dir` (local disk or remote store)."""
    return LOCAL_WRITER_THREADS if files.is_local(experiment_dir) else REMOTE_WRITER_THREADS


@dataclasses.dataclass(frozen=True)
class _TrainedRun:
    """One trained run ready to write: its aux arrays, its ``run.json`` fields (without
    the experiment's settings, which the writer adds) and its checkpoints."""

    run_id: int
    test_accuracy: float
    arrays: dict[str, np.ndarray]
    record: records.RunRecord
    checkpoints: list  # (epoch, tf.train.Checkpoint), saved as ckpt-<epoch>


@dataclasses.dataclass
class _GroupTrainer:
    """Trains one group of runs of a subset at a time (`train`)."""

    trainer: Any  # core.Trainer, ConcurrentTrainer or StreamingTrainer
    data: data_lib.Dataset | StreamingData
    config: training.TrainConfig
    subset: str
    seed: int
    targets: targets_lib.TargetSet | None
    save_checkpoints: bool
    save_logits: bool
    bar: Progress

    def train(self, group: list[int]) -> tuple[list[_TrainedRun], dict[int, int]]:
        """The runs of `group` with finite predictions, and run id -> count of non-finite
        predictions of the runs that diverged (not to be written)."""
        group_start = time.time()
        subset, data = self.subset, self.data
        dropped = self.targets.indices if subset.startswith(subsets_lib.DROP_PREFIX) else None
        seeds = [subsets_lib.run_seeds(self.seed, subset, r) for r in group]
        subsets = [subsets_lib.subset_indices(data.num_train, subset, self.seed, r, dropped)
                   for r in group]
        equal_steps = None
        if subsets_lib.is_targeted_design(subset):
            equal_steps = [self.trainer.steps_per_epoch(data.num_train)] * len(group)
        weights = None  # a bank's runs: loss weights, stored beside the aux arrays
        if subsets_lib.is_bank_design(subset):
            weights = [subsets_lib.bank_weights(data.num_train, subset, self.seed, r)
                       for r in group]
        results = self.trainer.train(
            subsets, [s.init for s in seeds], [s.order for s in seeds],
            save_logits=self.save_logits, export_models=self.save_checkpoints,
            steps_per_epoch=equal_steps,
            on_epoch=functools.partial(_advance, self.bar, len(group) / self.config.epochs),
            **({} if weights is None else {"example_weights": weights}))
        seconds_per_run = (time.time() - group_start) / len(group)
        trained, diverged = [], {}
        for k, (run_id, subset_indices, result) in enumerate(zip(group, subsets, results,
                                                                 strict=True)):
            non_finite = _count_non_finite(result)
            if non_finite:
                diverged[run_id] = non_finite
                continue
            record = run_record_lib.run_record(
                data, subset, run_id, subset_indices, result, self.config.epochs,
                seconds_per_run, len(group), self.targets if dropped is not None else None)
            checkpoints = run_record_lib.run_checkpoints(result, self.config.epochs)
            arrays = runs_lib.aux_arrays(
                subset_indices, result.train.correctness, result.test.correctness,
                margin_train=result.train.margin, margin_test=result.test.margin,
                logodds_train=result.train.logodds, logodds_test=result.test.logodds,
                logits_train=result.train.logits, logits_test=result.test.logits)
            if weights is not None:
                arrays[runs_lib.EXAMPLE_WEIGHTS] = weights[k]
            trained.append(_TrainedRun(run_id, record.accuracy.test, arrays, record,
                                       checkpoints))
        return trained, diverged


@dataclasses.dataclass
class _WrittenGroup:
    """The runs of one trained group being written: (run id, test accuracy, future of
    `runs_lib.save_run`) each, and the runs not written because training diverged."""

    pending: list[tuple[int, float, concurrent.futures.Future]]
    diverged: dict[int, int]  # run id -> count of non-finite predictions
    experiment_dir: str
    subset: str
    learning_rate: float

    def wait(self) -> dict[int, float]:
        """Run id -> test accuracy of the runs this worker wrote (not those another
        worker completed meanwhile), once every write has finished.

        Raises:
            NonFiniteRunError: some runs of the group diverged (the others are written).
        """
        accuracies = {}
        for run_id, accuracy, future in self.pending:
            if future.result():  # False: another writer completed the run first
                accuracies[run_id] = accuracy
        if self.diverged:
            run_id, count = next(iter(self.diverged.items()))
            others = f" (and runs {subsets_lib.format_run_ids(list(self.diverged)[1:])})" \
                if len(self.diverged) > 1 else ""
            folder = layout_lib.ExperimentDir(self.experiment_dir).subset(self.subset)
            raise NonFiniteRunError(
                f"run {run_id}{others} of {folder}: {count} non-finite "
                f"predictions (margins or log-odds are NaN or infinite), not written: "
                f"training diverged; the learning_rate ({self.learning_rate:g}) is likely "
                "too high")
        return accuracies


def _count_non_finite(result: training.TrainedRun) -> int:
    """How many margins and log-odds of a trained run are NaN or infinite."""
    return sum(int(np.size(values) - np.isfinite(values).sum())
               for predictions in (result.train, result.test)
               for values in (predictions.margin, predictions.logodds) if values is not None)


def resolve_targets(experiment_dir: str, data: data_lib.Dataset, name: str,
                    choose: str | None = None, indices: str | None = None,
                    seed: int = 0) -> targets_lib.TargetSet:
    """The target set `name` of an experiment: the stored one, or one made now and stored.

    Args:
        experiment_dir: the experiment directory; sets live in its ``targets/``.
        data: the experiment's data set (size, and original indices for built-in sets).
        name: the set's name (its drop arm is ``drop-<name>``).
        choose: ``"random:20,easy:20"``: choose groups (easy: highest mean log-odds
            margin over the complete ``full`` runs already in the directory, the pilot).
        indices: a built-in set name (`targets.BUILTIN_TARGETS`), a comma list /
            ranges, or a file of training indices (one group, ``user``).
        seed: experiment seed (for random choices).

    Raises:
        ParameterError: nothing stored and nothing to make it from, both ways given, or
            no pilot runs for ``easy`` (naming ``targets`` or ``target_indices``).
        ValueError: a stored set differing from what was asked (naming its file).
    """
    if choose and indices:
        raise ParameterError("target_indices", "give targets or target_indices, not both")
    made = None
    if indices:
        if indices in targets_lib.BUILTIN_TARGETS:
            builtin = targets_lib.builtin_targets(indices, data)
            made = dataclasses.replace(builtin, name=name)
        else:
            chosen = targets_lib.parse_index_list(indices)
            if max(chosen) >= data.num_train:
                raise ParameterError("target_indices", "indices must be below "
                                     f"{data.num_train}", indices)
            made = targets_lib.TargetSet(name=name, groups={"user": tuple(chosen)},
                                         provenance={"target_indices": indices})
    path = targets_lib.targets_path(experiment_dir, name)
    if tf.io.gfile.exists(path):
        stored = targets_lib.load_targets(path)
        if made is not None and stored.groups != made.groups:
            raise ValueError(f"{path} already holds other indices for target set {name!r}; "
                             "choose another drop-<name>")
        if choose and stored.provenance.get("spec") not in (None, choose):
            raise ValueError(f"{path} was chosen with targets={stored.provenance['spec']}; "
                             "choose another drop-<name>")
        return stored
    if made is None:
        if not choose:
            raise ParameterError("targets", f"subset=drop-{name} has no stored target set "
                                 f"{path}; give targets=random:<n>,easy:<n> or "
                                 "target_indices")
        pilot = None
        if "easy" in choose:
            if "full" not in runs_lib.list_subsets(experiment_dir):
                raise ParameterError("targets", "easy examples are chosen by margin over "
                                     "pilot runs of the full arm; train some first "
                                     "(subset=full) or give pilot_runs", choose)
            pilot = runs_lib.load_experiment(experiment_dir, "full", progress=False).metric(
                "logodds", "train")
        made = targets_lib.choose_targets(choose, data.num_train, seed, name, pilot)
    targets_lib.save_targets(experiment_dir, made)
    return made


def train_targeted_experiment(experiment_dir: str, dataset: str, config: training.TrainConfig,
                              name: str, run_ids: Sequence[int], choose: str | None = None,
                              indices: str | None = None, pilot_runs: int = 0,
                              seed: int = 0, data_dir: str | None = None,
                              arms: Sequence[str] = ("full", "drop"), progress: bool = True,
                              data: data_lib.Dataset | None = None,
                              **train_kwargs) -> list[TrainSummary]:
    """Both arms of a targeted self-influence experiment, pilot first if asked.

    Trains ``full`` runs ``0..pilot_runs-1`` (the pilot that ``easy`` targets are chosen
    from; they are full-arm runs like any other), settles the target set, then the
    chosen arms (``full`` and/or ``drop``) for `run_ids`.

    Returns:
        One `TrainSummary` per training call, in order.
    """
    data = data or data_lib.load_dataset(dataset, data_dir=data_dir)
    summaries = []
    common = dict(seed=seed, data_dir=data_dir, progress=progress, data=data, **train_kwargs)
    if pilot_runs:
        summaries.append(train_experiment(experiment_dir, dataset, config, "full",
                                          range(pilot_runs), **common))
    targets = resolve_targets(experiment_dir, data, name, choose, indices, seed)
    for arm in arms:
        subset = "full" if arm == "full" else targets.drop_subset
        summaries.append(train_experiment(experiment_dir, dataset, config, subset, run_ids,
                                          targets=targets, **common))
    return summaries


def _advance(bar, runs: float, _steps: int) -> None:
    """Moves the progress bar by the fraction of runs one epoch of a group stands for."""
    bar.advance(runs)
