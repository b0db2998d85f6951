"""Estimates of one experiment directory: choose runs, estimate, save, tabulate, plot.

The computation behind ``estimate.py``'s estimates. `estimate_experiment` reads the runs
once and computes the estimators an `EstimateConfig` chooses (`heldout.estimate.config`);
`format_report` prints them; `plot_estimates` draws them. Files of estimates (save,
load, CSV tables) are in `heldout.estimate.export`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.estimate import estimators as estimators_lib
from heldout.estimate import plots, stats
from heldout.estimate.config import DEFAULT_TOP, EstimateConfig
from heldout.store import layout as layout_lib
from heldout.store import runs as runs_lib

# Memorization (and influence) on correctness above this counts as "high" in summary
# lines (Feldman & Zhang's cut-off). It is a difference of probabilities, so summaries
# use it only on correctness; margins and C-scores are on other scales.
HIGH_SCORE = 0.25
# C-scores (expected held-out accuracy) below this: held out, wrong more often than right.
LOW_CSCORE = 0.5


@dataclasses.dataclass(frozen=True)
class InfluenceResult:
    """Influence of training examples on the chosen test examples."""

    eval_indices: np.ndarray  # [E] test indices, the columns of the arrays below
    top: estimators_lib.TopInfluences  # per test example, best training examples first
    top_stats: estimators_lib.InfluencePairs  # statistics of every top-k entry, [E * k]
    pairs: estimators_lib.InfluencePairs  # highest-influence pairs overall (test indices)
    matrix: np.ndarray | None  # [num_train, E] when dense output was asked for


@dataclasses.dataclass(frozen=True)
class Estimates:
    """The results of `estimate_experiment` (None for estimators not run)."""

    experiment_dir: str
    subset: str | None  # subset folder of memorization/self-influence/influence
    run_ids: np.ndarray  # runs of that subset
    skipped_runs: tuple[int, ...]  # incomplete run folders that were not used
    test_accuracy: np.ndarray  # [runs]
    memorization: estimators_lib.SelfInfluence | None
    self_influence: estimators_lib.SelfInfluence | None
    influence: InfluenceResult | None
    cscore: estimators_lib.CScore | None
    cscore_runs: dict[str, int]  # runs used per subset ratio folder for C-scores
    significant: dict[str, np.ndarray]  # estimator -> bool [num_train]
    seconds: dict[str, float]  # estimator (and "reading") -> wall time
    config: EstimateConfig


def estimate_experiment(experiment_dir: str, config: EstimateConfig | None = None,
                        progress: bool = True, exclude_subsets: Sequence[str | None] = ()
                        ) -> Estimates:
    """Reads the runs of an experiment and computes the estimators of `config`.

    `exclude_subsets` are folders the default subset is not chosen from (the LDS
    evaluation folder; `choose_subset`).

    Raises:
        ValueError: the directory has no usable runs, a subset or metric is not there,
            or a setting is invalid (message names the flag).
    """
    config = config or EstimateConfig()
    seconds: dict[str, float] = {}
    needs_single = [e for e in config.estimators if e != "cscore"]
    subset, experiment = None, None
    if needs_single:
        start = time.time()
        subset = choose_subset(experiment_dir, config.subsets, exclude_subsets)
        experiment = runs_lib.load_experiment(experiment_dir, subset, progress=progress)
        seconds["reading"] = time.time() - start

    results: dict = {"memorization": None, "self_influence": None, "influence": None,
                     "cscore": None}
    significant: dict[str, np.ndarray] = {}
    for name in ("memorization", "self_influence"):
        if name in config.estimators:
            start = time.time()
            metric = "correctness" if name == "memorization" else config.metric
            estimate = estimators_lib.self_influence(
                experiment.membership, experiment.metric(metric, "train"),
                config.min_runs, config.test, config.confidence)
            results[name] = estimate
            significant[name] = _significant(estimate.p_value, config)
            seconds[name] = time.time() - start
    if "influence" in config.estimators:
        start = time.time()
        results["influence"] = _influence(experiment, config)
        seconds["influence"] = time.time() - start
    cscore_runs: dict[str, int] = {}
    if "cscore" in config.estimators:
        start = time.time()
        results["cscore"], cscore_runs = _cscore(experiment_dir, config, progress)
        seconds["cscore"] = time.time() - start

    return Estimates(
        experiment_dir=experiment_dir, subset=subset,
        run_ids=experiment.run_ids if experiment else np.zeros(0, np.int64),
        skipped_runs=experiment.skipped if experiment else (),
        test_accuracy=experiment.correctness_test.mean(axis=1) if experiment
        else np.zeros(0), **results, cscore_runs=cscore_runs, significant=significant,
        seconds=seconds, config=config)


def choose_subset(experiment_dir: str, subsets: Sequence[str] | None,
                  exclude: Sequence[str | None] = ()) -> str:
    """The one subset folder to estimate from: the one chosen, or the only one present.

    Args:
        experiment_dir: the experiment directory.
        subsets: the folder chosen (one name), or None for the default.
        exclude: folders that are not candidates for the default, such as the LDS
            evaluation folder (``lds_subset``): with runs in ``0.7`` and an LDS folder
            ``0.5``, the default is ``0.7``. None entries are ignored. A folder chosen
            explicitly is returned even if excluded (callers refuse that overlap with
            their own message).

    Raises:
        ValueError: the directory holds no runs, the chosen folder is not there, or
            there are several candidates and none (or more than one) was chosen.
    """
    present = _present_subsets(experiment_dir)
    if subsets is None:
        excluded = {e for e in exclude if e is not None}
        candidates = [s for s in present if s not in excluded]
        if len(candidates) > 1:
            also = f"; {', '.join(sorted(excluded))} excluded (LDS runs)" if excluded else ""
            raise ParameterError("subsets", f"{experiment_dir} holds several subset folders "
                                 f"({', '.join(candidates)}{also}); choose one")
        if not candidates:
            raise ParameterError("subsets", f"{experiment_dir} holds only "
                                 f"{', '.join(present)}, set aside as evaluation runs; "
                                 "train the runs to estimate from into another folder")
        return candidates[0]
    if len(subsets) != 1:
        raise ParameterError("subsets", "memorization and influence use one subset folder; "
                             "several are for the C-score only", ",".join(subsets))
    if subsets[0] not in present:
        raise ParameterError("subsets", f"not in {experiment_dir} (found "
                             f"{', '.join(present)})", subsets[0])
    return subsets[0]


def _present_subsets(experiment_dir: str) -> list[str]:
    present = runs_lib.list_subsets(experiment_dir)
    if not present:
        raise ParameterError("experiment_dir", "no runs found (expected "
                             f"<subset>/<run_id>/{runs_lib.AUX_FILENAME})", experiment_dir)
    return present


def _significant(p_values: np.ndarray, config: EstimateConfig) -> np.ndarray:
    if config.fdr:
        return stats.benjamini_hochberg(p_values, config.alpha, config.fdr_untestable)[0]
    with np.errstate(invalid="ignore"):
        return p_values < config.alpha


def _eval_indices(num_test: int, config: EstimateConfig) -> np.ndarray:
    indices = np.arange(num_test) if config.eval_indices is None \
        else np.asarray(config.eval_indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= num_test):
        raise ParameterError("eval_indices", f"expected test indices in [0, {num_test})")
    if config.eval_shard is not None:
        index, count = config.eval_shard
        indices = np.array_split(indices, count)[index]
    if not len(indices):
        raise ParameterError("eval_shard", "no test examples selected (of eval_indices)")
    return indices


def _influence(experiment: runs_lib.Experiment, config: EstimateConfig) -> InfluenceResult:
    values = experiment.metric(config.metric, "test")
    eval_indices = _eval_indices(values.shape[1], config)
    values = values[:, eval_indices]
    top = estimators_lib.most_influential(estimators_lib.top_influences(
        experiment.membership, values, config.top_k + 1, config.threshold,
        min_runs=config.min_runs, keep_dense=config.influence_output == "dense"),
        config.top_k)
    num_eval, k = top.train.shape
    columns = np.repeat(np.arange(num_eval), k)
    defined = top.train.ravel() >= 0
    top_stats = estimators_lib.pair_statistics(
        experiment.membership, values, np.maximum(top.train.ravel(), 0), columns,
        config.min_runs, config.test, config.confidence)
    # Entries left out of the table (-1) have no statistics: -1, no runs, NaN.
    top_stats = dataclasses.replace(
        top_stats, train=np.where(defined, top_stats.train, -1),
        num_in=np.where(defined, top_stats.num_in, 0),
        num_out=np.where(defined, top_stats.num_out, 0),
        **{name: np.where(defined, getattr(top_stats, name), np.nan)
           for name in ("score", "stderr", "p_value", "ci_low", "ci_high")})
    return InfluenceResult(eval_indices=eval_indices, top=top, top_stats=top_stats,
                           pairs=highest_pairs(top.score, top_stats, eval_indices,
                                               config.num_pairs),
                           matrix=top.dense)


def highest_pairs(top_score: np.ndarray, top_stats: estimators_lib.InfluencePairs,
                  eval_indices: np.ndarray, num_pairs: int) -> estimators_lib.InfluencePairs:
    """The `num_pairs` highest entries of the top-k table overall, with test indices.

    Args:
        top_score: ``[E, k]`` top-k influence scores (NaN where undefined).
        top_stats: statistics of every entry of the table, flattened ``[E * k]``, with
            ``eval`` the column of the entry.
        eval_indices: ``[E]`` test index of each column.
        num_pairs: pairs to keep.
    """
    flat_scores = np.nan_to_num(top_score.ravel(), nan=-np.inf)
    best = np.argsort(-flat_scores, kind="stable")[:num_pairs]
    best = best[np.isfinite(flat_scores[best])]
    pairs = top_stats.take(best)
    return dataclasses.replace(pairs, eval=eval_indices[pairs.eval])


def _cscore(experiment_dir: str, config: EstimateConfig, progress: bool
            ) -> tuple[estimators_lib.CScore, dict[str, int]]:
    present = _present_subsets(experiment_dir)
    chosen = list(config.subsets) if config.subsets is not None else present
    ratios, folders = [], []
    for name in chosen:
        if name not in present:
            raise ParameterError("subsets", f"not in {experiment_dir} (found "
                                 f"{', '.join(present)})", name)
        try:
            ratio = float(name)
        except ValueError:
            if config.subsets is not None:
                raise ParameterError("subsets", "C-scores need subset-ratio folders such as "
                                     "0.7", name) from None
            continue
        ratios.append(ratio)
        folders.append(name)
    if not folders:
        raise ParameterError("estimators", f"{experiment_dir} has no subset-ratio folders "
                             f"(found {', '.join(present)})", "cscore")
    experiments = [runs_lib.load_experiment(experiment_dir, f, progress=progress)
                   for f in folders]
    result = estimators_lib.cscore(ratios, [e.membership for e in experiments],
                               [e.correctness_train for e in experiments],
                               [e.correctness_test for e in experiments], config.min_runs)
    return result, {f: e.num_runs for f, e in zip(folders, experiments, strict=True)}


def summary_lines(estimates: Estimates) -> list[str]:
    """One line per estimator: runs used, mean test accuracy, what the scores show, time.

    A count above `HIGH_SCORE` is given only for scores on correctness (memorization,
    self-influence and influence with ``metric="correctness"``), where the cut-off is a
    difference of probabilities; C-scores get their mean and the count below
    `LOW_CSCORE`. The significance count says which test and which family it used.
    """
    config = estimates.config
    runs = (f"{len(estimates.run_ids)} runs of {estimates.subset}"
            + (f" ({len(estimates.skipped_runs)} incomplete skipped)"
               if estimates.skipped_runs else ""))
    accuracy = (f"mean test accuracy {estimates.test_accuracy.mean():.4f}"
                if len(estimates.test_accuracy) else "")
    lines = []
    for name in ("memorization", "self_influence"):
        estimate = getattr(estimates, name)
        if estimate is not None:
            finite = np.isfinite(estimate.score)
            on_correctness = name == "memorization" or config.metric == "correctness"
            scores = (f"{int((estimate.score[finite] > HIGH_SCORE).sum())} of "
                      f"{int(finite.sum())} examples with score > {HIGH_SCORE}"
                      if on_correctness else
                      f"mean {config.metric} self-influence "
                      f"{float(np.mean(estimate.score[finite])) if finite.any() else np.nan:+.3f}"
                      f" over {int(finite.sum())} examples")
            significance = significance_text(estimates.significant[name], estimate.p_value,
                                             config)
            lines.append(f"{name}: {runs}, {accuracy}, {scores}, {significance}, "
                         f"{estimates.seconds[name]:.1f} s")
    if estimates.influence is not None:
        top = estimates.influence.top
        num_eval, k = top.train.shape
        high = ""
        if config.metric == "correctness":
            high = (f", {int(np.sum(top.score[:, 0] > HIGH_SCORE))} with a top pair > "
                    f"{HIGH_SCORE}")
            if estimates.influence.matrix is not None:
                high += f", {int(np.sum(estimates.influence.matrix > HIGH_SCORE))} pairs > " \
                        f"{HIGH_SCORE}"
        short = int(np.sum(top.train[:, -1] < 0))
        listed = (f", {short} of them list fewer than {k} most influential (only positive "
                  "influence above every training example left out is listed; zeros and "
                  "ties are not)" if short else "")
        lines.append(f"influence: {runs}, {accuracy}, {num_eval} test examples{high}{listed}"
                     f", {estimates.seconds['influence']:.1f} s")
    if estimates.cscore is not None:
        cscore = estimates.cscore
        folders = ", ".join(f"{n} runs of {s}" for s, n in estimates.cscore_runs.items())
        finite = np.isfinite(cscore.train)
        mean = float(np.mean(cscore.train[finite])) if finite.any() else np.nan
        lines.append(
            f"cscore: {folders}, mean test accuracy "
            f"{cscore.test_by_ratio.mean():.4f}, mean C-score {mean:.3f}, "
            f"{int((cscore.train[finite] < LOW_CSCORE).sum())} of {int(finite.sum())} "
            f"examples below {LOW_CSCORE} (held out, wrong more often than right), "
            f"{estimates.seconds['cscore']:.1f} s")
    return lines


def significance_text(significant: np.ndarray, p_values: np.ndarray,
                      config: EstimateConfig) -> str:
    """How many are significant, by which rule, and what became of untestable examples
    (p = NaN: fewer than ``min_runs`` runs, or no spread, e.g. right in every run)."""
    untestable = int(np.isnan(p_values).sum())
    testable = len(p_values) - untestable
    count = int(significant.sum())
    if not config.fdr:
        return (f"{count} significant (p < {config.alpha:g}, {config.test} test; "
                f"{untestable} untestable, p = NaN)")
    family = (f"{testable} testable examples; {untestable} untestable (p = NaN) left out"
              if config.fdr_untestable == "exclude" else
              f"all {len(p_values)} examples, {untestable} untestable counted as p = 1")
    return (f"{count} significant (Benjamini-Hochberg FDR {config.alpha:g} over {family})")


def format_report(estimates: Estimates, labels_train: np.ndarray | None = None,
                  labels_test: np.ndarray | None = None, top: int = DEFAULT_TOP) -> str:
    """Readable tables of the most notable examples of each estimator, then the summary."""
    lines: list[str] = []
    for name, title in (("memorization", "memorized training examples (memorization = "
                         "P[correct | in] - P[correct | out])"),
                        ("self_influence", f"self-influenced training examples "
                         f"(metric: {estimates.config.metric})")):
        estimate = getattr(estimates, name)
        if estimate is None:
            continue
        lines += [f"Top {top} {title}:",
                  f"{'index':>7} {'label':>5} {'score':>7} {'stderr':>7} {'95% CI':>16} "
                  f"{'p':>9} {'mean_in':>8} {'mean_out':>8} {'in':>5} {'out':>5}"
                  .replace("95%", f"{estimates.config.confidence:.0%}")]
        order = np.argsort(-np.nan_to_num(estimate.score, nan=-np.inf), kind="stable")
        for i in order[:top]:
            lines.append(
                f"{i:>7} {_label(labels_train, i):>5} {estimate.score[i]:>7.3f} "
                f"{estimate.stderr[i]:>7.3f} "
                f"{f'[{estimate.ci_low[i]:.2f}, {estimate.ci_high[i]:.2f}]':>16} "
                f"{estimate.p_value[i]:>9.2e} {estimate.mean_in[i]:>8.3f} "
                f"{estimate.mean_out[i]:>8.3f} {estimate.num_in[i]:>5} {estimate.num_out[i]:>5}")
        lines.append("")
    if estimates.influence is not None:
        pairs = estimates.influence.pairs
        lines += [f"Top {min(top, len(pairs))} train -> test influence pairs "
                  f"(metric: {estimates.config.metric}):",
                  f"{'train':>7} {'label':>5} {'test':>6} {'label':>5} {'influence':>9} "
                  f"{'stderr':>7} {'p':>9} {'in':>5} {'out':>5}"]
        for p in range(min(top, len(pairs))):
            lines.append(
                f"{pairs.train[p]:>7} {_label(labels_train, pairs.train[p]):>5} "
                f"{pairs.eval[p]:>6} {_label(labels_test, pairs.eval[p]):>5} "
                f"{pairs.score[p]:>9.3f} {pairs.stderr[p]:>7.3f} {pairs.p_value[p]:>9.2e} "
                f"{pairs.num_in[p]:>5} {pairs.num_out[p]:>5}")
        lines.append("")
    if estimates.cscore is not None:
        cscore = estimates.cscore
        ratio_header = " ".join(f"{f'@{r:g}':>6}" for r in cscore.ratios)
        lines += [f"{top} hardest training examples (lowest C-score):",
                  f"{'index':>7} {'label':>5} {'cscore':>7} {ratio_header}"]
        for i in np.argsort(np.nan_to_num(cscore.train, nan=np.inf), kind="stable")[:top]:
            by_ratio = " ".join(f"{v:>6.3f}" for v in cscore.train_by_ratio[:, i])
            lines.append(f"{i:>7} {_label(labels_train, i):>5} {cscore.train[i]:>7.3f} "
                         f"{by_ratio}")
        lines.append("")
    return "\n".join(lines + summary_lines(estimates))


def plot_estimates(estimates: Estimates, plot_dir: str, data: Dataset | None = None,
                   pairs_per_test: int = 4) -> list[str]:
    """Writes the PNG figures of `estimates` into `plot_dir`; returns their paths.

    Histograms need only the scores; image grids need the data set's images.
    """
    paths = []
    images = data is not None and plots.is_image_data(data.x_train)

    def figure(name: str) -> str:
        return layout_lib.output_file(plot_dir, name, "png")

    if estimates.memorization is not None:
        paths.append(plots.plot_memorization_histogram(
            estimates.memorization.score, figure("memorization_histogram"),
            title=f"Memorization, {estimates.subset} subsets, {len(estimates.run_ids)} runs"))
        if images:
            paths.append(plots.plot_top_memorized(
                data.x_train, data.y_train, estimates.memorization.score,
                figure("top_memorized")))
    if estimates.influence is not None and images:
        influence = estimates.influence
        # Test examples in the order of their best pair, each with its own top-k.
        columns = np.argsort(-np.nan_to_num(influence.top.score[:, 0], nan=-np.inf),
                             kind="stable")[:6]
        k = min(pairs_per_test, influence.top.train.shape[1])
        train = influence.top.train[columns, :k]
        defined = train >= 0
        paths.append(plots.plot_influence_pairs(
            data.x_train, data.y_train, data.x_test, data.y_test, train[defined],
            np.repeat(influence.eval_indices[columns], k).reshape(train.shape)[defined],
            influence.top.score[columns, :k][defined], figure("influence_pairs"),
            per_test=k))
    if estimates.cscore is not None:
        paths.append(plots.plot_cscore_histogram(
            estimates.cscore.train, estimates.cscore.ratios, figure("cscore_histogram")))
    return paths


def _label(labels: np.ndarray | None, index: int) -> str:
    return "-" if labels is None else str(labels[index])
