"""Every attribution method on one yardstick: LDS on digits against its cost (issue 15).

One experiment directory holds two disjoint designs trained through the library
(`heldout.train_experiment`, the embedded default MLP): fit runs on random 70% subsets
(``0.7``), from which every method is computed, and LDS evaluation runs on random 50%
subsets (``0.5``, the published protocol), on which every score matrix
``tau[num_train, num_test]`` is judged. The output is the log-odds margin
(``logodds_test``). Methods:

* heldout influence (difference of means) and ridge datamodels from the first
  100/250/500/1000 fit runs;
* TRAK with M = 1, 5, 20 models (final checkpoints of fit runs 0..19), Rademacher
  projection to ``--projection_dim``; lambda_reg chosen on the fit runs that are not
  in the ensemble (LDS on those 0.7 runs), never on the LDS runs;
* TracIn-CP on fit run 0 (every epoch's checkpoint, the final model last), and the
  mean over runs 0..4;
* influence functions with identity, diagonal, KFAC and EKFAC factors (true Fisher,
  ``--fisher_draws`` label draws, factors fitted on the run's own training subset) on
  run 0's final model, and the mean over runs 0..4; KFAC and EKFAC also with the
  expected Fisher (exact expectation over labels: no sampling noise);
* exact metagradients (d f_j / d w_i through the whole recorded training of a run,
  `heldout.attribution.metagradient`) of run 0, and the mean over runs 0..4: the
  single-model method judged on fresh seeds (its own yardstick, fixed seed and
  dropped examples, is `benchmarks/metagradient_lds.py`).

Noise ceiling: every LDS mask is trained a second time with other seeds
(design ``0.5-reseed1``: the same subsets, independent initial weights and batch
order); the ceiling of eval example j is the square root of the rank correlation of the
two trainings over masks, the highest LDS any method could reach on these noisy
outputs. It is printed beside every LDS, with the LDS as a fraction of it.

For each: LDS with a bootstrap interval over test examples, seconds of the method,
trained models used, and the cost = method seconds + models x measured seconds of
training per model. A table on stdout and in a CSV, and a PNG of LDS against cost (log
scale), one line per method family.

The machine's float32 matrix-product rate is measured in the same process; the
retraining estimators, whose work is a few matrix products, are also shown as the
fraction of that rate they reach.

Usage:
  python benchmarks/attribution_lds.py [--work_dir=/tmp/attribution_lds] [--lds_runs=200]
"""

import csv
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import heldout  # noqa: E402
import heldout.runtime  # noqa: E402
from heldout.attribution import config as attribution_config  # noqa: E402

heldout.runtime.import_tensorflow()  # without its start-up lines

from heldout import attribution  # noqa: E402
from heldout.attribution import (  # noqa: E402
    influence_functions,
    metagradient,
    runs_attribution,
    trak,
)
from heldout.data import sources  # noqa: E402
from heldout.estimate import datamodels, estimators, lds, plots  # noqa: E402
from heldout.models import checkpoints as checkpoints_lib  # noqa: E402
from heldout.store import files, layout, records  # noqa: E402
from heldout.store import runs as runs_lib  # noqa: E402
from heldout.training import core as training  # noqa: E402

_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/attribution_lds", "Experiment directory "
                                "and outputs (kept: a second call reuses the runs).")
_FIT_RUNS = flags.DEFINE_integer("fit_runs", 1000, "Fit runs (ratio 0.7).")
_LDS_RUNS = flags.DEFINE_integer("lds_runs", 200, "LDS evaluation runs (ratio 0.5).")
_SEED = flags.DEFINE_integer("seed", 0, "Experiment seed.")
_PROJECTION_DIM = flags.DEFINE_integer("projection_dim", 1024, "TRAK projection dimension.")
_FISHER = flags.DEFINE_enum("fisher", "true", ["true", "empirical", "expected"],
                            "Influence functions: labels of the Fisher (the library default, "
                            "true: sampled from the model).")
_FISHER_DRAWS = flags.DEFINE_integer("fisher_draws", 1, "Influence functions: label draws "
                                     "of the true Fisher.")
_NUM_BOOTSTRAP = flags.DEFINE_integer("num_bootstrap", 1000, "LDS bootstrap resamples.")
_REPLOT = flags.DEFINE_string("replot", None, "Only redraw the PNG (beside the CSV) from a "
                              "CSV this script wrote; nothing is trained or computed.")

FIT_RATIO, LDS_RATIO = 0.7, 0.5
RESEED = "0.5-reseed1"  # the LDS masks trained again with other seeds: the noise ceiling
RUN_COUNTS = (100, 250, 500, 1000)  # fit runs of the retraining estimators
TRAK_MODELS = (1, 5, 20)
GRADIENT_RUNS = 20  # fit runs 0..19 keep every epoch's checkpoint
AVERAGED = 5  # TracIn and influence functions averaged over runs 0..4
LAMBDA_GRID = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # TRAK lambda_reg, x mean eigenvalue
IF_STRATEGIES = ("identity", "diagonal", "kfac", "ekfac")
# Also shown with the exact expectation over labels (no sampling noise), beside --fisher.
IF_EXPECTED = ("kfac", "ekfac")


@dataclasses.dataclass
class Row:
    family: str
    method: str
    lds: lds.LDSResult
    seconds: float  # of the method, given trained models
    models: int  # trained models it used
    flops: float = float("nan")  # arithmetic of the method, where it is a few products


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate of this machine, FLOP/s (best of `repeats`)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def train(work_dir: str, data: sources.Dataset, fit_runs: int, lds_runs: int, seed: int
          ) -> float:
    """Trains (or finds) the fit and LDS runs; returns measured seconds per trained model."""
    config = training.TrainConfig()  # the embedded default: MLP(128), 20 epochs
    with_checkpoints = dataclasses.replace(config, checkpoint_every=1,
                                           models_at_once=GRADIENT_RUNS)
    calls = [(with_checkpoints, FIT_RATIO, range(GRADIENT_RUNS), True),
             (config, FIT_RATIO, range(GRADIENT_RUNS, fit_runs), False),
             (config, LDS_RATIO, range(lds_runs), False),
             (config, RESEED, range(lds_runs), False)]
    for train_config, ratio, run_ids, save in calls:
        summary = heldout.train_experiment(work_dir, "digits", train_config, ratio, run_ids,
                                           seed=seed, save_checkpoints=save, progress=False,
                                           data=data, settle_seconds=0.0)
        print(f"  {ratio} runs {run_ids.start}..{run_ids.stop - 1}: {len(summary.trained)} "
              f"trained, {len(summary.already_complete)} found, {summary.seconds:.0f} s")
    records_of_runs = [records.read_run_record(runs_lib.run_dir(work_dir, "0.7", r))
                       for r in range(GRADIENT_RUNS, fit_runs)]
    return float(np.mean([record.seconds for record in records_of_runs]))


def sorted_runs(experiment: heldout.Experiment, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Membership and log-odds of runs 0..count-1, in run-id order."""
    order = np.argsort(experiment.run_ids)
    if not np.array_equal(experiment.run_ids[order][:count], np.arange(count)):
        raise ValueError(f"the experiment lacks some of runs 0..{count - 1}")
    rows = order[:count]
    return experiment.membership[rows], experiment.logodds_test[rows]


def ceiling_of(evaluation: heldout.Experiment, again: heldout.Experiment) -> lds.NoiseCeiling:
    """The noise ceiling of the LDS runs from their second training (same run ids, same
    masks: checked)."""
    count = evaluation.num_runs
    masks, outputs = sorted_runs(evaluation, count)
    masks_again, outputs_again = sorted_runs(again, count)
    if not np.array_equal(masks, masks_again):
        raise ValueError(f"{RESEED} runs do not train the masks of the {LDS_RATIO} runs")
    return lds.noise_ceiling(outputs, outputs_again)


def judge(scores: np.ndarray, evaluation: heldout.Experiment, seed: int) -> lds.LDSResult:
    return lds.lds(np.nan_to_num(scores), evaluation.membership, evaluation.logodds_test,
                   num_bootstrap=_NUM_BOOTSTRAP.value, seed=seed)


def retraining_rows(fit: heldout.Experiment, evaluation: heldout.Experiment) -> list[Row]:
    rows = []
    for count in RUN_COUNTS:
        if count > fit.num_runs:
            continue
        masks, outputs = sorted_runs(fit, count)
        start = time.perf_counter()
        scores = estimators.influence(masks, outputs)
        seconds = time.perf_counter() - start
        num_train, num_eval = masks.shape[1], outputs.shape[1]
        rows.append(Row("heldout influence", f"heldout influence ({count} runs)",
                        judge(scores, evaluation, 0), seconds, count,
                        2.0 * count * num_train * num_eval))
        start = time.perf_counter()
        model = datamodels.fit_datamodels(masks, outputs)
        seconds = time.perf_counter() - start
        rows.append(Row("datamodels", f"datamodels ({count} runs)",
                        judge(model.weights, evaluation, 0), seconds, count,
                        2.0 * count * num_train * (count + num_eval)))
    return rows


def trak_rows(run_dirs: list[str], data: sources.Dataset, fit: heldout.Experiment,
              evaluation: heldout.Experiment) -> list[Row]:
    """TRAK with growing ensembles; lambda_reg chosen on fit runs outside the ensemble."""
    config = attribution_config.TRAKConfig(projection_dim=_PROJECTION_DIM.value, seed=_SEED.value)
    models = runs_attribution.restore_final_models(run_dirs, data)
    kernels, seconds = [], []
    for features in trak.ensemble_features(models, data.x_train, data.y_train, data.x_test,
                                           data.y_test, config):
        start = time.perf_counter()
        kernels.append(trak.Kernel(features))
        seconds.append(features.seconds + time.perf_counter() - start)
    order = np.argsort(fit.run_ids)
    selection = order[fit.run_ids[order] >= len(run_dirs)]
    rows = []
    for count in TRAK_MODELS:
        if count > len(kernels):
            continue
        start = time.perf_counter()
        chosen, table = trak.select_lambda(kernels[:count], LAMBDA_GRID,
                                           fit.membership[selection],
                                           fit.logodds_test[selection])
        scores = trak.trak_scores(kernels[:count], chosen)
        select_seconds = time.perf_counter() - start
        print(f"  TRAK M={count}: lambda_reg {chosen:g} chosen on {len(selection)} fit runs "
              "(selection LDS " + ", ".join(f"{k:g}: {v:.3f}" for k, v in table.items()) + ")")
        rows.append(Row("TRAK", f"TRAK (M={count}, d={config.projection_dim}, "
                        f"lambda={chosen:g})", judge(scores, evaluation, 0),
                        sum(seconds[:count]) + select_seconds, count))
    return rows


def tracin_scores(run_dir: str, data: sources.Dataset) -> tuple[np.ndarray, float]:
    record = records.read_run_record(run_dir)
    checkpoints = []
    for epoch, rate in record.tracin_checkpoints(run_dir):
        prefix = layout.RunDir(run_dir).checkpoint(epoch)
        model = checkpoints_lib.restore_run_model(run_dir, record.model, data.num_classes,
                                                  data.input_shape, prefix=prefix).model
        checkpoints.append(attribution.Checkpoint(model, rate))
    result = attribution.score_tracin(checkpoints, data.x_train, data.y_train, data.x_test,
                                      data.y_test, attribution.TracInConfig(
                                          measurement="logodds"), self_influence=False)
    return result.scores, result.seconds


def gradient_rows(run_dirs: list[str], data: sources.Dataset,
                  evaluation: heldout.Experiment) -> list[Row]:
    """TracIn and influence functions on one run, and averaged over `AVERAGED` runs."""
    rows = []
    runs = run_dirs[:AVERAGED]
    tracin = [tracin_scores(run_dir, data) for run_dir in runs]
    num_checkpoints = len(records.read_run_record(runs[0]).tracin_checkpoints(runs[0]))
    for count in (1, len(runs)):
        scores = np.mean([s for s, _ in tracin[:count]], axis=0)
        rows.append(Row("TracIn", f"TracIn ({count} run{'s' * (count > 1)}, "
                        f"{num_checkpoints} ckpts)",
                        judge(scores, evaluation, 0), sum(t for _, t in tracin[:count]), count))
    models = runs_attribution.restore_final_models(runs, data)
    variants = [(strategy, _FISHER.value) for strategy in IF_STRATEGIES]
    if _FISHER.value != "expected":
        variants += [(strategy, "expected") for strategy in IF_EXPECTED]
    for strategy, fisher in variants:
        config = attribution_config.InfluenceConfig(
            strategy=strategy, measurement="logodds", fisher=fisher, fisher_seed=_SEED.value,
            fisher_draws=_FISHER_DRAWS.value if fisher == "true" else 1)
        family = f"IF {strategy}" + (" (expected F)" if fisher != _FISHER.value else "")
        per_run, seconds = [], []
        for run_dir, model in zip(runs, models, strict=True):
            start = time.perf_counter()
            subset = runs_lib.load_run(run_dir)[runs_lib.SUBSET_INDICES]
            factors = influence_functions.fit_factors(model, data.x_train[subset],
                                                      data.y_train[subset], config)
            _, scores = influence_functions.scores_from_factors(
                model, factors, data.x_train, data.y_train, data.x_test, data.y_test,
                config, self_influence=False)
            per_run.append(scores)
            seconds.append(time.perf_counter() - start)
        for count in (1, len(runs)):
            rows.append(Row(family, f"{family} ({count} run{'s' * (count > 1)})",
                            judge(np.mean(per_run[:count], axis=0), evaluation, 0),
                            sum(seconds[:count]), count))
    return rows


def metagradient_rows(run_dirs: list[str], data: sources.Dataset,
                      evaluation: heldout.Experiment) -> list[Row]:
    """Exact metagradients of fit runs 0..4 (d f_j / d w_i through each run's own
    training, `heldout.attribution.metagradient`) on the standard protocol: one run, and
    the mean over the runs. A run says nothing of the examples outside its 70% subset
    (NaN rows): the mean is over the runs that trained on each example, 0 where none did.
    """
    per_run, seconds = [], []
    config = attribution_config.MetagradientConfig(progress=False)
    for run_dir in run_dirs[:AVERAGED]:
        start = time.perf_counter()
        per_run.append(metagradient.score_metagradient(run_dir, data, config=config).scores)
        seconds.append(time.perf_counter() - start)
    rows = []
    for count in (1, AVERAGED):
        stacked = np.stack(per_run[:count]).astype(np.float64)
        trained = np.isfinite(stacked).sum(axis=0)
        scores = np.nansum(stacked, axis=0) / np.maximum(trained, 1)
        rows.append(Row("metagradient", f"metagradient ({count} run{'s' * (count > 1)})",
                        judge(scores, evaluation, 0), sum(seconds[:count]), count))
    return rows


def format_table(rows: list[Row], train_seconds: float, rate: float,
                 ceiling: lds.NoiseCeiling) -> str:
    lines = [f"{'method':<44}{'LDS':>7}{'95% interval':>17}{'ceiling':>9}{'of ceil':>8}"
             f"{'method s':>10}{'models':>8}{'cost s':>9}{'of rate':>9}"]
    for row in rows:
        # The ceiling over the eval examples where this LDS is defined.
        defined = np.isfinite(row.lds.per_example) & np.isfinite(ceiling.per_example)
        bound = float(ceiling.per_example[defined].mean()) if defined.any() else np.nan
        cost = row.seconds + row.models * train_seconds
        share = (f"{row.flops / rate / row.seconds:.0%}" if np.isfinite(row.flops)
                 and row.seconds > 0 else "-")
        lines.append(f"{row.method:<44}{row.lds.mean:>7.3f}   [{row.lds.ci_low:6.3f}, "
                     f"{row.lds.ci_high:6.3f}]{bound:>9.3f}{row.lds.mean / bound:>8.0%}"
                     f"{row.seconds:>10.2f}{row.models:>8}{cost:>9.1f}{share:>9}")
    return "\n".join(lines)


def write_csv(rows: list[Row], train_seconds: float, path: str,
              ceiling: lds.NoiseCeiling) -> None:
    header = ["family", "method", "lds", "ci_low", "ci_high", "method_seconds", "models",
              "cost_seconds", "eval_examples_defined", "noise_ceiling"]
    files.write_csv(path, header, [
        (row.family, row.method, row.lds.mean, row.lds.ci_low, row.lds.ci_high, row.seconds,
         row.models, row.seconds + row.models * train_seconds,
         int(np.isfinite(row.lds.per_example).sum()), ceiling.mean) for row in rows])


def plot(rows: list[Row], train_seconds: float, title: str, path: str,
         ceiling: lds.NoiseCeiling) -> None:
    """LDS against cost, one line per family, each point labelled with its models, and
    the noise ceiling."""
    points: dict[str, list] = {}
    for r in rows:
        points.setdefault(r.family, []).append(
            (r.seconds + r.models * train_seconds, r.lds.mean, r.lds.ci_low, r.lds.ci_high,
             r.models))
    plots.plot_lds_against_cost(points, path, title, ceiling=ceiling.mean)


def replot(csv_path: str, title: str, path: str) -> None:
    """The PNG again from a CSV this script wrote (`write_csv`), without retraining."""
    with open(csv_path, newline="") as handle:
        records = list(csv.DictReader(handle))
    points: dict[str, list] = {}
    for r in records:
        points.setdefault(r["family"], []).append(
            (float(r["cost_seconds"]), float(r["lds"]), float(r["ci_low"]),
             float(r["ci_high"]), int(r["models"])))
    ceiling = float(records[0]["noise_ceiling"]) if records and "noise_ceiling" in records[0] \
        else None
    plots.plot_lds_against_cost(points, path, title, ceiling=ceiling)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # not a line per checkpoint written
    if _REPLOT.value:
        digits = sources.load_digits()
        png_path = os.path.splitext(_REPLOT.value)[0] + ".png"
        replot(_REPLOT.value, f"digits MLP: LDS on {_LDS_RUNS.value} runs at "
               f"{LDS_RATIO:.0%} (log-odds), {digits.num_train} train x "
               f"{len(digits.y_test)} test", png_path)
        print(f"PNG {png_path}")
        return
    start = time.time()
    work_dir, seed = _WORK_DIR.value, _SEED.value
    os.makedirs(work_dir, exist_ok=True)
    rate = matmul_rate()
    print(f"float32 matrix-product rate: {rate / 1e9:.1f} GFLOP/s (2048 x 2048, best of 5); "
          "the machine may be shared")
    data = sources.load_digits()
    print(f"Training: {_FIT_RUNS.value} fit runs ({FIT_RATIO}), {_LDS_RUNS.value} LDS runs "
          f"({LDS_RATIO}), each LDS mask trained twice ({RESEED}) into {work_dir}")
    train_seconds = train(work_dir, data, _FIT_RUNS.value, _LDS_RUNS.value, seed)
    fit = heldout.load_experiment(work_dir, "0.7", progress=False)
    evaluation = heldout.load_experiment(work_dir, "0.5", progress=False)
    ceiling = ceiling_of(evaluation, heldout.load_experiment(work_dir, RESEED, progress=False))
    print(f"  {train_seconds * 1e3:.1f} ms of training per model (K at once)")
    run_dirs = [runs_lib.run_dir(work_dir, "0.7", r) for r in range(GRADIENT_RUNS)]

    rows = []
    for name, function in (("retraining", lambda: retraining_rows(fit, evaluation)),
                           ("TRAK", lambda: trak_rows(run_dirs, data, fit, evaluation)),
                           ("TracIn and influence functions",
                            lambda: gradient_rows(run_dirs, data, evaluation)),
                           ("metagradients",
                            lambda: metagradient_rows(run_dirs, data, evaluation))):
        section = time.time()
        rows += function()
        print(f"  {name}: {time.time() - section:.0f} s")

    title = (f"digits MLP: LDS on {evaluation.num_runs} runs at {LDS_RATIO:.0%} "
             f"(log-odds), {data.num_train} train x {len(data.y_test)} test")
    print(f"\n{title}\n" + format_table(rows, train_seconds, rate, ceiling))
    print(f"ceiling: noise ceiling of the LDS on these outputs, mean over eval examples of "
          f"sqrt(Spearman of two trainings of each of the {ceiling.num_runs} masks, design "
          f"{RESEED}); median reliability {np.nanmedian(ceiling.reliability):.3f}; "
          "'of ceil': LDS / ceiling")
    print(f"cost s = method seconds + models x {train_seconds:.3f} s of training per model; "
          "'of rate': arithmetic of the matrix products / (seconds x measured rate)")
    print(f"Influence functions: fisher={_FISHER.value}"
          + (f", {_FISHER_DRAWS.value} label draw(s), fisher_seed={seed}"
             if _FISHER.value == "true" else "")
          + "; '(expected F)': the exact expectation over labels")
    csv_path = os.path.join(work_dir, "attribution_lds.csv")
    png_path = os.path.join(work_dir, "attribution_lds.png")
    write_csv(rows, train_seconds, csv_path, ceiling)
    plot(rows, train_seconds, title, png_path, ceiling)
    print(f"\nCSV {csv_path}\nPNG {png_path}\nTotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
