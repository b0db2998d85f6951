"""The front door of ``demo.py``: restore one run's checkpoint, evaluate, cross-check.

Two jobs: `DemoJob` evaluates a split of a data set loaded whole; `StreamingDemoJob`
streams the split from indexed TFRecords (full ImageNet never fits in memory) and
matches it to the aux arrays by index, as the published ImageNet demo does. `demo_job`
builds the one the given settings ask for, refusing a setting of the other, without
importing TensorFlow; `run` reads what it can from the run's ``run.json``
(architecture, width, data set), restores the checkpoint, evaluates and compares every
prediction with the correctness stored in the run's aux arrays. A run trained without
checkpoints is refused at once with the command that adds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from heldout.data.dataset import DEFAULT_MAX_CLASSES
from heldout.errors import ParameterError

SPLITS = ("train", "test")  # train: the trained-on and held-out examples
# Every setting `demo_job` takes (each job takes some of them).
PARAMETERS = ("run_dir", "arch", "width", "split", "dataset", "data_dir", "max_classes",
              "records", "num_classes", "image_size", "max_examples", "progress")
_STREAMING = ("num_classes", "image_size", "max_examples", "progress")


@dataclasses.dataclass(frozen=True)
class DemoJob:
    """Evaluate `split` of a data set loaded whole (None fields: from run.json)."""

    run_dir: str
    arch: str | None = None  # architecture; None: run.json's
    width: float | None = None  # width multiplier; None: run.json's, else 1
    split: str = "test"  # one of SPLITS
    dataset: str | None = None  # data spec; None: run.json's
    data_dir: str | None = None  # TFDS data directory
    max_classes: int = DEFAULT_MAX_CLASSES


@dataclasses.dataclass(frozen=True)
class StreamingDemoJob:
    """Evaluate `split` streamed from indexed TFRecords (`records`, a glob); settings
    left None take `heldout.models.evaluate.evaluate_run_streaming`'s defaults."""

    run_dir: str
    records: str
    arch: str | None = None
    width: float | None = None
    split: str = "test"
    num_classes: int | None = None  # classes of the model
    image_size: int | None = None  # side of the model's input images
    max_examples: int | None = None  # stop after this many (a quick partial check)
    progress: bool | None = None


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """The check of one run; ``str()`` is what ``demo.py`` prints (as the published demo).

    `check` is a `heldout.models.checkpoints.RunCheck`, or a
    `heldout.models.evaluate.StreamingCheck` for a streamed split.
    """

    check: object

    def __str__(self) -> str:
        check, restored = self.check, self.check.restored
        restored_line = (f"Restored {restored.checkpoint_path}: epoch {restored.epoch}, "
                         f"global_step {restored.global_step}")
        if not hasattr(check, "subset_fraction"):  # streamed: the check says it all
            return "\n".join([restored_line, str(check)])
        return "\n".join([
            restored_line,
            f"Subset fraction: {check.subset_fraction:.3f}",
            f"Accuracy on {check.split}: {check.accuracy:.4f}",
            f"{check.matches} out of {check.total} predictions match"])


def demo_job(given: Mapping[str, object], name: Callable[[str], str] = str
             ) -> DemoJob | StreamingDemoJob:
    """The job the given settings ask for: streamed with ``records``, else loaded.

    Args:
        given: the settings a user gave, by parameter (`PARAMETERS`).
        name: how messages name a parameter (the CLI passes its flag names).

    Raises:
        ParameterError: a setting the job does not take (naming it), or an invalid value.
    """
    for parameter in given:
        if parameter not in PARAMETERS:
            raise ParameterError(parameter, "not a setting of demo")
    run_dir = given.get("run_dir")
    if run_dir is None or not str(run_dir).strip():
        raise ParameterError("run_dir", "empty; expected a run directory")
    split = given.get("split", DemoJob.split)
    if split not in SPLITS:
        raise ParameterError("split", f"expected {' or '.join(SPLITS)}", split)
    width = given.get("width")
    if width is not None and not 0 < width < float("inf"):
        raise ParameterError("width", "expected a positive number", width)
    common = {p: given[p] for p in ("run_dir", "arch", "width", "split") if p in given}
    if "records" in given:
        for parameter in ("dataset", "data_dir", "max_classes"):
            if parameter in given:
                raise ParameterError(parameter, "not a setting of a streamed split "
                                     f"({name('records')}); the records are the data")
        for parameter in ("num_classes", "image_size", "max_examples"):
            value = given.get(parameter)
            if value is not None and value < 1:
                raise ParameterError(parameter, "expected a positive number", value)
        return StreamingDemoJob(records=str(given["records"]), **common,
                                **{p: given[p] for p in _STREAMING if p in given})
    for parameter in _STREAMING:
        if parameter in given:
            raise ParameterError(parameter, f"a setting of a streamed split; add "
                                 f"{name('records')}")
    max_classes = given.get("max_classes", DEFAULT_MAX_CLASSES)
    if max_classes < 1:
        raise ParameterError("max_classes", "expected a positive number", max_classes)
    return DemoJob(**common, dataset=given.get("dataset"), data_dir=given.get("data_dir"),
                   max_classes=max_classes)


def run(job: DemoJob | StreamingDemoJob) -> DemoReport:
    """Restores the run's model, evaluates the job's split, and compares with its arrays.

    Raises:
        ValueError: no run there, no checkpoint, architecture or data set unknown, or
            the checkpoint does not fit them.
    """
    # Imported here: building a job (above) must not load TensorFlow.
    import tensorflow as tf

    from heldout.data import sources
    from heldout.models import checkpoints, evaluate
    from heldout.store import layout, records
    from heldout.store import runs as runs_lib

    run_dir = job.run_dir
    if not runs_lib.run_complete(run_dir):
        raise ParameterError("run_dir", f"not a complete run (expected {layout.AUX_FILENAME} "
                             "there)", run_dir)
    record = records.read_run_record(run_dir)
    if not record.is_empty and not tf.io.gfile.glob(layout.RunDir(run_dir).checkpoint_indexes):
        parent, run_id = run_dir.rstrip("/").rsplit("/", 1)
        experiment_dir, subset = parent.rsplit("/", 1) if "/" in parent else (".", parent)
        raise ParameterError("run_dir", "no checkpoint; this run was trained without them: "
                             "python train.py --save_checkpoints --retrain_complete "
                             f"--experiment_dir={experiment_dir} --subset={subset} "
                             f"--run_ids={run_id} (with its other training flags) adds them",
                             run_dir)
    arch = job.arch or record.model
    width = job.width or record.model_width
    match job:
        case StreamingDemoJob():
            if not arch:
                raise ParameterError("arch", f"needed: {run_dir} has no run.json saying its "
                                     "architecture")
            settings = {p: getattr(job, p) for p in _STREAMING if getattr(job, p) is not None}
            return DemoReport(evaluate.evaluate_run_streaming(
                run_dir, arch, job.records, split=job.split, width=width, **settings))
        case DemoJob():
            dataset = job.dataset or record.dataset
            if not arch or not dataset:
                missing = "arch" if not arch else "dataset"
                raise ParameterError(missing, f"needed: {run_dir} has no run.json saying its "
                                     "architecture and data set")
            data = sources.load_dataset(dataset, job.data_dir, max_classes=job.max_classes)
            return DemoReport(checkpoints.check_run(run_dir, arch, data, job.split,
                                                    width=width))
    raise TypeError(f"not a demo job: {job!r}")
