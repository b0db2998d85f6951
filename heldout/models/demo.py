"""The front door of ``demo.py``: restore one run's checkpoint, evaluate, cross-check.

With ``records`` the split is streamed from indexed TFRecords (full ImageNet never
fits in memory) and matched to the aux arrays by index; otherwise it comes from a data
set loaded whole.

`run_demo` reads what it can from the run's ``run.json`` (architecture, width, data
set), restores the checkpoint, evaluates the chosen split and compares every prediction
with the correctness stored in the run's aux arrays (`checkpoints.check_run`). A run
trained without checkpoints is refused at once with the command that adds them.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from heldout.data import sources
from heldout.data.dataset import DEFAULT_MAX_CLASSES
from heldout.models import checkpoints, evaluate
from heldout.store import layout
from heldout.store import runs as runs_lib


@dataclasses.dataclass(frozen=True)
class DemoRequest:
    """Which run to check, and how (every field of ``demo.py`` is one flag).

    Attributes:
        run_dir: the run directory (local or gs://).
        arch: architecture name; None: from run.json.
        width: width multiplier; None: from run.json, else 1.
        dataset: data spec; None: from run.json.
        data_dir: TFDS data directory.
        split: ``test``, or ``train`` (trained-on and held-out examples).
        max_classes: most classes a data set may have.
        records: glob of indexed TFRecords of `split` to stream instead of loading a data
            set (the published ImageNet demo; `evaluate.evaluate_run_streaming`).
        num_classes: with `records`: classes of the model.
        image_size: with `records`: side of the model's input images.
        max_examples: with `records`: stop after this many (a quick partial check).
        progress: with `records`: show a progress bar.
    """

    run_dir: str
    arch: str | None = None
    width: float | None = None
    dataset: str | None = None
    data_dir: str | None = None
    split: str = "test"
    max_classes: int = DEFAULT_MAX_CLASSES
    records: str | None = None
    num_classes: int = 1000
    image_size: int = 224
    max_examples: int | None = None
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """The check of one run; ``str()`` is what ``demo.py`` prints (as the published demo)."""

    check: checkpoints.RunCheck | evaluate.StreamingCheck

    def __str__(self) -> str:
        check, restored = self.check, self.check.restored
        if isinstance(check, evaluate.StreamingCheck):
            return "\n".join([f"Restored {restored.checkpoint_path}: epoch {restored.epoch}, "
                              f"global_step {restored.global_step}", str(check)])
        return "\n".join([
            f"Restored {restored.checkpoint_path}: epoch {restored.epoch}, "
            f"global_step {restored.global_step}",
            f"Subset fraction: {check.subset_fraction:.3f}",
            f"Accuracy on {check.split}: {check.accuracy:.4f}",
            f"{check.matches} out of {check.total} predictions match"])


def run_demo(request: DemoRequest) -> DemoReport:
    """Restores the run's model, evaluates `request.split`, and compares with its arrays.

    Raises:
        ValueError: no run there, no checkpoint, architecture or data set unknown, or
            the checkpoint does not fit them.
    """
    run_dir = request.run_dir
    if not run_dir or not run_dir.strip():
        raise ValueError("run_dir: empty; expected a run directory")
    if not runs_lib.run_complete(run_dir):
        raise ValueError(f"run_dir={run_dir}: not a complete run (expected "
                         f"{layout.AUX_FILENAME} there)")
    info = runs_lib.read_run_info(run_dir)
    train_config = info.get("train_config", {})
    if info and not tf.io.gfile.glob(layout.RunDir(run_dir).checkpoint_indexes):
        parent, run_id = run_dir.rstrip("/").rsplit("/", 1)
        experiment_dir, subset = parent.rsplit("/", 1) if "/" in parent else (".", parent)
        raise ValueError(f"run_dir={run_dir}: no checkpoint; this run was trained without "
                         "them: python train.py --save_checkpoints --retrain_complete "
                         f"--experiment_dir={experiment_dir} --subset={subset} "
                         f"--run_ids={run_id} (with its other training flags) adds them")
    arch = request.arch or train_config.get("model")
    dataset = request.dataset or info.get("dataset")
    width = request.width or train_config.get("model_width", 1.0)
    if request.records is not None:
        if not arch:
            raise ValueError(f"run_dir={run_dir} has no run.json saying its architecture: "
                             "pass arch")
        return DemoReport(evaluate.evaluate_run_streaming(
            run_dir, arch, request.records, split=request.split,
            num_classes=request.num_classes, image_size=request.image_size,
            max_examples=request.max_examples, progress=request.progress, width=width))
    if not arch or not dataset:
        raise ValueError(f"run_dir={run_dir} has no run.json saying its architecture and "
                         "data set: pass arch and dataset")
    data = sources.load_dataset(dataset, request.data_dir, max_classes=request.max_classes)
    return DemoReport(checkpoints.check_run(run_dir, arch, data, request.split, width=width))
