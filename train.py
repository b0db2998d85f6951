"""Trains the runs of a heldout experiment: many models, each on a random subset.

With no flags it runs the embedded default: 1000 runs of a small MLP on the digits
data set at subset ratio 0.7, into ./experiments/digits. Runs already complete are
skipped, so an interrupted command can simply be run again.

Targeted self-influence experiments train two arms: --subset=full (every training
example) and --subset=drop-<name> (all but a target set, chosen with --targets or
given with --target_indices and stored in <experiment_dir>/targets/<name>.json).
--config=digits_nsi runs the whole negative-self-influence experiment on digits.

Usage:
  python train.py
  python train.py --dataset=npz:my_data.npz --subset_ratio=0.5 --run_ids=0-99
  python train.py --subset=full --num_runs=1000
  python train.py --subset=drop-nsi --targets=random:20,easy:20 --num_runs=1000
  python train.py --config=digits_nsi
  python train.py --dataset=tfds:cifar10 --model=airbench --num_runs=1000 --precision=mixed_bfloat16
  python train.py --dataset=tfds:cifar10 --model=small_inception --save_checkpoints

--model=small_inception and --model=airbench train with their published recipe
(--recipe=auto); flags given on the command line override single settings of it.

Checkpoints, the checkpoint interval and logits cannot be added to runs already
complete: such a request is refused with one line, unless --retrain_complete asks to
retrain those runs (same seeds, so their aux arrays come out bit-identical):
  python train.py --num_runs=200 --save_checkpoints --checkpoint_every=2 --retrain_complete

Every check (flags, data, run ids, writable directory) runs before training starts;
errors are one line "train.py: error: <flag or path>: <what was expected>" (exit status
1); requested runs still held by other workers when the job ends: exit status 3.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

_DATASET = flags.DEFINE_string(
    "dataset", None, "Data: 'digits' (the default), 'npz:<path>', 'tfds:<name>[:<version>]' "
    "or 'imagenet:<train pattern>,<test pattern>' (small TFRecord sets, in memory).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_EXPERIMENT_DIR = flags.DEFINE_string(
    "experiment_dir", None, "Experiment directory (local or gs://); default "
    "./experiments/digits, or the --config preset's.")
_MODEL = flags.DEFINE_string(
    "model", "mlp", "Model: 'mlp' or 'cnn' (trained K at once), 'small_inception' or "
    "'resnet50' (the published architectures, one at a time), 'airbench' (the airbench94 "
    "CIFAR-10 network and recipe; K at once with --models_at_once).")
_MODEL_WIDTH = flags.DEFINE_float(
    "model_width", 1.0, "Channel multiplier of small_inception (1 = published widths).")
_SUBSET_RATIO = flags.DEFINE_float(
    "subset_ratio", 0.7, "Fraction of the training set each run trains on, in (0, 1).")
_SUBSET = flags.DEFINE_string(
    "subset", None, "Design instead of --subset_ratio: a ratio such as 0.7, 'full' (every "
    "training example), or 'drop-<name>' (all but the target set <name>).")
_TARGETS = flags.DEFINE_string(
    "targets", None, "For drop-<name>: choose the target set, e.g. 'random:20,easy:20' "
    "(easy: highest mean log-odds margin over pilot runs of the full arm).")
_TARGET_INDICES = flags.DEFINE_string(
    "target_indices", None, "For drop-<name>: the target set as a comma list/ranges, a file "
    "of indices, or a built-in CIFAR-10 set (random20, easy20, cifar10_nsi).")
_PILOT_RUNS = flags.DEFINE_integer(
    "pilot_runs", 0, "Train this many full-arm runs first, to choose easy targets from.")
_CONFIG = flags.DEFINE_string(
    "config", None, "A preset experiment (heldout/training/presets.py): digits_nsi = "
    "negative self-influence on digits (100 pilot runs, 20 random + 20 easy targets, full "
    "and drop-nsi arms of --num_runs runs each, 1000 by default).")
_NUM_RUNS = flags.DEFINE_integer("num_runs", 1000, "Train run ids 0..num_runs-1.")
_RUN_IDS = flags.DEFINE_string(
    "run_ids", None, "Run ids to train instead of --num_runs, e.g. '0-99' or '3,5,8' "
    "(below 1,000,000).")
_SEED = flags.DEFINE_integer("seed", 0, "Experiment seed; with a run id it fixes the run.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Passes over each run's subset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Examples per model per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_NESTEROV = flags.DEFINE_bool("nesterov", False, "Nesterov momentum.")
_LABEL_SMOOTHING = flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
_AUGMENT = flags.DEFINE_enum(
    "augment", "none", ["none", "flip", "crop_flip", "altflip", "crop_altflip",
                        "crop_flip_cutout", "airbench"],
    "Batch augmentation on the device (crop_flip: pad 4, random crop, random flip; "
    "altflip: each example mirrored every other epoch; cutout: a 12-pixel square zeroed; "
    "airbench: reflect-pad 2, random translation, alternating flips).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay on weights.")
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", "cosine", ["cosine", "linear", "constant", "triangle"],
    "Decay after warm-up (triangle: airbench's, from 0.2x up to the peak, down to 0.07x).")
_WARMUP_EPOCHS = flags.DEFINE_float("warmup_epochs", 1.0, "Linear warm-up, in epochs.")
_MODELS_AT_ONCE = flags.DEFINE_integer(
    "models_at_once", 250, "Models trained together in one TensorFlow program.")
_CONCURRENT_PROGRAMS = flags.DEFINE_integer(
    "concurrent_programs", 0, "Programs of --models_at_once runs trained side by side, one "
    "thread each (speed only: runs come out bit-identical); 0: 2 for mlp and cnn, else 1.")
_CHUNK_MODELS = flags.DEFINE_integer(
    "chunk_models", 0, "mlp and cnn: train the --models_at_once models this many at a "
    "time, each chunk a whole epoch in the processor's cache (speed only: runs come out "
    "bit-identical); 0: as many as fit one core's L2 cache (10 digits MLPs; cnn: all).")
_XLA = flags.DEFINE_bool("xla", True, "Compile the training program with XLA.")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
    "Compute type of training steps: mixed_* keep float32 weights and batch-norm statistics "
    "(mixed_float16 with dynamic loss scaling); predictions are always float32.")
_RECIPE = flags.DEFINE_enum(
    "recipe", "auto", ["auto", "none", "small_inception", "airbench"],
    "Published training recipe to start from (auto: --model's, if it has one); flags "
    "given on the command line override it.")
_TEST_TIME_FLIP = flags.DEFINE_bool(
    "test_time_flip", False, "Record predictions averaged over each image and its mirror "
    "image (airbench reports its accuracy so; demo.py's plain evaluation then differs).")
_SAVE_CHECKPOINTS = flags.DEFINE_bool(
    "save_checkpoints", False, "Write each run's final model to checkpoints/ckpt-<epoch>.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "With --save_checkpoints: also save the model every this many "
    "epochs, with its learning rate in run.json (for TracIn).")
_SAVE_LOGITS = flags.DEFINE_bool(
    "save_logits", False, "Also store float16 logits_<split> in aux_arrays.npz.")
_RETRAIN_COMPLETE = flags.DEFINE_bool(
    "retrain_complete", False, "Retrain requested runs that are complete but lack what "
    "--save_checkpoints/--checkpoint_every/--save_logits ask for (without it they are "
    "refused); the new aux arrays are compared with the old (same seeds: bit-identical).")
_STREAM_RECORDS = flags.DEFINE_bool(
    "stream_records", False, "With --dataset=imagenet:<train>,<test>: stream the records "
    "through tf.data instead of loading them into memory (full ImageNet).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "With --stream_records: side of the "
                                   "model's input images, in pixels.")
_MAX_CLASSES = flags.DEFINE_integer(
    "max_classes", 10_000, "Most classes a data set may have (a stray label of 1,000,000 "
    "is refused instead of building a million-way model).")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Split the run ids among this many workers (cluster jobs); default "
    "from SLURM_ARRAY_TASK_COUNT under a Slurm array.")
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", None, "This worker's shard in [0, num_shards); default from "
    "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX (Kubernetes Indexed Job).")
_CLAIM_RUNS = flags.DEFINE_bool(
    "claim_runs", True, "Claim runs before training them, so concurrent workers on one "
    "directory never train the same run.")
_LEASE_SECONDS = flags.DEFINE_float(
    "lease_seconds", 600.0, "A claim not renewed for this long is taken as abandoned.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "First check every complete run's aux arrays; damaged ones are reported "
    "by name and moved aside (to <subset>/.corrupt/) so this command redoes them.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


# Library parameter -> flag, for error messages (one table).
_FLAG_OF = {**{name: f"--{name}" for name in (
    "dataset", "data_dir", "experiment_dir", "model", "model_width", "subset_ratio",
    "subset", "targets", "target_indices", "pilot_runs", "num_runs", "run_ids", "seed",
    "epochs", "batch_size", "learning_rate", "momentum", "nesterov", "label_smoothing",
    "augment", "weight_decay", "lr_schedule", "warmup_epochs", "models_at_once",
    "concurrent_programs", "chunk_models", "xla",
    "precision", "recipe", "test_time_flip", "save_checkpoints", "checkpoint_every",
    "save_logits", "retrain_complete", "max_classes", "num_shards", "shard_index",
    "claim_runs", "lease_seconds", "verify", "stream_records", "image_size")},
    "preset": "--config"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    import heldout
    from heldout.store import checks

    config_flags = (_MODEL, _MODEL_WIDTH, _EPOCHS, _BATCH_SIZE, _LEARNING_RATE, _MOMENTUM,
                    _NESTEROV, _LABEL_SMOOTHING, _AUGMENT, _WEIGHT_DECAY, _LR_SCHEDULE,
                    _WARMUP_EPOCHS, _CHECKPOINT_EVERY, _MODELS_AT_ONCE, _CONCURRENT_PROGRAMS,
                    _CHUNK_MODELS,
                    _XLA, _PRECISION, _TEST_TIME_FLIP)
    try:
        request = heldout.TrainRequest(
            config=heldout.TrainConfig(**{f.name: f.value for f in config_flags}),
            chosen=frozenset(f.name for f in config_flags if f.present),
            recipe=_RECIPE.value, experiment_dir=_EXPERIMENT_DIR.value,
            dataset=_DATASET.value, data_dir=_DATA_DIR.value, subset=_SUBSET.value,
            subset_ratio=_SUBSET_RATIO.value, run_ids=_RUN_IDS.value,
            num_runs=_NUM_RUNS.value, seed=_SEED.value, targets=_TARGETS.value,
            target_indices=_TARGET_INDICES.value, pilot_runs=_PILOT_RUNS.value,
            preset=_CONFIG.value, save_checkpoints=_SAVE_CHECKPOINTS.value,
            save_logits=_SAVE_LOGITS.value, retrain_complete=_RETRAIN_COMPLETE.value,
            num_shards=_NUM_SHARDS.value, shard_index=_SHARD_INDEX.value,
            claim_runs=_CLAIM_RUNS.value, lease_seconds=_LEASE_SECONDS.value,
            verify=_VERIFY.value, progress=_PROGRESS.value, max_classes=_MAX_CLASSES.value,
            stream_records=_STREAM_RECORDS.value, image_size=_IMAGE_SIZE.value)
        report = heldout.train(request)
    except checks.cli_errors() as e:
        sys.exit(f"train.py: error: {checks.one_line_error(e, _FLAG_OF)}")
    print(report)
    if report.exit_status:  # runs held by other workers: a scheduler should retry
        print(f"train.py: {report.retry_message}", file=sys.stderr)
        sys.exit(report.exit_status)


if __name__ == "__main__":
    app.run(main)
