"""Significance of per-example in-minus-out differences, computed from summary statistics.

The estimates of this package have the form ``diff = mean(values over runs that trained
on the example) - mean(values over runs that held it out)``, one per example, for thousands
to millions of examples. This module turns their summary statistics (means, unbiased
variances with ``ddof=1``, counts) into standard errors, test statistics, p-values and
confidence intervals, all at once with numpy (no loop over examples), and controls the
false discovery rate over the resulting p-values with Benjamini-Hochberg (scipy's).

Two tests (`TESTS`):
  * ``welch``: Welch's unequal-variances t-test with Welch-Satterthwaite degrees of
    freedom, the same as ``scipy.stats.ttest_ind(in, out, equal_var=False)``.
  * ``z``: the large-sample two-sided normal test with the same standard error (the test
    of the published negative-self-influence analysis); its degrees of freedom are inf.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sp_stats

from heldout.errors import ParameterError
from heldout.estimate.config import TESTS, UNTESTABLE


@dataclasses.dataclass(frozen=True)
class Significance:
    """Per-example significance of ``diff = mean_in - mean_out``.

    Every field has the broadcast shape of the inputs of `difference_test`, and is NaN
    for every entry that has no valid estimate (see `difference_test`).
    """

    stderr: np.ndarray  # standard error of the difference, sqrt(var_in/n_in + var_out/n_out)
    statistic: np.ndarray  # diff / stderr
    dof: np.ndarray  # Welch-Satterthwaite degrees of freedom (inf for the z-test)
    p_value: np.ndarray  # two-sided
    ci_low: np.ndarray  # confidence interval of the difference at `level`
    ci_high: np.ndarray


def difference_test(mean_in: npt.ArrayLike, var_in: npt.ArrayLike, num_in: npt.ArrayLike,
                    mean_out: npt.ArrayLike, var_out: npt.ArrayLike, num_out: npt.ArrayLike,
                    test: str = "welch", level: float = 0.95) -> Significance:
    """Two-sided test of ``mean_in - mean_out != 0`` for every example at once.

    The inputs are summary statistics of the two groups of each example, so that the
    test never needs the per-run values. They broadcast against each other; ``[N]``
    arrays are the usual case.

    Entries with ``num_in < 2`` or ``num_out < 2``, a negative variance, or any NaN or
    infinite input have no valid estimate and are NaN in every field (including ``dof``).

    Zero variances follow ``scipy.stats.ttest_ind(a, b, equal_var=False)`` on groups
    with exactly those statistics, so that results agree with scipy everywhere:
      * both groups constant and equal: ``stderr`` 0, ``statistic`` NaN (0/0), ``dof`` 1,
        ``p_value`` NaN, and the interval is the single point ``[0, 0]``;
      * both constant and different: ``stderr`` 0, ``statistic`` +-inf, ``dof`` 1,
        ``p_value`` 0, and the interval is the point ``[diff, diff]``;
      * one group constant: nothing special; the Welch ``dof`` reduces to the size of the
        other group minus one.
    ``dof`` 1 is scipy's placeholder for the undefined 0/0 (any value gives the same
    p-value and interval there). The z-test gives the same ``statistic``, ``p_value`` and
    interval in these cases, with ``dof`` inf.

    The Welch ``dof`` is computed from the variance shares ``v/(v_in + v_out)`` (with
    ``v = var / num``), which is scale-free and so does not overflow or underflow for
    very large or very small variances, where the textbook formula (and scipy) does.

    Args:
        mean_in: mean of the values over the runs that trained on the example.
        var_in: unbiased (``ddof=1``) variance of those values.
        num_in: number of those runs.
        mean_out: mean of the values over the runs that held the example out.
        var_out: unbiased (``ddof=1``) variance of those values.
        num_out: number of those runs.
        test: one of `TESTS`: ``"welch"`` (t distribution with Welch dof) or ``"z"``
            (normal distribution).
        level: confidence level of the interval, strictly between 0 and 1.

    Returns:
        A `Significance` whose fields have the broadcast shape of the inputs.

    Raises:
        ParameterError: `test` is not one of `TESTS` (parameter ``test``) or `level` is
            not strictly between 0 and 1 (``confidence``).
    """
    if test not in TESTS:
        raise ParameterError("test", f"expected one of {', '.join(TESTS)}", repr(test))
    if not 0.0 < level < 1.0:  # also rejects NaN
        raise ParameterError("confidence", "expected a number strictly between 0 and 1",
                             level)
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (
        mean_in, var_in, num_in, mean_out, var_out, num_out)))
    mean_in, var_in, num_in, mean_out, var_out, num_out = arrays
    valid = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    valid &= (num_in >= 2) & (num_out >= 2) & (var_in >= 0) & (var_out >= 0)

    upper = 1.0 - (1.0 - level) / 2  # quantile of the upper end of the interval
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        share_in = var_in / num_in
        share_out = var_out / num_out
        total = share_in + share_out
        stderr = np.sqrt(total)
        diff = mean_in - mean_out
        statistic = diff / stderr
        if test == "welch":
            share_in = share_in / total
            share_out = share_out / total
            dof = 1.0 / (share_in**2 / (num_in - 1) + share_out**2 / (num_out - 1))
            dof = np.where(total == 0, 1.0, dof)  # scipy's placeholder for 0/0
            p_value = 2 * special.stdtr(dof, -np.abs(statistic))
            quantile = special.stdtrit(dof, upper)
        else:
            dof = np.full(stderr.shape, np.inf)
            p_value = 2 * special.ndtr(-np.abs(statistic))
            quantile = special.ndtri(upper)
        half_width = quantile * stderr
        ci_low = diff - half_width
        ci_high = diff + half_width

    def masked(field: np.ndarray) -> np.ndarray:
        return np.where(valid, field, np.nan)

    return Significance(stderr=masked(stderr), statistic=masked(statistic), dof=masked(dof),
                        p_value=masked(p_value), ci_low=masked(ci_low),
                        ci_high=masked(ci_high))


def benjamini_hochberg(p_values: npt.ArrayLike, alpha: float = 0.05,
                       untestable: str = "exclude") -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg step-up control of the false discovery rate at `alpha`.

    Used to pick the examples whose difference is significant among many tested at once.
    With the ``m`` p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted p-value
    (q-value) of ``p_(i)`` is ``min(1, min_{j >= i} p_(j) * m / j)``; an example is
    rejected where its q-value is ``<= alpha``, which is the step-up rule "reject the
    ``k`` smallest, with ``k`` the largest ``i`` such that ``p_(i) <= i * alpha / m``".
    The q-values are `scipy.stats.false_discovery_control` (``method="bh"``).

    NaN p-values (untestable examples) are never rejected and get a NaN q-value. With
    ``untestable="exclude"`` they are not counted in ``m``; with ``"count"`` they are
    counted as p = 1, so ``m`` is the number of examples and fewer are rejected.

    Args:
        p_values: p-values of any shape, each in ``[0, 1]`` or NaN.
        alpha: false discovery rate to control, in ``(0, 1]``.
        untestable: ``"exclude"`` or ``"count"`` (`UNTESTABLE`).

    Returns:
        ``(rejected, q_values)``: bool and float64 arrays of the shape of `p_values`.

    Raises:
        ValueError: a p-value is outside ``[0, 1]`` (and not NaN), `alpha` is not in
            ``(0, 1]``, or `untestable` is not one of `UNTESTABLE`.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1]; got {alpha!r}")
    if untestable not in UNTESTABLE:
        raise ParameterError("fdr_untestable", f"expected {' or '.join(UNTESTABLE)}",
                             untestable)
    p_values = np.asarray(p_values, dtype=np.float64)
    flat = p_values.ravel()
    present = ~np.isnan(flat)
    if np.any((flat[present] < 0) | (flat[present] > 1)):
        raise ValueError("p-values must be in [0, 1] or NaN")
    family = flat if untestable == "count" else flat[present]
    q_values = np.full(flat.shape, np.nan)
    if family.size:
        family_q = sp_stats.false_discovery_control(np.nan_to_num(family, nan=1.0))
        q_values[present] = family_q[present] if untestable == "count" else family_q
    rejected = np.zeros(flat.shape, dtype=bool)
    rejected[present] = q_values[present] <= alpha
    return rejected.reshape(p_values.shape), q_values.reshape(p_values.shape)


def runs_per_arm(sd_in: npt.ArrayLike, sd_out: npt.ArrayLike, effect: float,
                 alpha: float = 0.01, power: float = 0.8) -> np.ndarray:
    """Runs needed in each of two equal arms to detect a difference of `effect`.

    The large-sample two-sided test at level `alpha` rejects with probability `power`
    when ``|mean_in - mean_out| = effect`` and ``n >= (z_{1-alpha/2} + z_power)^2
    (sd_in^2 + sd_out^2) / effect^2``, the per-arm size of a two-sample z-test.

    Raises:
        ValueError: effect not positive, or alpha / power outside (0, 1).
    """
    if not effect > 0:
        raise ParameterError("effect", "expected a positive number", effect)
    if not 0 < alpha < 1:
        raise ParameterError("alpha", "expected a number in (0, 1)", alpha)
    if not 0 < power < 1:
        raise ParameterError("power", "expected a number in (0, 1)", power)
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    variance = np.asarray(sd_in, np.float64) ** 2 + np.asarray(sd_out, np.float64) ** 2
    return np.ceil(z * z * variance / effect**2)


def bootstrap_interval(values: np.ndarray, num_bootstrap: int, seed: int,
                       confidence: float, chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (``[n]``, finite).

    `scipy.stats.bootstrap` (``method="percentile"``) with ``numpy.random.default_rng
    (seed)``, `chunk` resamples at a time, so memory is ``O(chunk * n)``. Returns ``(nan,
    nan)`` when there is nothing to resample or `num_bootstrap` is 0, and ``(v, v)`` for
    a single value (every resample is that value; scipy needs two).
    """
    if num_bootstrap == 0 or len(values) == 0:
        return np.nan, np.nan
    if len(values) == 1:
        return float(values[0]), float(values[0])
    result = sp_stats.bootstrap((values,), np.mean, n_resamples=num_bootstrap, batch=chunk,
                                method="percentile", confidence_level=confidence,
                                rng=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
