"""Tests of heldout.estimate.estimators against an independent brute-force per-example loop."""

import numpy as np
import pytest

from heldout.estimate import estimators

NUM_RUNS, NUM_TRAIN, NUM_EVAL, RATIO = 60, 37, 23, 0.7
TOL = 1e-6


def _random_membership(seed=0, num_runs=NUM_RUNS, num_train=NUM_TRAIN, ratio=RATIO):
    rng = np.random.default_rng(seed)
    return rng.random((num_runs, num_train)) < ratio


def _correctness(seed, shape):
    return np.random.default_rng(seed).random(shape) < 0.6


def _margins(seed, shape):
    """Margin-like values on a 1/64 grid in [-4, 4].

    Their sums over <= 60 runs are exact in float32, so the float32 matrix products of
    the package lose nothing and the comparison at 1e-6 tests the estimator itself.
    """
    rng = np.random.default_rng(seed)
    return (rng.integers(-256, 257, size=shape) / 64).astype(np.float32)


def _float_margins(seed, shape):
    """Generic float32 margins (not exactly summable): tests float32 rounding too."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=shape).astype(np.float32)


def _brute_stats(in_rows, column):
    """(mean_in, mean_out, n_in, n_out, stderr) of one example, by plain loops."""
    inside = [float(v) for v, m in zip(column, in_rows, strict=True) if m]
    outside = [float(v) for v, m in zip(column, in_rows, strict=True) if not m]

    def mean(xs):
        return sum(xs) / len(xs) if xs else np.nan

    def var(xs):
        if len(xs) < 2:
            return np.nan
        mu = mean(xs)
        return sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)

    n_in, n_out = len(inside), len(outside)
    stderr = np.nan
    if n_in and n_out:
        stderr = np.sqrt(var(inside) / n_in + var(outside) / n_out)
    return mean(inside), mean(outside), n_in, n_out, stderr


def _brute_self_influence(membership, values, min_runs=1):
    num_train = membership.shape[1]
    out = {k: np.full(num_train, np.nan) for k in
           ("score", "mean_in", "mean_out", "num_in", "num_out", "stderr")}
    for i in range(num_train):
        mean_in, mean_out, n_in, n_out, stderr = _brute_stats(membership[:, i], values[:, i])
        out["mean_in"][i], out["mean_out"][i] = mean_in, mean_out
        out["num_in"][i], out["num_out"][i] = n_in, n_out
        if n_in >= max(min_runs, 1) and n_out >= max(min_runs, 1):
            out["score"][i] = mean_in - mean_out
            out["stderr"][i] = stderr
    return out


def _brute_influence(membership, values):
    num_train, num_eval = membership.shape[1], values.shape[1]
    result = np.full((num_train, num_eval), np.nan)
    for i in range(num_train):
        for j in range(num_eval):
            mean_in, mean_out, n_in, n_out, _ = _brute_stats(membership[:, i], values[:, j])
            if n_in and n_out:
                result[i, j] = mean_in - mean_out
    return result


def _assert_self_influence_matches(got, expected):
    for field in ("score", "mean_in", "mean_out", "stderr"):
        np.testing.assert_allclose(getattr(got, field), expected[field], rtol=0, atol=TOL,
                                   equal_nan=True, err_msg=field)
    np.testing.assert_array_equal(got.num_in, expected["num_in"])
    np.testing.assert_array_equal(got.num_out, expected["num_out"])


# --- self-influence / memorization -------------------------------------------------------

@pytest.mark.parametrize("kind", ["correctness", "margin"])
def test_self_influence_matches_brute_force(kind):
    membership = _random_membership(1)
    values = (_correctness(2, membership.shape) if kind == "correctness"
              else _margins(2, membership.shape))
    got = estimators.self_influence(membership, values)
    expected = _brute_self_influence(membership, values)
    assert np.isfinite(expected["score"]).all()  # random masks: every example in and out
    _assert_self_influence_matches(got, expected)


def test_memorization_matches_brute_force_on_bool_correctness():
    membership = _random_membership(3)
    correctness = _correctness(4, membership.shape)
    got = estimators.memorization(membership, correctness)
    _assert_self_influence_matches(got, _brute_self_influence(membership, correctness))


def test_memorization_known_answer():
    # Example 0: in-runs correct 2/2, out-runs correct 1/2 -> 0.5.
    # Example 1: in-runs 0/1, out-runs 3/3 -> -1 (single in-run: no variance, NaN stderr).
    membership = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool)
    correctness = np.array([[1, 1], [1, 1], [1, 1], [0, 0]], dtype=bool)
    got = estimators.memorization(membership, correctness, min_runs=1)
    np.testing.assert_allclose(got.score, [0.5, -1.0])
    np.testing.assert_array_equal(got.num_in, [2, 1])
    np.testing.assert_array_equal(got.num_out, [2, 3])
    # stderr of example 0: var_in = 0, var_out = 0.5 (ddof=1) -> sqrt(0.5 / 2) = 0.5.
    assert got.stderr[0] == pytest.approx(0.5)
    assert np.isnan(got.stderr[1])


def test_example_in_every_run_or_no_run_has_nan_score():
    membership = _random_membership(5)
    membership[:, 4] = True
    membership[:, 9] = False
    values = _margins(6, membership.shape)
    got = estimators.self_influence(membership, values)
    expected = _brute_self_influence(membership, values)
    _assert_self_influence_matches(got, expected)
    assert np.isnan(got.score[[4, 9]]).all() and np.isnan(got.stderr[[4, 9]]).all()
    others = np.setdiff1d(np.arange(NUM_TRAIN), [4, 9])
    assert np.isfinite(got.score[others]).all()
    assert got.num_in[4] == NUM_RUNS and got.num_out[9] == NUM_RUNS


@pytest.mark.parametrize("min_runs", [0, 1, 3, 5])
def test_min_runs_masks_examples_with_too_few_runs(min_runs):
    membership = _random_membership(7)
    # Exact numbers of in-runs (first columns) or out-runs (next columns).
    for column, count in enumerate([1, 2, 3, 4, 5]):
        membership[:, column] = np.arange(NUM_RUNS) < count
        membership[:, 5 + column] = np.arange(NUM_RUNS) >= count
    values = _margins(8, membership.shape)
    got = estimators.self_influence(membership, values, min_runs=min_runs)
    expected = _brute_self_influence(membership, values, min_runs=min_runs)
    _assert_self_influence_matches(got, expected)
    few = np.minimum(expected["num_in"], expected["num_out"]) < max(min_runs, 1)
    assert np.isnan(got.score[few]).all() and np.isnan(got.stderr[few]).all()
    assert np.isfinite(got.score[~few]).all()
    assert few[:10].sum() == 2 * max(min_runs - 1, 0)


@pytest.mark.parametrize("membership", [
    np.ones((4, 3), dtype=np.int64),
    np.ones((4, 3), dtype=np.float32),
    np.ones(3, dtype=bool),
    np.ones((2, 4, 3), dtype=bool),
], ids=["int", "float", "1d", "3d"])
def test_bad_membership_raises_value_error(membership):
    values = np.zeros((4, 3))
    with pytest.raises(ValueError, match="membership"):
        estimators.self_influence(membership, values)
    with pytest.raises(ValueError, match="membership"):
        estimators.influence(membership, values)
    with pytest.raises(ValueError, match="membership"):
        list(estimators.influence_blocks(membership, values))
    with pytest.raises(ValueError, match="membership"):
        estimators.top_influence_pairs(membership, values, 3)


def test_values_of_wrong_shape_raise_value_error():
    membership = _random_membership(9)
    with pytest.raises(ValueError, match="values"):
        estimators.self_influence(membership, np.zeros((NUM_RUNS, NUM_TRAIN + 1)))
    with pytest.raises(ValueError, match="values"):
        estimators.influence(membership, np.zeros((NUM_RUNS - 1, NUM_EVAL)))
    with pytest.raises(ValueError, match="values"):
        list(estimators.influence_blocks(membership, np.zeros((NUM_RUNS + 1, NUM_EVAL))))


def test_influence_with_1d_values_raises_value_error():
    with pytest.raises(ValueError, match="values"):
        estimators.influence(_random_membership(9), np.zeros(NUM_RUNS))


# --- influence ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["correctness", "margin"])
def test_influence_matches_brute_force(kind):
    membership = _random_membership(10)
    shape = (NUM_RUNS, NUM_EVAL)
    values = _correctness(11, shape) if kind == "correctness" else _margins(11, shape)
    got = estimators.influence(membership, values)
    assert got.shape == (NUM_TRAIN, NUM_EVAL) and got.dtype == np.float32
    expected = _brute_influence(membership, values)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_influence_matches_brute_force_on_generic_float32_margins():
    membership = _random_membership(10)
    values = _float_margins(11, (NUM_RUNS, NUM_EVAL))
    got = estimators.influence(membership, values, block_size=6)
    np.testing.assert_allclose(got, _brute_influence(membership, values), rtol=0, atol=TOL)


@pytest.mark.parametrize("block_size", [1, 5, 10, 36, 37, 100])
def test_influence_blocks_cover_rows_and_match_brute_force(block_size):
    membership = _random_membership(12)
    values = _margins(13, (NUM_RUNS, NUM_EVAL))
    expected = _brute_influence(membership, values)
    covered = []
    for rows, block in estimators.influence_blocks(membership, values, block_size):
        assert rows.start == len(covered)
        assert rows.stop - rows.start == min(block_size, NUM_TRAIN - rows.start)
        assert block.shape == (rows.stop - rows.start, NUM_EVAL)
        np.testing.assert_allclose(block, expected[rows], rtol=0, atol=TOL)
        covered.extend(range(rows.start, rows.stop))
    assert covered == list(range(NUM_TRAIN))
    whole = estimators.influence(membership, values, block_size=block_size)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=TOL)


def test_influence_self_column_equals_self_influence():
    # Influence of i on the training metric of i itself is the self-influence score.
    membership = _random_membership(14)
    values = _margins(15, membership.shape)
    matrix = estimators.influence(membership, values, block_size=8)
    expected = _brute_self_influence(membership, values)["score"]
    np.testing.assert_allclose(np.diag(matrix), expected, rtol=0, atol=TOL)


def test_influence_rows_nan_for_always_and_never_included_examples_on_correctness():
    membership = _random_membership(16)
    membership[:, 2] = True
    membership[:, 30] = False
    values = _correctness(17, (NUM_RUNS, NUM_EVAL))
    got = estimators.influence(membership, values, block_size=7)
    expected = _brute_influence(membership, values)
    assert np.isnan(expected[[2, 30]]).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, equal_nan=True)


def test_influence_row_nan_for_never_included_example_on_margins():
    membership = _random_membership(18)
    membership[:, 30] = False
    values = _float_margins(19, (NUM_RUNS, NUM_EVAL))
    got = estimators.influence(membership, values, block_size=7)
    np.testing.assert_allclose(got, _brute_influence(membership, values), rtol=0, atol=TOL,
                               equal_nan=True)


def test_influence_row_nan_for_always_included_example_on_margins():
    membership = _random_membership(18)
    membership[:, 2] = True
    values = _float_margins(19, (NUM_RUNS, NUM_EVAL))
    got = estimators.influence(membership, values, block_size=7)
    np.testing.assert_allclose(got, _brute_influence(membership, values), rtol=0, atol=TOL,
                               equal_nan=True)


# --- top_influence_pairs -----------------------------------------------------------------

def _check_top_pairs(membership, values, num_pairs, block_size):
    dense = _brute_influence(membership, values)
    ranked = np.sort(np.nan_to_num(dense, nan=-np.inf).ravel())[::-1][:num_pairs]
    train, evals, scores = estimators.top_influence_pairs(membership, values, num_pairs,
                                                          block_size=block_size)
    assert len(train) == len(evals) == len(scores) == min(num_pairs, dense.size)
    assert np.all(np.diff(scores) <= 0), "scores must be highest first"
    np.testing.assert_allclose(scores, ranked, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores, dense[train, evals], rtol=0, atol=TOL)
    assert len(set(zip(train.tolist(), evals.tolist(), strict=True))) == len(train)


@pytest.mark.parametrize("num_pairs", [1, 10, 50])
@pytest.mark.parametrize("block_size", [4, 10, 37, 4096])
def test_top_influence_pairs_match_brute_force_margins(num_pairs, block_size):
    membership = _random_membership(20)
    _check_top_pairs(membership, _margins(21, (NUM_RUNS, NUM_EVAL)), num_pairs, block_size)


@pytest.mark.parametrize("num_pairs", [1, 25, 200])
@pytest.mark.parametrize("block_size", [3, 16])
def test_top_influence_pairs_match_brute_force_correctness_with_ties(num_pairs, block_size):
    membership = _random_membership(22)
    _check_top_pairs(membership, _correctness(23, (NUM_RUNS, NUM_EVAL)), num_pairs,
                     block_size)


def test_top_influence_pairs_skip_nan_rows_on_correctness():
    membership = _random_membership(24)
    membership[:, 0] = True
    membership[:, 1] = False
    values = _correctness(25, (NUM_RUNS, NUM_EVAL))
    train, _, scores = estimators.top_influence_pairs(membership, values, 40, block_size=6)
    assert not np.isin(train, [0, 1]).any()
    assert np.isfinite(scores).all()
    _check_top_pairs(membership, values, 40, 6)


def test_top_influence_pairs_all_pairs():
    membership = _random_membership(26, num_train=9)
    values = _margins(27, (NUM_RUNS, 5))
    _check_top_pairs(membership, values, 9 * 5, block_size=4)
    _check_top_pairs(membership, values, 9 * 5 + 10, block_size=4)


def test_top_influence_pairs_skip_always_included_example_on_margins():
    membership = _random_membership(18)
    membership[:, 2] = True
    values = _float_margins(19, (NUM_RUNS, NUM_EVAL))
    train, _, scores = estimators.top_influence_pairs(membership, values, 5, block_size=7)
    assert 2 not in train.tolist()
    assert np.isfinite(scores).all()
