"""Streaming estimators (top-k / threshold influence, per-pair statistics, C-scores)
against independent brute-force loops over examples and runs.

Every expected value here is computed one (train, eval) pair or one example at a time
with plain float64 numpy on the groups of runs that did and did not train on the example;
the per-pair significance is `scipy.stats.ttest_ind(in, out, equal_var=False)`.
"""

import functools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from heldout.estimate import estimators

NUM_RUNS, NUM_TRAIN, NUM_EVAL = 80, 41, 17
TOL = 1e-6
KINDS = ("correctness", "margin")


def _membership(seed, num_runs=NUM_RUNS, num_train=NUM_TRAIN, ratio=0.6):
    return np.random.default_rng(seed).random((num_runs, num_train)) < ratio


def _values(kind, seed, shape):
    """0/1 correctness (bool) or generic float32 margins."""
    rng = np.random.default_rng(seed)
    if kind == "correctness":
        return rng.random(shape) < 0.6
    return rng.normal(0.0, 1.0, size=shape).astype(np.float32)


def _groups(membership, values, i, j):
    """Values of eval column j over the runs with / without training example i."""
    column = np.asarray(values[:, j], dtype=np.float64)
    inside = np.array([column[r] for r in range(len(column)) if membership[r, i]])
    outside = np.array([column[r] for r in range(len(column)) if not membership[r, i]])
    return inside, outside


def _brute_influence(membership, values, min_runs=1):
    num_train, num_eval = membership.shape[1], values.shape[1]
    result = np.full((num_train, num_eval), np.nan)
    for i in range(num_train):
        for j in range(num_eval):
            inside, outside = _groups(membership, values, i, j)
            if len(inside) >= max(min_runs, 1) and len(outside) >= max(min_runs, 1):
                result[i, j] = inside.mean() - outside.mean()
    return result


@functools.cache
def _case(kind, seed, min_runs):
    """(membership, values, brute-force influence) of one random case, computed once."""
    membership = _membership(seed)
    values = _values(kind, seed + 100, (NUM_RUNS, NUM_EVAL))
    return membership, values, _brute_influence(membership, values, min_runs)


def _assert_top_matches(top, brute, k):
    num_train, num_eval = brute.shape
    assert top.train.shape == (num_eval, k) and top.score.shape == (num_eval, k)
    assert top.train.dtype == np.int64 and top.score.dtype == np.float32
    for j in range(num_eval):
        column = brute[:, j]
        order = np.argsort(-np.nan_to_num(column, nan=-np.inf), kind="stable")
        defined = int(np.isfinite(column).sum())
        count = min(k, defined)
        expected = column[order[:count]]
        np.testing.assert_allclose(top.score[j, :count], expected, rtol=0, atol=TOL,
                                   err_msg=f"column {j}")
        # Padding when fewer than k defined scores.
        assert np.isnan(top.score[j, count:]).all()
        assert (top.train[j, count:] == -1).all()
        # The listed examples are distinct and really have the listed scores.
        listed = top.train[j, :count]
        assert len(set(listed.tolist())) == count
        np.testing.assert_allclose(column[listed], top.score[j, :count], rtol=0, atol=TOL)
        # Where a score is not tied (within float32 noise) with any other, the index is
        # the brute-force one.
        finite = column[np.isfinite(column)]
        for rank in range(count):
            value = expected[rank]
            if np.sum(np.abs(finite - value) < 1e-5) == 1:
                assert top.train[j, rank] == order[rank], (j, rank)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 3, NUM_TRAIN])
@pytest.mark.parametrize("block_size", [1, 4, 7, NUM_TRAIN, 4096])
@pytest.mark.parametrize("min_runs", [1, 5])
def test_top_k_matches_brute_force(kind, k, block_size, min_runs):
    membership, values, brute = _case(kind, 1, min_runs)
    assert np.isfinite(brute).all()  # every example is in and out of >= 5 runs
    top = estimators.top_influences(membership, values, k, block_size=block_size,
                                    min_runs=min_runs)
    _assert_top_matches(top, brute, k)
    assert top.above_threshold is None and top.dense is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 6, 4096])
def test_top_k_pads_with_minus_one_and_nan_when_few_defined_scores(kind, block_size):
    membership = _membership(2)
    # Only training examples 0, 1 and 2 have >= 5 in-runs; the others have exactly 2.
    membership[:, 3:] = False
    membership[:2, 3:] = True
    values = _values(kind, 3, (NUM_RUNS, NUM_EVAL))
    brute = _brute_influence(membership, values, min_runs=5)
    assert (np.isfinite(brute).sum(axis=0) == 3).all()
    top = estimators.top_influences(membership, values, 5, block_size=block_size,
                                    min_runs=5)
    _assert_top_matches(top, brute, 5)
    assert (top.train[:, 3:] == -1).all() and np.isnan(top.score[:, 3:]).all()
    assert set(top.train[:, :3].ravel().tolist()) == {0, 1, 2}
    # With min_runs 2 every example has a score again.
    top = estimators.top_influences(membership, values, 5, block_size=block_size,
                                    min_runs=2)
    _assert_top_matches(top, _brute_influence(membership, values, min_runs=2), 5)
    assert (top.train >= 0).all()


def test_top_k_all_padding_when_min_runs_exceeds_runs():
    membership, values, _ = _case("margin", 1, 1)
    top = estimators.top_influences(membership, values, 4, threshold=-10.0, block_size=5,
                                    min_runs=NUM_RUNS, keep_dense=True)
    assert (top.train == -1).all() and np.isnan(top.score).all()
    assert np.isnan(top.dense).all()
    assert all(len(a) == 0 for a in top.above_threshold)


def test_top_k_larger_than_num_train_is_padded_to_k():
    membership, values, brute = _case("correctness", 1, 5)
    top = estimators.top_influences(membership, values, NUM_TRAIN + 4, block_size=7)
    _assert_top_matches(top, brute, NUM_TRAIN + 4)


def _threshold_away_from_values(brute, quantile):
    """A threshold near `quantile` of the scores with no score within 1e-4 of it."""
    finite = np.sort(brute[np.isfinite(brute)])
    t = float(np.quantile(finite, quantile)) + 1.2345e-4
    while np.min(np.abs(finite - t)) < 1e-4:
        t += 2.1e-4
    return t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 5, 13, 4096])
@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.97])
def test_threshold_pairs_match_brute_force_set(kind, block_size, quantile):
    membership, values, brute = _case(kind, 4, 5)
    t = _threshold_away_from_values(brute, quantile)
    top = estimators.top_influences(membership, values, 2, threshold=t,
                                    block_size=block_size, min_runs=5)
    train, column, score = top.above_threshold
    expected = {(i, j) for i in range(NUM_TRAIN) for j in range(NUM_EVAL) if brute[i, j] > t}
    assert len(expected) > 0
    got = list(zip(train.tolist(), column.tolist(), strict=True))
    assert set(got) == expected and len(got) == len(expected)
    # eval-major order, then by training index.
    assert got == sorted(got, key=lambda pair: (pair[1], pair[0]))
    assert train.dtype == np.int64 and column.dtype == np.int64
    np.testing.assert_allclose(score, brute[train, column], rtol=0, atol=TOL)


def test_threshold_above_every_score_gives_empty_arrays():
    membership, values, brute = _case("margin", 4, 5)
    top = estimators.top_influences(membership, values, 2, threshold=np.nanmax(brute) + 1,
                                    block_size=5)
    assert all(len(a) == 0 for a in top.above_threshold)


def test_threshold_excludes_pair_whose_influence_equals_threshold():
    membership = np.zeros((NUM_RUNS, 1), dtype=bool)
    membership[:60, 0] = True
    values = np.zeros((NUM_RUNS, 1), dtype=bool)
    values[:42, 0] = True  # 42 of 60 in-runs correct: 0.7
    values[60:74, 0] = True  # 14 of 20 out-runs correct: 0.7
    assert _brute_influence(membership, values)[0, 0] == 0.0
    top = estimators.top_influences(membership, values, 1, threshold=0.0, min_runs=1)
    assert len(top.above_threshold[0]) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [3, 40, 41, 4096])
def test_dense_matches_brute_force(kind, block_size):
    membership, values, brute = _case(kind, 5, 1)
    membership = membership.copy()
    membership[:, 8] = True  # never held out: NaN row
    membership[:, 9] = False  # never trained on: NaN row
    brute = _brute_influence(membership, values)
    top = estimators.top_influences(membership, values, 3, block_size=block_size,
                                    min_runs=1, keep_dense=True)
    assert top.dense.shape == (NUM_TRAIN, NUM_EVAL) and top.dense.dtype == np.float32
    assert np.isnan(top.dense[[8, 9]]).all()
    np.testing.assert_allclose(top.dense, brute, rtol=0, atol=TOL, equal_nan=True)
    assert not np.isin(top.train, [8, 9]).any()
    _assert_top_matches(top, brute, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_blocking_does_not_change_results(kind):
    membership, values, _ = _case(kind, 6, 5)
    results = [estimators.top_influences(membership, values, 4, threshold=0.05,
                                         block_size=b, min_runs=5, keep_dense=True)
               for b in (1, 2, 9, 40, NUM_TRAIN, 10_000)]
    first = results[0]
    for other in results[1:]:
        np.testing.assert_allclose(other.dense, first.dense, rtol=0, atol=TOL)
        np.testing.assert_allclose(other.score, first.score, rtol=0, atol=TOL)
        for a, b in zip(other.above_threshold[:2], first.above_threshold[:2], strict=True):
            np.testing.assert_array_equal(a, b)
        # Indices may differ only between tied scores.
        differ = other.train != first.train
        if differ.any():
            rows, ranks = np.nonzero(differ)
            for j, rank in zip(rows, ranks, strict=True):
                assert np.isclose(first.dense[other.train[j, rank], j],
                                  first.dense[first.train[j, rank], j], atol=TOL)


def test_top_k_rejects_non_positive_k():
    membership, values, _ = _case("margin", 1, 1)
    with pytest.raises(ValueError, match="^top_k="):
        estimators.top_influences(membership, values, 0)


# --- pair statistics ---------------------------------------------------------------------

def _pairs(seed, count):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, NUM_TRAIN, size=count)
    columns = rng.integers(0, NUM_EVAL, size=count)
    return train, columns


def _few_run_membership(seed):
    """Random membership, with training examples 0-3 in exactly 1, 2, 3, 4 runs and
    examples 4-7 out of exactly 1, 2, 3, 4 runs."""
    membership = _membership(seed)
    for column, count in enumerate([1, 2, 3, 4]):
        membership[:, column] = np.arange(NUM_RUNS) < count
        membership[:, 4 + column] = np.arange(NUM_RUNS) >= count
    return membership


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, constant groups
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", [0.9, 0.95])
@pytest.mark.parametrize("min_runs", [1, 3])
@pytest.mark.parametrize("chunk_size", [7, 8192])
def test_pair_statistics_welch_match_scipy(kind, level, min_runs, chunk_size):
    membership = _few_run_membership(7)
    values = _values(kind, 8, (NUM_RUNS, NUM_EVAL))
    train, columns = _pairs(9, 120)
    train[:16] = np.repeat(np.arange(8), 2)  # the few-run examples are always included
    got = estimators.pair_statistics(membership, values, train, columns, min_runs=min_runs,
                                     test="welch", level=level, chunk_size=chunk_size)
    assert len(got) == len(train)
    np.testing.assert_array_equal(got.train, train)
    np.testing.assert_array_equal(got.eval, columns)
    for p, (i, j) in enumerate(zip(train, columns, strict=True)):
        inside, outside = _groups(membership, values, i, j)
        assert got.num_in[p] == len(inside) and got.num_out[p] == len(outside)
        if min(len(inside), len(outside)) < min_runs:
            for field in ("score", "stderr", "p_value", "ci_low", "ci_high"):
                assert np.isnan(getattr(got, field)[p]), (field, p)
            continue
        assert got.score[p] == pytest.approx(inside.mean() - outside.mean(), abs=TOL)
        if min(len(inside), len(outside)) < 2:
            assert np.isnan(got.stderr[p]) and np.isnan(got.p_value[p])
            continue
        stderr = np.sqrt(inside.var(ddof=1) / len(inside) + outside.var(ddof=1) / len(outside))
        result = scipy_stats.ttest_ind(inside, outside, equal_var=False)
        interval = result.confidence_interval(level)
        expected = [stderr, result.pvalue, interval.low, interval.high]
        actual = [got.stderr[p], got.p_value[p], got.ci_low[p], got.ci_high[p]]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL, equal_nan=True,
                                   err_msg=f"pair {p}: ({i}, {j})")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", [0.8, 0.99])
def test_pair_statistics_z_test(kind, level):
    membership = _membership(10)
    values = _values(kind, 11, (NUM_RUNS, NUM_EVAL))
    train, columns = _pairs(12, 100)
    got = estimators.pair_statistics(membership, values, train, columns, min_runs=5,
                                     test="z", level=level, chunk_size=9)
    quantile = scipy_stats.norm.ppf(1 - (1 - level) / 2)
    for p, (i, j) in enumerate(zip(train, columns, strict=True)):
        inside, outside = _groups(membership, values, i, j)
        diff = inside.mean() - outside.mean()
        stderr = np.sqrt(inside.var(ddof=1) / len(inside) + outside.var(ddof=1) / len(outside))
        p_value = 2 * scipy_stats.norm.sf(abs(diff / stderr))
        expected = [diff, stderr, p_value, diff - quantile * stderr, diff + quantile * stderr]
        actual = [got.score[p], got.stderr[p], got.p_value[p], got.ci_low[p], got.ci_high[p]]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL, err_msg=f"pair {p}")


def test_pair_statistics_score_equals_dense_influence():
    membership, values, brute = _case("margin", 13, 5)
    train, columns = np.meshgrid(np.arange(NUM_TRAIN), np.arange(NUM_EVAL), indexing="ij")
    got = estimators.pair_statistics(membership, values, train.ravel(), columns.ravel(),
                                     chunk_size=100)
    np.testing.assert_allclose(got.score.reshape(NUM_TRAIN, NUM_EVAL), brute, rtol=0,
                               atol=TOL)


def test_pair_statistics_take_reorders_every_field():
    membership, values, _ = _case("correctness", 14, 5)
    train, columns = _pairs(15, 20)
    got = estimators.pair_statistics(membership, values, train, columns)
    order = np.array([5, 0, 19, 3])
    taken = got.take(order)
    assert len(taken) == 4
    np.testing.assert_array_equal(taken.train, train[order])
    np.testing.assert_array_equal(taken.eval, columns[order])
    np.testing.assert_array_equal(taken.p_value, got.p_value[order])
    np.testing.assert_array_equal(taken.num_out, got.num_out[order])


# --- C-scores ----------------------------------------------------------------------------

def _brute_cscore(ratios, memberships, correct_train, correct_test, min_runs):
    order = sorted(range(len(ratios)), key=lambda r: ratios[r])
    num_train = memberships[0].shape[1]
    by_ratio = np.full((len(ratios), num_train), np.nan)
    num_out = np.zeros((len(ratios), num_train), dtype=np.int64)
    for row, r in enumerate(order):
        for i in range(num_train):
            held = [float(correct_train[r][run, i]) for run in range(len(memberships[r]))
                    if not memberships[r][run, i]]
            num_out[row, i] = len(held)
            if len(held) >= max(min_runs, 1):
                by_ratio[row, i] = sum(held) / len(held)
    train = np.full(num_train, np.nan)
    for i in range(num_train):
        present = [v for v in by_ratio[:, i] if not np.isnan(v)]
        if present:
            train[i] = sum(present) / len(present)
    test_by_ratio = np.array([[np.mean(correct_test[r][:, j].astype(np.float64))
                               for j in range(correct_test[r].shape[1])] for r in order])
    test = test_by_ratio.mean(axis=0)
    return [ratios[r] for r in order], train, by_ratio, num_out, test, test_by_ratio


def _cscore_case(seed, as_float=False):
    rng = np.random.default_rng(seed)
    ratios = [0.5, 0.3, 0.7]
    num_runs = [50, 30, 40]
    memberships, train, test = [], [], []
    for ratio, runs in zip(ratios, num_runs, strict=True):
        membership = rng.random((runs, NUM_TRAIN)) < ratio
        membership[:, 0] = True  # never held out: no C-score at any ratio
        memberships.append(membership)
        correct_train = rng.random((runs, NUM_TRAIN)) < 0.7
        correct_test = rng.random((runs, NUM_EVAL)) < 0.7
        if as_float:
            correct_train = correct_train.astype(np.float32)
            correct_test = correct_test.astype(np.float64)
        train.append(correct_train)
        test.append(correct_test)
    return ratios, memberships, train, test


@pytest.mark.parametrize("min_runs", [1, 5, 15, 100])
@pytest.mark.parametrize("as_float", [False, True])
def test_cscore_matches_brute_force(min_runs, as_float):
    ratios, memberships, train, test = _cscore_case(16, as_float)
    got = estimators.cscore(ratios, memberships, train, test, min_runs=min_runs)
    ratios_sorted, e_train, e_by_ratio, e_num_out, e_test, e_test_by_ratio = _brute_cscore(
        ratios, memberships, train, test, min_runs)
    np.testing.assert_array_equal(got.ratios, ratios_sorted)
    np.testing.assert_array_equal(got.num_out_by_ratio, e_num_out)
    np.testing.assert_allclose(got.train_by_ratio, e_by_ratio, rtol=0, atol=TOL,
                               equal_nan=True)
    np.testing.assert_allclose(got.train, e_train, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.test_by_ratio, e_test_by_ratio, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.test, e_test, rtol=0, atol=TOL)
    assert np.isnan(got.train[0])
    if min_runs == 15:
        # Some examples have a C-score at some ratios only: the mean is over those.
        partial = np.isfinite(e_by_ratio).any(axis=0) & ~np.isfinite(e_by_ratio).all(axis=0)
        assert partial.any()
    if min_runs == 100:
        assert np.isnan(got.train).all()


def test_cscore_known_answer():
    # Two ratios; example 0 held out by runs (correct, wrong) at 0.5 and (correct) at 0.9.
    membership_a = np.array([[0, 1], [0, 1], [1, 0]], dtype=bool)
    correct_a = np.array([[1, 0], [0, 0], [1, 1]], dtype=bool)
    membership_b = np.array([[0, 1], [1, 1]], dtype=bool)
    correct_b = np.array([[1, 1], [0, 0]], dtype=bool)
    test_a = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    test_b = np.array([[1, 1], [1, 0]], dtype=bool)
    got = estimators.cscore([0.9, 0.5], [membership_b, membership_a], [correct_b, correct_a],
                            [test_b, test_a], min_runs=1)
    np.testing.assert_array_equal(got.ratios, [0.5, 0.9])
    np.testing.assert_allclose(got.train_by_ratio, [[0.5, 1.0], [1.0, np.nan]])
    np.testing.assert_allclose(got.train, [0.75, 1.0])
    np.testing.assert_array_equal(got.num_out_by_ratio, [[2, 1], [1, 0]])
    np.testing.assert_allclose(got.test_by_ratio, [[2 / 3, 1 / 3], [1.0, 0.5]])
    np.testing.assert_allclose(got.test, [5 / 6, 5 / 12])


def test_cscore_rejects_mismatched_inputs():
    ratios, memberships, train, test = _cscore_case(17)
    with pytest.raises(ValueError):
        estimators.cscore(ratios[:2], memberships, train, test)
    with pytest.raises(ValueError):
        estimators.cscore([], [], [], [])


# --- the bfloat16 engine -----------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, NUM_TRAIN + 2])
@pytest.mark.parametrize("block_size", [1, 7, 4096])
@pytest.mark.parametrize("min_runs", [1, 5])
def test_bfloat16_engine_matches_brute_force(k, block_size, min_runs):
    membership, values, brute = _case("correctness", 1, min_runs)
    top = estimators.top_influences(membership, values, k, block_size=block_size,
                                    min_runs=min_runs, engine="bfloat16")
    _assert_top_matches(top, brute, k)
    # Ties go to the lower training index: the brute-force stable order, exactly.
    for j in range(NUM_EVAL):
        count = min(k, NUM_TRAIN)
        order = np.argsort(-brute[:, j], kind="stable")[:count]
        np.testing.assert_array_equal(top.train[j, :count], order)


@pytest.mark.parametrize("num_runs", [255, 256, 300, 700])
def test_bfloat16_engine_is_exact_beyond_bfloat16_counts(num_runs):
    """Counts far above 256 (bfloat16's exact integers), and full chunks of ones."""
    rng = np.random.default_rng(num_runs)
    membership = rng.random((num_runs, 30)) < 0.9
    membership[:, 0] = np.arange(num_runs) % 3 != 0
    values = rng.random((num_runs, 12)) < 0.95
    values[:, 0] = True  # every chunk sums to its length
    reference = estimators.influence(membership, values, min_runs=1)
    exact = (membership.T.astype(np.float64) @ values / membership.sum(0)[:, None]
             - (~membership).T.astype(np.float64) @ values / (~membership).sum(0)[:, None])
    top = estimators.top_influences(membership, values, 30, min_runs=1, keep_dense=True,
                                    threshold=0.0, engine="bfloat16")
    # The float32 score is the exact influence correctly rounded.
    np.testing.assert_array_equal(top.dense, exact.astype(np.float32))
    np.testing.assert_allclose(top.dense, reference, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(top.dense[:, 0], 0.0)  # equal means: exactly zero
    assert not np.isin(0, top.above_threshold[1])


@pytest.mark.parametrize("block_size", [3, 41])
def test_bfloat16_engine_agrees_with_numpy_engine(block_size):
    membership, values, _ = _case("correctness", 5, 1)
    membership = membership.copy()
    membership[:, 8] = True  # never held out: NaN row
    membership[:, 9] = False  # never trained on: NaN row
    kwargs = dict(threshold=0.05, block_size=block_size, min_runs=1, keep_dense=True)
    fast = estimators.top_influences(membership, values, 4, engine="bfloat16", **kwargs)
    slow = estimators.top_influences(membership, values, 4, engine="numpy", **kwargs)
    np.testing.assert_allclose(fast.dense, slow.dense, atol=1e-6, rtol=0, equal_nan=True)
    np.testing.assert_allclose(fast.score, slow.score, atol=1e-6, rtol=0)
    for a, b in zip(fast.above_threshold, slow.above_threshold, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert not np.isin(fast.train, [8, 9]).any()


def test_bfloat16_engine_refuses_what_it_cannot_do_exactly():
    membership, values, _ = _case("margin", 1, 1)
    with pytest.raises(ValueError, match="engine='bfloat16' needs 0/1 values"):
        estimators.top_influences(membership, values, 2, engine="bfloat16")
    with pytest.raises(ValueError, match="engine='bfloat16' needs 0/1 values and at most"):
        estimators.top_influences(np.ones((4097, 2), bool), np.ones((4097, 1), bool), 1,
                                  engine="bfloat16")
    with pytest.raises(ValueError, match="engine"):
        estimators.top_influences(membership, values, 2, engine="tf32")


@pytest.mark.parametrize("engine", ["numpy", "bfloat16"])
def test_most_influential_lists_no_zero_and_no_tie_with_the_rest(engine):
    """Correctness on few runs: many scores tie, some columns are constant (every score
    0). Only positive scores strictly above the best left out are listed (brute force),
    identically on both engines; the rest is -1 / NaN."""
    membership = _membership(11, num_runs=12)
    values = _values("correctness", 12, (12, NUM_EVAL))
    values[:, :3] = True  # right in every run: influence 0 on every training example
    k = 3
    top = estimators.most_influential(
        estimators.top_influences(membership, values, k + 1, min_runs=2, engine=engine), k)
    assert top.train.shape == (NUM_EVAL, k)
    listed_any, short_any = False, False
    brute = _brute_influence(membership, values, 2)
    for j in range(NUM_EVAL):
        column = brute[:, j]
        # Ties are ties in float32, the precision of the scores.
        defined = np.sort(column[np.isfinite(column)].astype(np.float32))[::-1]
        count = int(((defined[:k] > 0) & (defined[:k] > defined[k])).sum())
        np.testing.assert_allclose(top.score[j, :count], defined[:count], rtol=0, atol=TOL)
        np.testing.assert_allclose(column[top.train[j, :count]], top.score[j, :count],
                                   rtol=0, atol=TOL)
        assert (top.train[j, count:] == -1).all() and np.isnan(top.score[j, count:]).all()
        listed_any |= count > 0
        short_any |= 0 < count < k
    assert (top.train[:3] == -1).all(), "all-zero columns list nothing"
    assert listed_any and short_any
    with pytest.raises(ValueError, match="expected a top-4 table"):
        estimators.most_influential(top, k)
