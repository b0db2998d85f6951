"""The front door of ``estimate.py``: `run` executes one job of `heldout.app.estimate_jobs`.

`run` is one ``match`` over the job's type. Every mode first fetches a published
tarball if the experiment directory names one, then checks every location it writes
(and a file to compare with) before any work, and writes its outputs only after every
check has passed. A default output is named after the experiment and the part of it
computed (a shard writes a shard file, a merge a merged file beside its parts), so it
never replaces a fuller result or another experiment's file.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from heldout.app.estimate_jobs import (
    Data,
    DatamodelsJob,
    EstimateJob,
    EstimatesJob,
    Examples,
    GradientJob,
    LDSCheck,
    MergeJob,
    MetagradientJob,
    Outputs,
    PlanJob,
    Source,
    TargetedJob,
    TRAKJob,
    VerifyJob,
)
from heldout.attribution import metagradient, runs_attribution
from heldout.data import sources
from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.estimate import compare, export, merge, pipeline, targeted
from heldout.estimate import datamodels as datamodels_lib
from heldout.estimate import lds as lds_lib
from heldout.store import checks, designs, experiment_info, layout, records, released
from heldout.store import runs as runs_lib
from heldout.store import targets as targets_lib


@dataclasses.dataclass(frozen=True)
class EstimateReport:
    """What `run` did; ``str()`` is what ``estimate.py`` prints."""

    sections: tuple[str, ...]  # printed blocks, in order (fetch summary, tables, ...)
    written: tuple[str, ...] = ()  # files written
    exit_status: int = 0  # non-zero: verify found damaged runs

    def __str__(self) -> str:
        text = "\n\n".join(s for s in self.sections if s)
        saved = "\n".join(f"Saved {path}" for path in self.written)
        return "\n\n".join(part for part in (text, saved) if part)


def run(job: EstimateJob) -> EstimateReport:
    """Runs one job of ``estimate.py``.

    Raises:
        ValueError: (mostly `ParameterError`, naming the job's parameter) unusable
            runs or files, or an unwritable output; nothing is written then.
    """
    match job:
        case VerifyJob():
            return _verify(job)
        case PlanJob():
            return _plan(job)
        case TargetedJob():
            return _targeted(job)
        case MergeJob():
            return _merged(job)
        case EstimatesJob():
            return _estimates(job)
        case DatamodelsJob():
            return _datamodels(job)
        case GradientJob():
            return _gradient(job)
        case TRAKJob():
            return _trak(job)
        case MetagradientJob():
            return _metagradient(job)
    raise TypeError(f"not an estimate job: {job!r}")


# --- what every mode shares -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Experiment:
    """The experiment directory to read (after fetching), and what fetching printed."""

    directory: str
    sections: tuple[str, ...] = ()


def _prepare(source: Source) -> _Experiment:
    """Fetches a published tarball first if `source` names one."""
    fetch = source.fetch
    if not released.is_release_source(source.experiment_dir):
        for parameter, value in (("fetch_dir", fetch.destination),
                                 ("fetch_checkpoints", fetch.checkpoint_subsets)):
            if value is not None:
                raise ParameterError(parameter, "only for a tarball or release name as "
                                     f"experiment_dir (not {source.experiment_dir})")
        # Checked, never ignored: a directory has no MD5, so it is refused by name.
        released.verify_md5(source.experiment_dir, fetch.md5)
        return _Experiment(source.experiment_dir)
    destination = fetch.destination or os.path.join(
        "experiments", _release_name(source.experiment_dir))
    checks.check_writable(destination, "fetch_dir")
    summary = released.extract_release(
        source.experiment_dir, destination, md5=fetch.md5,
        include_checkpoints=bool(fetch.checkpoint_subsets),
        subsets=list(fetch.checkpoint_subsets) if fetch.checkpoint_subsets else None,
        run_ids=list(fetch.checkpoint_run_ids) if fetch.checkpoint_run_ids else None,
        progress=source.progress)
    return _Experiment(released.experiment_root(destination), (str(summary),))


def _release_name(source: str) -> str:
    """The tarball's name without suffix (``.../cifar10-inception.tar.gz`` -> cifar10-inception)."""
    name = source.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    for suffix in (".tar.gz", ".tgz"):
        name = name.removesuffix(suffix)
    return name


def _check_outputs(output: str, outputs: Outputs | None = None) -> None:
    """Every location a job writes to must be writable before work starts."""
    checks.check_writable(output, "output", is_file=True)
    outputs = outputs or Outputs()
    if outputs.csv_dir:
        checks.check_writable(outputs.csv_dir, "csv_dir")
    if outputs.plot_dir:
        checks.check_writable(outputs.plot_dir, "plot_dir")


def _load_data(data: Data, experiment_dir: str, required: bool = False) -> Dataset | None:
    """The data set given, or the experiment's (None for released runs, unless required)."""
    info = experiment_info.read_experiment_info(experiment_dir)
    dataset = data.dataset or (info.dataset if info else None)
    if not dataset:
        if required:
            raise ParameterError("dataset", "needed (the experiment does not record its "
                                 "data set)")
        return None
    loaded = sources.load_dataset(dataset, data.data_dir, max_classes=data.max_classes)
    experiment_info.check_data(experiment_dir, loaded)
    return loaded


def _eval_indices(examples: Examples, num_test: int) -> np.ndarray:
    """The test examples chosen (all by default), then the shard's part of them."""
    chosen = np.arange(num_test)
    if examples.indices:
        chosen = np.asarray(designs.read_indices(examples.indices, "eval_indices"))
        if len(chosen) and chosen.max() >= num_test:
            raise ParameterError("eval_indices", f"expected indices below the {num_test} "
                                 "test examples", examples.indices)
    if examples.shard:
        index, count = examples.shard
        chosen = np.array_split(chosen, count)[index]
    if not len(chosen):
        raise ParameterError("eval_shard", "no test examples selected")
    return chosen


def _default_name(stem: str, examples: Examples) -> str:
    """A score file's stem, naming the shard it holds (never the whole-set name for a
    shard; chosen eval examples are recorded inside the file)."""
    return stem + layout.part_name(shard=examples.shard)


def _choose_subset(experiment_dir: str, subset: str | None, lds: LDSCheck | None) -> str:
    """The folder chosen, or the only one besides the LDS folder."""
    return pipeline.choose_subset(experiment_dir, None if subset is None else (subset,),
                                  exclude=_lds_folder(lds))


def _lds_folder(lds: LDSCheck | None) -> tuple[str, ...]:
    return () if lds is None else (lds.subset,)


# The LDS protocol's bootstrap interval (SPEC §9): level, resamples, seed; saved with it.
LDS_CONFIDENCE, LDS_BOOTSTRAP, LDS_SEED = 0.95, 1000, 0


@dataclasses.dataclass(frozen=True)
class _LDS:
    """An LDS computed (not yet saved): its result, and the runs it was taken over."""

    result: lds_lib.LDSResult
    subset: str
    run_ids: np.ndarray
    eval_indices: np.ndarray
    fit_subset: str

    def text(self) -> str:
        return (f"LDS on {self.result.num_runs} runs of {self.subset} (log-odds, "
                f"{len(self.eval_indices)} eval examples): {self.result.summary()}")

    def save(self, scores_path: str, method: str) -> str:
        """Written beside the scores (``<scores>-lds-<subset>.npz``), with its settings."""
        stem = os.path.basename(scores_path).removesuffix(".npz")
        path = layout.output_file(os.path.dirname(scores_path) or ".",
                                  f"{stem}-lds-{self.subset}", "npz")
        export.save_lds(path, self.result, self.eval_indices, self.run_ids,
                        {"method": method, "scores_file": scores_path,
                         "lds_subset": self.subset, "fit_subset": self.fit_subset,
                         "output": "logodds", "confidence": LDS_CONFIDENCE,
                         "num_bootstrap": LDS_BOOTSTRAP, "seed": LDS_SEED})
        return path


def _lds(lds: LDSCheck | None, experiment_dir: str, scores: np.ndarray,
         eval_indices: np.ndarray, fit_subset: str, fit_run_ids: np.ndarray,
         progress: bool, fit_masks: np.ndarray | None = None) -> _LDS | None:
    """LDS of `scores` ``[num_train, num_eval]`` on evaluation runs disjoint from the fit.

    The evaluation runs are those of ``lds.subset`` (``lds.run_ids`` of them, if given);
    their output is the log-odds margin on the eval examples (SPEC §9). A run of the fit
    (same id in the same folder, or the same membership anywhere) is refused.
    """
    if lds is None:
        return None
    runs = runs_lib.load_experiment(experiment_dir, lds.subset, progress=progress)
    rows = np.arange(runs.num_runs)
    if lds.run_ids is not None:
        missing = sorted(set(lds.run_ids) - set(runs.run_ids.tolist()))
        if missing:
            raise ParameterError("lds_runs", f"runs {designs.format_run_ids(missing)} of "
                                 f"{lds.subset} are not complete",
                                 designs.format_run_ids(lds.run_ids))
        rows = np.flatnonzero(np.isin(runs.run_ids, lds.run_ids))
    if lds.subset == fit_subset:
        lds_lib.check_disjoint(fit_run_ids.tolist(), runs.run_ids[rows].tolist())
    if fit_masks is None:
        fit = runs_lib.load_experiment(experiment_dir, fit_subset, progress=progress)
        fit_masks = fit.membership[np.isin(fit.run_ids, fit_run_ids)]
    lds_lib.check_disjoint_membership(
        fit_masks, runs.membership[rows], [f"{lds.subset}/{r}" for r in runs.run_ids[rows]])
    if runs.logodds_test is None:
        raise ParameterError("lds_subset", "its runs have no logodds_test arrays (the LDS "
                             "output); train them with this toolkit", lds.subset)
    result = lds_lib.lds(scores, runs.membership[rows],
                         runs.logodds_test[rows][:, eval_indices],
                         num_bootstrap=LDS_BOOTSTRAP, seed=LDS_SEED, confidence=LDS_CONFIDENCE)
    return _LDS(result, lds.subset, runs.run_ids[rows], np.asarray(eval_indices), fit_subset)


# --- the modes ------------------------------------------------------------------------


def _verify(job: VerifyJob) -> EstimateReport:
    """Checks every complete run; a missing, empty or unreadable directory is an error."""
    experiment = _prepare(job.source)
    directory = experiment.directory
    subsets = runs_lib.list_subsets(directory)  # an unreadable directory: said so
    if not subsets and not tf.io.gfile.isdir(directory):
        raise ParameterError("experiment_dir", "not a directory; expected an experiment to "
                             "verify", directory)
    if not subsets:
        raise ParameterError("experiment_dir", "no runs found (expected "
                             "<subset>/<run_id>/aux_arrays.npz)", directory)
    checked, problems = runs_lib.verify_runs(directory)
    lines = [f"damaged run {run_dir}: {problem}" for run_dir, problem in problems]
    lines.append(f"verified {checked} complete runs: {len(problems)} damaged")
    return EstimateReport((*experiment.sections, "\n".join(lines)),
                          exit_status=1 if problems else 0)


def _plan(job: PlanJob) -> EstimateReport:
    experiment = _prepare(job.source)
    plan = targeted.plan_runs(experiment.directory, job.plan.effect, job.plan.metric,
                              job.plan.alpha, job.plan.power, progress=job.source.progress)
    return EstimateReport((*experiment.sections, targeted.format_plan(plan, job.plan.metric)))


def _targeted(job: TargetedJob) -> EstimateReport:
    """The targeted self-influence report (and the power plan on its targets)."""
    experiment = _prepare(job.source)
    directory, config, plot_dir = experiment.directory, job.config, job.outputs.plot_dir
    target_set = targets_lib.find_targets(directory, job.targets)
    output = job.outputs.output or layout.ExperimentDir(directory).targeted_report(
        target_set.name)
    _check_outputs(output, job.outputs)
    sections = list(experiment.sections)
    if job.plan is not None:
        plan = targeted.plan_runs(directory, job.plan.effect, job.plan.metric,
                                  job.plan.alpha, job.plan.power, indices=target_set.indices,
                                  progress=job.source.progress)
        sections.append(targeted.format_plan(plan, job.plan.metric))
    report = targeted.targeted_self_influence(
        directory, job.targets, config.metric, config.test, config.confidence,
        config.min_runs, progress=job.source.progress)
    data = _load_data(job.data, directory)
    labels = None if data is None else data.y_train
    export.save_targeted_report(report, output, config.alpha)
    written = [output]
    stem = f"self_influence-{report.targets.name}"
    if job.outputs.csv_dir:
        written.append(export.write_targeted_csv(
            report, layout.output_file(job.outputs.csv_dir, stem, "csv"), labels))
    if plot_dir:
        written.append(targeted.plot_targeted_report(
            report, layout.output_file(plot_dir, stem, "png")))
    sections.append(targeted.format_targeted_report(report, config.alpha, job.show_all,
                                                    labels))
    return EstimateReport(tuple(sections), tuple(written))


def _estimates(job: EstimatesJob) -> EstimateReport:
    experiment = _prepare(job.source)
    directory, config = experiment.directory, job.config
    if job.eval_indices:
        config = dataclasses.replace(config, eval_indices=tuple(
            designs.read_indices(job.eval_indices, "eval_indices")))
    single = [e for e in config.estimators if e != "cscore"]
    subset = _choose_subset(directory, config.subsets[0] if config.subsets and single
                            else None, job.lds) if single else None
    output = job.outputs.output or layout.ExperimentDir(directory).estimates(
        subset, layout.part_name(job.eval_indices, config.eval_shard)
        if "influence" in config.estimators else "")
    _check_outputs(output, job.outputs)
    data = _load_data(job.data, directory)
    if job.compare_to:  # a file it can compare, before any work
        compare.check_comparable(job.compare_to, *runs_lib.experiment_sizes(directory, subset),
                                 data=data, estimators=config.estimators,
                                 imagenet_index=job.imagenet_index)
    estimates = pipeline.estimate_experiment(directory, config, progress=job.source.progress,
                                             exclude_subsets=_lds_folder(job.lds))
    comparison = _compare(job.compare_to, estimates, data, job.imagenet_index)
    lds = None
    if job.lds is not None:
        lds = _lds(job.lds, directory, estimates.influence.matrix,
                   estimates.influence.eval_indices, estimates.subset, estimates.run_ids,
                   job.source.progress)
    export.save_estimates(estimates, output)
    written = [output, *_write_tables(estimates, data, job.outputs)]
    if job.outputs.plot_dir:
        written += pipeline.plot_estimates(estimates, job.outputs.plot_dir, data)
    written += _plot_comparison(comparison, job.outputs.plot_dir)
    if lds is not None:
        written.append(lds.save(output, "influence"))
    table = _table(estimates, data, job.top)
    return EstimateReport((*experiment.sections, table, _comparison_text(comparison),
                           lds.text() if lds else ""), tuple(written))


def _merged(job: MergeJob) -> EstimateReport:
    """The parts of a sharded job merged into the one-machine result, saved, reported.

    The default output sits beside the parts, named after their subset and marked
    merged (``estimates-<subset>-merged.npz``), never the whole-set file of an
    experiment; parts in several folders need an explicit output. Labels come from the
    data set given, or the one of the experiment the parts were estimated from.
    """
    folders = {os.path.dirname(part) for part in job.parts}
    if job.outputs.output is None and len(folders) > 1:
        raise ParameterError("output", f"needed: the parts lie in {len(folders)} folders, "
                             "so there is no one place beside them")
    estimates = merge.merge_estimate_files(list(job.parts))
    output = job.outputs.output or layout.output_file(
        folders.pop() or ".", f"estimates-{estimates.subset or 'cscore'}-merged", "npz")
    if output in job.parts:
        raise ParameterError("output", "is one of the parts; write the merge elsewhere",
                             output)
    _check_outputs(output, job.outputs)
    data = _load_data(job.data, estimates.experiment_dir)
    if job.compare_to:
        compare.check_estimates_comparable(job.compare_to, estimates, data,
                                           job.imagenet_index)
    comparison = _compare(job.compare_to, estimates, data, job.imagenet_index)
    export.save_estimates(estimates, output)
    written = [output, *_write_tables(estimates, data, job.outputs),
               *_plot_comparison(comparison, job.outputs.plot_dir)]
    merged = f"merged {len(job.parts)} parts into {output}"
    return EstimateReport((merged, _table(estimates, data, job.top),
                           _comparison_text(comparison)), tuple(written))


def _table(estimates: pipeline.Estimates, data: Dataset | None, top: int) -> str:
    labels_train = None if data is None else data.y_train
    labels_test = None if data is None else data.y_test
    return pipeline.format_report(estimates, labels_train, labels_test, top=top)


def _write_tables(estimates: pipeline.Estimates, data: Dataset | None, outputs: Outputs
                  ) -> list[str]:
    if not outputs.csv_dir:
        return []
    return export.write_tables(estimates, outputs.csv_dir,
                               None if data is None else data.y_train,
                               None if data is None else data.y_test)


def _compare(compare_to: str | None, estimates: pipeline.Estimates, data: Dataset | None,
             imagenet_index: str | None) -> list[compare.Comparison]:
    """The comparisons with a published file, if asked (computed before any write)."""
    if not compare_to:
        return []
    return compare.compare_to_published(estimates, compare_to, data,
                                        imagenet_index=imagenet_index)


def _comparison_text(comparisons: list[compare.Comparison]) -> str:
    return "\n".join(compare.summary_lines(comparisons))


def _plot_comparison(comparisons: list[compare.Comparison], plot_dir: str | None
                     ) -> list[str]:
    if not plot_dir:
        return []
    return [compare.plot_comparison(c, layout.output_file(
        plot_dir, "compare-" + re.sub(r"\W+", "_", c.name).strip("_"), "png"))
        for c in comparisons]


def _datamodels(job: DatamodelsJob) -> EstimateReport:
    """Ridge datamodels of the eval examples from the fit runs (SPEC §9), saved; with an
    LDS check, their LDS on disjoint evaluation runs."""
    experiment = _prepare(job.source)
    directory = experiment.directory
    subset = _choose_subset(directory, job.subset, job.lds)
    output = job.output or layout.output_file(
        directory, _default_name(f"datamodels-{subset}", job.examples), "npz")
    _check_outputs(output)
    fit = runs_lib.load_experiment(directory, subset, progress=job.source.progress)
    chosen = _eval_indices(job.examples, fit.correctness_test.shape[1])
    metric = job.config.metric
    fitted = datamodels_lib.fit_datamodels(fit.membership, fit.metric(metric, "test")[:, chosen],
                                           top_k=job.config.top_k)
    lines = [f"datamodels: {fit.num_runs} runs of {subset}, output {metric}, "
             f"{len(chosen)} eval examples, ridge lambda median "
             f"{float(np.median(fitted.lam)):.3g} ({fitted.selection})"]
    lds = _lds(job.lds, directory, fitted.weights, chosen, subset, fit.run_ids,
               job.source.progress, fit_masks=fit.membership)
    export.save_datamodels(output, fitted, chosen, fit.run_ids,
                           {"subset": subset, "metric": metric})
    written = [output]
    if lds is not None:
        lines.append(lds.text())
        written.append(lds.save(output, "datamodels"))
    return EstimateReport((*experiment.sections, "\n".join(lines)), tuple(written))


def _gradient(job: GradientJob) -> EstimateReport:
    """TracIn or influence functions on one run's checkpoints."""
    experiment, subset, run_dir, output = _one_run(job, job.method)
    directory = experiment.directory
    _check_run_has_checkpoints(run_dir, job.method)
    data = _load_data(job.data, directory, required=True)
    eval_indices = _eval_indices(job.examples, data.num_test)
    retraining = runs_lib.load_experiment(directory, subset, progress=job.source.progress)
    attribution = runs_attribution.attribute_run(
        run_dir, job.method, data, eval_indices, config=job.config,
        factors_path=job.factors_path,
        retraining=retraining if retraining.num_runs >= 2 else None,
        progress=job.source.progress)
    lds = _lds(job.lds, directory, attribution.scores, eval_indices, subset,
               np.asarray([job.run_id]), job.source.progress,
               fit_masks=retraining.membership[retraining.run_ids == job.run_id])
    runs_attribution.save_attribution(attribution, output)
    written = [output] if lds is None else [output, lds.save(output, job.method)]
    table = runs_attribution.format_attribution(attribution, data.y_train, top=job.top)
    return EstimateReport((*experiment.sections, table, lds.text() if lds else ""),
                          tuple(written))


def _one_run(job: GradientJob | MetagradientJob, method: str
             ) -> tuple[_Experiment, str, str, str]:
    """The experiment, folder, run directory and (checked) output of a one-run method."""
    experiment = _prepare(job.source)
    subset = _choose_subset(experiment.directory, job.subset, job.lds)
    run_dir = runs_lib.run_dir(experiment.directory, subset, job.run_id)
    output = job.output or layout.output_file(experiment.directory, _default_name(
        f"{method}-{subset}-run{job.run_id}", job.examples), "npz")
    _check_outputs(output)
    return experiment, subset, run_dir, output


def _check_run_has_checkpoints(run_dir: str, method: str) -> None:
    """Refuses, before any work, a run without the checkpoints `method` reads."""
    if not runs_lib.run_complete(run_dir):
        raise ParameterError("run_id", f"{run_dir} is not a complete run; expected a "
                             "trained run")
    if not tf.io.gfile.glob(layout.RunDir(run_dir).checkpoint_indexes):
        raise ValueError(f"{run_dir}: no checkpoints; train this run with python train.py "
                         "--save_checkpoints (add --retrain_complete if it is already "
                         "complete)")
    if method == "tracin" and not records.read_run_record(run_dir).checkpoints:
        raise ValueError(f"{run_dir}: TracIn needs checkpoints saved during training; train "
                         "this run with python train.py --save_checkpoints "
                         "--checkpoint_every=N (add --retrain_complete if it is already "
                         "complete)")


def _trak(job: TRAKJob) -> EstimateReport:
    """TRAK of the final models of the job's runs, lambda_reg chosen on the other runs
    of the folder when a grid is given; scores saved."""
    experiment = _prepare(job.source)
    directory, config, ids = experiment.directory, job.config, list(job.run_ids)
    subset = _choose_subset(directory, job.subset, job.lds)
    output = job.output or layout.output_file(directory, _default_name(
        f"trak-{subset}-runs{designs.format_run_ids(ids)}", job.examples), "npz")
    _check_outputs(output)
    run_dirs = [runs_lib.run_dir(directory, subset, r) for r in ids]
    for run_dir in run_dirs:
        _check_run_has_checkpoints(run_dir, "trak")
    data = _load_data(job.data, directory, required=True)
    chosen = _eval_indices(job.examples, data.num_test)
    selection = None
    if len(config.lambda_grid) > 1:
        others = runs_lib.load_experiment(directory, subset, progress=job.source.progress)
        keep = ~np.isin(others.run_ids, ids)
        selection = dataclasses.replace(
            others, run_ids=others.run_ids[keep], membership=others.membership[keep],
            correctness_train=others.correctness_train[keep],
            correctness_test=others.correctness_test[keep],
            margin_train=None, margin_test=None, logodds_train=None,
            logodds_test=None if others.logodds_test is None else others.logodds_test[keep])
    result = runs_attribution.trak_of_runs(run_dirs, data, chosen, config, selection,
                                           progress=job.source.progress)
    lines = [f"TRAK of {result.num_models} models ({subset} runs "
             f"{designs.format_run_ids(ids)}), {len(chosen)} eval examples: lambda_reg "
             f"{result.lambda_reg:g}, {result.seconds:.1f} s"]
    lds = _lds(job.lds, directory, result.scores, chosen, subset, np.asarray(ids),
               job.source.progress)
    export.save_trak_scores(output, result.scores, chosen, np.asarray(ids), result.lambda_reg,
                            {"subset": subset, "projection": config.projection,
                             "projection_dim": config.dim, "seed": config.seed,
                             "lambda_grid": list(config.lambda_grid),
                             "reweighting": config.reweighting})
    written = [output]
    if lds is not None:
        lines.append(lds.text())
        written.append(lds.save(output, "trak"))
    return EstimateReport((*experiment.sections, "\n".join(lines)), tuple(written))


def _metagradient(job: MetagradientJob) -> EstimateReport:
    """Exact metagradients of one run trained by ``train.py`` (replayed bit for bit),
    saved; with an LDS check, their LDS like the other gradient methods (the rows of
    examples the run never had in a batch, NaN in the file, count 0 there)."""
    experiment, subset, run_dir, output = _one_run(job, "metagradient")
    directory = experiment.directory
    if not runs_lib.run_complete(run_dir):
        raise ParameterError("run_id", f"{run_dir} is not a complete run; expected a run "
                             "trained by train.py", job.run_id)
    data = _load_data(job.data, directory, required=True)
    eval_indices = _eval_indices(job.examples, data.num_test)
    scores = metagradient.score_metagradient(run_dir, data, eval_indices, config=job.config)
    without_slot = int(scores.without_slot.sum())
    lines = [f"metagradient of {subset} run {job.run_id}: scores {scores.scores.shape[0]} "
             f"training x {scores.scores.shape[1]} eval examples, {without_slot} training "
             f"examples without a batch slot in this run (NaN rows), {scores.seconds:.1f} s"]
    lds = None
    if job.lds is not None:
        fit = runs_lib.load_experiment(directory, subset, progress=job.source.progress)
        lds = _lds(job.lds, directory, np.nan_to_num(scores.scores, nan=0.0), eval_indices,
                   subset, np.asarray([job.run_id]), job.source.progress,
                   fit_masks=fit.membership[fit.run_ids == job.run_id])
    metagradient.save_metagradient_scores(output, scores)
    written = [output]
    if lds is not None:
        lines.append(lds.text() + f"; the {without_slot} NaN rows scored 0")
        written.append(lds.save(output, "metagradient"))
    return EstimateReport((*experiment.sections, "\n".join(lines)), tuple(written))
