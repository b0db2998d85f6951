"""Files of estimates: one `save_x` / `load_x` pair per file ``estimate.py`` writes, and CSV.

So a notebook loads exactly what a command wrote:

* `save_estimates` / `load_estimates`: the ``.npz`` of `pipeline.Estimates`.
* `save_targeted_report` / `load_targeted_report`: the targeted self-influence report.
* `save_attribution_scores` / `load_attribution_scores`: a gradient-based method's
  scores on one run (`heldout.attribution.runs_attribution` writes through these).
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
    training examples of each test example, best first, -1/NaN when undefined), and
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
    """What `save_attribution_scores` wrote: its arrays (``scores`` None when absent)
    and ``meta`` as a dict."""
    arrays = files.read_npz(path)
    for key in ("self_influence", "in_subset", "eval_indices"):
        if key not in arrays:
            raise files.StoredFileError(f"{path}: not an attribution file (no {key} entry)")
    loaded: dict[str, Any] = {key: arrays[key] for key in
                              ("self_influence", "in_subset", "eval_indices")}
    loaded["scores"] = arrays.get("scores")
    loaded["meta"] = json.loads(str(arrays[META_KEY])) if META_KEY in arrays else {}
    return loaded


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
