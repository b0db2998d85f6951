"""The settings of every estimate from retraining, each with its one default.

`EstimateConfig` (memorization, self-influence, influence, C-scores), `TargetedConfig`
(the full-vs-drop report, with the published defaults), `PlanConfig` (runs per arm)
and `DatamodelConfig` are frozen and validated on construction; their errors are
`ParameterError`s naming the field. This module imports no TensorFlow, so the front
doors check a user's settings before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses

from heldout.errors import ParameterError
from heldout.store.metrics import METRICS

ESTIMATORS = ("memorization", "self_influence", "influence", "cscore")
INFLUENCE_OUTPUTS = ("dense", "topk")
TESTS = ("welch", "z")  # Welch's t-test, or the large-sample z-test
# Examples with p = NaN (too few runs, or no spread: e.g. right in every run) in the
# Benjamini-Hochberg family: left out (the default), or counted as p = 1 (conservative).
UNTESTABLE = ("exclude", "count")
DEFAULT_MIN_RUNS = 5  # fewest in- and out-runs an estimate needs (else NaN)
DEFAULT_TOP = 10  # rows of each printed table of notable examples
# Most training examples kept per test example: the top-k arrays are [num_eval, top_k]
# (a typo like top_k=10**9 would otherwise die in a MemoryError).
MAX_TOP_K = 100_000


@dataclasses.dataclass(frozen=True)
class EstimateConfig:
    """What to estimate from the runs of an experiment, and how."""

    estimators: tuple[str, ...] = ("memorization", "influence")
    subsets: tuple[str, ...] | None = None  # None: the only one (C-score: every ratio)
    metric: str = "correctness"  # of self-influence and influence: one of METRICS
    min_runs: int = DEFAULT_MIN_RUNS  # fewest in- and out-runs per estimate
    test: str = "welch"  # welch | z
    confidence: float = 0.95  # level of confidence intervals
    alpha: float = 0.05  # significance level of the `significant` flags
    fdr: bool = False  # Benjamini-Hochberg across examples at level alpha
    # untestable examples (p = NaN, e.g. right in every run) in the FDR family: left out
    # ("exclude") or counted as p = 1 ("count", the conservative family)
    fdr_untestable: str = "exclude"
    influence_output: str = "dense"  # dense | topk
    top_k: int = 10  # most influential training examples kept per test example
    threshold: float | None = None  # also keep every pair with influence above this
    eval_indices: tuple[int, ...] | None = None  # restrict influence to these test examples
    eval_shard: tuple[int, int] | None = None  # (i, n): the i-th of n parts of those
    num_pairs: int = 100  # highest-influence pairs overall kept with statistics

    def __post_init__(self):
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ParameterError("estimators", f"expected one or more of "
                                 f"{', '.join(ESTIMATORS)}", ",".join(self.estimators))
        _check_choice("metric", self.metric, METRICS)
        _check_choice("test", self.test, TESTS)
        _check_level("confidence", self.confidence)
        _check_level("alpha", self.alpha)
        _check_positive("min_runs", self.min_runs)
        if self.fdr_untestable not in UNTESTABLE:
            raise ParameterError("fdr_untestable", f"expected {' or '.join(UNTESTABLE)}",
                                 self.fdr_untestable)
        _check_choice("influence_output", self.influence_output, INFLUENCE_OUTPUTS)
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ParameterError("top_k", f"expected a whole number from 1 to {MAX_TOP_K:,}",
                                 self.top_k)
        _check_positive("num_pairs", self.num_pairs)
        if self.eval_shard is not None:
            index, count = self.eval_shard
            if not 0 <= index < count:
                raise ParameterError("eval_shard", "expected i/n with 0 <= i < n",
                                     f"{index}/{count}")


@dataclasses.dataclass(frozen=True)
class TargetedConfig:
    """The targeted self-influence report of a full-vs-drop experiment; the defaults are
    those of the published negative-self-influence analysis (log-odds, the z test,
    99% intervals, alpha 0.01)."""

    metric: str = "logodds"  # one of METRICS
    test: str = "z"  # welch | z (the published two-sided normal test)
    confidence: float = 0.99  # level of the intervals
    alpha: float = 0.01  # rows with p < alpha are significant
    min_runs: int = DEFAULT_MIN_RUNS  # fewest runs per arm an estimate needs

    def __post_init__(self):
        _check_choice("metric", self.metric, METRICS)
        _check_choice("test", self.test, TESTS)
        _check_level("confidence", self.confidence)
        _check_level("alpha", self.alpha)
        _check_positive("min_runs", self.min_runs)


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """How many runs per arm detect a self-influence of `effect` (a power plan from the
    pilot runs); metric and alpha default to the targeted report's."""

    effect: float = 0.25  # smallest |self-influence| to detect, in units of the metric
    power: float = 0.8  # probability of detecting it
    metric: str = TargetedConfig.metric
    alpha: float = TargetedConfig.alpha

    def __post_init__(self):
        if not (self.effect > 0 and self.effect < float("inf")):
            raise ParameterError("effect", "expected a positive number", self.effect)
        _check_level("power", self.power)
        _check_choice("metric", self.metric, METRICS)
        _check_level("alpha", self.alpha)


@dataclasses.dataclass(frozen=True)
class DatamodelConfig:
    """Ridge datamodels of the eval examples (SPEC §9): the output they model, and
    whether only the `top_k` largest weights per eval example are kept."""

    metric: str = "logodds"  # the output function; log-odds as published
    top_k: int | None = None  # None: the dense weights [num_train, num_eval]

    def __post_init__(self):
        _check_choice("metric", self.metric, METRICS)
        if self.top_k is not None:
            _check_positive("top_k", self.top_k)


def _check_choice(parameter: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(parameter, f"expected one of {', '.join(allowed)}", value)


def _check_level(parameter: str, value: float) -> None:
    if not 0 < value < 1:  # NaN fails too
        raise ParameterError(parameter, "expected a number in (0, 1)", value)


def _check_positive(parameter: str, value: int) -> None:
    if value < 1:
        raise ParameterError(parameter, "expected a positive number", value)
