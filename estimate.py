"""Estimates memorization, self-influence, influence and C-scores from an experiment.

Reads the complete runs of an experiment directory (local or gs://), computes the
chosen estimators (SPEC §4) with standard errors, confidence intervals and p-values,
saves them to an .npz (keys: heldout/analysis.py), optionally as CSV tables and PNG
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

Output locations are checked writable before anything is computed; errors are one line
"estimate.py: error: <flag or path>: <what was expected>". --verify exits non-zero on
damaged runs and on a missing or empty directory.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

_EXPERIMENT_DIR = flags.DEFINE_string(
    "experiment_dir", "./experiments/digits", "Experiment directory (local or gs://), or a "
    "published tarball to fetch first: a .tar.gz path or URL, or a release name "
    "(cifar10-inception, cifar100-inception, imagenet-resnet50).")
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
    "estimator", ["memorization", "influence"],
    "Estimators: memorization, self_influence, influence, cscore, or all; datamodel (ridge "
    "datamodels of the test examples' log-odds); or a gradient method on one run "
    "(--run_id): tracin, if_identity, if_diagonal, if_kfac, if_ekfac; or trak (final "
    "models of --trak_runs).")
_SUBSET = flags.DEFINE_list(
    "subset", None, "Subset folder to estimate from (e.g. 0.7); default: the only one. "
    "For cscore, the ratio folders to average over (default: all).")
_METRIC = flags.DEFINE_enum(
    "metric", None, ["correctness", "margin", "logodds"],
    "Per-run metric of self_influence and influence (memorization is correctness); default "
    "correctness, or logodds for --targets: "
    "margin = correct logit minus largest other, logodds = correct logit minus "
    "logsumexp of the others.")
_MIN_RUNS = flags.DEFINE_integer(
    "min_runs", 5, "Fewest in- and out-runs an estimate needs (else NaN).")
_TEST = flags.DEFINE_enum("test", None, ["welch", "z"],
                          "Test of 'different from zero': Welch's t or the large-sample z "
                          "(default: z for the targeted report, as published; else welch).")
_CONFIDENCE = flags.DEFINE_float(
    "confidence", None, "Level of confidence intervals; default 0.95, or 0.99 for --targets.")
_ALPHA = flags.DEFINE_float("alpha", None, "Significance level of the 'significant' flags; "
                            "default 0.05, or 0.01 for --targets.")
_FDR = flags.DEFINE_bool(
    "fdr", False, "Control the false discovery rate across examples (Benjamini-Hochberg).")
_INFLUENCE_OUTPUT = flags.DEFINE_enum(
    "influence_output", "dense", ["dense", "topk"],
    "Save the whole influence matrix (dense) or only top-k per test example.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Most influential training examples kept per "
                              "test example.")
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
_ALL = flags.DEFINE_bool("all", False, "Targeted report: show every target row, not only "
                         "p < --alpha.")
_PLAN = flags.DEFINE_bool(
    "plan", False, "Print how many runs per arm detect --effect at --alpha with --power, "
    "from the spread over the full-arm pilot runs.")
_EFFECT = flags.DEFINE_float("effect", 0.25, "--plan: smallest self-influence to detect.")
_POWER = flags.DEFINE_float("power", 0.8, "--plan: probability of detecting it.")
_RUN_ID = flags.DEFINE_integer(
    "run_id", 0, "Gradient methods: the run (of --subset) whose checkpoints to use.")
_MEASUREMENT = flags.DEFINE_string(
    "measurement", None, "Gradient methods: what is measured on the queries: loss (the "
    "default), margin or logodds.")
_DAMPING = flags.DEFINE_float(
    "damping", None, "Influence functions: absolute damping per layer; default "
    "--damping_factor x each layer's mean eigenvalue.")
_DAMPING_FACTOR = flags.DEFINE_float(
    "damping_factor", None, "Influence functions: damping as a multiple of each layer's mean "
    "eigenvalue (default 0.1), when --damping is not given.")
_FISHER = flags.DEFINE_string(
    "fisher", None, "Influence functions: labels of the Fisher: true (sampled from the "
    "model, the default), empirical (the data's labels) or expected.")
_FISHER_SEED = flags.DEFINE_integer(
    "fisher_seed", None, "Influence functions: seed of the sampled labels of the true Fisher.")
_FISHER_DRAWS = flags.DEFINE_integer(
    "fisher_draws", None, "Influence functions, true Fisher: average its moments over this "
    "many draws of sampled labels (default 1).")
_LAYERS = flags.DEFINE_list(
    "layers", None, "Gradient methods: only these layers (attribute paths); default all.")
_GRADIENT_BATCH_SIZE = flags.DEFINE_integer(
    "gradient_batch_size", None, "Gradient methods: examples per batch of per-example "
    "gradients (memory).")
_PROJECTION_DIM = flags.DEFINE_integer(
    "projection_dim", None, "TracIn: random projection of gradients to this many dimensions.")
_PROJECTION_SEED = flags.DEFINE_integer("projection_seed", None, "TracIn: seed of the "
                                        "projection.")
_PROJECTION = flags.DEFINE_string(
    "projection", None, "TRAK: random projection of gradients: rademacher (the default), "
    "gaussian or none.")
_LAMBDA_REG = flags.DEFINE_list(
    "lambda_reg", None, "TRAK: kernel regularization (x the mean eigenvalue); several values "
    "are a grid, chosen by LDS on the runs of the folder outside --trak_runs.")
_REWEIGHTING = flags.DEFINE_string(
    "reweighting", None, "TRAK: where 1 - p enters: published (the default), per_model, none.")
_TRAK_RUNS = flags.DEFINE_string(
    "trak_runs", None, "TRAK: the runs whose final models form the ensemble, e.g. 0-4 "
    "(default: --run_id).")
_FACTORS_PATH = flags.DEFINE_string(
    "factors_path", None, "Influence functions: reuse (or save) the fitted factors here.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to save the estimates (.npz); default: "
    "<experiment_dir>/estimates-<subset>.npz.")
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
    "sharded job (--eval_shard=i/n) into one, saved to --output (default: the experiment's "
    "estimates file).")
_COMPARE_TO = flags.DEFINE_string(
    "compare_to", None, "Compare the estimates with a published file (high-influence pairs, "
    "class-wise influence matrix, ImageNet index or C-scores): correlations, top-k agreement, "
    "threshold counts, largest disagreements (and scatter plots with --plot_dir).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set, for labels and images; default: the one the experiment "
    "was trained on (none for released runs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_MAX_CLASSES = flags.DEFINE_integer("max_classes", 10_000, "Most classes a data set may "
                                    "have.")
_TOP = flags.DEFINE_integer("top", 10, "Rows of each printed table.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Only check every complete run's aux arrays and report damaged ones by "
    "name (exit status 1 if any).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


# Gradient methods: flag -> the parameter of their configs (TracInConfig, InfluenceConfig).
_ATTRIBUTION_FLAGS = ((_MEASUREMENT, "measurement"), (_DAMPING, "damping"),
                      (_DAMPING_FACTOR, "damping_factor"), (_FISHER, "fisher"),
                      (_FISHER_SEED, "fisher_seed"), (_FISHER_DRAWS, "fisher_draws"),
                      (_LAYERS, "layers"),
                      (_GRADIENT_BATCH_SIZE, "batch_size"), (_PROJECTION_DIM, "projection_dim"),
                      (_PROJECTION_SEED, "projection_seed"), (_PROJECTION, "projection"),
                      (_LAMBDA_REG, "lambda_reg"), (_REWEIGHTING, "reweighting"))
# Library parameter -> flag, for error messages (one table).
_FLAG_OF = {
    **{name: f"--{name}" for name in (
        "experiment_dir", "fetch_dir", "fetch_checkpoints", "fetch_run_ids", "md5",
        "metric", "min_runs", "test", "confidence", "alpha", "fdr", "influence_output",
        "top_k", "threshold", "eval_indices", "eval_shard", "targets", "plan", "effect",
        "power", "run_id", "factors_path", "output", "csv_dir", "plot_dir", "dataset",
        "data_dir", "max_classes", "top", "verify", "merge", "compare_to", "lds_subset",
        "lds_runs", "trak_runs")},
    **{parameter: f"--{holder.name}" for holder, parameter in _ATTRIBUTION_FLAGS},
    "estimators": "--estimator", "subsets": "--subset", "show_all": "--all",
    "strategy": "--estimator"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    import heldout
    from heldout.store import checks

    try:
        request = heldout.EstimateRequest(
            experiment_dir=_EXPERIMENT_DIR.value, fetch_dir=_FETCH_DIR.value,
            fetch_checkpoints=_tuple(_FETCH_CHECKPOINTS.value),
            fetch_run_ids=_FETCH_RUN_IDS.value, md5=_MD5.value,
            estimators=tuple(_ESTIMATOR.value), subsets=_tuple(_SUBSET.value),
            metric=_METRIC.value, min_runs=_MIN_RUNS.value, test=_TEST.value,
            confidence=_CONFIDENCE.value, alpha=_ALPHA.value, fdr=_FDR.value,
            influence_output=_INFLUENCE_OUTPUT.value, top_k=_TOP_K.value,
            threshold=_THRESHOLD.value, eval_indices=_EVAL_INDICES.value,
            eval_shard=_EVAL_SHARD.value, targets=_TARGETS.value, show_all=_ALL.value,
            plan=_PLAN.value, effect=_EFFECT.value, power=_POWER.value, run_id=_RUN_ID.value,
            attribution={parameter: _attribution_value(holder)
                         for holder, parameter in _ATTRIBUTION_FLAGS if holder.present},
            trak_runs=_TRAK_RUNS.value,
            factors_path=_FACTORS_PATH.value, output=_OUTPUT.value, csv_dir=_CSV_DIR.value,
            plot_dir=_PLOT_DIR.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
            max_classes=_MAX_CLASSES.value, top=_TOP.value, verify=_VERIFY.value,
            progress=_PROGRESS.value, merge=_tuple(_MERGE.value),
            compare_to=_COMPARE_TO.value, lds_subset=_LDS_SUBSET.value,
            lds_runs=_LDS_RUNS.value)
        report = heldout.run_estimate(request)
    except checks.cli_errors() as e:
        sys.exit(f"estimate.py: error: {checks.one_line_error(e, _FLAG_OF)}")
    print(report)
    sys.exit(report.exit_status)


def _attribution_value(holder: flags.FlagHolder) -> object:
    """A gradient-method flag's value as its config takes it (lists as tuples, numbers)."""
    if holder is _LAYERS:
        return tuple(holder.value)
    if holder is _LAMBDA_REG:
        try:
            grid = tuple(float(v) for v in holder.value)
        except ValueError:
            raise ValueError(f"lambda_reg={','.join(holder.value)}: expected numbers") from None
        return grid[0] if len(grid) == 1 else grid
    return holder.value


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


if __name__ == "__main__":
    app.run(main)
