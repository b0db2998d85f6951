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
  python estimate.py --experiment_dir=experiments/digits_nsi --estimator=self_influence \
      --targets=nsi [--all] [--plan --effect=0.25]

With --targets, self-influence is the targeted report of a full-vs-drop experiment:
per target example, the mean metric over runs with it (full arm) and without it
(drop-<name> arm), their difference and p-value; metric log-odds, alpha 0.01 and 99%
intervals by default, as in the published negative-self-influence analysis.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
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
_ESTIMATOR = flags.DEFINE_list(
    "estimator", ["memorization", "influence"],
    "Estimators: memorization, self_influence, influence, cscore, or all; or a gradient "
    "method on one run (--run_id): tracin, if_identity, if_diagonal, if_kfac, if_ekfac.")
_SUBSET = flags.DEFINE_list(
    "subset", None, "Subset folder to estimate from (e.g. 0.7); default: the only one. "
    "For cscore, the ratio folders to average over (default: all).")
_METRIC = flags.DEFINE_enum(
    "metric", "correctness", ["correctness", "margin", "logodds"],
    "Per-run metric of self_influence and influence (memorization is correctness): "
    "margin = correct logit minus largest other, logodds = correct logit minus "
    "logsumexp of the others.")
_MIN_RUNS = flags.DEFINE_integer(
    "min_runs", 5, "Fewest in- and out-runs an estimate needs (else NaN).")
_TEST = flags.DEFINE_enum("test", "welch", ["welch", "z"],
                          "Test of 'different from zero': Welch's t or large-sample z.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.95, "Level of confidence intervals.")
_ALPHA = flags.DEFINE_float("alpha", 0.05, "Significance level of the 'significant' flags.")
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
_MEASUREMENT = flags.DEFINE_enum("measurement", "loss", ["loss", "margin"],
                                 "Gradient methods: what is measured on the queries.")
_DAMPING = flags.DEFINE_float(
    "damping", None, "Influence functions: damping; default 0.1 x each layer's mean eigenvalue.")
_PROJECTION_DIM = flags.DEFINE_integer(
    "projection_dim", None, "TracIn: random projection of gradients to this many dimensions.")
_FACTORS_PATH = flags.DEFINE_string(
    "factors_path", None, "Influence functions: reuse (or save) the fitted factors here.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to save the estimates (.npz); default: "
    "<experiment_dir>/estimates-<subset>.npz.")
_CSV_DIR = flags.DEFINE_string("csv_dir", None, "Also write per-example CSV tables here.")
_PLOT_DIR = flags.DEFINE_string(
    "plot_dir", None, "Write PNG figures here (histograms, top memorized, influence pairs).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set, for labels and images; default: the one the experiment "
    "was trained on (none for released runs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_TOP = flags.DEFINE_integer("top", 10, "Rows of each printed table.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Only check every complete run's aux arrays and report damaged ones by "
    "name (exit status 1 if any).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    import heldout

    if heldout.released.is_release_source(_EXPERIMENT_DIR.value):
        try:
            _fetch(heldout)
        except ValueError as e:
            sys.exit(f"estimate.py: error: {e}")
    if _VERIFY.value:
        try:
            checked, problems = heldout.runs.verify_runs(_EXPERIMENT_DIR.value)
        except ValueError as e:
            sys.exit(f"estimate.py: error: {e}")
        for directory, problem in problems:
            print(f"damaged run {directory}: {problem}")
        print(f"verified {checked} complete runs: {len(problems)} damaged")
        sys.exit(1 if problems else 0)
    if _TARGETS.value or _PLAN.value:
        return _targeted(heldout)
    if len(_ESTIMATOR.value) == 1 and (_ESTIMATOR.value[0] == "tracin"
                                       or _ESTIMATOR.value[0].startswith("if_")):
        return _attribute(heldout)
    try:
        chosen = tuple(_ESTIMATOR.value)
        config = heldout.EstimateConfig(
            estimators=heldout.ESTIMATORS if chosen == ("all",) else chosen,
            subsets=tuple(_SUBSET.value) if _SUBSET.value else None,
            metric=_METRIC.value, min_runs=_MIN_RUNS.value, test=_TEST.value,
            confidence=_CONFIDENCE.value, alpha=_ALPHA.value, fdr=_FDR.value,
            influence_output=_INFLUENCE_OUTPUT.value, top_k=_TOP_K.value,
            threshold=_THRESHOLD.value,
            eval_indices=heldout.read_indices(_EVAL_INDICES.value, "--eval_indices")
            if _EVAL_INDICES.value else None,
            eval_shard=heldout.parse_shard(_EVAL_SHARD.value, "--eval_shard")
            if _EVAL_SHARD.value else None,
            num_pairs=max(_TOP.value, 100))
        estimates = heldout.estimate_experiment(_EXPERIMENT_DIR.value, config,
                                                progress=_PROGRESS.value)
        output = _OUTPUT.value or os.path.join(
            _EXPERIMENT_DIR.value, f"estimates-{estimates.subset or 'cscore'}.npz")
        heldout.save_estimates(estimates, output)
        dataset = _DATASET.value or heldout.read_experiment_info(
            _EXPERIMENT_DIR.value).get("dataset")
        data = heldout.load_dataset(dataset, _DATA_DIR.value) if dataset else None
        labels_train = None if data is None else data.y_train
        labels_test = None if data is None else data.y_test
        written = [output]
        if _CSV_DIR.value:
            written += heldout.write_tables(estimates, _CSV_DIR.value, labels_train,
                                            labels_test)
        if _PLOT_DIR.value:
            written += heldout.plot_estimates(estimates, _PLOT_DIR.value, data)
    except ValueError as e:
        sys.exit(f"estimate.py: error: {e}")
    print(heldout.format_report(estimates, labels_train, labels_test, top=_TOP.value))
    print()
    for path in written:
        print(f"Saved {path}")


def _attribute(heldout) -> None:
    """A gradient-based method on one run's checkpoints, beside the retraining estimates."""
    from heldout.attribution import runs_attribution

    method = _ESTIMATOR.value[0]
    experiment_dir = _EXPERIMENT_DIR.value
    try:
        subset = heldout.analysis.choose_subset(experiment_dir, _SUBSET.value)
        dataset = _DATASET.value or heldout.read_experiment_info(experiment_dir).get("dataset")
        if not dataset:
            raise ValueError("--dataset: needed (the experiment does not record its data set)")
        data = heldout.load_dataset(dataset, _DATA_DIR.value)
        eval_indices = np.arange(data.num_test)
        if _EVAL_INDICES.value:
            eval_indices = np.asarray(heldout.read_indices(_EVAL_INDICES.value,
                                                           "--eval_indices"))
        if _EVAL_SHARD.value:
            index, count = heldout.parse_shard(_EVAL_SHARD.value, "--eval_shard")
            eval_indices = np.array_split(eval_indices, count)[index]
        retraining = heldout.load_experiment(experiment_dir, subset, progress=_PROGRESS.value)
        attribution = runs_attribution.attribute_run(
            heldout.runs.run_dir(experiment_dir, subset, _RUN_ID.value), method, data,
            eval_indices, measurement=_MEASUREMENT.value, damping=_DAMPING.value,
            projection_dim=_PROJECTION_DIM.value, factors_path=_FACTORS_PATH.value,
            retraining=retraining if retraining.num_runs >= 2 else None)
        output = _OUTPUT.value or os.path.join(
            experiment_dir, f"{method}-{subset}-run{_RUN_ID.value}.npz")
        runs_attribution.save_attribution(attribution, output)
    except ValueError as e:
        sys.exit(f"estimate.py: error: {e}")
    print(runs_attribution.format_attribution(attribution, data.y_train, top=_TOP.value))
    print(f"\nSaved {output}")


def _fetch(heldout) -> None:
    """Streams a published tarball's aux arrays (and chosen checkpoints) to disk, then
    points --experiment_dir at the extracted experiment."""
    source = _EXPERIMENT_DIR.value
    name = source.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    for suffix in (".tar.gz", ".tgz"):
        name = name.removesuffix(suffix)
    destination = _FETCH_DIR.value or os.path.join("experiments", name)
    summary = heldout.released.extract_release(
        source, destination, include_checkpoints=bool(_FETCH_CHECKPOINTS.value),
        subsets=_FETCH_CHECKPOINTS.value or None,
        run_ids=heldout.parse_run_ids(_FETCH_RUN_IDS.value, "--fetch_run_ids")
        if _FETCH_RUN_IDS.value else None, progress=_PROGRESS.value)
    print(summary)
    flags.FLAGS.experiment_dir = heldout.released.experiment_root(destination)


def _targeted(heldout) -> None:
    """The targeted self-influence report and/or the power plan."""
    present = flags.FLAGS
    metric = _METRIC.value if present["metric"].present else "logodds"
    alpha = _ALPHA.value if present["alpha"].present else 0.01
    confidence = _CONFIDENCE.value if present["confidence"].present else 0.99
    experiment_dir = _EXPERIMENT_DIR.value
    written = []
    try:
        if _PLAN.value:
            indices = None
            if _TARGETS.value:
                indices = heldout.targets.find_targets(experiment_dir, _TARGETS.value).indices
            plan = heldout.targeted.plan_runs(experiment_dir, _EFFECT.value, metric, alpha,
                                              _POWER.value, indices=indices,
                                              progress=_PROGRESS.value)
            print(heldout.targeted.format_plan(plan, metric))
        if not _TARGETS.value:
            return
        report = heldout.targeted.targeted_self_influence(
            experiment_dir, _TARGETS.value, metric, _TEST.value, confidence, _MIN_RUNS.value,
            progress=_PROGRESS.value)
        dataset = _DATASET.value or heldout.read_experiment_info(experiment_dir).get("dataset")
        labels = heldout.load_dataset(dataset, _DATA_DIR.value).y_train if dataset else None
        output = _OUTPUT.value or os.path.join(
            experiment_dir, f"self_influence-{report.targets.name}.npz")
        heldout.export.save_targeted_report(report, output, alpha)
        written.append(output)
        if _CSV_DIR.value:
            written.append(heldout.export.write_targeted_csv(
                report, f"{_CSV_DIR.value}/self_influence-{report.targets.name}.csv", labels))
        if _PLOT_DIR.value:
            written.append(heldout.targeted.plot_targeted_report(
                report, f"{_PLOT_DIR.value}/self_influence-{report.targets.name}.png"))
    except ValueError as e:
        sys.exit(f"estimate.py: error: {e}")
    print(heldout.targeted.format_targeted_report(report, alpha, _ALL.value, labels))
    print()
    for path in written:
        print(f"Saved {path}")


if __name__ == "__main__":
    app.run(main)
