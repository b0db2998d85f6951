"""Tests of heldout.estimate.compare against scipy and plain loops on synthetic estimates."""

import numpy as np
import pytest
import scipy.stats

from heldout.data.dataset import Dataset
from heldout.estimate import compare, estimators
from heldout.estimate.pipeline import EstimateConfig, Estimates, InfluenceResult


def _correlated(rng, n, rho):
    x = rng.normal(size=n)
    return x, rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=n)


@pytest.mark.parametrize("rho", [0.9, 0.3])
def test_known_correlation_top_k_thresholds_and_disagreements(rho):
    rng = np.random.default_rng(0)
    ours, theirs = _correlated(rng, 3000, rho)
    ours, theirs = ours * 0.2, theirs * 0.2
    ours[[5, 17]] = np.nan  # undefined in ours: left out
    c = compare.compare_estimates(ours, theirs, top_k=50)
    keep = np.isfinite(ours)
    assert c.num_common == 2998 and c.num_dropped == 2
    assert c.spearman == pytest.approx(scipy.stats.spearmanr(ours[keep], theirs[keep])[0])
    assert c.pearson == pytest.approx(scipy.stats.pearsonr(ours[keep], theirs[keep])[0])
    assert c.pearson == pytest.approx(rho, abs=0.05)  # the correlation we built in
    # Plain loops over the common examples.
    ids = np.flatnonzero(keep)
    ranked_ours = sorted(ids, key=lambda i: -ours[i])[:50]
    ranked_theirs = sorted(ids, key=lambda i: -theirs[i])[:50]
    assert c.top_k_overlap == len(set(ranked_ours) & set(ranked_theirs))
    assert c.threshold == 0.25
    assert c.above_ours == sum(ours[i] >= 0.25 for i in ids)
    assert c.above_published == sum(theirs[i] >= 0.25 for i in ids)
    assert c.above_both == sum(ours[i] >= 0.25 and theirs[i] >= 0.25 for i in ids)
    worst = max(ids, key=lambda i: abs(ours[i] - theirs[i]))
    assert c.ids[c.disagreements[0]] == worst
    text = compare.format_comparison(c)
    assert f"train {worst}:" in text and "Spearman" in text


def test_influence_threshold_and_errors():
    c = compare.compare_estimates([0.1, 0.2, 0.3], [0.2, 0.1, 0.4], name="influence")
    assert c.threshold == 0.15 and (c.above_ours, c.above_published, c.above_both) == (2, 2, 1)
    with pytest.raises(ValueError, match="top_k=0"):
        compare.compare_estimates([1.0], [1.0], top_k=0)
    with pytest.raises(ValueError, match="no example has both"):
        compare.compare_estimates([np.nan], [1.0])


def test_scatter_png(tmp_path):
    rng = np.random.default_rng(1)
    c = compare.compare_estimates(*_correlated(rng, 200, 0.5))
    path = compare.plot_comparison(c, str(tmp_path / "figs" / "scatter.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def _estimates(mem: np.ndarray, matrix: np.ndarray, eval_indices: np.ndarray) -> Estimates:
    self_influence = estimators.SelfInfluence(*([mem] * 9))
    top = estimators.TopInfluences(train=np.zeros((len(eval_indices), 1), np.int64),
                                   score=np.zeros((len(eval_indices), 1)),
                                   above_threshold=None, dense=matrix)
    influence = InfluenceResult(eval_indices=eval_indices, top=top, top_stats=None,
                                pairs=None, matrix=matrix)
    return Estimates(experiment_dir="x", subset="0.7", run_ids=np.arange(3), skipped_runs=(),
                     test_accuracy=np.zeros(3), memorization=self_influence,
                     self_influence=None, influence=influence, cscore=None, cscore_runs={},
                     significant={}, seconds={}, config=EstimateConfig())


def test_compare_to_published_classwise_file_in_original_order(tmp_path):
    rng = np.random.default_rng(2)
    num_train, num_test, num_classes = 40, 16, 2
    tr_labels, tt_labels = rng.integers(0, 2, num_train), rng.integers(0, 2, num_test)
    arrays = {"tr_mem": rng.uniform(size=num_train), "tr_labels": tr_labels,
              "tt_labels": tt_labels}
    for k in range(num_classes):
        rows, cols = np.flatnonzero(tr_labels == k), np.flatnonzero(tt_labels == k)
        arrays[f"infl_matrix_class{k}"] = rng.uniform(size=(len(rows), len(cols)))
        arrays[f"tr_classidx_{k}"], arrays[f"tt_classidx_{k}"] = rows, cols
    np.savez(tmp_path / "infl.npz", **arrays)
    # The data set in "TFDS" order: position p holds original example perm[p].
    perm_train, perm_test = rng.permutation(num_train), rng.permutation(num_test)
    data = Dataset(name="tfds:fake", x_train=np.zeros((num_train, 1)),
                   y_train=tr_labels[perm_train], x_test=np.zeros((num_test, 1)),
                   y_test=tt_labels[perm_test], num_classes=2,
                   original_index_train=perm_train, original_index_test=perm_test)
    ours_mem = rng.uniform(size=num_train)
    eval_indices = np.arange(0, num_test, 2)  # we estimated every other test example
    matrix = rng.uniform(size=(num_train, len(eval_indices))).astype(np.float32)
    results = compare.compare_to_published(_estimates(ours_mem, matrix, eval_indices),
                                           str(tmp_path / "infl.npz"), data)
    mem, infl = results
    # Brute force: published value of our position p is that of original perm[p].
    expected_mem = compare.compare_estimates(ours_mem, arrays["tr_mem"][perm_train])
    assert mem.spearman == pytest.approx(expected_mem.spearman)
    ours_pairs, theirs_pairs = [], []
    for p in range(num_train):
        for column, q in enumerate(eval_indices):
            i, j = perm_train[p], perm_test[q]
            if tr_labels[i] == tt_labels[j]:
                k = tr_labels[i]
                row = list(arrays[f"tr_classidx_{k}"]).index(i)
                col = list(arrays[f"tt_classidx_{k}"]).index(j)
                ours_pairs.append(matrix[p, column])
                theirs_pairs.append(arrays[f"infl_matrix_class{k}"][row, col])
    assert infl.num_common == len(ours_pairs)
    assert infl.pearson == pytest.approx(scipy.stats.pearsonr(ours_pairs, theirs_pairs)[0])
    bad = dict(arrays, tr_labels=(tr_labels + 1) % 2)
    for k in range(num_classes):  # keep the class blocks consistent with the new labels
        bad[f"tr_classidx_{k}"] = arrays[f"tr_classidx_{1 - k}"]
        bad[f"infl_matrix_class{k}"] = rng.uniform(size=(
            len(bad[f"tr_classidx_{k}"]), len(arrays[f"tt_classidx_{k}"])))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="labels disagree .* train index 0 "):
        compare.compare_to_published(_estimates(ours_mem, matrix, eval_indices),
                                     str(tmp_path / "bad.npz"), data)


def test_compare_to_published_pairs(tmp_path):
    rng = np.random.default_rng(3)
    matrix = rng.uniform(size=(30, 10)).astype(np.float32)
    mem = rng.uniform(size=30)
    tr_idx, tt_idx = np.array([3, 3, 7, 12]), np.array([0, 4, 9, 2])
    np.savez(tmp_path / "pairs.npz", tr_idx=tr_idx, tt_idx=tt_idx,
             infl=rng.uniform(size=4), mem=mem[tr_idx] + 0.01)
    results = compare.compare_to_published(_estimates(mem, matrix, np.arange(10)),
                                           str(tmp_path / "pairs.npz"))
    assert [r.name for r in results] == ["memorization", "influence"]
    np.testing.assert_array_equal(results[0].ids, [3, 7, 12])
    np.testing.assert_allclose(results[0].published - results[0].ours, 0.01)
    np.testing.assert_array_equal(results[1].ours, matrix[tr_idx, tt_idx])
