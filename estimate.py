r"""Estimates memorization, self-influence, influence and C-scores from an experiment.

Reads the complete runs of an experiment directory (local or gs://), computes the
chosen estimators with standard errors, confidence intervals and p-values, saves them
to an .npz (keys: heldout/estimate/export.py), optionally as CSV tables and PNG
figures, and prints the most notable examples and one summary line per estimator.

Usage:
  python estimate.py
  python estimate.py --experiment_dir=gs://bucket/cifar10 --subset=0.7 \
      --estimator=influence --influence_output=topk --top_k=20 --eval_shard=0/8
  python estimate.py --estimator=cscore --subset=0.1,0.3,0.5,0.7,0.9
  python estimate.py --merge=part0.npz,part1.npz --compare_to=cifar100_infl_matrix.npz
  python estimate.py --estimator=datamodel --eval_indices=0-99 --lds_subset=0.5
  python estimate.py --experiment_dir=experiments/digits_nsi --estimator=self_influence \
      --targets=nsi [--all] [--plan --effect=0.25]

Each command is one job of one mode: --verify, the targeted report (--targets, with
--plan), a power plan alone (--plan), --merge, datamodels, a gradient method or TRAK
(--estimator), or the retraining estimates (the default). A flag the mode does not use
is refused, never ignored.

With --targets, self-influence is the targeted report of a full-vs-drop experiment:
per target example, the mean metric over runs with it (full arm) and without it
(drop-<name> arm), their difference and p-value; metric log-odds, alpha 0.01 and 99%
intervals by default, as in the published negative-self-influence analysis.

Gradient methods score one run's checkpoints (--run_id) with every setting of their
config as a flag (--fisher, --fisher_seed, --fisher_draws, --damping, --damping_factor,
--layers, --gradient_batch_size, --projection_dim, --projection_seed, --measurement):
  python estimate.py --estimator=tracin --run_id=0
  python estimate.py --estimator=if_ekfac --fisher=empirical --damping=0.01
  python estimate.py --estimator=trak --trak_runs=0-4 --projection_dim=512 \
      --lambda_reg=0.1,1,10 --eval_indices=0-99 --lds_subset=0.5
  python estimate.py --estimator=metagradient --run_id=0 --eval_indices=0-99 \
      [--checkpoint_interval=C]

Flags are checked before TensorFlow loads, and output locations before anything is
computed; nothing is written unless every check passed. Default outputs are named
after the experiment and the part computed (a shard writes estimates-<subset>-shard
<i>of<n>.npz, a merge estimates-<subset>-merged.npz beside its parts). Errors are one
line "estimate.py: error: <flag or path>: <what was expected>". --verify exits non-zero
on damaged runs and on a missing or empty directory.
"""

import importlib

from absl import app, flags

from heldout.app import cli
from heldout.app import estimate_jobs as jobs
from heldout.attribution.config import (
    DEFAULT_PROJECTION_DIM,
    InfluenceConfig,
    TracInConfig,
    TRAKConfig,
)
from heldout.estimate.config import (
    DEFAULT_TOP,
    EstimateConfig,
    PlanConfig,
    TargetedConfig,
)

_EXPERIMENT_DIR = flags.DEFINE_string(
    "experiment_dir", None, "Experiment directory (local or gs://), or a published tarball "
    "to fetch first: a .tar.gz path or URL, or a release name (cifar10-inception, "
    f"cifar100-inception, imagenet-resnet50); default {jobs.DEFAULT_EXPERIMENT_DIR}.")
_FETCH_DIR = flags.DEFINE_string(
    "fetch_dir", None, "Where a fetched tarball's members go (default ./experiments/"
    "<tarball name>); re-running skips members already there.")
_FETCH_CHECKPOINTS = flags.DEFINE_list(
    "fetch_checkpoints", None, "Also extract checkpoints of these subset ratios (e.g. 0.7); "
    "with --fetch_run_ids, only of those runs.")
_FETCH_RUN_IDS = flags.DEFINE_string("fetch_run_ids", None, "Run ids whose checkpoints to "
                                     "extract, e.g. 0-9.")
_MD5 = flags.DEFINE_string("md5", None, "Expected MD5 of a fetched tarball (default: the "
                           "published one, for the known releases).")
_ESTIMATOR = flags.DEFINE_list(
    "estimator", None,
    "Estimators: memorization, self_influence, influence, cscore, or all (default "
    f"{','.join(EstimateConfig.estimators)}); datamodel (ridge datamodels of the test "
    "examples' log-odds); or a gradient method on one run (--run_id): tracin, "
    "if_identity, if_diagonal, if_kfac, if_ekfac; or trak (final models of --trak_runs); or "
    "metagradient (exact d log-odds / d training-example weight of one run, --run_id, "
    "replayed through its training).")
_SUBSET = flags.DEFINE_list(
    "subset", None, "Subset folder to estimate from (e.g. 0.7); default: the only one "
    "besides --lds_subset. For cscore, the ratio folders to average over (default: all).")
_METRIC = flags.DEFINE_enum(
    "metric", None, ["correctness", "margin", "logodds"],
    f"Per-run metric of self_influence and influence (default {EstimateConfig.metric}; "
    f"memorization is correctness), of --targets and --plan (default "
    f"{TargetedConfig.metric}), of datamodels (default logodds): margin = correct logit "
    "minus largest other, logodds = correct logit minus logsumexp of the others.")
_MIN_RUNS = flags.DEFINE_integer(
    "min_runs", None, "Fewest in- and out-runs an estimate needs (else NaN); default "
    f"{EstimateConfig.min_runs}.")
_TEST = flags.DEFINE_enum(
    "test", None, ["welch", "z"], "Test of 'different from zero': Welch's t or the "
    f"large-sample z (default {EstimateConfig.test}; {TargetedConfig.test} for --targets, "
    "as published).")
_CONFIDENCE = flags.DEFINE_float(
    "confidence", None, f"Level of confidence intervals; default {EstimateConfig.confidence},"
    f" or {TargetedConfig.confidence} for --targets.")
_ALPHA = flags.DEFINE_float(
    "alpha", None, "Significance level of the 'significant' flags; default "
    f"{EstimateConfig.alpha}, or {TargetedConfig.alpha} for --targets and --plan.")
_FDR = flags.DEFINE_bool(
    "fdr", None, "Control the false discovery rate of memorization and self_influence "
    "across examples (Benjamini-Hochberg).")
_FDR_UNTESTABLE = flags.DEFINE_enum(
    "fdr_untestable", None, ["exclude", "count"],
    "With --fdr: examples that cannot be tested (p = NaN, e.g. right in every run) left "
    "out of the Benjamini-Hochberg family (exclude) or counted as p = 1 (count, the "
    f"conservative family); default {EstimateConfig.fdr_untestable}.")
_INFLUENCE_OUTPUT = flags.DEFINE_enum(
    "influence_output", None, ["dense", "topk"],
    "Save the whole influence (or datamodel) matrix (dense, the default) or only top-k per "
    "test example.")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Most influential training examples kept per test example; default "
    f"{EstimateConfig.top_k}.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Also save every pair with influence "
                                "above this.")
_EVAL_INDICES = flags.DEFINE_string(
    "eval_indices", None, "Test examples to estimate influence on: '0-99,120' or a file "
    "of indices (whitespace or comma separated).")
_EVAL_SHARD = flags.DEFINE_string(
    "eval_shard", None, "i/n: estimate the i-th of n equal parts of the test examples.")
_TARGETS = flags.DEFINE_string(
    "targets", None, "Targeted self-influence report for this target set (name in "
    "<experiment_dir>/targets/ or a file): full vs drop-<name> arms.")
_ALL = flags.DEFINE_bool("all", None, "Targeted report: show every target row, not only "
                         "p < --alpha.")
_PLAN = flags.DEFINE_bool(
    "plan", None, "Print how many runs per arm detect --effect at --alpha with --power, "
    "from the spread over the full-arm pilot runs.")
_EFFECT = flags.DEFINE_float("effect", None, "--plan: smallest self-influence to detect; "
                             f"default {PlanConfig.effect}.")
_POWER = flags.DEFINE_float("power", None, "--plan: probability of detecting it; default "
                            f"{PlanConfig.power}.")
_RUN_ID = flags.DEFINE_integer(
    "run_id", None, "Gradient methods and TRAK: the run (of --subset) whose checkpoints to "
    "use; metagradient: the run to replay; default 0.")
_MEASUREMENT = flags.DEFINE_string(
    "measurement", None, "TracIn and influence functions: what is measured on the "
    "queries: loss (the default), margin or logodds.")
_DAMPING = flags.DEFINE_float(
    "damping", None, "Influence functions: absolute damping per layer; default "
    "--damping_factor x each layer's mean eigenvalue.")
_DAMPING_FACTOR = flags.DEFINE_float(
    "damping_factor", None, "Influence functions: damping as a multiple of each layer's mean "
    f"eigenvalue (default {InfluenceConfig.damping_factor}), when --damping is not given.")
_FISHER = flags.DEFINE_string(
    "fisher", None, "Influence functions: labels of the Fisher: true (sampled from the "
    "model, the default), empirical (the data's labels) or expected.")
_FISHER_SEED = flags.DEFINE_integer(
    "fisher_seed", None, "Influence functions: seed of the sampled labels of the true Fisher.")
_FISHER_DRAWS = flags.DEFINE_integer(
    "fisher_draws", None, "Influence functions, true Fisher: average its moments over this "
    f"many draws of sampled labels (default {InfluenceConfig.fisher_draws}).")
_LAYERS = flags.DEFINE_list(
    "layers", None, "Gradient methods: only these layers (attribute paths); default all.")
_GRADIENT_BATCH_SIZE = flags.DEFINE_integer(
    "gradient_batch_size", None, "Gradient methods: examples per batch of per-example "
    f"gradients (memory); default {TracInConfig.batch_size}.")
_PROJECTION_DIM = flags.DEFINE_integer(
    "projection_dim", None, "TracIn: random projection of gradients to this many dimensions "
    f"(default none); TRAK: the projected dimension (default {DEFAULT_PROJECTION_DIM}).")
_PROJECTION_SEED = flags.DEFINE_integer("projection_seed", None, "TracIn and TRAK: seed of "
                                        "the projection.")
_PROJECTION = flags.DEFINE_string(
    "projection", None, "TRAK: random projection of gradients: rademacher (the default), "
    "gaussian or none.")
_LAMBDA_REG = flags.DEFINE_list(
    "lambda_reg", None, "TRAK: kernel regularization (x the mean eigenvalue; default "
    f"{TRAKConfig.lambda_reg}); several values are a grid, chosen by LDS on the runs of the "
    "folder outside --trak_runs.")
_REWEIGHTING = flags.DEFINE_string(
    "reweighting", None, "TRAK: where 1 - p enters: published (the default), per_model, none.")
_TRAK_RUNS = flags.DEFINE_string(
    "trak_runs", None, "TRAK: the runs whose final models form the ensemble, e.g. 0-4 "
    "(default: --run_id).")
_CHECKPOINT_INTERVAL = flags.DEFINE_integer(
    "checkpoint_interval", None, "Metagradients: keep every C-th training state for the "
    "backward pass (1: all; default 0: all if they fit in memory, else about sqrt(steps)); "
    "the scores do not depend on it.")
_FACTORS_PATH = flags.DEFINE_string(
    "factors_path", None, "Influence functions: reuse (or save) the fitted factors here.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to save the results (.npz); default: in the experiment, named "
    "after what was computed (e.g. <experiment_dir>/estimates-<subset>.npz).")
_CSV_DIR = flags.DEFINE_string("csv_dir", None, "Also write per-example CSV tables here.")
_PLOT_DIR = flags.DEFINE_string(
    "plot_dir", None, "Write PNG figures here (histograms, top memorized, influence pairs).")
_LDS_SUBSET = flags.DEFINE_string(
    "lds_subset", None, "Judge the score matrix (influence, datamodel, gradient methods) by "
    "its linear datamodeling score on the runs of this subset folder (e.g. 0.5), with the "
    "log-odds margin as output; runs the scores were fit on are refused.")
_LDS_RUNS = flags.DEFINE_string("lds_runs", None, "Only these runs of --lds_subset, e.g. "
                                "0-199 (default: all complete ones).")
_MERGE = flags.DEFINE_list(
    "merge", None, "Instead of estimating: merge the estimate files of the parts of a "
    "sharded job (--eval_shard=i/n) into one, saved to --output (default: "
    "estimates-<subset>-merged.npz beside the parts).")
_COMPARE_TO = flags.DEFINE_string(
    "compare_to", None, "Compare the estimates with a published file (high-influence pairs, "
    "class-wise influence matrix, ImageNet index or C-scores): correlations, top-k agreement, "
    "threshold counts, largest disagreements (and scatter plots with --plot_dir).")
_IMAGENET_INDEX = flags.DEFINE_string(
    "imagenet_index", None, "With --compare_to: the published imagenet_index.npz, which "
    "places ImageNet C-scores (ordered by file name) in the runs' order.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set, for labels and images; default: the one the experiment "
    "was trained on (none for released runs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MAX_CLASSES = flags.DEFINE_integer("max_classes", None, "Most classes a data set may "
                                    f"have; default {jobs.Data.max_classes:,}.")
_TOP = flags.DEFINE_integer("top", None, f"Rows of each printed table; default {DEFAULT_TOP}.")
_VERIFY = flags.DEFINE_bool(
    "verify", None, "Only check every complete run's aux arrays and report damaged ones by "
    "name (exit status 1 if any).")
_PROGRESS = flags.DEFINE_bool("progress", None, "Show progress bars (the default).")

# Parameters of the jobs named otherwise by a flag: parameter -> flag.
RENAMED = {"estimators": "estimator", "subsets": "subset", "show_all": "all",
           "batch_size": "gradient_batch_size"}
FLAG_OF = cli.flag_namer({h.name: h for h in globals().values()
                          if isinstance(h, flags.FlagHolder)}, RENAMED)


def given() -> dict[str, object]:
    """The settings given on the command line, by the jobs' parameter names."""
    return cli.given_values([h for h in globals().values() if isinstance(h, flags.FlagHolder)],
                            RENAMED)


def build() -> jobs.EstimateJob:
    """The one job the flags ask for (no TensorFlow imported)."""
    return jobs.estimate_job(given(), FLAG_OF)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.run("estimate.py", build,
            lambda job: importlib.import_module("heldout.app.estimate").run(job), FLAG_OF)


if __name__ == "__main__":
    app.run(main)
