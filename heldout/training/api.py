"""The front door of training: a `TrainRequest` in, the runs trained, a `TrainReport` out.

Everything ``train.py`` used to decide itself lives here, so a notebook gets the same
behaviour: the preset (`presets.PRESETS`) and published recipe, the design (a ratio,
``full`` or ``drop-<name>``), the run ids and this worker's shard, and the checks made
before any training starts:

* the experiment directory is named and writable;
* run ids are given and bounded (`designs.MAX_RUN_ID`), and the scheduler's shard
  variables are integers;
* the data set is valid (`Dataset`, `sources.load_dataset` with ``max_classes``) and
  every run trains on at least one example;
* a setting that cannot apply to runs already complete (checkpoints, the checkpoint
  interval, logits) is refused, unless ``retrain_complete`` asks to retrain those runs,
  whose aux arrays are then compared with the ones they replace.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from heldout.data import imagenet, sources
from heldout.data.dataset import DEFAULT_MAX_CLASSES, Dataset, check_class_count
from heldout.models import registry
from heldout.store import checks, coordination, designs, files, layout
from heldout.store import runs as runs_lib
from heldout.training import experiment, presets
from heldout.training.core import TrainConfig

# Scheduler variables read as shard numbers (`coordination.resolve_shard`).
_SHARD_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
                    "JOB_COMPLETION_INDEX")


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """What to train, as a user states it (every field of ``train.py`` is one flag).

    Attributes:
        config: how each run is trained.
        chosen: names of `config` fields the user set explicitly; a recipe keeps them.
        recipe: ``auto`` (the model's published recipe), ``none``, or a recipe name.
        experiment_dir: where runs go; None: the preset's, else ./experiments/digits.
        dataset: data spec (`sources.load_dataset`); None: the preset's, else digits.
        data_dir: TFDS data directory.
        subset: the design (``0.7``, ``full``, ``drop-<name>``); None: `subset_ratio`.
        subset_ratio: fraction of the training set each run trains on.
        run_ids: ids such as ``0-99`` or ``3,5,8``; None: ``0..num_runs-1``.
        num_runs: how many runs when `run_ids` is None.
        seed: experiment seed.
        targets: ``drop-<name>``: how to choose the target set (``random:20,easy:20``).
        target_indices: ``drop-<name>``: the target set itself (list, file, built-in).
        pilot_runs: full-arm runs trained first (to choose easy targets from).
        preset: a name in `presets.PRESETS`: a whole experiment.
        save_checkpoints: write each run's final model (and snapshots).
        save_logits: store float16 logits in the aux arrays.
        retrain_complete: retrain complete runs that lack the checkpoints or logits asked
            for (instead of refusing).
        num_shards, shard_index: this worker's shard; None: from the scheduler.
        claim_runs, lease_seconds: claims of concurrent workers (`coordination.Claims`).
        verify: first check complete runs, moving damaged ones aside to be retrained.
        progress: show a progress bar.
        max_classes: most classes a data set may have.
        stream_records: train from ``imagenet:`` records streamed by tf.data
            (`imagenet.streaming_data`) instead of arrays in memory (full ImageNet).
        image_size: with `stream_records`: side of the model's input images.
        environ: the environment the shard variables are read from (None: os.environ).
    """

    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    chosen: frozenset[str] = frozenset()
    recipe: str = "auto"
    experiment_dir: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    subset: str | None = None
    subset_ratio: float = 0.7
    run_ids: str | None = None
    num_runs: int = 1000
    seed: int = 0
    targets: str | None = None
    target_indices: str | None = None
    pilot_runs: int = 0
    preset: str | None = None
    save_checkpoints: bool = False
    save_logits: bool = False
    retrain_complete: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    claim_runs: bool = True
    lease_seconds: float = 600.0
    verify: bool = False
    progress: bool = True
    max_classes: int = DEFAULT_MAX_CLASSES
    stream_records: bool = False
    image_size: int = 224
    environ: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class TrainReport:
    """What `train` did; ``str()`` is the summary ``train.py`` prints."""

    summaries: tuple[experiment.TrainSummary, ...]
    shard: coordination.Shard
    num_run_ids: int  # of this shard
    damaged: tuple[tuple[str, str, str], ...] = ()  # (run dir, problem, moved to)
    verified: int | None = None  # complete runs checked (None: not asked)
    retrained: int = 0  # complete runs retrained for checkpoints or logits
    retrained_identical: int = 0  # of those, aux arrays bit-identical to before

    @property
    def exit_status(self) -> int:
        """0, or `coordination.EXIT_RUNS_CLAIMED_ELSEWHERE` when requested runs are still
        missing because other workers claim them (a scheduler should retry)."""
        return max((s.exit_status for s in self.summaries), default=0)

    @property
    def retry_message(self) -> str:
        """One line saying which runs other workers still hold (empty when none)."""
        held = [f"runs {designs.format_run_ids(s.still_claimed)} of "
                f"{s.experiment_dir}/{s.subset}" for s in self.summaries if s.still_claimed]
        if not held:
            return ""
        return (f"{'; '.join(held)} are claimed by other workers and not complete yet; run "
                f"again later (exit status {self.exit_status})")

    def __str__(self) -> str:
        lines = []
        if self.shard.count > 1:
            lines.append(f"shard {self.shard.index} of {self.shard.count} "
                         f"({self.shard.source}): {self.num_run_ids} run ids")
        for directory, problem, moved in self.damaged:
            lines.append(f"damaged run {directory}: {problem} (moved to {moved}; "
                         "it will be redone)")
        if self.verified is not None:
            lines.append(f"verified {self.verified} complete runs: {len(self.damaged)} damaged")
        for s in self.summaries:
            line = (f"{s.experiment_dir}/{s.subset}: trained {len(s.trained)} runs, "
                    f"{len(s.already_complete)} were already complete")
            if s.claimed_elsewhere:
                line += f", {len(s.claimed_elsewhere)} claimed by other workers"
            if s.trained:
                line += f"; mean test accuracy {s.mean_test_accuracy:.4f}"
            per_run = f" ({s.seconds / len(s.trained) * 1000:.1f} ms per run)" if s.trained else ""
            lines.append(f"{line}; {s.seconds:.1f} s{per_run}")
            if s.trained:
                lines.append(f"  trained run ids: {designs.format_run_ids(s.trained)}")
        if self.retrained:
            lines.append(f"retrained {self.retrained} complete runs: aux arrays bit-identical "
                         f"to the earlier ones in {self.retrained_identical} of "
                         f"{self.retrained}")
        return "\n".join(lines)


def train(request: TrainRequest) -> TrainReport:
    """Trains the runs `request` asks for that are not complete yet.

    Every check that can fail does so before training starts (see the module
    docstring); the errors name the request's parameters.

    Raises:
        ValueError: an invalid or contradictory request, an unwritable directory,
            invalid data, runs of other settings in the directory, or complete runs
            lacking requested checkpoints or logits (without `retrain_complete`).
    """
    preset = presets.get_preset(request.preset) if request.preset else None
    _check_preset(request, preset)
    experiment_dir = _experiment_dir(request, preset)
    dataset = request.dataset or (preset.dataset if preset else "digits")
    run_ids = _run_ids(request)
    shard = _shard(request)
    run_ids = coordination.shard_run_ids(run_ids, shard)
    if request.config.checkpoint_every and not request.save_checkpoints:
        raise ValueError(f"checkpoint_every={request.config.checkpoint_every}: the snapshots "
                         "are checkpoints; also give save_checkpoints")
    design = designs.design_name(request.subset if request.subset is not None
                                 else designs.subset_name(request.subset_ratio))
    if not designs.is_targeted_design(design) and not preset and (
            request.targets or request.target_indices):
        raise ValueError("targets: only for subset=drop-<name> (or target_indices)")
    checks.check_writable(experiment_dir, "experiment_dir")
    config = presets.resolve_recipe(request.config, request.recipe, request.chosen)
    if preset:
        config = presets.preset_config(preset.name, config, request.chosen)
    if ("models_at_once" in request.chosen and config.models_at_once != 1
            and registry.get(config.model).trainer == "single"):
        raise ValueError(f"models_at_once={config.models_at_once}: model={config.model} "
                         "trains one run per program; leave models_at_once out or give 1")
    data = _data(request, dataset)
    _check_examples_per_run(data, design)

    damaged, verified = (), None
    if request.verify:
        verified, problems = runs_lib.verify_runs(experiment_dir)
        damaged = tuple((d, p, runs_lib.quarantine_run(d)) for d, p in problems)
    arms = _arms(request, preset, design, run_ids)
    lacking = {subset: _lacking(experiment_dir, subset, ids, config, request)
               for subset, ids in arms.items()}
    lacking = {subset: found for subset, found in lacking.items() if found}
    if lacking and not request.retrain_complete:
        raise ValueError(_refusal(experiment_dir, lacking, request))
    set_aside = {subset: _set_aside(experiment_dir, subset, ids)
                 for subset, ids in lacking.items()}

    common = dict(seed=request.seed, data_dir=request.data_dir, data=data,
                  save_checkpoints=request.save_checkpoints, save_logits=request.save_logits,
                  progress=request.progress, claim_runs=request.claim_runs,
                  lease_seconds=request.lease_seconds)
    if preset:
        summaries = experiment.train_targeted_experiment(
            experiment_dir, dataset, config, preset.target_name, run_ids,
            choose=preset.choose, pilot_runs=preset.pilot_runs, arms=preset.arms, **common)
    elif designs.is_targeted_design(design):
        summaries = experiment.train_targeted_experiment(
            experiment_dir, dataset, config, design[len(designs.DROP_PREFIX):], run_ids,
            choose=request.targets, indices=request.target_indices,
            pilot_runs=request.pilot_runs, arms=("drop",), **common)
    else:
        summaries = [experiment.train_experiment(experiment_dir, dataset, config, design,
                                                 run_ids, **common)]
    identical = sum(_compare_and_remove(experiment_dir, subset, before)
                    for subset, before in set_aside.items())
    return TrainReport(tuple(summaries), shard, len(run_ids), damaged, verified,
                       sum(len(b) for b in set_aside.values()), identical)


def _data(request: TrainRequest, dataset: str) -> Dataset | imagenet.StreamingData:
    """The data set in memory, or described for streaming (`stream_records`)."""
    if not request.stream_records:
        return sources.load_dataset(dataset, request.data_dir, max_classes=request.max_classes)
    if not dataset.startswith(imagenet.SPEC_PREFIX):
        raise ValueError(f"stream_records: only for imagenet:<train pattern>,<test pattern> "
                         f"data sets, not dataset={dataset}")
    data = imagenet.streaming_data(dataset, request.image_size)
    check_class_count(f"dataset={dataset}", data.num_classes, request.max_classes)
    return data


def _check_preset(request: TrainRequest, preset: presets.Preset | None) -> None:
    """A preset fixes the data set, design and target set: refuse other values of them."""
    if preset is None:
        return
    given = {"subset": request.subset, "targets": request.targets,
             "target_indices": request.target_indices,
             "pilot_runs": request.pilot_runs or None}
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name}={value}: set by preset={preset.name} ({preset.description})")
    if request.dataset not in (None, preset.dataset):
        raise ValueError(f"dataset={request.dataset}: preset={preset.name} trains on "
                         f"{preset.dataset}")


def _experiment_dir(request: TrainRequest, preset: presets.Preset | None) -> str:
    if request.experiment_dir is None:
        return preset.experiment_dir if preset else presets.DEFAULT_EXPERIMENT_DIR
    if not request.experiment_dir.strip():
        raise ValueError("experiment_dir: empty; expected a directory (local or gs://)")
    return request.experiment_dir


def _run_ids(request: TrainRequest) -> list[int]:
    if request.run_ids is not None:
        if not request.run_ids.strip():
            raise ValueError("run_ids: empty; expected ids such as 0-99 or 3,5,8 (or none "
                             "given, for num_runs)")
        return designs.parse_run_ids(request.run_ids, "run_ids")
    if not 0 < request.num_runs <= designs.MAX_RUN_ID:
        raise ValueError(f"num_runs={request.num_runs}: expected a number in "
                         f"[1, {designs.MAX_RUN_ID:,}]")
    return list(range(request.num_runs))


def _shard(request: TrainRequest) -> coordination.Shard:
    """This worker's shard; a scheduler variable that is not an integer is named."""
    environ = os.environ if request.environ is None else request.environ
    for name in _SHARD_VARIABLES:
        value = environ.get(name)
        if value is not None and not value.strip().lstrip("-").isdigit():
            raise ValueError(f"environment variable {name}={value!r}: expected an integer "
                             "(set by Slurm or Kubernetes)")
    return coordination.resolve_shard(request.num_shards, request.shard_index, environ)


def _check_examples_per_run(data: Dataset | imagenet.StreamingData, design: str) -> None:
    """Refuses a ratio so small that a run would train on no example."""
    if designs.is_targeted_design(design) or design == designs.FULL:
        return
    ratio = designs.parse_subset_ratio(design)
    if int(round(ratio * data.num_train)) < 1:
        raise ValueError(f"subset_ratio={ratio}: each run would train on 0 of "
                         f"{data.num_train} examples; expected at least one (a ratio of "
                         f"at least {0.5 / data.num_train:.2g})")


def _arms(request: TrainRequest, preset: presets.Preset | None, design: str,
          run_ids: Sequence[int]) -> dict[str, list[int]]:
    """Subset folder -> the run ids this request trains there."""
    if preset:
        drop = f"{designs.DROP_PREFIX}{preset.target_name}"
        return {designs.FULL: sorted(set(run_ids) | set(range(preset.pilot_runs))),
                drop: list(run_ids)}
    if designs.is_targeted_design(design) and request.pilot_runs:
        return {designs.FULL: list(range(request.pilot_runs)), design: list(run_ids)}
    return {design: list(run_ids)}


def _lacking(experiment_dir: str, subset: str, run_ids: Sequence[int], config: TrainConfig,
             request: TrainRequest) -> list[int]:
    """Complete runs among `run_ids` without the checkpoints or logits `request` asks for."""
    if not (request.save_checkpoints or request.save_logits):
        return []
    complete = set(runs_lib.list_runs(experiment_dir, subset)[0]) & set(run_ids)
    snapshots = set(range(config.checkpoint_every, config.epochs, config.checkpoint_every)
                    ) if config.checkpoint_every else set()
    lacking = []
    for run_id in sorted(complete):
        directory = runs_lib.run_dir(experiment_dir, subset, run_id)
        if request.save_checkpoints:
            saved = {c["epoch"] for c in runs_lib.read_run_info(directory).get("checkpoints", [])}
            final = layout.RunDir(directory).checkpoint(config.epochs) + ".index"
            if not tf.io.gfile.exists(final) or not snapshots <= saved:
                lacking.append(run_id)
                continue
        if request.save_logits and not any(
                key.startswith(runs_lib.LOGITS_PREFIX) for key in runs_lib.load_run(directory)):
            lacking.append(run_id)
    return lacking


def _refusal(experiment_dir: str, lacking: dict[str, list[int]], request: TrainRequest) -> str:
    """The one line that says which runs lack what, and the two ways forward."""
    wanted = []
    if request.save_checkpoints:
        every = request.config.checkpoint_every
        wanted.append(f"checkpoints (saved every {every} epochs)" if every else "checkpoints")
    if request.save_logits:
        wanted.append("logits")
    where = "; ".join(f"{subset} runs {designs.format_run_ids(ids)}"
                      for subset, ids in lacking.items())
    first = "save_checkpoints" if request.save_checkpoints else "save_logits"
    return (f"{first}: {sum(map(len, lacking.values()))} requested runs of {experiment_dir} "
            f"are already complete without {' or '.join(wanted)} ({where}); use a new "
            "experiment_dir, or add retrain_complete to retrain them with "
            f"{' and '.join(wanted)} (same seeds and settings: their aux arrays come out "
            "bit-identical, which is checked)")


def _set_aside(experiment_dir: str, subset: str, run_ids: Sequence[int]) -> dict[int, str]:
    """Moves the aux arrays of runs to be retrained aside; returns run id -> where."""
    moved = {}
    for run_id in run_ids:
        run = layout.RunDir(runs_lib.run_dir(experiment_dir, subset, run_id))
        files.makedirs_for(run.set_aside)
        tf.io.gfile.rename(run.aux_arrays, run.set_aside, overwrite=True)
        moved[run_id] = run.set_aside
    return moved


def _compare_and_remove(experiment_dir: str, subset: str, before: Mapping[int, str]) -> int:
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
