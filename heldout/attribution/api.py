"""The front door of ``estimate.py``: every estimate, gradient-based ones included.

Retraining estimates, targeted reports and ``--verify`` are
`heldout.estimate.api.run_estimate`; this module adds the gradient methods, which live
in this higher layer: TracIn and influence functions on one run's checkpoints, and TRAK
on the final models of an ensemble of runs.
Each method's settings come as a mapping of its config's parameter names
(`TracInConfig`, `InfluenceConfig`): a setting the chosen method does not have is
refused by name, never ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from heldout.attribution import influence_functions, runs_attribution, tracin, trak
from heldout.estimate import api as estimate_api
from heldout.estimate import pipeline
from heldout.store import designs, files, layout
from heldout.store import runs as runs_lib
from heldout.store.runs import read_run_info

EstimateRequest = estimate_api.EstimateRequest
EstimateReport = estimate_api.EstimateReport


def run_estimate(request: EstimateRequest) -> EstimateReport:
    """Runs what `request` asks for: a gradient method on one run, or anything else
    `heldout.estimate.api.run_estimate` does.

    Raises:
        ValueError: an invalid request, a setting the method does not have, an
            unwritable output, or a run lacking the checkpoints the method needs.
    """
    method = request.estimators[0] if len(request.estimators) == 1 else None
    if method == "trak":
        return _trak(request)
    if method not in runs_attribution.METHODS:
        if request.attribution:
            raise ValueError(f"{next(iter(request.attribution))}: a setting of the gradient "
                             f"methods ({', '.join(runs_attribution.METHODS)}), not of "
                             f"estimators={','.join(request.estimators)}")
        return estimate_api.run_estimate(request)
    config = method_config(method, request.attribution)
    prepared = estimate_api.prepare(request)
    experiment_dir = prepared.experiment_dir
    if request.verify or request.targets or request.plan:
        raise ValueError(f"estimators={method}: scores one run; verify, targets and plan "
                         "are for the retraining estimates")
    subset = pipeline.choose_subset(experiment_dir, request.subsets)
    run_dir = runs_lib.run_dir(experiment_dir, subset, request.run_id)
    output = request.output or layout.ExperimentDir(experiment_dir).attribution(
        method, subset, request.run_id)
    estimate_api.check_outputs(request, output)
    _check_run_has_checkpoints(run_dir, method)
    data = estimate_api.load_data(request, experiment_dir, required=True)
    eval_indices = estimate_api.eval_indices(request, data.num_test)
    retraining = runs_lib.load_experiment(experiment_dir, subset, progress=request.progress)
    attribution = runs_attribution.attribute_run(
        run_dir, method, data, eval_indices, config=config,
        factors_path=request.factors_path,
        retraining=retraining if retraining.num_runs >= 2 else None)
    runs_attribution.save_attribution(attribution, output)
    table = runs_attribution.format_attribution(attribution, data.y_train, top=request.top)
    lds_text = ""
    if request.lds_subset:
        lds_text = estimate_api.lds_section(request, experiment_dir, attribution.scores,
                                            eval_indices, subset, np.asarray([request.run_id]))
    return EstimateReport((*prepared.sections, table, lds_text), (output,))


def method_config(method: str, settings: Mapping[str, object]
                  ) -> tracin.TracInConfig | influence_functions.InfluenceConfig | trak.TRAKConfig:
    """The config of a gradient method from settings named by its parameters.

    TRAK's projection seed is its config's ``seed``; it is given as ``projection_seed``,
    as for TracIn.

    Raises:
        ValueError: a setting the method's config does not have, or an invalid value.
    """
    if method == "trak":
        settings = {("seed" if k == "projection_seed" else k): v for k, v in settings.items()}
        kind, fixed = trak.TRAKConfig, {}
    elif method == "tracin":
        kind, fixed = tracin.TracInConfig, {}
    else:
        kind, fixed = influence_functions.InfluenceConfig, {"strategy": method[len("if_"):]}
    known = {f.name for f in dataclasses.fields(kind)} - set(fixed)
    for name in settings:
        if name not in known:
            raise ValueError(f"{name}: not a setting of estimators={method}")
    return kind(**fixed, **settings)


def _check_run_has_checkpoints(run_dir: str, method: str) -> None:
    """Refuses, before any work, a run without the checkpoints `method` reads."""
    if not runs_lib.run_complete(run_dir):
        raise ValueError(f"{run_dir}: not a complete run; expected run_id of a trained run")
    if not tf.io.gfile.glob(layout.RunDir(run_dir).checkpoint_indexes):
        raise ValueError(f"{run_dir}: no checkpoints; train this run with save_checkpoints "
                         "(add retrain_complete if it is already complete)")
    info = read_run_info(run_dir)
    if method == "tracin" and not info.get("checkpoints"):
        raise ValueError(f"{run_dir}: TracIn needs checkpoints saved during training; train "
                         "this run with save_checkpoints and checkpoint_every (add "
                         "retrain_complete if it is already complete)")


def _trak(request: EstimateRequest) -> EstimateReport:
    """TRAK of the final models of runs `trak_runs` (default: `run_id`), lambda_reg
    chosen on the other runs of the folder when a grid is given; scores saved."""
    config = method_config("trak", request.attribution)
    prepared = estimate_api.prepare(request)
    experiment_dir = prepared.experiment_dir
    subset = pipeline.choose_subset(experiment_dir, request.subsets)
    ids = designs.parse_run_ids(request.trak_runs, "trak_runs") if request.trak_runs \
        else [request.run_id]
    output = request.output or layout.output_file(
        experiment_dir, f"trak-{subset}-runs{designs.format_run_ids(ids)}", "npz")
    estimate_api.check_outputs(request, output)
    run_dirs = [runs_lib.run_dir(experiment_dir, subset, r) for r in ids]
    for run_dir in run_dirs:
        _check_run_has_checkpoints(run_dir, "trak")
    data = estimate_api.load_data(request, experiment_dir, required=True)
    chosen = estimate_api.eval_indices(request, data.num_test)
    selection = None
    if len(config.lambda_grid) > 1:
        others = runs_lib.load_experiment(experiment_dir, subset, progress=request.progress)
        keep = ~np.isin(others.run_ids, ids)
        selection = dataclasses.replace(
            others, run_ids=others.run_ids[keep], membership=others.membership[keep],
            correctness_train=others.correctness_train[keep],
            correctness_test=others.correctness_test[keep],
            margin_train=None, margin_test=None, logodds_train=None,
            logodds_test=None if others.logodds_test is None else others.logodds_test[keep])
    result = runs_attribution.trak_of_runs(run_dirs, data, chosen, config, selection)
    files.write_npz(output, {"scores": result.scores, "eval_indices": chosen,
                             "run_ids": np.asarray(ids), "lambda_reg": result.lambda_reg})
    lines = [f"TRAK of {result.num_models} models ({subset} runs "
             f"{designs.format_run_ids(ids)}), {len(chosen)} eval examples: lambda_reg "
             f"{result.lambda_reg:g}, {result.seconds:.1f} s"]
    if request.lds_subset:
        lines.append(estimate_api.lds_section(request, experiment_dir, result.scores, chosen,
                                              subset, np.asarray(ids)))
    return EstimateReport((*prepared.sections, "\n".join(lines)), (output,))
