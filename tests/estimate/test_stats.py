"""Tests of heldout.estimate.stats against scipy's per-group tests and hand computations."""

import warnings

import numpy as np
import pytest
from scipy import stats as sp_stats

from heldout.estimate import config as estimate_config
from heldout.estimate import stats

RTOL, ATOL = 1e-9, 1e-12
FIELDS = ("stderr", "statistic", "dof", "p_value", "ci_low", "ci_high")
# (num_in, num_out, kind): equal and unequal sizes, float and 0/1 data.
CONFIGS = [(2, 2, "float"), (3, 7, "float"), (12, 4, "float"), (40, 9, "float"),
           (150, 60, "float"), (5, 5, "binary"), (8, 30, "binary"), (70, 30, "binary"),
           (2, 3, "binary")]
EXAMPLES_PER_CONFIG = 12


def _random_groups(seed=0):
    """Per-example (in, out) groups with unequal sizes, means and variances."""
    rng = np.random.default_rng(seed)
    groups = []
    for num_in, num_out, kind in CONFIGS:
        for _ in range(EXAMPLES_PER_CONFIG):
            if kind == "float":
                group_in = rng.normal(rng.normal(), rng.uniform(0.1, 3.0), num_in)
                group_out = rng.normal(rng.normal(), rng.uniform(0.1, 3.0), num_out)
            else:
                group_in = (rng.random(num_in) < rng.uniform(0.2, 0.95)).astype(float)
                group_out = (rng.random(num_out) < rng.uniform(0.05, 0.8)).astype(float)
            groups.append((group_in, group_out))
    return groups


def _summaries(groups):
    """Means, ddof=1 variances and counts of each group, as ``[N]`` arrays."""
    columns = [[], [], [], [], [], []]
    for group_in, group_out in groups:
        values = (group_in.mean(), group_in.var(ddof=1), group_in.size,
                  group_out.mean(), group_out.var(ddof=1), group_out.size)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return [np.array(column) for column in columns]


def _scipy_welch(group_in, group_out, level):
    """(statistic, dof, p, ci_low, ci_high) of scipy's Welch test on the raw groups."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sp_stats.ttest_ind(group_in, group_out, equal_var=False)
        interval = result.confidence_interval(level)
    return result.statistic, result.df, result.pvalue, interval.low, interval.high


def _field(significance, name, index=()):
    return np.asarray(getattr(significance, name))[index]


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_welch_matches_scipy_per_example(level):
    groups = _random_groups()
    result = stats.difference_test(*_summaries(groups), test="welch", level=level)
    for name in FIELDS:
        assert _field(result, name).shape == (len(groups),)
    for i, (group_in, group_out) in enumerate(groups):
        expected = _scipy_welch(group_in, group_out, level)
        for name, value in zip(("statistic", "dof", "p_value", "ci_low", "ci_high"),
                               expected, strict=True):
            np.testing.assert_allclose(_field(result, name, i), value, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} of example {i}")
        stderr = np.sqrt(group_in.var(ddof=1) / group_in.size
                         + group_out.var(ddof=1) / group_out.size)
        np.testing.assert_allclose(_field(result, "stderr", i), stderr, rtol=RTOL)


@pytest.mark.parametrize("level", [0.95, 0.99])
def test_z_test_uses_normal_distribution(level):
    groups = _random_groups(seed=1)
    result = stats.difference_test(*_summaries(groups), test="z", level=level)
    quantile = sp_stats.norm.ppf(0.5 + level / 2)
    for i, (group_in, group_out) in enumerate(groups):
        diff = group_in.mean() - group_out.mean()
        stderr = np.sqrt(group_in.var(ddof=1) / group_in.size
                         + group_out.var(ddof=1) / group_out.size)
        with np.errstate(all="ignore"):
            z = diff / stderr
        np.testing.assert_allclose(_field(result, "statistic", i), z, rtol=RTOL)
        np.testing.assert_allclose(_field(result, "p_value", i),
                                   2 * sp_stats.norm.sf(abs(z)), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(_field(result, "ci_low", i), diff - quantile * stderr,
                                   rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(_field(result, "ci_high", i), diff + quantile * stderr,
                                   rtol=RTOL, atol=ATOL)
        assert _field(result, "dof", i) == np.inf


@pytest.mark.parametrize("test", estimate_config.TESTS)
def test_batch_equals_per_example_calls(test):
    summaries = _summaries(_random_groups(seed=2))
    batch = stats.difference_test(*summaries, test=test, level=0.9)
    for i in range(summaries[0].size):
        single = stats.difference_test(*(column[i] for column in summaries), test=test,
                                       level=0.9)
        for name in FIELDS:
            assert _field(single, name).shape == ()
            np.testing.assert_array_equal(_field(single, name), _field(batch, name, i))


def test_inputs_broadcast_and_keep_shape():
    mean_in, var_in, num_in, mean_out, var_out, num_out = _summaries(_random_groups(seed=3))
    shape = (4, 27)
    mean_in, var_in, mean_out, var_out = (a[: 4 * 27].reshape(shape)
                                          for a in (mean_in, var_in, mean_out, var_out))
    result = stats.difference_test(mean_in, var_in, 20, mean_out, var_out, 35)
    flat = stats.difference_test(mean_in.ravel(), var_in.ravel(), np.full(108, 20),
                                 mean_out.ravel(), var_out.ravel(), np.full(108, 35))
    for name in FIELDS:
        assert _field(result, name).shape == shape
        np.testing.assert_array_equal(_field(result, name).ravel(), _field(flat, name))


@pytest.mark.parametrize("test", estimate_config.TESTS)
def test_invalid_entries_are_nan_and_leave_others_alone(test):
    rows = [  # mean_in, var_in, num_in, mean_out, var_out, num_out, valid
        (0.5, 0.25, 10, 0.2, 0.16, 12, True),
        (0.5, 0.25, 1, 0.2, 0.16, 12, False),
        (0.5, 0.25, 10, 0.2, 0.16, 1, False),
        (0.5, 0.25, 0, 0.2, 0.16, 0, False),
        (np.nan, 0.25, 10, 0.2, 0.16, 12, False),
        (0.5, np.nan, 10, 0.2, 0.16, 12, False),
        (0.5, 0.25, 10, 0.2, np.nan, 12, False),
        (0.5, 0.25, np.nan, 0.2, 0.16, 12, False),
        (0.5, 0.25, 10, np.inf, 0.16, 12, False),
        (0.5, -0.25, 10, 0.2, 0.16, 12, False),
        (1.5, 0.5, 2, -0.2, 0.3, 2, True),
    ]
    columns = [np.array(column, dtype=float) for column in zip(*rows, strict=True)]
    valid = columns.pop().astype(bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = stats.difference_test(*columns, test=test)
    for name in FIELDS:
        field = _field(result, name)
        assert np.all(np.isnan(field[~valid])), name
        assert not np.any(np.isnan(field[valid])), name
    for i in np.flatnonzero(valid):
        single = stats.difference_test(*(column[i] for column in columns), test=test)
        for name in FIELDS:
            assert _field(result, name, i) == _field(single, name)


# Constant groups: (in, out). Exact values so that variances are exactly zero.
DEGENERATE = {
    "both constant, equal": ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),
    "both constant, different": ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]),
    "both constant, different, negative": ([0.0, 0.0], [1.0, 1.0, 1.0]),
    "in constant": ([1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 1.0]),
    "out constant": ([0.0, 1.0, 0.5, 0.25], [2.0, 2.0, 2.0]),
}


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_welch_matches_scipy(case):
    group_in, group_out = (np.array(group) for group in DEGENERATE[case])
    result = stats.difference_test(*_summaries([(group_in, group_out)]), test="welch")
    expected = _scipy_welch(group_in, group_out, 0.95)
    for name, value in zip(("statistic", "dof", "p_value", "ci_low", "ci_high"), expected,
                           strict=True):
        np.testing.assert_allclose(_field(result, name, 0), value, rtol=RTOL, atol=ATOL,
                                   err_msg=name)


def test_degenerate_choices_as_documented():
    groups = [(np.array(a), np.array(b)) for a, b in DEGENERATE.values()]
    welch = stats.difference_test(*_summaries(groups), test="welch")
    z = stats.difference_test(*_summaries(groups), test="z")
    nan = np.nan
    for result, both_dof in ((welch, 1.0), (z, np.inf)):
        np.testing.assert_array_equal(result.stderr[:3], [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(result.statistic[:3], [nan, np.inf, -np.inf])
        np.testing.assert_array_equal(result.dof[:3], [both_dof] * 3)
        np.testing.assert_array_equal(result.p_value[:3], [nan, 0.0, 0.0])
        np.testing.assert_array_equal(result.ci_low[:3], [0.0, 1.0, -1.0])
        np.testing.assert_array_equal(result.ci_high[:3], [0.0, 1.0, -1.0])
    # One constant group: the Welch dof is the other group's size minus one.
    np.testing.assert_allclose(welch.dof[3:], [4.0, 3.0], rtol=RTOL)
    assert np.all(np.isfinite(z.p_value[3:])) and np.all(z.dof[3:] == np.inf)


def test_welch_dof_is_scale_free():
    # The Welch dof depends only on variance ratios; the textbook formula overflows at
    # 1e200 and underflows at 1e-200.
    mean_in, var_in, num_in, mean_out, var_out, num_out = _summaries(_random_groups(seed=4))
    base = stats.difference_test(mean_in, var_in, num_in, mean_out, var_out, num_out)
    for scale in (1e-200, 1e200):
        scaled = stats.difference_test(mean_in * np.sqrt(scale), var_in * scale, num_in,
                                       mean_out * np.sqrt(scale), var_out * scale, num_out)
        np.testing.assert_allclose(scaled.dof, base.dof, rtol=RTOL)
        np.testing.assert_allclose(scaled.statistic, base.statistic, rtol=RTOL)
        np.testing.assert_allclose(scaled.p_value, base.p_value, rtol=1e-8, atol=ATOL)


@pytest.mark.parametrize("kwargs, parameter", [
    ({"test": "t"}, "test"), ({"test": "Welch"}, "test"),
    ({"level": 0.0}, "confidence"), ({"level": 1.0}, "confidence"),
    ({"level": 95.0}, "confidence"), ({"level": float("nan")}, "confidence"),
])
def test_invalid_options_raise(kwargs, parameter):
    with pytest.raises(ValueError, match=f"^{parameter}=") as error:
        stats.difference_test(0.5, 0.1, 10, 0.2, 0.1, 10, **kwargs)
    assert error.value.parameter == parameter


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # m = 5, alpha = 0.05. Sorted: 0.005 (#3), 0.01 (#0), 0.03 (#2), 0.04 (#1), 0.5 (#4),
    # against thresholds i * alpha / m = 0.01, 0.02, 0.03, 0.04, 0.05: the largest i with
    # p_(i) <= i * alpha / m is i = 4 (0.04 <= 0.04; 0.5 > 0.05), so #3, #0, #2, #1 are
    # rejected and #4 is not.
    # p_(i) * m / i = 0.025, 0.025, 0.05, 0.05, 0.5; the running minimum from the top
    # leaves them unchanged, so in input order q = [0.025, 0.05, 0.05, 0.025, 0.5].
    rejected, q = stats.benjamini_hochberg(p, alpha=0.05)
    np.testing.assert_array_equal(rejected, [True, True, True, True, False])
    np.testing.assert_allclose(q, [0.025, 0.05, 0.05, 0.025, 0.5], rtol=1e-12)
    # Non-monotone raw values: p = [0.02, 0.021] gives 0.04 and 0.021 -> q = 0.021 for both.
    rejected, q = stats.benjamini_hochberg([0.02, 0.021], alpha=0.03)
    np.testing.assert_allclose(q, [0.021, 0.021], rtol=1e-12)
    np.testing.assert_array_equal(rejected, [True, True])
    rejected, q = stats.benjamini_hochberg([0.02, 0.021], alpha=0.02)
    np.testing.assert_array_equal(rejected, [False, False])


def _step_up_rejections(p, alpha):
    """Textbook step-up rule on a 1-d array without NaNs."""
    order = np.argsort(p)
    passing = [i for i in range(p.size) if p[order[i]] <= (i + 1) * alpha / p.size]
    rejected = np.zeros(p.size, dtype=bool)
    if passing:
        rejected[order[: max(passing) + 1]] = True
    return rejected


@pytest.mark.parametrize("seed", range(4))
def test_benjamini_hochberg_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = (7, 30)
    # A mixture of signals (small p) and nulls (uniform p), so that some are rejected.
    p = np.where(rng.random(shape) < 0.3, rng.random(shape) * 1e-3, rng.random(shape))
    rejected, q = stats.benjamini_hochberg(p, alpha=0.1)
    assert rejected.shape == shape and q.shape == shape and rejected.dtype == bool
    expected_q = sp_stats.false_discovery_control(p.ravel(), method="bh")
    np.testing.assert_allclose(q.ravel(), expected_q, rtol=1e-12)
    np.testing.assert_array_equal(rejected.ravel(), _step_up_rejections(p.ravel(), 0.1))
    assert 0 < rejected.sum() < rejected.size
    order = np.argsort(p, axis=None)
    assert np.all(np.diff(q.ravel()[order]) >= 0)
    assert np.all(q <= 1)


def test_benjamini_hochberg_ignores_nans():
    rng = np.random.default_rng(5)
    p = np.where(rng.random(200) < 0.3, rng.random(200) * 1e-3, rng.random(200))
    missing = rng.random(200) < 0.25
    p[missing] = np.nan
    rejected, q = stats.benjamini_hochberg(p.reshape(10, 20), alpha=0.05)
    rejected, q = rejected.ravel(), q.ravel()
    assert np.all(np.isnan(q[missing])) and not np.any(rejected[missing])
    present = p[~missing]  # m counts the present p-values only
    np.testing.assert_allclose(q[~missing], sp_stats.false_discovery_control(present),
                               rtol=1e-12)
    np.testing.assert_array_equal(rejected[~missing], _step_up_rejections(present, 0.05))


def test_benjamini_hochberg_edge_shapes_and_errors():
    rejected, q = stats.benjamini_hochberg(np.full((2, 3), np.nan))
    assert rejected.shape == (2, 3) and not rejected.any() and np.all(np.isnan(q))
    rejected, q = stats.benjamini_hochberg(np.zeros((0, 4)))
    assert rejected.shape == (0, 4) and q.shape == (0, 4)
    rejected, q = stats.benjamini_hochberg(0.01, alpha=0.05)
    assert rejected.shape == () and bool(rejected) and float(q) == 0.01
    for bad in ([0.1, 1.5], [-0.1], [np.inf]):
        with pytest.raises(ValueError, match="p-values"):
            stats.benjamini_hochberg(bad)
    for alpha in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            stats.benjamini_hochberg([0.1], alpha=alpha)


def test_bootstrap_interval_edge_cases_and_a_plain_loop():
    assert all(np.isnan(stats.bootstrap_interval(np.zeros(0), 10, 0, 0.9)))
    assert all(np.isnan(stats.bootstrap_interval(np.ones(5), 0, 0, 0.9)))
    assert stats.bootstrap_interval(np.full(7, 0.25), 50, 0, 0.9) == (0.25, 0.25)
    values = np.random.default_rng(2).normal(size=40)
    rng = np.random.default_rng(3)
    means = [float(np.mean([values[i] for i in row]))
             for row in rng.integers(0, 40, (150, 40))]  # one chunk of 150 resamples
    low, high = np.quantile(means, [0.025, 0.975])
    got = stats.bootstrap_interval(values, 150, 3, 0.95, chunk=150)
    np.testing.assert_allclose(got, (low, high), atol=1e-12)


def _hand_written_bh_q(p):
    """The q-values of the hand-written Benjamini-Hochberg this module used before scipy
    (kept here as the reference): NaN p-values outside the family."""
    flat = np.asarray(p, np.float64).ravel()
    present = ~np.isnan(flat)
    values = flat[present]
    order = np.argsort(values, kind="stable")
    scaled = values[order] * values.size / np.arange(1, values.size + 1)
    sorted_q = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.full(flat.shape, np.nan)
    present_q = np.empty(values.size)
    present_q[order] = sorted_q
    q[present] = present_q
    return q


def _hand_written_bootstrap(values, num_bootstrap, seed, confidence, chunk=100):
    """The percentile bootstrap this module used before scipy (the reference)."""
    rng = np.random.default_rng(seed)
    means = np.empty(num_bootstrap)
    for start in range(0, num_bootstrap, chunk):
        size = min(chunk, num_bootstrap - start)
        means[start:start + size] = values[rng.integers(0, len(values),
                                                        (size, len(values)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return tuple(float(v) for v in np.quantile(means, [tail, 1.0 - tail]))


@pytest.mark.parametrize("seed", range(3))
def test_scipy_statistics_agree_with_the_hand_written_ones(seed):
    """scipy's Benjamini-Hochberg and bootstrap give what the hand-written code gave
    (the README's LDS intervals do not move)."""
    rng = np.random.default_rng(seed)
    p = np.where(rng.random(300) < 0.3, rng.random(300) * 1e-3, rng.random(300))
    p[rng.random(300) < 0.2] = np.nan
    np.testing.assert_allclose(stats.benjamini_hochberg(p, 0.05)[1], _hand_written_bh_q(p),
                               rtol=1e-12, equal_nan=True)
    values = rng.normal(size=int(rng.integers(2, 500)))
    for num_bootstrap, confidence in ((1000, 0.95), (250, 0.9), (37, 0.99)):
        np.testing.assert_allclose(
            stats.bootstrap_interval(values, num_bootstrap, seed, confidence),
            _hand_written_bootstrap(values, num_bootstrap, seed, confidence), rtol=1e-12)
    assert stats.bootstrap_interval(np.array([0.3]), 20, 0, 0.9) == (0.3, 0.3)


def test_benjamini_hochberg_counting_untestable_as_p_one():
    """``untestable="count"``: the NaN p-values join the family as p = 1 (m grows), by
    the step-up rule on the completed family; they are never rejected."""
    rng = np.random.default_rng(7)
    p = np.where(rng.random(120) < 0.4, rng.random(120) * 0.03, rng.random(120))
    untestable = rng.random(120) < 0.3
    p[untestable] = np.nan
    excluded, _ = stats.benjamini_hochberg(p, 0.05)
    counted, q = stats.benjamini_hochberg(p, 0.05, untestable="count")
    completed = np.where(untestable, 1.0, p)
    np.testing.assert_array_equal(counted, _step_up_rejections(completed, 0.05))
    np.testing.assert_array_equal(excluded[~untestable],
                                  _step_up_rejections(p[~untestable], 0.05))
    assert not counted[untestable].any() and np.isnan(q[untestable]).all()
    assert counted.sum() < excluded.sum()  # a larger family: fewer discoveries
    with pytest.raises(ValueError, match="fdr_untestable=all: expected exclude or count"):
        stats.benjamini_hochberg(p, 0.05, untestable="all")
