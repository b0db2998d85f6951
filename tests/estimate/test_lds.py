"""Tests of heldout.estimate.lds against scipy.stats.spearmanr in a plain loop."""

import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from heldout.estimate import lds as lds_lib

K, NUM_TRAIN, NUM_EVAL = 40, 30, 25


def _problem(seed=0, integer=False):
    rng = np.random.default_rng(seed)
    masks = rng.random((K, NUM_TRAIN)) < 0.5
    if integer:  # small integers: many ties among predictions and among outputs
        scores = rng.integers(-1, 2, (NUM_TRAIN, NUM_EVAL)).astype(np.float64)
        outputs = rng.integers(0, 3, (K, NUM_EVAL)).astype(np.float64)
    else:
        scores = rng.normal(size=(NUM_TRAIN, NUM_EVAL))
        outputs = masks @ scores + rng.normal(scale=3.0, size=(K, NUM_EVAL))
    return scores, masks, outputs


def _brute_force(scores, masks, outputs):
    predictions = masks.astype(np.float64) @ scores
    values = []
    for j in range(scores.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
            values.append(scipy_stats.spearmanr(outputs[:, j], predictions[:, j]).statistic)
    return np.array(values)


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_lds_matches_spearmanr_loop(integer, block_size):
    scores, masks, outputs = _problem(seed=3, integer=integer)
    result = lds_lib.lds(scores, masks, outputs, block_size=block_size, num_bootstrap=0)
    expected = _brute_force(scores, masks, outputs)
    np.testing.assert_allclose(result.per_example, expected, atol=1e-9, rtol=0)
    assert result.mean == pytest.approx(np.nanmean(expected), abs=1e-9)
    assert result.num_runs == K
    assert np.isnan(result.ci_low) and np.isnan(result.ci_high)


def test_constant_columns_are_nan_and_left_out_of_the_mean():
    scores, masks, outputs = _problem(seed=4)
    outputs[:, 2] = 1.5  # constant output
    scores[:, 5] = 0.0  # constant prediction
    result = lds_lib.lds(scores, masks, outputs, num_bootstrap=0)
    expected = _brute_force(scores, masks, outputs)
    assert np.isnan(expected[2]) and np.isnan(expected[5])
    np.testing.assert_array_equal(np.isnan(result.per_example), np.isnan(expected))
    np.testing.assert_allclose(result.per_example, expected, atol=1e-9, rtol=0)
    assert result.mean == pytest.approx(np.nanmean(expected), abs=1e-12)


def test_bootstrap_interval_matches_a_plain_loop():
    scores, masks, outputs = _problem(seed=5)
    result = lds_lib.lds(scores, masks, outputs, num_bootstrap=300, seed=7, confidence=0.9)
    values = result.per_example
    rng = np.random.default_rng(7)
    means = []
    for start in range(0, 300, 100):  # the documented draw order: 100 resamples at a time
        draws = rng.integers(0, len(values), (min(100, 300 - start), len(values)))
        means.extend(float(np.mean([values[i] for i in row])) for row in draws)
    low, high = np.quantile(means, [0.05, 0.95])
    assert result.ci_low == pytest.approx(low, abs=1e-12)
    assert result.ci_high == pytest.approx(high, abs=1e-12)
    assert result.ci_low <= result.mean <= result.ci_high


def test_perfect_scores_give_one():
    _, masks, _ = _problem(seed=6)
    scores = np.random.default_rng(1).normal(size=(NUM_TRAIN, NUM_EVAL))
    result = lds_lib.lds(scores, masks, 2.0 * (masks @ scores) + 1.0, num_bootstrap=50)
    np.testing.assert_allclose(result.per_example, 1.0, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_bootstrap=-1), "num_bootstrap"),
    (dict(confidence=1.0), "confidence"),
    (dict(block_size=0), "block_size"),
])
def test_bad_settings_are_refused(kwargs, message):
    scores, masks, outputs = _problem()
    with pytest.raises(ValueError, match=message):
        lds_lib.lds(scores, masks, outputs, **kwargs)


def test_bad_shapes_are_refused():
    scores, masks, outputs = _problem()
    with pytest.raises(ValueError, match="masks"):
        lds_lib.lds(scores, masks[:, :-1], outputs)
    with pytest.raises(ValueError, match="outputs"):
        lds_lib.lds(scores, masks, outputs[:-1])
    with pytest.raises(ValueError, match="0/1"):
        lds_lib.lds(scores, masks * 2, outputs)


def test_check_disjoint_names_the_overlap():
    lds_lib.check_disjoint(range(10), range(10, 20))
    with pytest.raises(ValueError, match="2 runs: 3, 7"):
        lds_lib.check_disjoint([1, 3, 7], [7, 3, 12])


def test_noise_ceiling_is_the_root_of_the_two_trainings_rank_correlation():
    rng = np.random.default_rng(3)
    k, num_train, num_eval = 3000, 40, 6
    masks = rng.random((k, num_train)) < 0.5
    tau = rng.normal(size=(num_train, num_eval))
    signal = masks @ tau
    noise_scale = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5]) * signal.std(axis=0)
    first = signal + rng.normal(size=signal.shape) * noise_scale
    again = signal + rng.normal(size=signal.shape) * noise_scale
    ceiling = lds_lib.noise_ceiling(first, again)
    for j in range(num_eval):  # against scipy, one column at a time
        rho = scipy_stats.spearmanr(first[:, j], again[:, j]).statistic
        assert ceiling.reliability[j] == pytest.approx(rho, abs=1e-12)
        assert ceiling.per_example[j] == pytest.approx(np.sqrt(max(rho, 0.0)), abs=1e-12)
    assert ceiling.mean == pytest.approx(ceiling.per_example.mean())
    # The exact scores (the signal itself) reach the ceiling, up to sampling error.
    oracle = lds_lib.lds(tau, masks, first, num_bootstrap=0)
    np.testing.assert_allclose(oracle.per_example, ceiling.per_example, atol=0.06)
    assert ceiling.per_example[0] == pytest.approx(1.0)
    assert np.all(np.diff(ceiling.per_example) < 0)  # more noise, lower ceiling


def test_noise_ceiling_refuses_unpaired_outputs():
    with pytest.raises(ValueError, match="the same masks twice"):
        lds_lib.noise_ceiling(np.zeros((5, 3)), np.zeros((4, 3)))
