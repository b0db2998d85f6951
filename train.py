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

Flags not given take their defaults from the library (TrainConfig, the model's recipe,
the --config preset); a flag the chosen kind of training does not take is refused, not
ignored (heldout/app/train.py: TAKES). Every check (flags, data, run ids, writable
directory) runs before training starts, the flags' before TensorFlow loads; errors are
one line "train.py: error: <flag or path>: <what was expected>" (exit status 1);
requested runs still held by other workers when the job ends: exit status 3.
"""

from absl import app, flags

from heldout.app import cli
from heldout.app import train as train_job
from heldout.data.augment_kinds import AUGMENTATIONS
from heldout.data.dataset import DEFAULT_MAX_CLASSES
from heldout.training import recipes
from heldout.training.config import ALL_LR_SCHEDULES, PRECISIONS, TrainConfig
from heldout.training.presets import DEFAULT_EXPERIMENT_DIR

# Defaults shown in the help are read from their owners; a flag not given passes nothing.
_D = TrainConfig()
_RECIPE_DEFAULT = " (default: TrainConfig's {}, or the model's recipe)"

_DATASET = flags.DEFINE_string(
    "dataset", None, "Data: 'digits' (the default), 'npz:<path>', 'tfds:<name>[:<version>]' "
    "or 'imagenet:<train pattern>,<test pattern>' (small TFRecord sets, in memory).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (tfds: data sets).")
_EXPERIMENT_DIR = flags.DEFINE_string(
    "experiment_dir", None, f"Experiment directory (local or gs://); default "
    f"{DEFAULT_EXPERIMENT_DIR}, or the --config preset's.")
_MODEL = flags.DEFINE_string(
    "model", None, f"Model (default {_D.model}): 'mlp' or 'cnn' (trained K at once), "
    "'small_inception' or 'resnet50' (the published architectures, one at a time), "
    "'airbench' (the airbench94 CIFAR-10 network and recipe; K at once with "
    "--models_at_once).")
_MODEL_WIDTH = flags.DEFINE_float(
    "model_width", None, f"Multiplier of the model's layer widths (default {_D.model_width}: "
    "the published widths; resnet50 has only width 1).")
_SUBSET_RATIO = flags.DEFINE_float(
    "subset_ratio", None, f"Fraction of the training set each run trains on, in (0, 1) "
    f"(default {train_job.DEFAULT_DESIGN}); or give --subset.")
_SUBSET = flags.DEFINE_string(
    "subset", None, "Design instead of --subset_ratio: a ratio such as 0.7, 'full' (every "
    "training example), 'drop-<name>' (all but the target set <name>), or 'bank-<p>' (the "
    "metagradient yardstick: every run from run 0's seeds, run r > 0 with a random "
    "fraction p of the examples at loss weight 0).")
_TARGETS = flags.DEFINE_string(
    "targets", None, "For drop-<name>: choose the target set, e.g. 'random:20,easy:20' "
    "(easy: highest mean log-odds margin over pilot runs of the full arm).")
_TARGET_INDICES = flags.DEFINE_string(
    "target_indices", None, "For drop-<name>: the target set as a comma list/ranges, a file "
    "of indices, or a built-in CIFAR-10 set (random20, easy20, cifar10_nsi).")
_PILOT_RUNS = flags.DEFINE_integer(
    "pilot_runs", None, "For drop-<name>: train this many full-arm runs first, to choose "
    "easy targets from (default 0).")
_CONFIG = flags.DEFINE_string(
    "config", None, "A preset experiment (heldout/training/presets.py): digits_nsi = "
    "negative self-influence on digits (100 pilot runs, 20 random + 20 easy targets, full "
    "and drop-nsi arms of --num_runs runs each, 1000 by default).")
_NUM_RUNS = flags.DEFINE_integer(
    "num_runs", None, f"Train run ids 0..num_runs-1 (default {train_job.DEFAULT_NUM_RUNS}).")
_RUN_IDS = flags.DEFINE_string(
    "run_ids", None, "Run ids to train instead of --num_runs, e.g. '0-99' or '3,5,8' "
    "(below 1,000,000).")
_SEED = flags.DEFINE_integer(
    "seed", None, "Experiment seed (default 0); with a run id it fixes the run.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", None, "Passes over each run's subset" + _RECIPE_DEFAULT.format(_D.epochs) + ".")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Examples per model per step" + _RECIPE_DEFAULT.format(_D.batch_size)
    + ".")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate" + _RECIPE_DEFAULT.format(_D.learning_rate)
    + ".")
_MOMENTUM = flags.DEFINE_float(
    "momentum", None, "SGD momentum" + _RECIPE_DEFAULT.format(_D.momentum) + ".")
_NESTEROV = flags.DEFINE_bool(
    "nesterov", None, "Nesterov momentum" + _RECIPE_DEFAULT.format(_D.nesterov) + ".")
_LABEL_SMOOTHING = flags.DEFINE_float(
    "label_smoothing", None, "Label smoothing" + _RECIPE_DEFAULT.format(_D.label_smoothing)
    + ".")
_AUGMENT = flags.DEFINE_enum(
    "augment", None, list(AUGMENTATIONS),
    "Batch augmentation on the device (crop_flip: pad 4, random crop, random flip; "
    "altflip: each example mirrored every other epoch; cutout: a 12-pixel square zeroed; "
    "airbench: reflect-pad 2, random translation, alternating flips)"
    + _RECIPE_DEFAULT.format(_D.augment) + ".")
_WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", None, "L2 weight decay on weights" + _RECIPE_DEFAULT.format(
        _D.weight_decay) + ".")
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", None, list(ALL_LR_SCHEDULES),
    "Decay after warm-up (triangle: airbench's, from 0.2x up to the peak, down to 0.07x)"
    + _RECIPE_DEFAULT.format(_D.lr_schedule) + ".")
_WARMUP_EPOCHS = flags.DEFINE_float(
    "warmup_epochs", None, "Linear warm-up, in epochs" + _RECIPE_DEFAULT.format(
        _D.warmup_epochs) + ".")
_MODELS_AT_ONCE = flags.DEFINE_integer(
    "models_at_once", None, "Models trained together in one TensorFlow program (default: "
    "250 for the K-at-once models, 1 for those trained one at a time, which take only 1).")
_CONCURRENT_PROGRAMS = flags.DEFINE_integer(
    "concurrent_programs", None, "Programs of --models_at_once runs trained side by side, "
    "one thread each (speed only: runs come out bit-identical); 0 (default): 2 for mlp and "
    "cnn, else 1.")
_CHUNK_MODELS = flags.DEFINE_integer(
    "chunk_models", None, "mlp and cnn: train the --models_at_once models this many at a "
    "time, each chunk a whole epoch in the processor's cache (speed only: runs come out "
    "bit-identical); 0 (default): as many as fit one core's L2 cache (10 digits MLPs; "
    "cnn: all).")
_XLA = flags.DEFINE_bool(
    "xla", None, f"Compile the training program with XLA (default {_D.xla}).")
_PRECISION = flags.DEFINE_enum(
    "precision", None, list(PRECISIONS),
    "Compute type of training steps: mixed_* keep float32 weights and batch-norm statistics "
    "(mixed_float16 with dynamic loss scaling); predictions are always float32 (default "
    f"{_D.precision}).")
_RECIPE = flags.DEFINE_enum(
    "recipe", None, list(recipes.RECIPE_CHOICES),
    "Published training recipe to start from (default auto: --model's, if it has one); "
    "flags given on the command line override it.")
_TEST_TIME_FLIP = flags.DEFINE_bool(
    "test_time_flip", None, "Record predictions averaged over each image and its mirror "
    "image (airbench reports its accuracy so; demo.py's plain evaluation then differs).")
_SAVE_CHECKPOINTS = flags.DEFINE_bool(
    "save_checkpoints", None, "Write each run's final model to checkpoints/ckpt-<epoch>.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", None, "With --save_checkpoints: also save the model every this many "
    "epochs, with its learning rate in run.json (for TracIn).")
_SAVE_LOGITS = flags.DEFINE_bool(
    "save_logits", None, "Also store float16 logits_<split> in aux_arrays.npz.")
_RETRAIN_COMPLETE = flags.DEFINE_bool(
    "retrain_complete", None, "Retrain requested runs that are complete but lack what "
    "--save_checkpoints/--checkpoint_every/--save_logits ask for (without it they are "
    "refused); the new aux arrays are compared with the old (same seeds: bit-identical).")
_STREAM_RECORDS = flags.DEFINE_bool(
    "stream_records", None, "With --dataset=imagenet:<train>,<test>: stream the records "
    "through tf.data instead of loading them into memory (full ImageNet).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "With --stream_records: side of the model's input images, in "
    "pixels (default 224).")
_MAX_CLASSES = flags.DEFINE_integer(
    "max_classes", None, "Most classes a data set may have (default "
    f"{DEFAULT_MAX_CLASSES:,}; a stray label of 1,000,000 is refused instead of building a "
    "million-way model).")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Split the run ids among this many workers (cluster jobs); default "
    "from SLURM_ARRAY_TASK_COUNT under a Slurm array.")
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", None, "This worker's shard in [0, num_shards); default from "
    "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX (Kubernetes Indexed Job).")
_CLAIM_RUNS = flags.DEFINE_bool(
    "claim_runs", None, "Claim runs before training them, so concurrent workers on one "
    "directory never train the same run (default true).")
_LEASE_SECONDS = flags.DEFINE_float(
    "lease_seconds", None, "With claims: a claim not renewed for this long is taken as "
    "abandoned (default: coordination.DEFAULT_LEASE_SECONDS, 10 minutes).")
_VERIFY = flags.DEFINE_bool(
    "verify", None, "First check every complete run's aux arrays; damaged ones are reported "
    "by name and moved aside (to <subset>/.corrupt/) so this command redoes them.")
_PROGRESS = flags.DEFINE_bool("progress", None, "Show a progress bar (default true).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    given = {name: flags.FLAGS[name].value for name in train_job.FLAGS
             if flags.FLAGS[name].present}
    cli.run("train.py", lambda: train_job.job_from_flags(given), train_job.train,
            cli.flag_namer(train_job.FLAGS, train_job.FLAG_OF_PARAMETER))


if __name__ == "__main__":
    app.run(main)
