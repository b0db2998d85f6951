"""The front door of ``train.py``: one typed job per kind of training, and `train(job)`.

Three jobs, each frozen and each *holding* the lower layers' settings (a `TrainConfig`,
a `DataSource`, a `RunSettings`) instead of copying their fields:

    TrainDesign   runs on random subsets of a ratio (``0.7``), or on every example (``full``)
    TrainDrop     the drop arm of a targeted experiment: all but a target set (``drop-<name>``)
    TrainPreset   a whole preset experiment (`presets.PRESETS`): pilot, targets, both arms

`train(job)` trains what the job asks for that is not complete yet (one ``match``);
`job_from_flags(given)` builds the one job of the values given on ``train.py``'s command
line and refuses, naming it, any flag that job does not take (`TAKES`). Defaults have one
owner: `TrainConfig`, the recipes and presets (`recipes.config_for`), and the fields
below; a flag not given is simply not passed. Building a job imports no TensorFlow, so a
bad flag is reported within a second; every check that needs the data or the directory
runs in `train` before any training starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from heldout.data.dataset import DEFAULT_MAX_CLASSES
from heldout.errors import ParameterError
from heldout.store import designs
from heldout.training import presets, recipes
from heldout.training.config import TrainConfig, check_streamable

if TYPE_CHECKING:
    from heldout.store import coordination
    from heldout.training import experiment

DEFAULT_DATASET = "digits"  # the embedded data set (`heldout.data.sources`)
DEFAULT_DESIGN = "0.7"  # the published random-subset ratio
DEFAULT_NUM_RUNS = 1000  # run ids 0..999 when no run ids are given
# Prefixes of data set specs (`heldout.data.sources.load_dataset`) some settings need.
_TFDS_PREFIX, _IMAGENET_PREFIX = "tfds:", "imagenet:"
# Scheduler variables read as shard numbers (`coordination.resolve_shard`).
_SHARD_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
                    "JOB_COMPLETION_INDEX")


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the training examples come from.

    Attributes:
        dataset: data spec (`heldout.data.sources.load_dataset`).
        data_dir: TFDS data directory (``tfds:`` data sets only).
        max_classes: most classes a data set may have (a stray label of 1,000,000 is
            refused instead of building a million-way model).
        stream_records: train from ``imagenet:`` records streamed by tf.data
            (`heldout.training.streaming`) instead of arrays in memory.
        image_size: with `stream_records`: side of the model's input images (None: the
            default of `heldout.data.imagenet.streaming_data`).
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    max_classes: int = DEFAULT_MAX_CLASSES
    stream_records: bool = False
    image_size: int | None = None

    def __post_init__(self):
        if not self.dataset.strip():
            raise ParameterError("dataset", "empty; expected digits, npz:<path>, "
                                 "tfds:<name> or imagenet:<train>,<test>")
        if self.data_dir is not None and not self.dataset.startswith(_TFDS_PREFIX):
            raise ParameterError("data_dir", "only for tfds:<name> data sets, not "
                                 f"dataset={self.dataset}", self.data_dir)
        if self.max_classes < 1:
            raise ParameterError("max_classes", "expected a positive number",
                                 self.max_classes)
        if self.image_size is not None:
            if not self.stream_records:
                raise ParameterError("image_size", "only with stream_records (the side of "
                                     "streamed images)", self.image_size)
            if self.image_size < 1:
                raise ParameterError("image_size", "expected a positive number of pixels",
                                     self.image_size)
        if self.stream_records and not self.dataset.startswith(_IMAGENET_PREFIX):
            raise ParameterError("stream_records", "only for imagenet:<train pattern>,<test "
                                 f"pattern> data sets, not dataset={self.dataset}")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Which runs, where, and what is kept of them.

    Attributes:
        experiment_dir: where runs go (local or gs://); None: the preset's, else
            `presets.DEFAULT_EXPERIMENT_DIR`.
        run_ids: ids such as ``0-99`` or ``3,5,8``; None: ``0..num_runs-1``.
        num_runs: how many runs when `run_ids` is None (None: `DEFAULT_NUM_RUNS`).
        seed: experiment seed; with a run id it fixes the run.
        num_shards, shard_index: this worker's shard; None: from the scheduler.
        save_checkpoints: write each run's final model (and snapshots).
        save_logits: store float16 logits in the aux arrays.
        retrain_complete: retrain complete runs that lack the checkpoints or logits
            asked for (instead of refusing); their new aux arrays are compared.
        verify: first check complete runs, moving damaged ones aside to be retrained.
        claim_runs: claim runs before training them (`coordination.Claims`).
        lease_seconds: with `claim_runs`: a claim not renewed for this long is taken as
            abandoned (None: `coordination.DEFAULT_LEASE_SECONDS`).
        progress: show a progress bar.
        environ: the environment the shard variables are read from (None: os.environ).
    """

    experiment_dir: str | None = None
    run_ids: str | None = None
    num_runs: int | None = None
    seed: int = 0
    num_shards: int | None = None
    shard_index: int | None = None
    save_checkpoints: bool = False
    save_logits: bool = False
    retrain_complete: bool = False
    verify: bool = False
    claim_runs: bool = True
    lease_seconds: float | None = None
    progress: bool = True
    environ: Mapping[str, str] | None = None

    def __post_init__(self):
        if self.experiment_dir is not None and not self.experiment_dir.strip():
            raise ParameterError("experiment_dir", "empty; expected a directory (local or "
                                 "gs://)")
        if self.run_ids is not None:
            if self.num_runs is not None:
                raise ParameterError("num_runs", "give run_ids or num_runs, not both",
                                     self.num_runs)
            if not self.run_ids.strip():
                raise ParameterError("run_ids", "empty; expected ids such as 0-99 or 3,5,8 "
                                     "(or none given, for num_runs)")
            designs.parse_run_ids(self.run_ids, "run_ids")
        if self.num_runs is not None and not 0 < self.num_runs <= designs.MAX_RUN_ID:
            raise ParameterError("num_runs", f"expected a number in [1, "
                                 f"{designs.MAX_RUN_ID:,}]", self.num_runs)
        if self.num_shards is not None and self.num_shards < 1:
            raise ParameterError("num_shards", "expected a positive number", self.num_shards)
        if self.shard_index is not None and self.shard_index < 0:
            raise ParameterError("shard_index", "expected a number >= 0", self.shard_index)
        if self.retrain_complete and not (self.save_checkpoints or self.save_logits):
            raise ParameterError("retrain_complete", "retrains complete runs for the "
                                 "checkpoints or logits asked for: also give "
                                 "save_checkpoints or save_logits")
        if self.lease_seconds is not None:
            if not self.claim_runs:
                raise ParameterError("lease_seconds", "only with claim_runs (the lease of "
                                     "a claim)", self.lease_seconds)
            if not 0 < self.lease_seconds < math.inf:
                raise ParameterError("lease_seconds", "expected a positive finite number of "
                                     "seconds", self.lease_seconds)

    @property
    def ids(self) -> list[int]:
        """Every run id asked for (before sharding)."""
        if self.run_ids is not None:
            return designs.parse_run_ids(self.run_ids, "run_ids")
        return list(range(DEFAULT_NUM_RUNS if self.num_runs is None else self.num_runs))


def _check_parts(config: TrainConfig, data: DataSource, runs: RunSettings) -> None:
    """What no single part can check alone: snapshots are checkpoints, and streamed
    training takes only the settings it can honour."""
    if config.checkpoint_every and not runs.save_checkpoints:
        raise ParameterError("checkpoint_every", "the snapshots are checkpoints; also give "
                             "save_checkpoints", config.checkpoint_every)
    if data.stream_records:
        check_streamable(config)


@dataclasses.dataclass(frozen=True)
class TrainDesign:
    """Runs on random subsets of a ratio of the training set, or on all of it.

    Attributes:
        config: how each run is trained.
        design: a ratio in (0, 1) such as ``0.7``, ``full`` (every training example), or
            ``bank-<p>`` (every example's batch slots, a fraction p at loss weight 0 in
            runs r > 0; `heldout.store.designs`).
        data: where the examples come from.
        runs: which runs, where, and what is kept.
    """

    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    design: str = DEFAULT_DESIGN
    data: DataSource = dataclasses.field(default_factory=DataSource)
    runs: RunSettings = dataclasses.field(default_factory=RunSettings)

    def __post_init__(self):
        design = designs.design_name(self.design)
        if design.startswith(designs.DROP_PREFIX):
            raise ParameterError("design", "a drop-<name> design leaves out a target set: "
                                 "train it with a TrainDrop job", design)
        object.__setattr__(self, "design", design)
        _check_parts(self.config, self.data, self.runs)


@dataclasses.dataclass(frozen=True)
class TrainDrop:
    """The drop arm ``drop-<target_name>`` of a targeted self-influence experiment: every
    training example but the target set, which is stored, chosen or given.

    Attributes:
        target_name: the target set's name (letters, digits, ``_``, ``-``).
        config: how each run is trained.
        targets: how to choose the set (``random:20,easy:20``; easy: highest mean
            log-odds margin over the full arm's runs); None: stored or `target_indices`.
        target_indices: the set itself (comma list / ranges, a file, a built-in set).
        pilot_runs: full-arm runs ``0..pilot_runs-1`` trained first (easy targets).
        data: where the examples come from.
        runs: which runs, where, and what is kept.
    """

    target_name: str
    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    targets: str | None = None
    target_indices: str | None = None
    pilot_runs: int = 0
    data: DataSource = dataclasses.field(default_factory=DataSource)
    runs: RunSettings = dataclasses.field(default_factory=RunSettings)

    def __post_init__(self):
        designs.design_name(self.design)
        if self.targets is not None and self.target_indices is not None:
            raise ParameterError("target_indices", "give targets or target_indices, not both",
                                 self.target_indices)
        if not 0 <= self.pilot_runs <= designs.MAX_RUN_ID:
            raise ParameterError("pilot_runs", f"expected a number in [0, "
                                 f"{designs.MAX_RUN_ID:,}]", self.pilot_runs)
        _check_parts(self.config, self.data, self.runs)

    @property
    def design(self) -> str:
        return f"{designs.DROP_PREFIX}{self.target_name}"


@dataclasses.dataclass(frozen=True)
class TrainPreset:
    """A whole preset experiment: its pilot runs, target set and arms.

    Attributes:
        preset: a name in `presets.PRESETS`.
        config: how each run is trained (None: the preset's, `presets.preset_config`).
        data: where the examples come from (None: the preset's data set); a data set
            other than the preset's is refused.
        runs: which runs of each arm, where (None: the preset's directory), what is kept.
    """

    preset: str
    config: TrainConfig | None = None
    data: DataSource | None = None
    runs: RunSettings = dataclasses.field(default_factory=RunSettings)

    def __post_init__(self):
        preset = presets.get_preset(self.preset)
        if self.config is None:
            object.__setattr__(self, "config", presets.preset_config(self.preset))
        if self.data is None:
            object.__setattr__(self, "data", DataSource(preset.dataset))
        if self.data.dataset != preset.dataset:
            raise ParameterError("dataset", f"preset={preset.name} trains on "
                                 f"{preset.dataset}", self.data.dataset)
        _check_parts(self.config, self.data, self.runs)


TrainJob = TrainDesign | TrainDrop | TrainPreset

# --- train.py's flags -> one job -------------------------------------------------------

CONFIG_FLAGS = tuple(TrainConfig.__dataclass_fields__)
DATA_FLAGS = tuple(DataSource.__dataclass_fields__)
RUN_FLAGS = tuple(f for f in RunSettings.__dataclass_fields__ if f != "environ")
_EVERY_JOB = frozenset({*CONFIG_FLAGS, "recipe", *RUN_FLAGS})
# The flags each job takes; any other flag given is refused, naming it.
TAKES: dict[type, frozenset[str]] = {
    TrainDesign: _EVERY_JOB | {*DATA_FLAGS, "subset", "subset_ratio"},
    TrainDrop: _EVERY_JOB | {*DATA_FLAGS, "subset", "targets", "target_indices",
                             "pilot_runs"},
    TrainPreset: _EVERY_JOB | {"config", "max_classes"},
}
FLAGS = frozenset().union(*TAKES.values())
# Job parameter -> the train.py flag it comes from, where the names differ.
FLAG_OF_PARAMETER = {"design": "subset", "target_name": "subset", "preset": "config"}


def job_kind(given: Mapping[str, Any]) -> type:
    """The kind of job the given flags ask for: a preset (``config``), a drop arm
    (``subset=drop-<name>``), else a ratio or full design."""
    if "config" in given:
        return TrainPreset
    if str(given.get("subset", "")).startswith(designs.DROP_PREFIX):
        return TrainDrop
    return TrainDesign


def job_from_flags(given: Mapping[str, Any],
                   environ: Mapping[str, str] | None = None) -> TrainJob:
    """The one job of the flags given on ``train.py``'s command line (name -> value).

    Raises:
        ParameterError: a flag the job does not take (naming it and why), or an invalid
            value (from the job's own validation).
    """
    kind = job_kind(given)
    for name in given:
        if name not in TAKES[kind]:
            raise _not_taken(kind, name, given)
    if "subset" in given and "subset_ratio" in given:
        raise ParameterError("subset_ratio", "give subset or subset_ratio, not both",
                             given["subset_ratio"])

    def picked(names: Sequence[str]) -> dict[str, Any]:
        return {name: given[name] for name in names if name in given}

    overrides, recipe = picked(CONFIG_FLAGS), given.get("recipe", recipes.AUTO)
    runs = RunSettings(**picked(RUN_FLAGS), environ=environ)
    if kind is TrainPreset:
        name = given["config"]
        return TrainPreset(name, presets.preset_config(name, overrides, recipe),
                           DataSource(presets.get_preset(name).dataset,
                                      **picked(["max_classes"])), runs)
    config = recipes.config_for(overrides, recipe)
    data = DataSource(**picked(DATA_FLAGS))
    if kind is TrainDrop:
        return TrainDrop(given["subset"][len(designs.DROP_PREFIX):], config,
                         **picked(["targets", "target_indices", "pilot_runs"]),
                         data=data, runs=runs)
    if "subset_ratio" in given:
        design = designs.subset_name(given["subset_ratio"])
    else:
        design = given.get("subset", DEFAULT_DESIGN)
    return TrainDesign(config, design, data, runs)


def _not_taken(kind: type, name: str, given: Mapping[str, Any]) -> ParameterError:
    """The error for flag `name`, which jobs of `kind` do not take."""
    value = given[name]
    if kind is TrainPreset:
        preset = presets.get_preset(given["config"])
        if name == "dataset":
            return ParameterError(name, f"config={preset.name} trains on {preset.dataset}",
                                  value)
        return ParameterError(name, f"set by config={preset.name} ({preset.description})",
                              value)
    if name in ("targets", "target_indices", "pilot_runs"):
        design = given.get("subset", given.get("subset_ratio", DEFAULT_DESIGN))
        return ParameterError(name, "only for subset=drop-<name> (the target set of a "
                              f"drop arm), not subset={design}", value)
    if name == "subset_ratio":
        return ParameterError(name, f"subset={given['subset']} trains on all examples but "
                              "its target set; leave subset_ratio out", value)
    return ParameterError(name, f"not a setting of {kind.__name__} jobs", value)


# --- training ----------------------------------------------------------------------------


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


def train(job: TrainJob) -> TrainReport:
    """Trains the runs `job` asks for that are not complete yet.

    Before any training: the run ids and this worker's shard, a writable experiment
    directory, valid data on which every run trains on at least one example, and
    complete runs lacking requested checkpoints or logits (refused unless
    ``retrain_complete``; then set aside, retrained and compared).

    Raises:
        ValueError: (`ParameterError` where a setting is at fault) an unwritable
            directory, invalid data, runs of other settings in the directory, or
            complete runs lacking requested checkpoints or logits.
    """
    from heldout.store import checks, coordination
    from heldout.training import experiment, retrain

    runs = job.runs
    shard = _shard(runs)
    run_ids = coordination.shard_run_ids(runs.ids, shard)
    ratio_design = None  # a design whose runs train on a fraction of the examples
    match job:
        case TrainPreset(preset=name):
            preset = presets.get_preset(name)
            directory = runs.experiment_dir or preset.experiment_dir
            arms = {designs.FULL: sorted(set(run_ids) | set(range(preset.pilot_runs))),
                    f"{designs.DROP_PREFIX}{preset.target_name}": list(run_ids)}
            launch = functools.partial(
                experiment.train_targeted_experiment, name=preset.target_name,
                choose=preset.choose, pilot_runs=preset.pilot_runs, arms=preset.arms)
        case TrainDrop(pilot_runs=pilot_runs):
            directory = runs.experiment_dir or presets.DEFAULT_EXPERIMENT_DIR
            arms = {designs.FULL: list(range(pilot_runs))} if pilot_runs else {}
            arms[job.design] = list(run_ids)
            launch = functools.partial(
                experiment.train_targeted_experiment, name=job.target_name,
                choose=job.targets, indices=job.target_indices, pilot_runs=pilot_runs,
                arms=("drop",))
        case TrainDesign(design=design):
            directory = runs.experiment_dir or presets.DEFAULT_EXPERIMENT_DIR
            arms = {design: list(run_ids)}
            launch = functools.partial(_train_design, subset=design)
            ratio_design = None if design == designs.FULL or designs.is_bank_design(
                design) else design  # a bank's runs have every example's batch slots
        case _:
            raise TypeError(f"not a training job: {job!r}")
    checks.check_writable(directory, "experiment_dir")
    data = _load(job.data)
    if ratio_design is not None:
        _check_examples_per_run(data, ratio_design)
    damaged, verified = _verify(directory) if runs.verify else ((), None)
    set_aside = _set_aside_lacking(directory, arms, job.config, runs)
    summaries = launch(
        directory, job.data.dataset, job.config, run_ids=run_ids, seed=runs.seed,
        data_dir=job.data.data_dir, data=data, save_checkpoints=runs.save_checkpoints,
        save_logits=runs.save_logits, progress=runs.progress, claim_runs=runs.claim_runs,
        lease_seconds=runs.lease_seconds or coordination.DEFAULT_LEASE_SECONDS)
    identical = sum(retrain.compare_and_remove(directory, subset, before)
                    for subset, before in set_aside.items())
    return TrainReport(tuple(summaries), shard, len(run_ids), damaged, verified,
                       sum(len(b) for b in set_aside.values()), identical)


def _train_design(experiment_dir: str, dataset: str, config: TrainConfig, subset: str,
                  run_ids: Sequence[int], **settings: Any) -> list[experiment.TrainSummary]:
    """`experiment.train_experiment` of one design, as a list of summaries."""
    from heldout.training import experiment

    return [experiment.train_experiment(experiment_dir, dataset, config, subset, run_ids,
                                        **settings)]


def _load(source: DataSource):
    """The data set in memory, or described for streaming (`stream_records`)."""
    from heldout.data import imagenet, sources
    from heldout.data.dataset import check_class_count

    if not source.stream_records:
        return sources.load_dataset(source.dataset, source.data_dir,
                                    max_classes=source.max_classes)
    size = {} if source.image_size is None else {"image_size": source.image_size}
    data = imagenet.streaming_data(source.dataset, **size)
    check_class_count(f"dataset={source.dataset}", data.num_classes, source.max_classes)
    return data


def _shard(runs: RunSettings) -> coordination.Shard:
    """This worker's shard; a scheduler variable that is not an integer is named."""
    from heldout.store import coordination

    environ = os.environ if runs.environ is None else runs.environ
    for name in _SHARD_VARIABLES:
        value = environ.get(name)
        if value is not None and not value.strip().lstrip("-").isdigit():
            raise ValueError(f"environment variable {name}={value!r}: expected an integer "
                             "(set by Slurm or Kubernetes)")
    return coordination.resolve_shard(runs.num_shards, runs.shard_index, environ)


def _check_examples_per_run(data, design: str) -> None:
    """Refuses a ratio so small that a run would train on no example."""
    ratio = designs.parse_subset_ratio(design)
    if int(round(ratio * data.num_train)) < 1:
        raise ParameterError("subset_ratio", f"each run would train on 0 of "
                             f"{data.num_train} examples; expected at least one (a ratio "
                             f"of at least {0.5 / data.num_train:.2g})", ratio)


def _verify(directory: str) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """Checks every complete run; damaged ones are moved aside (to be redone)."""
    from heldout.store import runs as runs_lib

    verified, problems = runs_lib.verify_runs(directory)
    return tuple((d, p, runs_lib.quarantine_run(d)) for d, p in problems), verified


def _set_aside_lacking(directory: str, arms: Mapping[str, Sequence[int]], config: TrainConfig,
                       runs: RunSettings) -> dict[str, dict[int, str]]:
    """Complete runs lacking the checkpoints or logits asked for: refused, or with
    ``retrain_complete`` their aux arrays set aside (subset -> run id -> where)."""
    from heldout.training import retrain

    lacking = {subset: retrain.lacking(directory, subset, ids, config,
                                       runs.save_checkpoints, runs.save_logits)
               for subset, ids in arms.items()}
    lacking = {subset: found for subset, found in lacking.items() if found}
    if lacking and not runs.retrain_complete:
        raise retrain.refusal(directory, lacking, config.checkpoint_every,
                              runs.save_checkpoints, runs.save_logits)
    return {subset: retrain.set_aside(directory, subset, ids) for subset, ids in lacking.items()}
