"""Files of estimates: one `save_x` / `load_x` pair per file ``estimate.py`` writes, and CSV.

So a notebook loads exactly what a command wrote:

* `save_estimates` / `load_estimates`: the ``.npz`` of `pipeline.Estimates`.
* `save_targeted_report` / `load_targeted_report`: the targeted self-influence report.
* `save_attribution_scores` / `load_attribution_scores`: a gradient-based method's
  scores on one run (`heldout.attribution.runs_attribution` writes through these);
  `load_attribution_scores` also reads TRAK and datamodels files, so one call gives the
  ``[num_train, E]`` score matrix of any method.
* `save_trak_scores` / `load_trak_scores`: TRAK scores of an ensemble of runs; keys
  ``scores`` ``[num_train, E]``, ``eval_indices`` ``[E]``, ``run_ids`` ``[M]`` (the
  models), ``lambda_reg`` (scalar), ``meta`` (``kind: "trak"``, settings).
* `save_datamodels` / `load_datamodels`: ridge datamodels (`datamodels.Datamodels`);
  keys ``eval_indices`` ``[E]``, ``run_ids`` ``[R]`` (fit runs), ``intercept`` and
  ``lam`` ``[E]``, ``lambdas`` ``[L]``, ``cv_error`` ``[L, E]``, and either ``weights``
  ``[num_train, E]`` or ``top_train``, ``top_weights`` ``[E, k]``; ``meta``
  (``kind: "datamodels"``, ``selection``, output metric, subset).
* `save_lds` / `load_lds`: an LDS result (`lds.LDSResult`); keys ``per_example``
  ``[E]`` (Spearman of each eval example, NaN where undefined), ``eval_indices``
  ``[E]``, ``run_ids`` ``[k]`` (the evaluation runs), ``mean``, ``ci_low``,
  ``ci_high`` (bootstrap interval of the mean), ``num_runs`` (scalars); ``meta``
  (``kind: "lds"``, the method and its scores file, LDS folder, output, confidence,
  bootstrap settings).
* `write_tables`, `write_targeted_csv`: per-example CSV tables.

Every file is written atomically through `heldout.store.files`. Settings and small
facts travel as a JSON string under the key ``meta`` of the ``.npz``.

Keys of the estimates ``.npz`` (each group present when its estimator ran):
  * ``run_ids`` ``[runs]`` and ``test_accuracy`` ``[runs]`` of the subset estimated from.
  * memorization (``mem_``) and self-influence on ``metric`` (``self_``), each
    ``[num_train]``: ``score, stderr, ci_low, ci_high, p_value, significant, num_in,
    num_out, mean_in, mean_out``.
  * influence (``infl_``): ``eval_indices`` ``[E]`` (test examples estimated, the
    columns below); ``matrix`` ``[num_train, E]`` (dense output); ``topk_train``,
    ``topk_score``, ``topk_stderr``, ``topk_p_value`` ``[E, k]`` (most influential
    training examples of each test example, best first; -1/NaN where fewer are listed:
    only positive influence strictly above every training example left out is listed,
    never zeros or ties (`estimators.most_influential`)), and
    every statistic of those entries, flattened ``[E * k]``: ``topstat_train,
    topstat_eval, topstat_score, topstat_num_in, topstat_num_out, topstat_stderr,
    topstat_p_value, topstat_ci_low, topstat_ci_high``;
    ``above_train``, ``above_test``, ``above_column``, ``above_score`` (every pair above
    ``threshold``); ``pair_train, pair_test, pair_score, pair_stderr, pair_p_value,
    pair_ci_low, pair_ci_high, pair_num_in, pair_num_out`` (the highest-influence pairs
    overall).
  * C-score (``cscore_``): ``ratios`` ``[R]``, ``train`` ``[num_train]``,
    ``train_by_ratio`` and ``num_out_by_ratio`` ``[R, num_train]``, ``test``
    ``[num_test]``, ``test_by_ratio`` ``[R, num_test]``.
  * ``meta``: JSON of the config, experiment directory, subset, skipped runs, runs per
    C-score folder and seconds, so `load_estimates` rebuilds the whole `Estimates`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from heldout.estimate import estimators as estimators_lib
from heldout.estimate.config import EstimateConfig
from heldout.estimate.datamodels import Datamodels
from heldout.estimate.lds import LDSResult
from heldout.estimate.pipeline import Estimates, InfluenceResult
from heldout.estimate.targeted import TargetedReport
from heldout.store import files
from heldout.store import layout as layout_lib
from heldout.store import targets as targets_lib

META_KEY = "meta"
_SELF_PREFIXES = (("memorization", "mem_"), ("self_influence", "self_"))


def save_estimates(estimates: Estimates, path: str) -> None:
    """Writes `estimates` to an ``.npz`` at `path` (keys in the module docstring)."""
    arrays = {"run_ids": estimates.run_ids, "test_accuracy": estimates.test_accuracy}
    for name, prefix in _SELF_PREFIXES:
        estimate = getattr(estimates, name)
        if estimate is not None:
            arrays.update(_fields(estimate, prefix))
            arrays[prefix + "significant"] = estimates.significant[name]
    influence = estimates.influence
    if influence is not None:
        arrays["infl_eval_indices"] = influence.eval_indices
        if influence.matrix is not None:
            arrays["infl_matrix"] = influence.matrix
        shape = influence.top.train.shape
        arrays["infl_topk_train"] = influence.top.train
        arrays["infl_topk_score"] = influence.top.score
        arrays["infl_topk_stderr"] = influence.top_stats.stderr.reshape(shape)
        arrays["infl_topk_p_value"] = influence.top_stats.p_value.reshape(shape)
        arrays.update(_fields(influence.top_stats, "infl_topstat_"))
        if influence.top.above_threshold is not None:
            train, column, score = influence.top.above_threshold
            arrays["infl_above_train"] = train
            arrays["infl_above_column"] = column
            arrays["infl_above_test"] = influence.eval_indices[column]
            arrays["infl_above_score"] = score
        for field in dataclasses.fields(influence.pairs):
            key = "test" if field.name == "eval" else field.name
            arrays[f"infl_pair_{key}"] = getattr(influence.pairs, field.name)
    if estimates.cscore is not None:
        arrays.update(_fields(estimates.cscore, "cscore_"))
    meta = {"experiment_dir": estimates.experiment_dir, "subset": estimates.subset,
            "skipped_runs": list(estimates.skipped_runs),
            "cscore_runs": estimates.cscore_runs, "seconds": estimates.seconds,
            "config": dataclasses.asdict(estimates.config)}
    _write_with_meta(path, arrays, meta)


def load_estimates(path: str) -> Estimates:
    """The `Estimates` written by `save_estimates` at `path`.

    Raises:
        files.StoredFileError: the file is missing, unreadable or not an estimates file.
    """
    arrays, meta = _read_with_meta(path, "an estimates file")
    config = EstimateConfig(**{key: tuple(value) if isinstance(value, list) else value
                               for key, value in meta["config"].items()})
    loaded: dict[str, Any] = {"memorization": None, "self_influence": None,
                              "influence": None, "cscore": None}
    significant = {}
    for name, prefix in _SELF_PREFIXES:
        if prefix + "score" in arrays:
            loaded[name] = _dataclass(estimators_lib.SelfInfluence, arrays, prefix)
            significant[name] = arrays[prefix + "significant"]
    if "infl_eval_indices" in arrays:
        above = None
        if "infl_above_train" in arrays:
            above = (arrays["infl_above_train"], arrays["infl_above_column"],
                     arrays["infl_above_score"])
        matrix = arrays.get("infl_matrix")
        pairs = _dataclass(estimators_lib.InfluencePairs,
                           {("infl_pair_eval" if k == "infl_pair_test" else k): v
                            for k, v in arrays.items()}, "infl_pair_")
        loaded["influence"] = InfluenceResult(
            eval_indices=arrays["infl_eval_indices"],
            top=estimators_lib.TopInfluences(train=arrays["infl_topk_train"],
                                             score=arrays["infl_topk_score"],
                                             above_threshold=above, dense=matrix),
            top_stats=_dataclass(estimators_lib.InfluencePairs, arrays, "infl_topstat_"),
            pairs=pairs, matrix=matrix)
    if "cscore_train" in arrays:
        loaded["cscore"] = _dataclass(estimators_lib.CScore, arrays, "cscore_")
    return Estimates(experiment_dir=meta["experiment_dir"], subset=meta["subset"],
                     run_ids=arrays["run_ids"], skipped_runs=tuple(meta["skipped_runs"]),
                     test_accuracy=arrays["test_accuracy"], **loaded,
                     cscore_runs=dict(meta["cscore_runs"]), significant=significant,
                     seconds=dict(meta["seconds"]), config=config)


def write_tables(estimates: Estimates, directory: str, labels_train: np.ndarray | None = None,
                 labels_test: np.ndarray | None = None) -> list[str]:
    """Per-example CSV tables in `directory`, one per estimator; returns their paths."""
    paths = []
    for name in ("memorization", "self_influence"):
        estimate = getattr(estimates, name)
        if estimate is None:
            continue
        header = ["index", "label", "score", "stderr", "ci_low", "ci_high", "p_value",
                  "significant", "num_in", "num_out", "mean_in", "mean_out"]
        rows = [[i, _label(labels_train, i), estimate.score[i], estimate.stderr[i],
                 estimate.ci_low[i], estimate.ci_high[i], estimate.p_value[i],
                 int(estimates.significant[name][i]), estimate.num_in[i], estimate.num_out[i],
                 estimate.mean_in[i], estimate.mean_out[i]]
                for i in range(len(estimate.score))]
        paths.append(files.write_csv(layout_lib.output_file(directory, name, "csv"),
                                     header, rows))
    influence = estimates.influence
    if influence is not None:
        top, top_stats = influence.top, influence.top_stats
        k = top.train.shape[1]
        header = ["test_index", "test_label", "rank", "train_index", "train_label", "score",
                  "stderr", "ci_low", "ci_high", "p_value", "num_in", "num_out"]
        rows = []
        for position in range(top.train.size):
            column, rank = divmod(position, k)
            train = top.train[column, rank]
            if train < 0:
                continue
            test = influence.eval_indices[column]
            rows.append([test, _label(labels_test, test), rank + 1, train,
                         _label(labels_train, train), top.score[column, rank],
                         top_stats.stderr[position], top_stats.ci_low[position],
                         top_stats.ci_high[position], top_stats.p_value[position],
                         top_stats.num_in[position], top_stats.num_out[position]])
        paths.append(files.write_csv(layout_lib.output_file(directory, "influence_topk", "csv"),
                                     header, rows))
    cscore = estimates.cscore
    if cscore is not None:
        ratio_names = [f"ratio_{r:g}" for r in cscore.ratios]
        for split, labels in (("train", labels_train), ("test", labels_test)):
            scores, by_ratio = getattr(cscore, split), getattr(cscore, f"{split}_by_ratio")
            rows = [[i, _label(labels, i), scores[i], *by_ratio[:, i]]
                    for i in range(len(scores))]
            paths.append(files.write_csv(
                layout_lib.output_file(directory, f"cscore_{split}", "csv"),
                ["index", "label", "cscore", *ratio_names], rows))
    return paths


def save_targeted_report(report: TargetedReport, path: str, alpha: float) -> None:
    """Writes the report to an ``.npz``: ``index``, ``group``, ``mean_with``,
    ``mean_without``, ``num_with``, ``num_without``, ``self_influence``, ``stderr``,
    ``p_value``, ``ci_low``, ``ci_high``, ``significant`` (p < alpha), all per target,
    and ``meta`` (the target set, metric, test, confidence, alpha and run counts).
    """
    estimate = report.estimate
    with np.errstate(invalid="ignore"):
        significant = estimate.p_value < alpha
    arrays = {"index": report.index, "group": np.array(report.group, dtype=str),
              "mean_with": estimate.mean_in, "mean_without": estimate.mean_out,
              "num_with": estimate.num_in, "num_without": estimate.num_out,
              "self_influence": estimate.score, "stderr": estimate.stderr,
              "p_value": estimate.p_value, "ci_low": estimate.ci_low,
              "ci_high": estimate.ci_high, "significant": significant}
    targets = report.targets
    meta = {"targets": {"name": targets.name, "provenance": targets.provenance,
                        "groups": {g: [int(i) for i in v] for g, v in targets.groups.items()}},
            "metric": report.metric, "test": report.test, "confidence": report.confidence,
            "alpha": alpha, "runs_with": report.runs_with, "runs_without": report.runs_without}
    _write_with_meta(path, arrays, meta)


def load_targeted_report(path: str) -> TargetedReport:
    """The `TargetedReport` written by `save_targeted_report` at `path`.

    Raises:
        files.StoredFileError: the file is missing, unreadable or not such a report.
    """
    arrays, meta = _read_with_meta(path, "a targeted self-influence report")
    stored = meta["targets"]
    targets = targets_lib.TargetSet(
        name=stored["name"], provenance=stored["provenance"],
        groups={g: tuple(int(i) for i in v) for g, v in stored["groups"].items()})
    estimate = estimators_lib.SelfInfluence(
        score=arrays["self_influence"], mean_in=arrays["mean_with"],
        mean_out=arrays["mean_without"], num_in=arrays["num_with"],
        num_out=arrays["num_without"], stderr=arrays["stderr"], p_value=arrays["p_value"],
        ci_low=arrays["ci_low"], ci_high=arrays["ci_high"])
    return TargetedReport(targets=targets, metric=meta["metric"], test=meta["test"],
                          confidence=float(meta["confidence"]), index=arrays["index"],
                          group=[str(g) for g in arrays["group"]], estimate=estimate,
                          runs_with=int(meta["runs_with"]),
                          runs_without=int(meta["runs_without"]))


def write_targeted_csv(report: TargetedReport, path: str, labels: np.ndarray | None = None
                       ) -> str:
    """The report as a CSV table, one row per target example; returns `path`."""
    estimate = report.estimate
    header = ["group", "index", "label", "mean_with", "mean_without", "num_with",
              "num_without", "self_influence", "stderr", "ci_low", "ci_high", "p_value"]
    rows = [[report.group[r], index, _label(labels, index), float(estimate.mean_in[r]),
             float(estimate.mean_out[r]), estimate.num_in[r], estimate.num_out[r],
             float(estimate.score[r]), float(estimate.stderr[r]), float(estimate.ci_low[r]),
             float(estimate.ci_high[r]), float(estimate.p_value[r])]
            for r, index in enumerate(report.index)]
    return files.write_csv(path, header, rows)


def save_attribution_scores(path: str, self_influence: np.ndarray, in_subset: np.ndarray,
                            eval_indices: np.ndarray, scores: np.ndarray | None = None,
                            meta: dict | None = None) -> None:
    """Writes a gradient-based method's scores on one run to an ``.npz``.

    Args:
        path: the file (`layout.ExperimentDir.attribution` by default).
        self_influence: ``[num_train]`` score of each training example on itself.
        in_subset: bool ``[num_train]``: the run trained on the example.
        eval_indices: ``[E]`` test examples scored (may be empty).
        scores: ``[num_train, E]`` train-to-test scores, if computed.
        meta: small JSON-able facts (method, run directory, settings).
    """
    arrays = {"self_influence": self_influence, "in_subset": in_subset,
              "eval_indices": eval_indices}
    if scores is not None:
        arrays["scores"] = scores
    _write_with_meta(path, arrays, meta or {})


def load_attribution_scores(path: str) -> dict[str, Any]:
    """The scores of any attribution file: a gradient method's, TRAK's or datamodels'.

    Returns:
        ``kind`` (``"gradient"``, ``"trak"`` or ``"datamodels"``), ``scores``
        ``[num_train, E]`` (None when absent: a gradient method's self-influence only, or
        datamodels kept in top-k form), ``eval_indices`` ``[E]``, ``self_influence`` and
        ``in_subset`` ``[num_train]`` (gradient methods; None otherwise), ``run_ids``
        (TRAK's models, the datamodels' fit runs; None for a gradient method) and
        ``meta`` (a dict; empty for files written without one).

    Raises:
        files.StoredFileError: the file is not one of these.
    """
    arrays = files.read_npz(path)
    meta = json.loads(str(arrays[META_KEY])) if META_KEY in arrays else {}
    if "intercept" in arrays:
        stored = _datamodel_arrays(path, arrays)
        return {"kind": "datamodels", "scores": stored["weights"],
                "eval_indices": stored["eval_indices"], "self_influence": None,
                "in_subset": None, "run_ids": stored["run_ids"], "meta": meta}
    if "lambda_reg" in arrays:
        stored = _required(path, arrays, _TRAK_KEYS, "a TRAK scores file")
        _check_columns(path, stored["scores"], stored["eval_indices"])
        return {"kind": "trak", **stored, "self_influence": None, "in_subset": None,
                "meta": meta}
    if "self_influence" not in arrays:
        raise files.StoredFileError(f"{path}: not an attribution file (no self_influence "
                                    "entry, nor TRAK's lambda_reg or datamodels' intercept)")
    loaded = _required(path, arrays, ("self_influence", "in_subset", "eval_indices"),
                       "an attribution file")
    _check_columns(path, arrays.get("scores"), loaded["eval_indices"])
    return {"kind": "gradient", **loaded, "scores": arrays.get("scores"), "run_ids": None,
            "meta": meta}


_TRAK_KEYS = ("scores", "eval_indices", "run_ids", "lambda_reg")


def save_trak_scores(path: str, scores: np.ndarray, eval_indices: np.ndarray,
                     run_ids: np.ndarray, lambda_reg: float, meta: dict | None = None
                     ) -> None:
    """Writes TRAK scores of an ensemble (keys in the module docstring).

    Args:
        path: the file (``trak-<subset>-runs<ids>.npz`` in the experiment by default).
        scores: ``[num_train, E]`` TRAK scores.
        eval_indices: ``[E]`` test examples scored, the columns of `scores`.
        run_ids: ``[M]`` runs whose final models form the ensemble.
        lambda_reg: the kernel's ridge term used.
        meta: small JSON-able facts (subset, projection settings, how lambda was chosen).
    """
    _check_columns(path, scores, eval_indices, ValueError)
    arrays = {"scores": scores, "eval_indices": np.asarray(eval_indices),
              "run_ids": np.asarray(run_ids), "lambda_reg": np.float64(lambda_reg)}
    _write_with_meta(path, arrays, {"kind": "trak", **(meta or {})})


def load_trak_scores(path: str) -> dict[str, Any]:
    """What `save_trak_scores` wrote: ``scores``, ``eval_indices``, ``run_ids``,
    ``lambda_reg`` (a float) and ``meta`` (empty for files written without one).

    Raises:
        files.StoredFileError: the file is not a TRAK scores file.
    """
    arrays = files.read_npz(path)
    loaded = _required(path, arrays, _TRAK_KEYS, "a TRAK scores file")
    _check_columns(path, loaded["scores"], loaded["eval_indices"])
    loaded["lambda_reg"] = float(loaded["lambda_reg"])
    loaded["meta"] = json.loads(str(arrays[META_KEY])) if META_KEY in arrays else {}
    return loaded


def save_datamodels(path: str, fitted: Datamodels, eval_indices: np.ndarray,
                    run_ids: np.ndarray, meta: dict | None = None) -> None:
    """Writes fitted datamodels (keys in the module docstring).

    Args:
        path: the file (``datamodels-<subset>.npz`` in the experiment by default).
        fitted: the datamodels (dense weights or top-k form).
        eval_indices: ``[E]`` test examples, one datamodel each.
        run_ids: ``[R]`` runs the datamodels were fit on.
        meta: small JSON-able facts (subset, output metric).
    """
    arrays = {"eval_indices": np.asarray(eval_indices), "run_ids": np.asarray(run_ids),
              "intercept": fitted.intercept, "lam": fitted.lam, "lambdas": fitted.lambdas,
              "cv_error": fitted.cv_error}
    if fitted.weights is not None:
        _check_columns(path, fitted.weights, eval_indices, ValueError)
        arrays["weights"] = fitted.weights
    else:
        arrays.update(top_train=fitted.top_train, top_weights=fitted.top_weights)
    _write_with_meta(path, arrays, {"kind": "datamodels", "selection": fitted.selection,
                                    **(meta or {})})


def load_datamodels(path: str) -> dict[str, Any]:
    """What `save_datamodels` wrote: ``datamodels`` (a `Datamodels`), ``eval_indices``,
    ``run_ids`` and ``meta``.

    Files written before the grid was stored (no ``lambdas``/``cv_error``) load with
    those two empty and ``selection`` ``"unknown"``.

    Raises:
        files.StoredFileError: the file is not a datamodels file.
    """
    arrays = files.read_npz(path)
    stored = _datamodel_arrays(path, arrays)
    meta = json.loads(str(arrays[META_KEY])) if META_KEY in arrays else {}
    num_eval = len(stored["eval_indices"])
    fitted = Datamodels(
        weights=stored["weights"], top_train=arrays.get("top_train"),
        top_weights=arrays.get("top_weights"), intercept=stored["intercept"],
        lam=stored["lam"], lambdas=arrays.get("lambdas", np.zeros(0)),
        cv_error=arrays.get("cv_error", np.zeros((0, num_eval))),
        selection=str(meta.get("selection", "unknown")))
    return {"datamodels": fitted, "eval_indices": stored["eval_indices"],
            "run_ids": stored["run_ids"], "meta": meta}


_LDS_SCALARS = ("mean", "ci_low", "ci_high", "num_runs")


def save_lds(path: str, result: LDSResult, eval_indices: np.ndarray, run_ids: np.ndarray,
             meta: dict | None = None) -> None:
    """Writes an LDS result with its per-example values (keys in the module docstring).

    Args:
        path: the file.
        result: the LDS of one score matrix on one set of evaluation runs.
        eval_indices: ``[E]`` test examples, the entries of ``result.per_example``.
        run_ids: ``[k]`` the evaluation runs (``len == result.num_runs``).
        meta: the settings that made it (method, scores file, LDS folder, output,
            confidence, bootstrap resamples and seed).

    Raises:
        ValueError: `eval_indices` or `run_ids` do not match `result`.
    """
    if len(eval_indices) != len(result.per_example) or len(run_ids) != result.num_runs:
        raise ValueError(f"{path}: {len(result.per_example)} per-example values and "
                         f"{result.num_runs} runs, given {len(eval_indices)} eval indices "
                         f"and {len(run_ids)} run ids")
    arrays = {"per_example": result.per_example, "eval_indices": np.asarray(eval_indices),
              "run_ids": np.asarray(run_ids), "mean": np.float64(result.mean),
              "ci_low": np.float64(result.ci_low), "ci_high": np.float64(result.ci_high),
              "num_runs": np.int64(result.num_runs)}
    _write_with_meta(path, arrays, {"kind": "lds", **(meta or {})})


def load_lds(path: str) -> dict[str, Any]:
    """What `save_lds` wrote: ``result`` (an `LDSResult`), ``eval_indices``,
    ``run_ids`` and ``meta``.

    Raises:
        files.StoredFileError: the file is not an LDS result.
    """
    arrays, meta = _read_with_meta(path, "an LDS result")
    loaded = _required(path, arrays, ("per_example", "eval_indices", "run_ids",
                                      *_LDS_SCALARS), "an LDS result")
    result = LDSResult(mean=float(loaded["mean"]), ci_low=float(loaded["ci_low"]),
                       ci_high=float(loaded["ci_high"]), per_example=loaded["per_example"],
                       num_runs=int(loaded["num_runs"]),
                       num_finite=int(np.isfinite(loaded["per_example"]).sum()),
                       num_eval=len(loaded["per_example"]))
    return {"result": result, "eval_indices": loaded["eval_indices"],
            "run_ids": loaded["run_ids"], "meta": meta}


def _required(path: str, arrays: dict[str, np.ndarray], keys: tuple[str, ...], what: str
              ) -> dict[str, np.ndarray]:
    """`keys` of `arrays`, or an error naming the file and the first missing key."""
    for key in keys:
        if key not in arrays:
            raise files.StoredFileError(f"{path}: not {what} (no {key} entry)")
    return {key: arrays[key] for key in keys}


def _datamodel_arrays(path: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The datamodel entries every version of the file has, ``weights`` None in top-k
    form."""
    stored: dict[str, Any] = _required(path, arrays, ("eval_indices", "run_ids",
                                                      "intercept", "lam"),
                                       "a datamodels file")
    stored["weights"] = arrays.get("weights")
    if stored["weights"] is None and "top_train" not in arrays:
        raise files.StoredFileError(f"{path}: not a datamodels file (neither weights nor "
                                    "top_train)")
    _check_columns(path, stored["weights"], stored["eval_indices"])
    return stored


def _check_columns(path: str, scores: np.ndarray | None, eval_indices: np.ndarray,
                   error: type[Exception] = files.StoredFileError) -> None:
    """A score matrix has one column per eval example (`error` otherwise: ValueError
    when saving, StoredFileError when loading)."""
    if scores is not None and (scores.ndim != 2 or scores.shape[1] != len(eval_indices)):
        raise error(f"{path}: scores of shape {scores.shape} do not have "
                                    f"one column per eval example ({len(eval_indices)})")


def _fields(instance: Any, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _dataclass(cls: type, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    return cls(**{f.name: arrays[prefix + f.name] for f in dataclasses.fields(cls)})


def _write_with_meta(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Writes `arrays` and `meta` (as JSON under ``meta``) to one ``.npz``, atomically."""
    files.write_npz(path, {**arrays, META_KEY: np.array(json.dumps(meta))})


def _read_with_meta(path: str, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the ``meta`` dict of a file written by `_write_with_meta`."""
    arrays = files.read_npz(path)
    if META_KEY not in arrays:
        raise files.StoredFileError(f"{path}: not {what} (no {META_KEY} entry)")
    return arrays, json.loads(str(arrays[META_KEY]))


def _label(labels: np.ndarray | None, index: int) -> str:
    return "-" if labels is None else str(labels[index])
