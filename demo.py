"""Restores one run's checkpoint, evaluates it, and checks it against the run's aux arrays.

Reproduces the demo of the released Feldman-Zhang checkpoints: build the model,
restore the single checkpoint in <run_dir>/checkpoints/, print epoch, global step and
subset fraction, evaluate on a split, and print the accuracy and how many predictions
match the correctness stored in aux_arrays.npz. Works on runs trained by train.py
(architecture, width and data set are read from run.json) and on released runs.

Usage:
  python demo.py --run_dir=experiments/digits/0.7/0
  python demo.py --run_dir=gs://.../cifar10/0.7/123 --arch=small_inception \
      --dataset=tfds:cifar10:3.0.2 --split=test
  python demo.py --run_dir=experiments/imagenet-resnet50/0.7/12 --arch=resnet50 \
      --records='/data/imagenet-records/validation-*' --max_examples=5000

Errors are one line "demo.py: error: <flag or path>: <what was expected>"; a run
trained without --save_checkpoints is refused with the train.py command that adds them.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (local or gs://).",
                               required=True)
_ARCH = flags.DEFINE_string(
    "arch", None, "Architecture: small_inception, resnet50, mlp or cnn; default: from "
    "run.json.")
_WIDTH = flags.DEFINE_float("width", None, "Width multiplier; default: from run.json, else 1.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set spec (e.g. tfds:cifar10:3.0.2); default: from run.json.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MAX_CLASSES = flags.DEFINE_integer("max_classes", 10_000, "Most classes a data set may "
                                    "have.")
_RECORDS = flags.DEFINE_string(
    "records", None, "Stream the split from these indexed TFRecords (a glob, e.g. "
    ".../validation-*) instead of loading --dataset: the published ImageNet demo.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "With --records: classes of the "
                                    "model.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "With --records: input image side.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "With --records: stop after "
                                     "this many examples (a quick partial check).")
_PROGRESS = flags.DEFINE_bool("progress", True, "With --records: show a progress bar.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "test"],
                           "Split to evaluate (train = trained-on + held-out examples).")


# Library parameter -> flag, for error messages (one table).
_FLAG_OF = {name: f"--{name}" for name in (
    "run_dir", "arch", "width", "dataset", "data_dir", "split", "max_classes", "records",
    "num_classes", "image_size", "max_examples", "progress")}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    import heldout
    from heldout.store import checks

    try:
        report = heldout.run_demo(heldout.DemoRequest(
            run_dir=_RUN_DIR.value, arch=_ARCH.value, width=_WIDTH.value,
            dataset=_DATASET.value, data_dir=_DATA_DIR.value, split=_SPLIT.value,
            max_classes=_MAX_CLASSES.value, records=_RECORDS.value,
            num_classes=_NUM_CLASSES.value, image_size=_IMAGE_SIZE.value,
            max_examples=_MAX_EXAMPLES.value, progress=_PROGRESS.value))
    except checks.cli_errors() as e:
        sys.exit(f"demo.py: error: {checks.one_line_error(e, _FLAG_OF)}")
    print(report)


if __name__ == "__main__":
    app.run(main)
