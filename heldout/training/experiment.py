"""Training the runs of an experiment into its directory, skipping the ones already done.

This is the job behind ``train.py``: find which requested runs are missing, train
them in groups of K models at once, and write each as a run directory (SPEC §3). It
is idempotent: complete runs are never retrained, and leftovers of interrupted runs
are redone from scratch with the same seeds, hence the same subsets.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.data import sources as data_lib
from heldout.data.imagenet import StreamingData
from heldout.progress import Progress
from heldout.store import coordination, files
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
                     lease_seconds: float = 600.0, settle_seconds: float = 1.0
                     ) -> TrainSummary:
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
    proceeds); every later call compares. A directory with runs but no
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
            raise ValueError(f"--subset={subset}: needs its target set "
                             "(--target_indices or --targets)")
    settings = {"dataset": dataset, "seed": seed, "train_config": {
        key: value for key, value in dataclasses.asdict(config).items()
        if key not in _SPEED_ONLY_SETTINGS}}
    stored = info_lib.read_experiment_info(experiment_dir)
    if not stored and runs_lib.list_subsets(experiment_dir):
        raise ValueError(f"experiment_dir={experiment_dir} holds runs but no "
                         f"{EXPERIMENT_INFO_FILENAME}, so their settings are unknown (released "
                         "runs can be read, not added to); train into a new experiment_dir")
    info_lib.check_settings(experiment_dir, stored, settings)  # before loading the data
    fingerprint = None  # of in-memory data given by the caller, hashed once
    if data is not None and not isinstance(data, StreamingData):
        fingerprint = info_lib.check_data(experiment_dir, data)  # also with nothing to train
    complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
    todo = [r for r in run_ids if r not in complete]
    already = tuple(r for r in run_ids if r in complete)  # grows if others finish runs
    if not todo:
        return TrainSummary(experiment_dir, subset, (), already, float("nan"),
                            time.time() - start)

    data = data or data_lib.load_dataset(dataset, data_dir=data_dir)
    dropped = targets.indices if subset.startswith(subsets_lib.DROP_PREFIX) else None
    streamed = isinstance(data, StreamingData)
    settings["data"] = (data.fingerprint() if streamed
                        else fingerprint or info_lib.data_fingerprint(data))
    info_lib.save_experiment_info(experiment_dir, settings, settle_seconds)
    # Always the full K: every group, padded if short, runs the same compiled program, so
    # a run's numbers do not depend on how many runs were left to train with it.
    trainer = streaming.StreamingTrainer(data, config) if streamed else make_trainer(data, config)
    group_size = trainer.num_models
    claims = (coordination.Claims.for_subset(experiment_dir, subset,
                                             lease_seconds=lease_seconds,
                                             settle_seconds=settle_seconds)
              if claim_runs else None)
    accuracies, trained, claimed_elsewhere = [], [], []
    pending = list(todo)
    bar = Progress(len(todo), "training", enabled=progress)

    def next_group() -> list[int]:
        """Claims the next group of runs nobody else holds or finished (up to K)."""
        nonlocal pending, already
        group = []
        while pending and len(group) < group_size:
            batch, pending = (pending[:group_size - len(group)],
                              pending[group_size - len(group):])
            complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
            batch = [r for r in batch if r not in complete]
            won = claims.claim(batch) if claims else batch
            claimed_elsewhere.extend(r for r in batch if r not in won)
            if claims and won:
                # A worker writes a run before releasing its claim, so a run finished
                # between the listing above and our claim shows up complete now.
                complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
                finished = [r for r in won if r in complete]
                claims.release(finished)
                already += tuple(finished)
                won = [r for r in won if r not in complete]
                for run_id in won:  # ours alone now: what a killed writer left goes
                    runs_lib.remove_leftovers(runs_lib.run_dir(experiment_dir, subset, run_id))
            group += won
        return group

    def finish(group: list[int], written: _WrittenGroup) -> None:
        """Waits for a group's writes, counts its runs, and releases its claims."""
        try:
            done = written.wait()
            accuracies.extend(done.values())
            trained.extend(done)
        finally:
            if claims:
                claims.release(group)

    # The pipeline: while group g trains (TensorFlow, without the GIL), a thread claims
    # group g + 1 (the claims' settle wait) and the writers write group g - 1.
    with (concurrent.futures.ThreadPoolExecutor(_writer_threads(experiment_dir)) as writers,
          concurrent.futures.ThreadPoolExecutor(1) as claimer,
          claims.heartbeat() if claims else contextlib.nullcontext()):
        upcoming = claimer.submit(next_group)
        previous: tuple[list[int], _WrittenGroup] | None = None
        try:
            while True:
                group = upcoming.result()
                upcoming = None
                if not group:
                    break
                upcoming = claimer.submit(next_group)
                try:
                    written = _train_group(
                        trainer, writers, experiment_dir, subset, group, data, config,
                        settings, seed, dropped, targets, save_checkpoints, save_logits, bar)
                except BaseException:
                    if claims:
                        claims.release(group)
                    raise
                # Kept before the last group is finished, so that if finishing it fails,
                # the `finally` below still waits for this group's writes and releases it.
                finishing, previous = previous, (group, written)
                if finishing is not None:
                    finish(*finishing)
                if written.diverged:
                    break  # finished and reported below, before any further group
        finally:
            if upcoming is not None:  # claimed ahead but not trained: give the runs back
                with contextlib.suppress(Exception):
                    if claims:
                        claims.release(upcoming.result())
            if previous is not None:
                finishing, previous = previous, None
                finish(*finishing)
    bar.close()
    still_claimed = ()
    if claimed_elsewhere:
        complete = set(runs_lib.list_runs(experiment_dir, subset)[0])
        still_claimed = tuple(sorted(set(claimed_elsewhere) - complete))
    return TrainSummary(experiment_dir, subset, tuple(trained), already,
                        float(np.mean(accuracies)) if accuracies else float("nan"),
                        time.time() - start, tuple(claimed_elsewhere), still_claimed)


# Threads writing runs: on a local disk a write is Python work (zip, json) that holds the
# interpreter lock, and 8 writers starved the thread that hands the next group to the
# trainer (1000 digits runs: 2.0-3.1 s of hand-over per 1000 runs with 8, 0.9-1.0 s with
# 2); to remote stores (gs://) a write mostly waits on the network, so more overlap.
LOCAL_WRITER_THREADS = 2
REMOTE_WRITER_THREADS = 8


def _writer_threads(experiment_dir: str) -> int:
    """Writer threads for runs stored in `experiment_dir` (local disk or remote store)."""
    return LOCAL_WRITER_THREADS if files.is_local(experiment_dir) else REMOTE_WRITER_THREADS


def _train_group(trainer, writers: concurrent.futures.Executor, experiment_dir: str,
                 subset: str, group: list[int], data: data_lib.Dataset,
                 config: training.TrainConfig, settings: dict, seed: int,
                 dropped: np.ndarray | None, targets: targets_lib.TargetSet | None,
                 save_checkpoints: bool, save_logits: bool, bar) -> _WrittenGroup:
    """Trains one group of runs and hands each run with finite predictions to the
    `writers`; returns the writes in flight (`_WrittenGroup.wait` collects them and
    reports runs that diverged)."""
    group_start = time.time()
    seeds = [subsets_lib.run_seeds(seed, subset, r) for r in group]
    subsets = [subsets_lib.subset_indices(data.num_train, subset, seed, r, dropped)
               for r in group]
    equal_steps = None
    if subsets_lib.is_targeted_design(subset):
        equal_steps = [trainer.steps_per_epoch(data.num_train)] * len(group)

    def after_epoch(steps: int) -> None:
        _advance(bar, len(group) / config.epochs, steps)

    results = trainer.train(
        subsets, [s.init for s in seeds], [s.order for s in seeds],
        save_logits=save_logits, export_models=save_checkpoints,
        steps_per_epoch=equal_steps, on_epoch=after_epoch)
    seconds_per_run = (time.time() - group_start) / len(group)
    pending, diverged = [], {}
    for run_id, subset_indices, result in zip(group, subsets, results, strict=True):
        directory = runs_lib.run_dir(experiment_dir, subset, run_id)
        non_finite = _count_non_finite(result)
        if non_finite:
            diverged[run_id] = non_finite
            continue
        record = run_record_lib.run_record(
            data, subset, run_id, subset_indices, result, config.epochs, seconds_per_run,
            len(group), targets if dropped is not None else None).with_settings(settings)
        checkpoints = run_record_lib.run_checkpoints(result, config.epochs)
        arrays = runs_lib.aux_arrays(
            subset_indices, result.train.correctness, result.test.correctness,
            margin_train=result.train.margin, margin_test=result.test.margin,
            logodds_train=result.train.logodds, logodds_test=result.test.logodds,
            logits_train=result.train.logits, logits_test=result.test.logits)
        # `save_run` leaves a run another worker completed meanwhile as it is (False):
        # checking here too cost a listing per run while the next group waited.
        pending.append((run_id, record.accuracy.test, writers.submit(
            runs_lib.save_run, directory, arrays, record, checkpoints=checkpoints)))
    return _WrittenGroup(pending, diverged, experiment_dir, subset, config.learning_rate)


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
        ValueError: nothing stored and nothing to make it from, both ways given, a
            stored set differing from what was asked, or no pilot runs for ``easy``.
    """
    if choose and indices:
        raise ValueError("--targets and --target_indices: give one of them, not both")
    made = None
    if indices:
        if indices in targets_lib.BUILTIN_TARGETS:
            builtin = targets_lib.builtin_targets(indices, data)
            made = dataclasses.replace(builtin, name=name)
        else:
            chosen = targets_lib.parse_index_list(indices)
            if max(chosen) >= data.num_train:
                raise ValueError(f"--target_indices: indices must be below {data.num_train}")
            made = targets_lib.TargetSet(name=name, groups={"user": tuple(chosen)},
                                         provenance={"target_indices": indices})
    path = targets_lib.targets_path(experiment_dir, name)
    if tf.io.gfile.exists(path):
        stored = targets_lib.load_targets(path)
        if made is not None and stored.groups != made.groups:
            raise ValueError(f"{path} already holds other indices for target set {name!r}; "
                             "choose another drop-<name>")
        if choose and stored.provenance.get("spec") not in (None, choose):
            raise ValueError(f"{path} was chosen with --targets={stored.provenance['spec']}; "
                             "choose another drop-<name>")
        return stored
    if made is None:
        if not choose:
            raise ValueError(f"--subset=drop-{name}: no stored target set {path}; pass "
                             "--targets=random:<n>,easy:<n> or --target_indices")
        pilot = None
        if "easy" in choose:
            if "full" not in runs_lib.list_subsets(experiment_dir):
                raise ValueError(f"--targets={choose}: easy examples are chosen by margin over "
                                 "pilot runs of the full arm; train some first "
                                 "(--subset=full) or pass --pilot_runs")
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
