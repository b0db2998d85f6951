"""heldout.estimate.pipeline on synthetic experiment directories, against brute force.

Experiment directories are written from random synthetic predictions (no training):
with `heldout.runs.save_run` (our format, with margins) or, for the released format,
with `np.savez` of exactly the seven released keys. Every expected number is computed
from the same synthetic arrays, one example (or pair) at a time.
"""

import csv
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.estimate import export
from heldout.estimate import pipeline as analysis
from heldout.estimate.config import ESTIMATORS, EstimateConfig
from heldout.estimate.pipeline import estimate_experiment
from heldout.store import runs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_TEST = 23, 11
TOL = 1e-6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")


@dataclasses.dataclass
class Synthetic:
    membership: np.ndarray  # bool [runs, NUM_TRAIN]
    correct_train: np.ndarray  # bool [runs, NUM_TRAIN]
    correct_test: np.ndarray  # bool [runs, NUM_TEST]
    margin_train: np.ndarray  # float32 [runs, NUM_TRAIN]
    margin_test: np.ndarray  # float32 [runs, NUM_TEST]


def _synthetic(seed, num_runs, ratio=0.7):
    """Random predictions; training examples 0-4 are memorized (correct mostly when in),
    the last training example is in every run (no estimate)."""
    rng = np.random.default_rng(seed)
    membership = rng.random((num_runs, NUM_TRAIN)) < ratio
    membership[:, -1] = True
    correct_train = rng.random((num_runs, NUM_TRAIN)) < 0.6
    planted = np.where(membership[:, :5], rng.random((num_runs, 5)) < 0.95,
                       rng.random((num_runs, 5)) < 0.2)
    correct_train[:, :5] = planted
    # Graded self-influence on margins, so that p-values spread over (0, 1).
    margin_train = (rng.normal(0.0, 1.0, (num_runs, NUM_TRAIN))
                    + 0.04 * np.arange(NUM_TRAIN) * membership).astype(np.float32)
    correct_test = rng.random((num_runs, NUM_TEST)) < 0.6
    # Test example 0 is helped by training example 1.
    correct_test[:, 0] = np.where(membership[:, 1], rng.random(num_runs) < 0.9,
                                  rng.random(num_runs) < 0.3)
    margin_test = rng.normal(0.0, 1.0, (num_runs, NUM_TEST)).astype(np.float32)
    return Synthetic(membership, correct_train, correct_test, margin_train, margin_test)


def _write_runs(directory, subset, syn):
    for r in range(len(syn.membership)):
        runs.save_run(runs.run_dir(str(directory), subset, r),
                      runs.aux_arrays(np.flatnonzero(syn.membership[r]), syn.correct_train[r],
                                      syn.correct_test[r], syn.margin_train[r],
                                      syn.margin_test[r]))


def _write_released_runs(directory, subset, syn, seed):
    """Aux files with only the 7 released keys, each split in a shuffled order."""
    rng = np.random.default_rng(seed)
    for r in range(len(syn.membership)):
        inside = rng.permutation(np.flatnonzero(syn.membership[r]))
        removed = rng.permutation(np.flatnonzero(~syn.membership[r]))
        test = rng.permutation(NUM_TEST)
        arrays = {"subsample_idx": np.sort(inside),
                  "correctness_train": syn.correct_train[r, inside], "index_train": inside,
                  "correctness_removed": syn.correct_train[r, removed],
                  "index_removed": removed,
                  "correctness_test": syn.correct_test[r, test], "index_test": test}
        folder = os.path.join(directory, subset, str(r))
        os.makedirs(folder)
        np.savez(os.path.join(folder, "aux_arrays.npz"), **arrays)


# --- brute force -------------------------------------------------------------------------

def _groups(membership, values, i, j):
    column = np.asarray(values[:, j], dtype=np.float64)
    inside = np.array([column[r] for r in range(len(column)) if membership[r, i]])
    outside = np.array([column[r] for r in range(len(column)) if not membership[r, i]])
    return inside, outside


def _brute_pair(membership, values, i, j, min_runs, level=0.95):
    """score, stderr, p_value, ci_low, ci_high, num_in, num_out, mean_in, mean_out."""
    inside, outside = _groups(membership, values, i, j)
    nan = float("nan")
    result = dict(score=nan, stderr=nan, p_value=nan, ci_low=nan, ci_high=nan,
                  num_in=len(inside), num_out=len(outside),
                  mean_in=inside.mean() if len(inside) else nan,
                  mean_out=outside.mean() if len(outside) else nan)
    if min(len(inside), len(outside)) >= max(min_runs, 1):
        result["score"] = inside.mean() - outside.mean()
        if min(len(inside), len(outside)) >= 2:
            result["stderr"] = np.sqrt(inside.var(ddof=1) / len(inside)
                                       + outside.var(ddof=1) / len(outside))
            test = scipy_stats.ttest_ind(inside, outside, equal_var=False)
            interval = test.confidence_interval(level)
            result.update(p_value=test.pvalue, ci_low=interval.low, ci_high=interval.high)
    return result


def _brute_self(membership, values, min_runs):
    rows = [_brute_pair(membership, values, i, i, min_runs)
            for i in range(membership.shape[1])]
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def _brute_influence(membership, values, min_runs):
    result = np.full((membership.shape[1], values.shape[1]), np.nan)
    for i in range(membership.shape[1]):
        for j in range(values.shape[1]):
            inside, outside = _groups(membership, values, i, j)
            if min(len(inside), len(outside)) >= max(min_runs, 1):
                result[i, j] = inside.mean() - outside.mean()
    return result


def _brute_cscore(synthetics, min_runs):
    """(train, train_by_ratio, test) over the given list of runs, one per ratio."""
    by_ratio = np.full((len(synthetics), NUM_TRAIN), np.nan)
    for row, syn in enumerate(synthetics):
        for i in range(NUM_TRAIN):
            held = [float(syn.correct_train[r, i]) for r in range(len(syn.membership))
                    if not syn.membership[r, i]]
            if len(held) >= max(min_runs, 1):
                by_ratio[row, i] = sum(held) / len(held)
    train = np.array([np.mean(col[~np.isnan(col)]) if (~np.isnan(col)).any() else np.nan
                      for col in by_ratio.T])
    test = np.mean([syn.correct_test.mean(axis=0) for syn in synthetics], axis=0)
    return train, by_ratio, test


def _assert_self_matches(estimate, expected):
    for key in ("score", "stderr", "p_value", "ci_low", "ci_high", "mean_in", "mean_out"):
        np.testing.assert_allclose(getattr(estimate, key), expected[key], rtol=0, atol=TOL,
                                   equal_nan=True, err_msg=key)
    np.testing.assert_array_equal(estimate.num_in, expected["num_in"])
    np.testing.assert_array_equal(estimate.num_out, expected["num_out"])


def _assert_top_matches(top, brute, k):
    """Each test example lists, best first, its training examples of positive influence
    strictly above the best one left out (ties with it and zeros are not listed)."""
    num_eval = brute.shape[1]
    assert top.train.shape == (num_eval, k)
    for j in range(num_eval):
        column = brute[:, j]
        defined = np.sort(column[np.isfinite(column)])[::-1]
        left_out = defined[k] if len(defined) > k else -np.inf
        count = int(((defined[:k] > 0) & (defined[:k] > left_out)).sum())
        np.testing.assert_allclose(top.score[j, :count], defined[:count], rtol=0, atol=TOL)
        np.testing.assert_allclose(column[top.train[j, :count]], top.score[j, :count],
                                   rtol=0, atol=TOL)
        assert (top.train[j, count:] == -1).all() and np.isnan(top.score[j, count:]).all()


# --- fixtures ----------------------------------------------------------------------------

MAIN_RUNS = 40


@pytest.fixture(scope="module")
def main_experiment(tmp_path_factory):
    """One "0.7" folder of 40 runs with margins, plus an incomplete run folder 40."""
    directory = tmp_path_factory.mktemp("main")
    syn = _synthetic(1, MAIN_RUNS)
    _write_runs(directory, "0.7", syn)
    incomplete = directory / "0.7" / str(MAIN_RUNS)
    incomplete.mkdir()
    (incomplete / "run.json").write_text(json.dumps({"seed": 1}))
    return str(directory), syn


@pytest.fixture(scope="module")
def multi_experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multi")
    synthetics = {"0.3": _synthetic(2, 30, 0.3), "0.5": _synthetic(3, 35, 0.5),
                  "0.7": _synthetic(4, 40, 0.7)}
    for subset, syn in synthetics.items():
        _write_runs(directory, subset, syn)
    return str(directory), synthetics


@pytest.fixture(scope="module")
def released_experiment(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("released"))
    syn = _synthetic(5, 30)
    _write_released_runs(directory, "0.7", syn, seed=6)
    return directory, syn


@pytest.fixture(scope="module")
def all_estimates(main_experiment):
    """Every estimator, dense influence with a threshold, margins where they apply."""
    directory, _ = main_experiment
    config = EstimateConfig(estimators=ESTIMATORS, metric="margin", min_runs=3,
                            threshold=0.3, top_k=4, num_pairs=12)
    return estimate_experiment(directory, config, progress=False)


# --- estimates against brute force -------------------------------------------------------

@pytest.mark.parametrize("min_runs", [1, 3, 12])
def test_memorization_and_margin_self_influence_match_brute_force(main_experiment, min_runs):
    directory, syn = main_experiment
    config = EstimateConfig(estimators=("memorization", "self_influence"), metric="margin",
                            min_runs=min_runs)
    got = estimate_experiment(directory, config, progress=False)
    assert got.subset == "0.7"
    np.testing.assert_array_equal(got.run_ids, np.arange(MAIN_RUNS))
    np.testing.assert_allclose(got.test_accuracy, syn.correct_test.mean(axis=1), atol=TOL)
    expected = _brute_self(syn.membership, syn.correct_train, min_runs)
    _assert_self_matches(got.memorization, expected)
    if min_runs <= 3:
        assert (expected["score"][:5] > 0.5).all()  # the planted memorization is found
    assert np.isnan(got.memorization.score[-1])
    _assert_self_matches(got.self_influence, _brute_self(syn.membership, syn.margin_train,
                                                         min_runs))
    assert got.influence is None and got.cscore is None
    if min_runs == 12:  # some examples have fewer than 12 out-runs: NaN
        few = np.minimum(expected["num_in"], expected["num_out"]) < 12
        assert few[:-1].any() and np.isnan(got.memorization.score[few]).all()


@pytest.mark.parametrize("metric", ["correctness", "margin"])
def test_dense_influence_matches_brute_force(main_experiment, metric):
    directory, syn = main_experiment
    config = EstimateConfig(estimators=("influence",), metric=metric, min_runs=3, top_k=5,
                            num_pairs=9)
    got = estimate_experiment(directory, config, progress=False).influence
    values = syn.correct_test if metric == "correctness" else syn.margin_test
    brute = _brute_influence(syn.membership, values, 3)
    np.testing.assert_array_equal(got.eval_indices, np.arange(NUM_TEST))
    assert got.matrix.shape == (NUM_TRAIN, NUM_TEST)
    np.testing.assert_allclose(got.matrix, brute, rtol=0, atol=TOL, equal_nan=True)
    _assert_top_matches(got.top, brute, 5)
    # Statistics of every top-k entry, row-major over [test, rank].
    for position in range(got.top.train.size):
        j, rank = divmod(position, 5)
        i = got.top.train[j, rank]
        if i < 0:  # not listed: no statistics
            assert got.top_stats.train[position] == -1 and got.top_stats.num_in[position] == 0
            assert np.isnan(got.top_stats.p_value[position])
            continue
        expected = _brute_pair(syn.membership, values, i, j, 3)
        for key in ("score", "stderr", "p_value", "ci_low", "ci_high"):
            assert getattr(got.top_stats, key)[position] == pytest.approx(
                expected[key], abs=TOL, nan_ok=True), (key, position)
        assert got.top_stats.num_in[position] == expected["num_in"]
        assert got.top_stats.num_out[position] == expected["num_out"]
    # The highest pairs overall, best first, with test indices.
    best = np.sort(brute[np.isfinite(brute)])[::-1][:9]
    np.testing.assert_allclose(got.pairs.score, best, rtol=0, atol=TOL)
    np.testing.assert_allclose(brute[got.pairs.train, got.pairs.eval], got.pairs.score,
                               rtol=0, atol=TOL)


def test_topk_influence_with_threshold_matches_brute_force(main_experiment):
    directory, syn = main_experiment
    brute = _brute_influence(syn.membership, syn.margin_test, 5)
    threshold = 0.4321
    assert np.nanmin(np.abs(brute - threshold)) > 1e-4 and (brute > threshold).any()
    config = EstimateConfig(estimators=("influence",), metric="margin",
                            influence_output="topk", top_k=3, threshold=threshold)
    got = estimate_experiment(directory, config, progress=False).influence
    assert got.matrix is None and got.top.dense is None
    _assert_top_matches(got.top, brute, 3)
    train, column, score = got.top.above_threshold
    expected = {(i, j) for i, j in zip(*np.nonzero(brute > threshold), strict=True)}
    assert set(zip(train.tolist(), got.eval_indices[column].tolist(), strict=True)) == expected
    assert len(train) == len(expected)
    np.testing.assert_allclose(score, brute[train, column], rtol=0, atol=TOL)


def test_cscore_single_ratio_matches_brute_force(main_experiment):
    directory, syn = main_experiment
    got = estimate_experiment(directory, EstimateConfig(estimators=("cscore",), min_runs=4),
                              progress=False)
    train, by_ratio, test = _brute_cscore([syn], 4)
    np.testing.assert_array_equal(got.cscore.ratios, [0.7])
    np.testing.assert_allclose(got.cscore.train, train, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.cscore.train_by_ratio, by_ratio, rtol=0, atol=TOL,
                               equal_nan=True)
    np.testing.assert_allclose(got.cscore.test, test, rtol=0, atol=TOL)
    assert np.isnan(got.cscore.train[-1])
    assert got.cscore_runs == {"0.7": MAIN_RUNS}
    assert got.subset is None and len(got.run_ids) == 0
    assert got.memorization is None and got.influence is None


def test_incomplete_run_folder_is_skipped_and_reported(main_experiment, all_estimates):
    directory, syn = main_experiment
    assert all_estimates.skipped_runs == (MAIN_RUNS,)
    np.testing.assert_array_equal(all_estimates.run_ids, np.arange(MAIN_RUNS))
    assert all_estimates.memorization.num_in.sum() == syn.membership.sum()
    assert all_estimates.cscore_runs == {"0.7": MAIN_RUNS}
    lines = analysis.summary_lines(all_estimates)
    assert any(line.startswith(f"memorization: {MAIN_RUNS} runs of 0.7 (1 incomplete "
                               "skipped)") for line in lines), lines


# --- multi-ratio experiments -------------------------------------------------------------

def test_cscore_averages_over_every_ratio_by_default(multi_experiment):
    directory, synthetics = multi_experiment
    got = estimate_experiment(directory, EstimateConfig(estimators=("cscore",), min_runs=5),
                              progress=False).cscore
    train, by_ratio, test = _brute_cscore([synthetics[s] for s in ("0.3", "0.5", "0.7")], 5)
    np.testing.assert_array_equal(got.ratios, [0.3, 0.5, 0.7])
    np.testing.assert_allclose(got.train_by_ratio, by_ratio, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.train, train, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.test, test, rtol=0, atol=TOL)


def test_cscore_averages_over_chosen_subsets(multi_experiment):
    directory, synthetics = multi_experiment
    config = EstimateConfig(estimators=("cscore",), subsets=("0.7", "0.3"), min_runs=5)
    result = estimate_experiment(directory, config, progress=False)
    got = result.cscore
    train, by_ratio, test = _brute_cscore([synthetics["0.3"], synthetics["0.7"]], 5)
    np.testing.assert_array_equal(got.ratios, [0.3, 0.7])
    np.testing.assert_allclose(got.train_by_ratio, by_ratio, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.train, train, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.test, test, rtol=0, atol=TOL)
    assert result.cscore_runs == {"0.7": 40, "0.3": 30}
    # Averaging over two ratios differs from averaging over all three.
    everything, _, _ = _brute_cscore(list(synthetics.values()), 5)
    assert not np.allclose(train, everything, equal_nan=True)


def test_memorization_on_several_folders_needs_subset(multi_experiment):
    directory, synthetics = multi_experiment
    with pytest.raises(ValueError, match="^subsets"):
        estimate_experiment(directory, EstimateConfig(estimators=("memorization",)),
                            progress=False)
    with pytest.raises(ValueError, match="^subsets=0.3,0.5"):
        estimate_experiment(directory, EstimateConfig(estimators=("memorization",),
                                                      subsets=("0.3", "0.5")),
                            progress=False)
    with pytest.raises(ValueError, match="^subsets=0.9"):
        estimate_experiment(directory, EstimateConfig(estimators=("influence",),
                                                      subsets=("0.9",)),
                            progress=False)
    got = estimate_experiment(directory, EstimateConfig(estimators=("memorization",),
                                                        subsets=("0.5",), min_runs=3),
                              progress=False)
    assert got.subset == "0.5" and len(got.run_ids) == 35
    syn = synthetics["0.5"]
    _assert_self_matches(got.memorization, _brute_self(syn.membership, syn.correct_train, 3))


# --- released format ---------------------------------------------------------------------

def test_released_format_estimates_match_brute_force(released_experiment):
    directory, syn = released_experiment
    with np.load(os.path.join(directory, "0.7", "0", "aux_arrays.npz")) as npz:
        assert sorted(npz.files) == sorted(runs.RELEASED_KEYS)
    config = EstimateConfig(estimators=("memorization", "influence", "cscore"), min_runs=3)
    got = estimate_experiment(directory, config, progress=False)
    _assert_self_matches(got.memorization, _brute_self(syn.membership, syn.correct_train, 3))
    brute = _brute_influence(syn.membership, syn.correct_test, 3)
    np.testing.assert_allclose(got.influence.matrix, brute, rtol=0, atol=TOL, equal_nan=True)
    train, by_ratio, test = _brute_cscore([syn], 3)
    np.testing.assert_allclose(got.cscore.train, train, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.cscore.test, test, rtol=0, atol=TOL)


@pytest.mark.parametrize("estimator", ["influence", "self_influence"])
def test_released_format_with_margin_metric_names_the_flag(released_experiment, estimator):
    directory, _ = released_experiment
    config = EstimateConfig(estimators=(estimator,), metric="margin")
    with pytest.raises(ParameterError, match="^metric=margin") as error:
        estimate_experiment(directory, config, progress=False)
    assert re.search(r"no margin", str(error.value)), str(error.value)


# --- restricting influence to test examples ----------------------------------------------

def test_eval_indices_restrict_influence_columns(main_experiment):
    directory, syn = main_experiment
    chosen = (9, 2, 5, 0, 7)
    config = EstimateConfig(estimators=("influence",), metric="margin", min_runs=3,
                            eval_indices=chosen, top_k=3, threshold=0.3)
    got = estimate_experiment(directory, config, progress=False).influence
    brute = _brute_influence(syn.membership, syn.margin_test, 3)
    np.testing.assert_array_equal(got.eval_indices, chosen)
    np.testing.assert_allclose(got.matrix, brute[:, list(chosen)], rtol=0, atol=TOL)
    _assert_top_matches(got.top, brute[:, list(chosen)], 3)
    assert set(got.pairs.eval.tolist()) <= set(chosen)
    np.testing.assert_allclose(brute[got.pairs.train, got.pairs.eval], got.pairs.score,
                               rtol=0, atol=TOL)
    train, column, _ = got.top.above_threshold
    sub = brute[:, list(chosen)]
    assert set(zip(train.tolist(), column.tolist(), strict=True)) == {
        (i, j) for i, j in zip(*np.nonzero(sub > 0.3), strict=True)}
    # A shard of the chosen indices: array_split([9, 2, 5, 0, 7], 2)[1] == [0, 7].
    config = dataclasses.replace(config, eval_shard=(1, 2))
    got = estimate_experiment(directory, config, progress=False).influence
    np.testing.assert_array_equal(got.eval_indices, [0, 7])
    np.testing.assert_allclose(got.matrix, brute[:, [0, 7]], rtol=0, atol=TOL)


@pytest.mark.parametrize("count", [3, 4])
def test_eval_shards_cover_the_unsharded_result(main_experiment, count):
    directory, syn = main_experiment
    base = EstimateConfig(estimators=("influence",), metric="margin", min_runs=3,
                          influence_output="topk", top_k=4)
    whole = estimate_experiment(directory, base, progress=False).influence
    shards = [estimate_experiment(directory, dataclasses.replace(base, eval_shard=(i, count)),
                                  progress=False).influence for i in range(count)]
    indices = np.concatenate([s.eval_indices for s in shards])
    np.testing.assert_array_equal(indices, np.arange(NUM_TEST))
    assert all(len(s.eval_indices) in (NUM_TEST // count, NUM_TEST // count + 1)
               for s in shards)
    np.testing.assert_array_equal(np.concatenate([s.top.train for s in shards]),
                                  whole.top.train)
    np.testing.assert_allclose(np.concatenate([s.top.score for s in shards]), whole.top.score,
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(np.concatenate([s.top_stats.p_value for s in shards]),
                               whole.top_stats.p_value, rtol=0, atol=TOL)
    _assert_top_matches(whole.top, _brute_influence(syn.membership, syn.margin_test, 3), 4)


def test_bad_eval_selection_names_the_flag(main_experiment):
    directory, _ = main_experiment
    with pytest.raises(ValueError, match="^eval_indices"):
        estimate_experiment(directory, EstimateConfig(estimators=("influence",),
                                                      eval_indices=(0, NUM_TEST)),
                            progress=False)
    with pytest.raises(ValueError, match="^eval_shard"):
        estimate_experiment(directory, EstimateConfig(estimators=("influence",),
                                                      eval_shard=(NUM_TEST + 1, 20)),
                            progress=False)


# --- significance ------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.1, 0.4])
def test_fdr_significance_is_benjamini_hochberg(main_experiment, alpha):
    directory, _ = main_experiment
    config = EstimateConfig(estimators=("memorization", "self_influence"), metric="margin",
                            min_runs=3, alpha=alpha, fdr=True)
    got = estimate_experiment(directory, config, progress=False)
    raw = estimate_experiment(directory, dataclasses.replace(config, fdr=False),
                              progress=False)
    for name in ("memorization", "self_influence"):
        p = getattr(got, name).p_value
        finite = np.isfinite(p)
        assert not finite.all()  # the last example has no estimate
        expected = np.zeros(len(p), dtype=bool)
        expected[finite] = scipy_stats.false_discovery_control(p[finite], method="bh") <= alpha
        np.testing.assert_array_equal(got.significant[name], expected, err_msg=name)
        assert expected.any()
        with np.errstate(invalid="ignore"):
            uncorrected = p < alpha
        np.testing.assert_array_equal(raw.significant[name], uncorrected & finite)
    # Non-vacuous: on margins, BH differs from no correction, from halving alpha and from
    # Bonferroni, so a different rule would fail above.
    p = got.self_influence.p_value
    bh = got.significant["self_influence"]
    with np.errstate(invalid="ignore"):
        for other in (p < alpha, p < alpha / 2, p < alpha / np.isfinite(p).sum()):
            assert (bh != other).any()


# --- saving, tables, plots ---------------------------------------------------------------

SELF_FIELDS = ("score", "stderr", "ci_low", "ci_high", "p_value", "significant", "num_in",
               "num_out", "mean_in", "mean_out")
DOCUMENTED_KEYS = {
    "run_ids", "test_accuracy",
    *(f"mem_{f}" for f in SELF_FIELDS), *(f"self_{f}" for f in SELF_FIELDS),
    "infl_eval_indices", "infl_matrix", "infl_topk_train", "infl_topk_score",
    "infl_topk_stderr", "infl_topk_p_value", "infl_above_train", "infl_above_test",
    "infl_above_score", "infl_above_column", "meta",
    *(f"infl_topstat_{f}" for f in ("train", "eval", "score", "num_in", "num_out", "stderr",
                                    "p_value", "ci_low", "ci_high")),
    *(f"infl_pair_{f}" for f in ("train", "test", "score", "stderr", "p_value", "ci_low",
                                 "ci_high", "num_in", "num_out")),
    "cscore_ratios", "cscore_train", "cscore_train_by_ratio", "cscore_num_out_by_ratio",
    "cscore_test", "cscore_test_by_ratio",
}


def test_documented_keys_are_in_the_module_docstring():
    doc = re.sub(r"\s+", " ", export.__doc__)
    for prefix in ("mem_", "self_", "infl_", "cscore_"):
        assert f"``{prefix}``" in doc
    for key in DOCUMENTED_KEYS:
        name = re.sub(r"^(mem|self|infl|cscore)_", "", key)
        name = re.sub(r"^pair_", "", name) if key.startswith("infl_pair_") else name
        if key.startswith("infl_pair_"):
            assert f"pair_{name}" in doc, key
        else:
            assert name in doc, key


def _load_npz(path):
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def test_save_estimates_writes_documented_keys_and_values(all_estimates, tmp_path):
    path = str(tmp_path / "out" / "estimates.npz")
    export.save_estimates(all_estimates, path)
    saved = _load_npz(path)
    assert set(saved) == DOCUMENTED_KEYS
    est = all_estimates
    expected = {"run_ids": est.run_ids, "test_accuracy": est.test_accuracy,
                "infl_eval_indices": est.influence.eval_indices,
                "infl_matrix": est.influence.matrix,
                "infl_topk_train": est.influence.top.train,
                "infl_topk_score": est.influence.top.score,
                "infl_topk_stderr": est.influence.top_stats.stderr.reshape(-1, 4),
                "infl_topk_p_value": est.influence.top_stats.p_value.reshape(-1, 4),
                "infl_above_train": est.influence.top.above_threshold[0],
                "infl_above_test": est.influence.eval_indices[
                    est.influence.top.above_threshold[1]],
                "infl_above_score": est.influence.top.above_threshold[2],
                "infl_above_column": est.influence.top.above_threshold[1]}
    for field in dataclasses.fields(est.influence.top_stats):
        expected["infl_topstat_" + field.name] = getattr(est.influence.top_stats, field.name)
    for name, prefix in (("memorization", "mem_"), ("self_influence", "self_")):
        for field in SELF_FIELDS:
            expected[prefix + field] = (est.significant[name] if field == "significant"
                                        else getattr(getattr(est, name), field))
    for field in ("train", "score", "stderr", "p_value", "ci_low", "ci_high", "num_in",
                  "num_out"):
        expected["infl_pair_" + field] = getattr(est.influence.pairs, field)
    expected["infl_pair_test"] = est.influence.pairs.eval
    for field in ("ratios", "train", "train_by_ratio", "num_out_by_ratio", "test",
                  "test_by_ratio"):
        expected["cscore_" + field] = getattr(est.cscore, field)
    assert set(expected) == DOCUMENTED_KEYS - {"meta"}
    assert json.loads(str(saved["meta"]))["config"]["top_k"] == est.config.top_k
    for key, value in expected.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    assert saved["infl_matrix"].shape == (NUM_TRAIN, NUM_TEST)
    assert len(saved["infl_pair_score"]) == 12
    assert len(saved["infl_above_score"]) > 0


def _assert_same(got, expected, where="estimates"):
    """Equal dataclasses, dicts, tuples and arrays, field by field (NaN equal to NaN)."""
    if dataclasses.is_dataclass(expected):
        assert type(got) is type(expected), where
        for field in dataclasses.fields(expected):
            _assert_same(getattr(got, field.name), getattr(expected, field.name),
                         f"{where}.{field.name}")
    elif isinstance(expected, dict):
        assert sorted(got) == sorted(expected), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}[{key}]")
    elif isinstance(expected, np.ndarray) or (isinstance(expected, tuple) and expected
                                              and isinstance(expected[0], np.ndarray)):
        if isinstance(expected, tuple):
            assert len(got) == len(expected), where
            for position, (a, b) in enumerate(zip(got, expected, strict=True)):
                _assert_same(a, b, f"{where}[{position}]")
            return
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    else:
        assert got == expected, where


@pytest.mark.parametrize("config", [
    EstimateConfig(estimators=("memorization", "self_influence", "influence", "cscore"),
                   metric="margin", min_runs=3, threshold=0.2, top_k=4, fdr=True),
    EstimateConfig(estimators=("influence",), influence_output="topk", top_k=2,
                   eval_indices=(9, 2, 5)),
])
def test_load_estimates_returns_what_save_estimates_wrote(main_experiment, tmp_path, config):
    directory, _ = main_experiment
    estimates = estimate_experiment(directory, config, progress=False)
    path = str(tmp_path / "out" / "estimates.npz")
    export.save_estimates(estimates, path)
    _assert_same(export.load_estimates(path), estimates)


def test_load_estimates_of_another_file_names_it(tmp_path):
    path = str(tmp_path / "other.npz")
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not an estimates file"):
        export.load_estimates(path)


def test_save_estimates_topk_without_threshold_has_no_matrix_or_above(main_experiment,
                                                                      tmp_path):
    directory, _ = main_experiment
    config = EstimateConfig(estimators=("influence",), influence_output="topk", top_k=2)
    estimates = estimate_experiment(directory, config, progress=False)
    path = str(tmp_path / "topk.npz")
    export.save_estimates(estimates, path)
    saved = _load_npz(path)
    assert set(saved) == {"run_ids", "test_accuracy", "meta"} | {
        k for k in DOCUMENTED_KEYS if k.startswith("infl_")
        and k != "infl_matrix" and not k.startswith("infl_above_")}
    np.testing.assert_array_equal(saved["infl_topk_train"], estimates.influence.top.train)


def test_saved_influence_uses_test_indices_of_chosen_examples(main_experiment, tmp_path):
    directory, syn = main_experiment
    chosen = [9, 2, 5]
    config = EstimateConfig(estimators=("influence",), metric="margin", min_runs=3,
                            eval_indices=tuple(chosen), threshold=0.2, top_k=3)
    estimates = estimate_experiment(directory, config, progress=False)
    path = str(tmp_path / "chosen.npz")
    export.save_estimates(estimates, path)
    saved = _load_npz(path)
    brute = _brute_influence(syn.membership, syn.margin_test, 3)
    np.testing.assert_array_equal(saved["infl_eval_indices"], chosen)
    expected = {(i, j) for i in range(NUM_TRAIN) for j in chosen if brute[i, j] > 0.2}
    assert len(expected) > 0
    assert set(zip(saved["infl_above_train"].tolist(), saved["infl_above_test"].tolist(),
                   strict=True)) == expected
    np.testing.assert_allclose(saved["infl_above_score"],
                               brute[saved["infl_above_train"], saved["infl_above_test"]],
                               rtol=0, atol=TOL)
    assert set(saved["infl_pair_test"].tolist()) <= set(chosen)
    np.testing.assert_allclose(saved["infl_pair_score"],
                               brute[saved["infl_pair_train"], saved["infl_pair_test"]],
                               rtol=0, atol=TOL)


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _check_number(text, value):
    value = float(value)
    if np.isnan(value):
        assert text == "nan", (text, value)
    else:
        assert float(text) == pytest.approx(value, rel=1e-5, abs=1e-12), (text, value)


def test_write_tables_round_trip(all_estimates, tmp_path):
    est = all_estimates
    labels_train = np.arange(NUM_TRAIN) % 3
    labels_test = (np.arange(NUM_TEST) + 1) % 3
    paths = export.write_tables(est, str(tmp_path / "csv"), labels_train, labels_test)
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["memorization.csv", "self_influence.csv", "influence_topk.csv", "cscore_train.csv",
         "cscore_test.csv"])
    for name in ("memorization", "self_influence"):
        header, rows = _read_csv(tmp_path / "csv" / f"{name}.csv")
        assert header[:3] == ["index", "label", "score"]
        assert len(rows) == NUM_TRAIN
        estimate = getattr(est, name)
        for i, row in enumerate(rows):
            record = dict(zip(header, row, strict=True))
            assert int(record["index"]) == i and record["label"] == str(labels_train[i])
            for field in ("score", "stderr", "ci_low", "ci_high", "p_value", "mean_in",
                          "mean_out"):
                _check_number(record[field], getattr(estimate, field)[i])
            assert int(record["num_in"]) == estimate.num_in[i]
            assert int(record["num_out"]) == estimate.num_out[i]
            assert int(record["significant"]) == int(est.significant[name][i])
    header, rows = _read_csv(tmp_path / "csv" / "influence_topk.csv")
    top, top_stats = est.influence.top, est.influence.top_stats
    assert len(rows) == int((top.train >= 0).sum()) > 0
    for row in rows:
        record = dict(zip(header, row, strict=True))
        test, rank = int(record["test_index"]), int(record["rank"])
        column = int(np.flatnonzero(est.influence.eval_indices == test)[0])
        position = column * top.train.shape[1] + rank - 1
        assert int(record["train_index"]) == top.train[column, rank - 1]
        assert record["test_label"] == str(labels_test[test])
        assert record["train_label"] == str(labels_train[int(record["train_index"])])
        _check_number(record["score"], top.score[column, rank - 1])
        for field in ("stderr", "ci_low", "ci_high", "p_value"):
            _check_number(record[field], getattr(top_stats, field)[position])
        assert int(record["num_in"]) == top_stats.num_in[position]
    for split, values, by_ratio in (("train", est.cscore.train, est.cscore.train_by_ratio),
                                    ("test", est.cscore.test, est.cscore.test_by_ratio)):
        header, rows = _read_csv(tmp_path / "csv" / f"cscore_{split}.csv")
        assert header == ["index", "label", "cscore", "ratio_0.7"]
        assert len(rows) == len(values)
        for i, row in enumerate(rows):
            assert int(row[0]) == i
            _check_number(row[2], values[i])
            _check_number(row[3], by_ratio[0, i])


def _assert_png(path):
    with open(path, "rb") as f:
        content = f.read()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 1000, path


def test_plot_estimates_with_images_and_without_data(all_estimates, tmp_path):
    rng = np.random.default_rng(7)
    data = Dataset(name="synthetic",
                   x_train=rng.random((NUM_TRAIN, 8, 8, 1)).astype(np.float32),
                   y_train=rng.integers(0, 3, NUM_TRAIN), x_test=rng.random(
                       (NUM_TEST, 8, 8, 1)).astype(np.float32),
                   y_test=rng.integers(0, 3, NUM_TEST), num_classes=3)
    with_images = tmp_path / "images"
    paths = analysis.plot_estimates(all_estimates, str(with_images), data)
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["memorization_histogram.png", "top_memorized.png", "influence_pairs.png",
         "cscore_histogram.png"])
    for path in paths:
        _assert_png(path)
    histograms = tmp_path / "histograms"
    paths = analysis.plot_estimates(all_estimates, str(histograms), None)
    names = ["cscore_histogram.png", "memorization_histogram.png"]
    assert sorted(os.path.basename(p) for p in paths) == names
    assert sorted(os.listdir(histograms)) == names
    for path in paths:
        _assert_png(path)


# --- configuration -----------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"estimators": ("memorisation",)}, "estimators"),
    ({"estimators": ()}, "estimators"),
    ({"metric": "loss"}, "metric"),
    ({"test": "t"}, "test"),
    ({"confidence": 1.0}, "confidence"),
    ({"confidence": 0.0}, "confidence"),
    ({"confidence": float("nan")}, "confidence"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 10**9}, "top_k"),
    ({"fdr_untestable": "drop"}, "fdr_untestable"),
    ({"eval_shard": (2, 2)}, "eval_shard"),
    ({"eval_shard": (-1, 2)}, "eval_shard"),
    ({"min_runs": 0}, "min_runs"),
    ({"alpha": 1.5}, "alpha"),
    ({"influence_output": "sparse"}, "influence_output"),
])
def test_config_validation_names_the_parameter(kwargs, parameter):
    with pytest.raises(ParameterError, match=f"^{parameter}") as error:
        EstimateConfig(**kwargs)
    assert error.value.parameter == parameter


def test_empty_directory_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="no runs found"):
        estimate_experiment(str(tmp_path), EstimateConfig(), progress=False)


# --- estimate.py -------------------------------------------------------------------------

CLI_RUNS = 12


@pytest.fixture(scope="module", autouse=True)
def cli_processes(tmp_path_factory, released_experiment):
    """Starts the two estimate.py runs of `test_estimate_cli_*` when the module starts.

    Each process spends most of its time importing TensorFlow, so they run while the
    other tests of this module do; the test collects their output.
    """
    root = tmp_path_factory.mktemp("cli")
    syn = _synthetic(8, CLI_RUNS)
    _write_runs(root / "experiment", "0.7", syn)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    common = {"cwd": REPO_ROOT, "env": env, "stdout": subprocess.PIPE,
              "stderr": subprocess.PIPE, "text": True}
    ok = subprocess.Popen(
        [sys.executable, "estimate.py", f"--experiment_dir={root / 'experiment'}",
         "--estimator=all", "--progress=false", f"--csv_dir={root / 'csv'}", "--min_runs=2"],
        **common)
    failing = subprocess.Popen(
        [sys.executable, "estimate.py", f"--experiment_dir={released_experiment[0]}",
         "--estimator=influence", "--metric=margin", "--progress=false"], **common)
    yield root, syn, ok, failing
    for process in (ok, failing):
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_estimate_cli_summary_lines_and_outputs(cli_processes):
    root, syn, ok, _ = cli_processes
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0, err
    lines = out.splitlines()
    for prefix in (f"memorization: {CLI_RUNS} runs of 0.7",
                   f"self_influence: {CLI_RUNS} runs of 0.7",
                   f"influence: {CLI_RUNS} runs of 0.7", f"cscore: {CLI_RUNS} runs of 0.7"):
        assert any(line.startswith(prefix) for line in lines), (prefix, out)
    saved = _load_npz(root / "experiment" / "estimates-0.7.npz")
    expected = _brute_self(syn.membership, syn.correct_train, 2)
    np.testing.assert_allclose(saved["mem_score"], expected["score"], rtol=0, atol=TOL,
                               equal_nan=True)
    np.testing.assert_allclose(saved["infl_matrix"],
                               _brute_influence(syn.membership, syn.correct_test, 2),
                               rtol=0, atol=TOL, equal_nan=True)
    assert sorted(os.listdir(root / "csv")) == sorted(
        ["memorization.csv", "self_influence.csv", "influence_topk.csv", "cscore_train.csv",
         "cscore_test.csv"])


def test_estimate_cli_margin_on_released_runs_is_a_one_line_error(cli_processes):
    _, _, _, failing = cli_processes
    out, err = failing.communicate(timeout=300)
    assert failing.returncode != 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("estimate.py: error:") and "--metric" in last, err
    assert "margin" in last and "Saved" not in out


def test_default_subset_leaves_out_the_lds_folder(multi_experiment, tmp_path):
    """With an LDS folder excluded, the only other folder is the default (the README's
    ``--lds_subset=0.5`` commands stopped with "several subset folders")."""
    directory, synthetics = multi_experiment
    with pytest.raises(ValueError, match="0.3, 0.7; 0.5 excluded"):
        analysis.choose_subset(directory, None, exclude=("0.5",))
    two = tmp_path / "two"
    for subset in ("0.5", "0.7"):
        _write_runs(two, subset, synthetics[subset])
    assert analysis.choose_subset(str(two), None, exclude=("0.5",)) == "0.7"
    with pytest.raises(ValueError, match="several subset folders"):
        analysis.choose_subset(str(two), None, exclude=(None,))
    assert analysis.choose_subset(str(two), ("0.5",), exclude=("0.5",)) == "0.5"
    got = estimate_experiment(str(two), EstimateConfig(estimators=("memorization",),
                                                       min_runs=3),
                              progress=False, exclude_subsets=("0.5",))
    assert got.subset == "0.7" and len(got.run_ids) == 40
    only = tmp_path / "only"
    _write_runs(only, "0.5", synthetics["0.5"])
    with pytest.raises(ValueError, match="subsets: .* evaluation runs") as error:
        analysis.choose_subset(str(only), None, exclude=("0.5",))
    assert error.value.parameter == "subsets"


def _step_up_count(p, alpha):
    """Rejections of the textbook step-up rule on a 1-d array without NaNs."""
    ordered = np.sort(p)
    passing = [i for i in range(p.size) if ordered[i] <= (i + 1) * alpha / p.size]
    return max(passing) + 1 if passing else 0


def _line(lines, prefix):
    (found,) = [line for line in lines if line.startswith(prefix)]
    return found


def test_summary_lines_say_what_each_metric_means(main_experiment, all_estimates, tmp_path):
    """"> 0.25" only on correctness; margins get their mean, C-scores their mean and the
    count below 0.5; the influence line counts test examples listing fewer than k."""
    _, syn = main_experiment
    lines = analysis.summary_lines(all_estimates)  # metric=margin, min_runs=3, top_k=4
    mem = _brute_self(syn.membership, syn.correct_train, 3)["score"]
    finite = np.isfinite(mem)
    assert (f"{int((mem[finite] > 0.25).sum())} of {int(finite.sum())} examples with "
            "score > 0.25") in _line(lines, "memorization:")
    margin = _brute_self(syn.membership, syn.margin_train, 3)["score"]
    line = _line(lines, "self_influence:")
    assert "> 0.25" not in line
    assert (f"mean margin self-influence {np.nanmean(margin):+.3f} over "
            f"{int(np.isfinite(margin).sum())} examples") in line
    line = _line(lines, "influence:")
    assert "> 0.25" not in line and "list fewer" not in line  # margins: no ties here
    # Test examples 1 and 2 right in every run: every influence on them is 0.
    tied = dataclasses.replace(syn, correct_test=syn.correct_test.copy())
    tied.correct_test[:, 1:3] = True
    _write_runs(tmp_path, "0.7", tied)
    correctness = estimate_experiment(str(tmp_path), EstimateConfig(
        estimators=("influence",), min_runs=3, top_k=4), progress=False)
    line = _line(analysis.summary_lines(correctness), "influence:")
    brute = _brute_influence(tied.membership, tied.correct_test, 3)
    short = 0
    for column in brute.T:
        defined = np.sort(column[np.isfinite(column)])[::-1]
        short += not (defined[3] > 0 and defined[3] > defined[4])
    assert short > 0
    assert f"{short} of them list fewer than 4 most influential" in line
    assert f"{int((np.nanmax(brute, axis=0) > 0.25).sum())} with a top pair > 0.25" in line
    train, _, _ = _brute_cscore([syn], 3)
    line = _line(lines, "cscore:")
    assert "> 0.25" not in line
    assert (f"mean C-score {np.nanmean(train):.3f}, {int((train < 0.5).sum())} of "
            f"{int(np.isfinite(train).sum())} examples below 0.5") in line


@pytest.mark.parametrize("untestable", ["exclude", "count"])
def test_fdr_summary_states_its_family(main_experiment, untestable):
    """The Benjamini-Hochberg family is stated: untestable examples (p = NaN) left out,
    or counted as p = 1; the count is the step-up rule's on that family."""
    directory, syn = main_experiment
    config = EstimateConfig(estimators=("memorization",), min_runs=3, fdr=True, alpha=0.2,
                            fdr_untestable=untestable)
    got = estimate_experiment(directory, config, progress=False)
    p = _brute_self(syn.membership, syn.correct_train, 3)["p_value"]
    nan = int(np.isnan(p).sum())
    assert nan > 0  # the example in every run, at least
    family = p[~np.isnan(p)] if untestable == "exclude" else np.nan_to_num(p, nan=1.0)
    count = _step_up_count(family, 0.2)
    assert int(got.significant["memorization"].sum()) == count
    line = _line(analysis.summary_lines(got), "memorization:")
    where = (f"{len(p) - nan} testable examples; {nan} untestable (p = NaN) left out"
             if untestable == "exclude" else
             f"all {len(p)} examples, {nan} untestable counted as p = 1")
    assert f"{count} significant (Benjamini-Hochberg FDR 0.2 over {where})" in line
    with pytest.raises(ValueError, match="fdr_untestable=some: expected exclude or count"):
        EstimateConfig(fdr_untestable="some")
