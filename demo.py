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
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "test"],
                           "Split to evaluate (train = trained-on + held-out examples).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    import heldout

    try:
        info = heldout.read_run_info(_RUN_DIR.value)
        train_config = info.get("train_config", {})
        arch = _ARCH.value or train_config.get("model")
        dataset = _DATASET.value or info.get("dataset")
        if not arch or not dataset:
            raise ValueError(f"--run_dir={_RUN_DIR.value} has no run.json saying its "
                             "architecture and data set: pass --arch and --dataset")
        width = _WIDTH.value or train_config.get("model_width", 1.0)
        data = heldout.load_dataset(dataset, _DATA_DIR.value)
        check = heldout.check_run(_RUN_DIR.value, arch, data, _SPLIT.value, width=width)
    except ValueError as e:
        sys.exit(f"demo.py: error: {e}")
    restored = check.restored
    print(f"Restored {restored.checkpoint_path}: epoch {restored.epoch}, "
          f"global_step {restored.global_step}")
    print(f"Subset fraction: {check.subset_fraction:.3f}")
    print(f"Accuracy on {check.split}: {check.accuracy:.4f}")
    print(f"{check.matches} out of {check.total} predictions match")


if __name__ == "__main__":
    app.run(main)
