"""Targeted self-influence: the full-vs-drop report, its figure, and power planning.

From the runs of a ``full`` arm (trained on every example) and a ``drop-<name>`` arm
(trained without the target set), each target example's self-influence is
``mean metric over runs WITH it - mean metric over runs WITHOUT it``; positive means
including the example raises its own margin. The published finding on CIFAR-10
(negative self-influence): random examples gain, easy examples lose.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from heldout.errors import ParameterError
from heldout.estimate import estimators, plots, stats
from heldout.estimate.config import PlanConfig, TargetedConfig
from heldout.store import layout as layout_lib
from heldout.store import runs as runs_lib
from heldout.store import targets as targets_lib


@dataclasses.dataclass(frozen=True)
class TargetedReport:
    """Per target example (all fields ``[num_targets]`` but the settings)."""

    targets: targets_lib.TargetSet
    metric: str
    test: str
    confidence: float
    index: np.ndarray  # training index
    group: list[str]  # target group of each row
    estimate: estimators.SelfInfluence  # with = in-runs, without = out-runs
    runs_with: int  # runs in the full arm
    runs_without: int  # runs in the drop arm


def targeted_self_influence(experiment_dir: str, targets: str,
                            metric: str = TargetedConfig.metric,
                            test: str = TargetedConfig.test,
                            confidence: float = TargetedConfig.confidence,
                            min_runs: int = TargetedConfig.min_runs,
                            progress: bool = True) -> TargetedReport:
    """Self-influence of every target example from the ``full`` and ``drop-<name>`` arms.

    Args:
        experiment_dir: the experiment directory.
        targets: a target set name (``targets/<name>.json``) or file.
        metric: ``logodds`` (as published), ``margin`` or ``correctness``.
        test: ``welch`` or ``z`` (the published two-sided normal test).
        confidence: level of the intervals (the published plots use 99%).
        min_runs: fewest runs per arm an estimate needs.

    Raises:
        ParameterError: a missing arm, set or metric (naming the parameter).
    """
    target_set = targets_lib.find_targets(experiment_dir, targets)
    present = runs_lib.list_subsets(experiment_dir)
    for arm in ("full", target_set.drop_subset):
        if arm not in present:
            raise ParameterError("targets", f"{experiment_dir} has no {arm} runs (found "
                                 f"{', '.join(present) or 'none'})", targets)
    full = runs_lib.load_experiment(experiment_dir, "full", progress=progress)
    drop = runs_lib.load_experiment(experiment_dir, target_set.drop_subset, progress=progress)
    owner = target_set.group_of()
    index = np.array(sorted(owner, key=lambda i: (list(target_set.groups).index(owner[i]), i)))
    membership = np.concatenate([full.membership[:, index], drop.membership[:, index]])
    values = np.concatenate([full.metric(metric, "train")[:, index],
                             drop.metric(metric, "train")[:, index]])
    estimate = estimators.self_influence(membership, values, min_runs, test, confidence)
    return TargetedReport(targets=target_set, metric=metric, test=test, confidence=confidence,
                          index=index, group=[owner[int(i)] for i in index],
                          estimate=estimate, runs_with=full.num_runs,
                          runs_without=drop.num_runs)


def format_targeted_report(report: TargetedReport, alpha: float = TargetedConfig.alpha,
                           show_all: bool = False,
                           labels: np.ndarray | None = None) -> str:
    """The published-style table: rows by group, p < alpha unless `show_all`, group means."""
    estimate = report.estimate
    lines = [f"Targeted self-influence on {report.metric} ({report.test} test): "
             f"{report.runs_with} runs with the targets (full), {report.runs_without} without "
             f"({report.targets.drop_subset}); rows with p < {alpha}"
             + (" and all others (*)" if show_all else "") + ":",
             f"{'group':>8} {'index':>7} {'label':>5} {'mean with':>10} {'mean without':>12} "
             f"{'self-infl':>10} {'p-value':>9}"]
    with np.errstate(invalid="ignore"):
        significant = estimate.p_value < alpha
    summary = []
    for group in report.targets.groups:
        rows = [r for r, g in enumerate(report.group) if g == group]
        for r in rows:
            if not (significant[r] or show_all):
                continue
            label = "-" if labels is None else str(labels[report.index[r]])
            flag = "" if significant[r] else " *"
            lines.append(f"{group:>8} {report.index[r]:>7} {label:>5} "
                         f"{estimate.mean_in[r]:>10.3f} {estimate.mean_out[r]:>12.3f} "
                         f"{estimate.score[r]:>+10.3f} {estimate.p_value[r]:>9.2e}{flag}")
        chosen = [r for r in rows if significant[r]]
        summary.append(
            f"{group}: {len(chosen)} of {len(rows)} significant; mean self-influence "
            f"{_mean(estimate.score[chosen]):+.3f} over significant rows, "
            f"{_mean(estimate.score[rows]):+.3f} over all rows")
    return "\n".join(lines + [""] + summary)


def plot_targeted_report(report: TargetedReport, path: str) -> str:
    """Per target example: self-influence with its interval, colored by group."""
    return plots.plot_targeted_self_influence(
        report.estimate.score, report.estimate.ci_low, report.estimate.ci_high,
        report.group, report.index, path, report.confidence, report.metric)


@dataclasses.dataclass(frozen=True)
class PowerPlan:
    """Runs per arm needed to detect an effect, from the spread of a pilot."""

    effect: float
    alpha: float
    power: float
    pilot_runs: int
    sd: np.ndarray  # per-example standard deviation of the metric over pilot runs
    runs_needed: np.ndarray  # per example, runs per arm


def plan_runs(experiment_dir: str, effect: float, metric: str = PlanConfig.metric,
              alpha: float = PlanConfig.alpha, power: float = PlanConfig.power,
              subset: str = "full", indices: np.ndarray | None = None,
              progress: bool = True) -> PowerPlan:
    """How many runs per arm detect a self-influence of `effect` on the given examples.

    The spread of the metric over the pilot runs (`subset`, by default the full arm)
    stands in for both arms' spread.
    """
    pilot = runs_lib.load_experiment(experiment_dir, subset, progress=progress)
    values = pilot.metric(metric, "train")
    if indices is not None:
        values = values[:, indices]
    if pilot.num_runs < 2:
        raise ParameterError("plan", "needs at least 2 pilot runs in "
                             f"{layout_lib.ExperimentDir(experiment_dir).subset(subset)}")
    sd = values.std(axis=0, ddof=1)
    return PowerPlan(effect=effect, alpha=alpha, power=power, pilot_runs=pilot.num_runs, sd=sd,
                     runs_needed=stats.runs_per_arm(sd, sd, effect, alpha, power))


def format_plan(plan: PowerPlan, metric: str) -> str:
    """Runs per arm for the median, 90th-percentile and hardest example."""
    quantiles = np.percentile(plan.runs_needed, [50, 90, 100])
    sd = np.percentile(plan.sd, [50, 90, 100])
    return (f"Power plan from {plan.pilot_runs} pilot runs: to detect |self-influence| >= "
            f"{plan.effect} on {metric} at alpha {plan.alpha} with power {plan.power}, "
            f"runs per arm (and per-example sd of {metric}):\n"
            f"  median example: {quantiles[0]:.0f} (sd {sd[0]:.3f})\n"
            f"  90th percentile: {quantiles[1]:.0f} (sd {sd[1]:.3f})\n"
            f"  hardest example: {quantiles[2]:.0f} (sd {sd[2]:.3f})")


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")
