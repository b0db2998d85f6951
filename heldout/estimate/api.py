"""The front door of estimation from retraining: an `EstimateRequest` in, an `EstimateReport`
out.

Everything ``estimate.py`` used to decide itself lives here: fetching a published
tarball first (a path, URL or release name as the experiment directory), where outputs
go by default (inside the experiment, `layout.ExperimentDir`), the published defaults
of the targeted report (log-odds, alpha 0.01, 99% intervals), and `--verify`. Output
locations are checked writable before anything is computed, so a read-only experiment
fails at once.
Gradient-based methods (TracIn, influence functions) are scored by the attribution
layer's front door (`heldout.attribution.api.run_estimate`), which takes the same
request and uses `prepare` and `check_outputs` from here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from heldout.data import sources
from heldout.data.dataset import DEFAULT_MAX_CLASSES, Dataset
from heldout.estimate import compare, export, merge, pipeline, targeted
from heldout.estimate import datamodels as datamodels_lib
from heldout.estimate import lds as lds_lib
from heldout.store import checks, designs, experiment_info, files, layout, published, released
from heldout.store import runs as runs_lib
from heldout.store import targets as targets_lib
from heldout.store.experiment_info import read_experiment_info

DEFAULT_EXPERIMENT_DIR = "./experiments/digits"
# Defaults that differ between the estimates and the published targeted analysis.
_ESTIMATE_DEFAULTS = {"metric": "correctness", "alpha": 0.05, "confidence": 0.95}
_TARGETED_DEFAULTS = {"metric": "logodds", "alpha": 0.01, "confidence": 0.99}


@dataclasses.dataclass(frozen=True)
class EstimateRequest:
    """What to estimate, as a user states it (every field of ``estimate.py`` is one flag).

    Attributes:
        experiment_dir: the experiment (local or gs://), or a published tarball to
            fetch first (path, URL or release name).
        fetch_dir: where a fetched tarball's members go (default ./experiments/<name>).
        fetch_checkpoints: also extract checkpoints of these subset ratios.
        fetch_run_ids: with `fetch_checkpoints`, only of these runs (``0-9``).
        md5: expected MD5 of a fetched tarball (None: the catalogue's, if known).
        estimators: names in `pipeline.ESTIMATORS`, ``("all",)``, or one gradient
            method (``tracin``, ``if_<strategy>``) for the attribution front door.
        subsets: subset folders (one, except for cscore).
        metric, alpha, confidence: None takes the default of the report asked for
            (estimates: correctness, 0.05, 0.95; targeted: logodds, 0.01, 0.99).
        min_runs, test, fdr, influence_output, top_k, threshold: see `EstimateConfig`.
        eval_indices: test examples (``0-99,120`` or a file of indices).
        eval_shard: ``i/n``: the i-th of n parts of the test examples.
        targets: targeted report of this target set (full vs drop-<name> arms).
        show_all: targeted report: every target row, not only the significant ones.
        plan, effect, power: runs per arm needed to detect `effect`.
        run_id: gradient methods: the run whose checkpoints are used.
        attribution: gradient methods: settings of their config (`TracInConfig`,
            `InfluenceConfig`) by parameter name; one the method lacks is refused.
        factors_path: influence functions: reuse or save the fitted factors here.
        output: the .npz written; None: the experiment's default (`layout.ExperimentDir`).
        csv_dir, plot_dir: also write CSV tables / PNG figures here.
        dataset: data spec for labels and images; None: the experiment's.
        data_dir: TFDS data directory.
        max_classes: most classes a data set may have.
        top: rows of each printed table.
        verify: only check every complete run (non-zero status if any is damaged).
        progress: show progress bars.
        merge: estimate files of the parts of a sharded job (``eval_shard``) to merge
            into one, instead of estimating; saved to `output` (default: the
            experiment's estimates file).
        compare_to: a published file (memorization/influence or C-scores) to compare
            the estimates with (`compare.compare_to_published`).
        lds_subset: judge the score matrix (influence, datamodels, gradient methods) by
            its LDS on the runs of this subset folder (SPEC §9); runs it was fit on are
            refused.
        lds_runs: only these runs of `lds_subset` (``0-199``); None: all complete ones.
        trak_runs: TRAK: the runs whose final models form the ensemble (``0-4``);
            None: `run_id`. With a grid of ``lambda_reg``, it is chosen on the other
            runs of the folder.
    """

    experiment_dir: str = DEFAULT_EXPERIMENT_DIR
    fetch_dir: str | None = None
    fetch_checkpoints: tuple[str, ...] | None = None
    fetch_run_ids: str | None = None
    md5: str | None = None
    estimators: tuple[str, ...] = ("memorization", "influence")
    subsets: tuple[str, ...] | None = None
    metric: str | None = None
    min_runs: int = 5
    test: str | None = None  # None: z for the targeted report (published), else welch
    confidence: float | None = None
    alpha: float | None = None
    fdr: bool = False
    influence_output: str = "dense"
    top_k: int = 10
    threshold: float | None = None
    eval_indices: str | None = None
    eval_shard: str | None = None
    targets: str | None = None
    show_all: bool = False
    plan: bool = False
    effect: float = 0.25
    power: float = 0.8
    run_id: int = 0
    attribution: Mapping[str, object] = dataclasses.field(default_factory=dict)
    factors_path: str | None = None
    output: str | None = None
    csv_dir: str | None = None
    plot_dir: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    max_classes: int = DEFAULT_MAX_CLASSES
    top: int = 10
    verify: bool = False
    progress: bool = True
    merge: tuple[str, ...] | None = None
    compare_to: str | None = None
    lds_subset: str | None = None
    lds_runs: str | None = None
    trak_runs: str | None = None

    def setting(self, name: str, targeted_report: bool) -> object:
        """`metric`, `alpha` or `confidence`: the value given, else the report's default."""
        value = getattr(self, name)
        if value is not None:
            return value
        return (_TARGETED_DEFAULTS if targeted_report else _ESTIMATE_DEFAULTS)[name]


@dataclasses.dataclass(frozen=True)
class EstimateReport:
    """What `run_estimate` did; ``str()`` is what ``estimate.py`` prints."""

    sections: tuple[str, ...]  # printed blocks, in order (fetch summary, tables, ...)
    written: tuple[str, ...] = ()  # files written
    exit_status: int = 0  # non-zero: `verify` found damaged runs

    def __str__(self) -> str:
        text = "\n\n".join(s for s in self.sections if s)
        saved = "\n".join(f"Saved {path}" for path in self.written)
        return "\n\n".join(part for part in (text, saved) if part)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request after fetching: the experiment directory to read, and what was printed."""

    experiment_dir: str
    sections: tuple[str, ...] = ()


def run_estimate(request: EstimateRequest) -> EstimateReport:
    """Verifies, plans, reports targeted self-influence, or estimates from retraining.

    Raises:
        ValueError: an invalid request, an unwritable output, or unusable runs
            (messages name the request's parameters).
    """
    if _gradient_method(request):
        raise ValueError(f"estimators={request.estimators[0]}: a gradient method; use "
                         "heldout.attribution.api.run_estimate")
    prepared = prepare(request)
    if request.verify:
        return verify(prepared)
    if request.targets or request.plan:
        return _targeted(request, prepared)
    if request.compare_to:
        published.detect_kind(request.compare_to)  # a file it can compare, before any work
    if request.merge is not None:
        return _merged(request, prepared)
    if request.estimators == ("datamodel",):
        return _datamodels(request, prepared)
    return _estimates(request, prepared)


def prepare(request: EstimateRequest) -> Prepared:
    """Checks the request's own values and fetches a published tarball if one is named."""
    if not request.experiment_dir.strip():
        raise ValueError("experiment_dir: empty; expected a directory (local or gs://), a "
                         "tarball or a release name")
    if not request.estimators:
        raise ValueError("estimators: empty; expected one or more of "
                         f"{', '.join(pipeline.ESTIMATORS)}, or all")
    if not released.is_release_source(request.experiment_dir):
        return Prepared(request.experiment_dir)
    destination = request.fetch_dir or os.path.join("experiments",
                                                    _release_name(request.experiment_dir))
    checks.check_writable(destination, "fetch_dir")
    summary = released.extract_release(
        request.experiment_dir, destination, md5=request.md5,
        include_checkpoints=bool(request.fetch_checkpoints),
        subsets=list(request.fetch_checkpoints) if request.fetch_checkpoints else None,
        run_ids=designs.parse_run_ids(request.fetch_run_ids, "fetch_run_ids")
        if request.fetch_run_ids else None, progress=request.progress)
    return Prepared(released.experiment_root(destination), (str(summary),))


def verify(prepared: Prepared) -> EstimateReport:
    """Checks every complete run; a missing, empty or unreadable directory is an error."""
    experiment_dir = prepared.experiment_dir
    if not tf.io.gfile.isdir(experiment_dir):
        raise ValueError(f"experiment_dir={experiment_dir}: not a directory; expected an "
                         "experiment to verify")
    if not runs_lib.list_subsets(experiment_dir):
        raise ValueError(f"experiment_dir={experiment_dir}: no runs found (expected "
                         "<subset>/<run_id>/aux_arrays.npz)")
    checked, problems = runs_lib.verify_runs(experiment_dir)
    lines = [f"damaged run {directory}: {problem}" for directory, problem in problems]
    lines.append(f"verified {checked} complete runs: {len(problems)} damaged")
    return EstimateReport((*prepared.sections, "\n".join(lines)),
                          exit_status=1 if problems else 0)


def check_outputs(request: EstimateRequest, output: str) -> None:
    """Every location the request writes to must be writable before work starts."""
    checks.check_writable(output, "output", is_file=True)
    if request.csv_dir:
        checks.check_writable(request.csv_dir, "csv_dir")
    if request.plot_dir:
        checks.check_writable(request.plot_dir, "plot_dir")


def eval_indices(request: EstimateRequest, num_test: int) -> np.ndarray:
    """The test examples a request scores: `eval_indices` (all by default), then the
    `eval_shard` part of them."""
    chosen = np.arange(num_test)
    if request.eval_indices:
        chosen = np.asarray(designs.read_indices(request.eval_indices, "eval_indices"))
        if len(chosen) and chosen.max() >= num_test:
            raise ValueError(f"eval_indices={request.eval_indices}: expected indices below "
                             f"the {num_test} test examples")
    if request.eval_shard:
        index, count = designs.parse_shard(request.eval_shard, "eval_shard")
        chosen = np.array_split(chosen, count)[index]
    return chosen


def load_data(request: EstimateRequest, experiment_dir: str, required: bool = False
              ) -> Dataset | None:
    """The data set of the request or of the experiment (None for released runs)."""
    info = read_experiment_info(experiment_dir)
    dataset = request.dataset or (info.dataset if info else None)
    if not dataset:
        if required:
            raise ValueError("dataset: needed (the experiment does not record its data set)")
        return None
    data = sources.load_dataset(dataset, request.data_dir, max_classes=request.max_classes)
    experiment_info.check_data(experiment_dir, data)
    return data


def _estimates(request: EstimateRequest, prepared: Prepared) -> EstimateReport:
    experiment_dir = prepared.experiment_dir
    chosen = request.estimators
    config = pipeline.EstimateConfig(
        estimators=pipeline.ESTIMATORS if chosen == ("all",) else chosen,
        subsets=request.subsets, metric=request.setting("metric", False),
        min_runs=request.min_runs, test=request.test or "welch",
        confidence=request.setting("confidence", False), alpha=request.setting("alpha", False),
        fdr=request.fdr, influence_output=request.influence_output, top_k=request.top_k,
        threshold=request.threshold,
        eval_indices=designs.read_indices(request.eval_indices, "eval_indices")
        if request.eval_indices else None,
        eval_shard=designs.parse_shard(request.eval_shard, "eval_shard")
        if request.eval_shard else None,
        num_pairs=max(request.top, 100))
    single = [e for e in config.estimators if e != "cscore"]
    subset = pipeline.choose_subset(experiment_dir, config.subsets) if single else None
    output = request.output or layout.ExperimentDir(experiment_dir).estimates(
        subset if single else None)
    check_outputs(request, output)
    data = load_data(request, experiment_dir)
    estimates = pipeline.estimate_experiment(experiment_dir, config, progress=request.progress)
    export.save_estimates(estimates, output)
    labels_train = None if data is None else data.y_train
    labels_test = None if data is None else data.y_test
    written = [output]
    if request.csv_dir:
        written += export.write_tables(estimates, request.csv_dir, labels_train, labels_test)
    if request.plot_dir:
        written += pipeline.plot_estimates(estimates, request.plot_dir, data)
    table = pipeline.format_report(estimates, labels_train, labels_test, top=request.top)
    comparison, plots = _compare(request, estimates, data)
    lds_text = ""
    if request.lds_subset:
        if estimates.influence is None or estimates.influence.matrix is None:
            raise ValueError("lds_subset: needs the dense influence matrix (estimators "
                             "influence, influence_output=dense)")
        lds_text = lds_section(request, experiment_dir, estimates.influence.matrix,
                               estimates.influence.eval_indices, estimates.subset,
                               estimates.run_ids)
    return EstimateReport((*prepared.sections, table, comparison, lds_text),
                          tuple(written + plots))


def _merged(request: EstimateRequest, prepared: Prepared) -> EstimateReport:
    """The parts of a sharded job merged into the one-machine result, saved, reported."""
    if not request.merge:
        raise ValueError("merge: empty; expected the estimate files of the parts")
    if request.output:
        checks.check_writable(request.output, "output", is_file=True)
    else:
        checks.check_writable(prepared.experiment_dir, "output")
    for name in ("csv_dir", "plot_dir"):
        if getattr(request, name):
            checks.check_writable(getattr(request, name), name)
    estimates = merge.merge_estimate_files(list(request.merge))
    output = request.output or layout.ExperimentDir(prepared.experiment_dir).estimates(
        estimates.subset)
    export.save_estimates(estimates, output)
    data = load_data(request, prepared.experiment_dir)
    labels_train = None if data is None else data.y_train
    labels_test = None if data is None else data.y_test
    written = [output]
    if request.csv_dir:
        written += export.write_tables(estimates, request.csv_dir, labels_train, labels_test)
    table = pipeline.format_report(estimates, labels_train, labels_test, top=request.top)
    comparison, plots = _compare(request, estimates, data)
    merged = f"merged {len(request.merge)} parts into {output}"
    return EstimateReport((*prepared.sections, merged, table, comparison),
                          tuple(written + plots))


def _compare(request: EstimateRequest, estimates: pipeline.Estimates, data: Dataset | None
             ) -> tuple[str, list[str]]:
    """The comparison with a published file, if asked: its text, and its figures."""
    if not request.compare_to:
        return "", []
    comparisons = compare.compare_to_published(estimates, request.compare_to, data)
    plots = []
    if request.plot_dir:
        for comparison in comparisons:
            name = re.sub(r"\W+", "_", comparison.name).strip("_")
            plots.append(compare.plot_comparison(comparison, layout.output_file(
                request.plot_dir, f"compare-{name}", "png")))
    return "\n".join(compare.summary_lines(comparisons)), plots


def _targeted(request: EstimateRequest, prepared: Prepared) -> EstimateReport:
    """The targeted self-influence report and/or the power plan."""
    experiment_dir = prepared.experiment_dir
    metric = request.setting("metric", True)
    alpha = request.setting("alpha", True)
    sections = list(prepared.sections)
    if request.targets:
        name = targets_lib.find_targets(experiment_dir, request.targets).name
        output = request.output or layout.ExperimentDir(experiment_dir).targeted_report(name)
        check_outputs(request, output)
    if request.plan:
        indices = None
        if request.targets:
            indices = targets_lib.find_targets(experiment_dir, request.targets).indices
        plan = targeted.plan_runs(experiment_dir, request.effect, metric, alpha,
                                  request.power, indices=indices, progress=request.progress)
        sections.append(targeted.format_plan(plan, metric))
    if not request.targets:
        return EstimateReport(tuple(sections))
    report = targeted.targeted_self_influence(
        experiment_dir, request.targets, metric, request.test or "z",
        request.setting("confidence", True), request.min_runs, progress=request.progress)
    data = load_data(request, experiment_dir)
    labels = None if data is None else data.y_train
    export.save_targeted_report(report, output, alpha)
    written = [output]
    stem = f"self_influence-{report.targets.name}"
    if request.csv_dir:
        written.append(export.write_targeted_csv(
            report, layout.output_file(request.csv_dir, stem, "csv"), labels))
    if request.plot_dir:
        written.append(targeted.plot_targeted_report(
            report, layout.output_file(request.plot_dir, stem, "png")))
    sections.append(targeted.format_targeted_report(report, alpha, request.show_all, labels))
    return EstimateReport(tuple(sections), tuple(written))


def _gradient_method(request: EstimateRequest) -> bool:
    return len(request.estimators) == 1 and (request.estimators[0] in ("tracin", "trak")
                                             or request.estimators[0].startswith("if_"))


def _release_name(source: str) -> str:
    """The tarball's name without suffix (``.../cifar10-inception.tar.gz`` -> cifar10-inception)."""
    name = source.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    for suffix in (".tar.gz", ".tgz"):
        name = name.removesuffix(suffix)
    return name


def lds_section(request: EstimateRequest, experiment_dir: str, scores: np.ndarray,
                 eval_indices: np.ndarray, fit_subset: str | None,
                 fit_run_ids: np.ndarray) -> str:
    """LDS of `scores` ``[num_train, num_eval]`` on evaluation runs disjoint from the fit.

    The evaluation runs are those of ``lds_subset`` (``lds_runs`` of them, if given);
    their output is the log-odds margin on the eval examples (SPEC §9). When they share
    the fit runs' folder, an id in both is refused (`lds.check_disjoint`).
    """
    if not request.lds_subset:
        return ""
    runs = runs_lib.load_experiment(experiment_dir, request.lds_subset,
                                    progress=request.progress)
    rows = np.arange(runs.num_runs)
    if request.lds_runs:
        wanted = designs.parse_run_ids(request.lds_runs, "lds_runs")
        missing = sorted(set(wanted) - set(runs.run_ids.tolist()))
        if missing:
            raise ValueError(f"lds_runs={request.lds_runs}: runs "
                             f"{designs.format_run_ids(missing)} of {request.lds_subset} "
                             "are not complete")
        rows = np.flatnonzero(np.isin(runs.run_ids, wanted))
    if request.lds_subset == fit_subset:
        lds_lib.check_disjoint(fit_run_ids.tolist(), runs.run_ids[rows].tolist())
    if runs.logodds_test is None:
        raise ValueError(f"lds_subset={request.lds_subset}: its runs have no logodds_test "
                         "arrays (the LDS output); train them with this toolkit")
    result = lds_lib.lds(scores, runs.membership[rows],
                         runs.logodds_test[rows][:, eval_indices])
    return (f"LDS on {result.num_runs} runs of {request.lds_subset} (log-odds, "
            f"{len(eval_indices)} eval examples): {result.mean:.3f} "
            f"[{result.ci_low:.3f}, {result.ci_high:.3f}]")


def _datamodels(request: EstimateRequest, prepared: Prepared) -> EstimateReport:
    """Ridge datamodels of the eval examples from the fit runs (SPEC §9), saved; with
    ``lds_subset``, their LDS on disjoint evaluation runs."""
    experiment_dir = prepared.experiment_dir
    subset = pipeline.choose_subset(experiment_dir, request.subsets)
    output = request.output or layout.output_file(experiment_dir, f"datamodels-{subset}",
                                                  "npz")
    check_outputs(request, output)
    fit = runs_lib.load_experiment(experiment_dir, subset, progress=request.progress)
    chosen = eval_indices(request, fit.correctness_test.shape[1])
    metric = request.metric or "logodds"  # the published output function
    outputs = fit.metric(metric, "test")[:, chosen]
    top_k = request.top_k if request.influence_output == "topk" else None
    fitted = datamodels_lib.fit_datamodels(fit.membership, outputs, top_k=top_k)
    arrays = {"eval_indices": chosen, "intercept": fitted.intercept, "lam": fitted.lam,
              "run_ids": fit.run_ids}
    if fitted.weights is not None:
        arrays["weights"] = fitted.weights
    else:
        arrays.update(top_train=fitted.top_train, top_weights=fitted.top_weights)
    files.write_npz(output, arrays)
    lines = [f"datamodels: {fit.num_runs} runs of {subset}, output {metric}, "
             f"{len(chosen)} eval examples, ridge lambda median "
             f"{float(np.median(fitted.lam)):.3g} ({fitted.selection})"]
    if request.lds_subset:
        if fitted.weights is None:
            raise ValueError("lds_subset: needs the dense datamodel weights "
                             "(influence_output=dense)")
        lines.append(lds_section(request, experiment_dir, fitted.weights, chosen, subset,
                                  fit.run_ids))
    return EstimateReport((*prepared.sections, "\n".join(lines)), (output,))
