r"""Restores one run's checkpoint, evaluates it, and checks it against the run's aux arrays.

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

With --records the split is streamed from indexed TFRecords (--num_classes,
--image_size, --max_examples and --progress are settings of that mode only);
otherwise a data set is loaded whole (--dataset, --data_dir, --max_classes). A flag
of the other mode is refused. Flags are checked before TensorFlow loads; errors are
one line "demo.py: error: <flag or path>: <what was expected>"; a run trained without
--save_checkpoints is refused with the train.py command that adds them.
"""

from absl import app, flags

from heldout.app import cli
from heldout.app import demo as demo_jobs

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (local or gs://).",
                               required=True)
_ARCH = flags.DEFINE_string(
    "arch", None, "Architecture: small_inception, resnet50, mlp or cnn; default: from "
    "run.json.")
_WIDTH = flags.DEFINE_float("width", None, "Width multiplier; default: from run.json, else 1.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set spec (e.g. tfds:cifar10:3.0.2); default: from run.json.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MAX_CLASSES = flags.DEFINE_integer(
    "max_classes", None, "Most classes a data set may have; default "
    f"{demo_jobs.DemoJob.max_classes:,}.")
_RECORDS = flags.DEFINE_string(
    "records", None, "Stream the split from these indexed TFRecords (a glob, e.g. "
    ".../validation-*) instead of loading --dataset: the published ImageNet demo.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "With --records: classes of the "
                                    "model (default 1000, ImageNet).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "With --records: input image side "
                                   "(default 224).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "With --records: stop after "
                                     "this many examples (a quick partial check).")
_PROGRESS = flags.DEFINE_bool("progress", None, "With --records: show a progress bar (the "
                              "default).")
_SPLIT = flags.DEFINE_enum("split", None, list(demo_jobs.SPLITS),
                           f"Split to evaluate (default {demo_jobs.DemoJob.split}; train = "
                           "trained-on + held-out examples).")

FLAG_OF = cli.flag_namer({h.name: h for h in globals().values()
                          if isinstance(h, flags.FlagHolder)})


def given() -> dict[str, object]:
    """The settings given on the command line, by the jobs' parameter names."""
    return cli.given_values([h for h in globals().values() if isinstance(h, flags.FlagHolder)])


def build() -> demo_jobs.DemoJob | demo_jobs.StreamingDemoJob:
    """The job the flags ask for (no TensorFlow imported)."""
    return demo_jobs.demo_job(given(), FLAG_OF)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.run("demo.py", build, demo_jobs.run, FLAG_OF)


if __name__ == "__main__":
    app.run(main)
