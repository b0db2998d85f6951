"""Tests of heldout.estimate.export not covered beside their producers.

Estimates and targeted reports round-trip in test_pipeline.py and test_targeted.py (where
their fixtures live); here the attribution scores, TRAK, datamodels and LDS files and the
errors.
"""

import dataclasses

import numpy as np
import pytest

from heldout.estimate import datamodels, export, lds
from heldout.store import files


def test_attribution_scores_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"self_influence": rng.normal(size=7).astype(np.float32),
              "in_subset": rng.random(7) < 0.5, "eval_indices": np.array([4, 0, 2]),
              "scores": rng.normal(size=(7, 3))}
    path = str(tmp_path / "out" / "tracin-0.7-run0.npz")
    export.save_attribution_scores(path, **arrays, meta={"method": "tracin", "epochs": [1, 2]})
    loaded = export.load_attribution_scores(path)
    assert loaded["meta"] == {"method": "tracin", "epochs": [1, 2]}
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    export.save_attribution_scores(path, *list(arrays.values())[:3])
    assert export.load_attribution_scores(path)["scores"] is None


def test_loaders_name_the_file_they_cannot_read(tmp_path):
    other = str(tmp_path / "other.npz")
    files.write_npz(other, {"x": np.zeros(2)})
    with pytest.raises(files.StoredFileError, match="other.npz: not an attribution file"):
        export.load_attribution_scores(other)
    with pytest.raises(files.StoredFileError, match="other.npz: not a targeted self-influence"):
        export.load_targeted_report(other)
    with pytest.raises(files.StoredFileMissing, match="missing.npz: file not found"):
        export.load_estimates(str(tmp_path / "missing.npz"))



def _tiny_runs(seed=0, runs=40, num_train=12, num_eval=5):
    """Membership masks and log-odds outputs with a linear signal, for real fits."""
    rng = np.random.default_rng(seed)
    masks = rng.random((runs, num_train)) < 0.5
    outputs = masks @ rng.normal(size=(num_train, num_eval)) + rng.normal(size=(runs, num_eval))
    return masks, outputs


def test_trak_scores_round_trip_and_read_as_attribution_scores(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(9, 4)).astype(np.float32)
    eval_indices, run_ids = np.array([7, 1, 3, 0]), np.array([0, 1, 2])
    path = str(tmp_path / "trak-0.7-runs0-2.npz")
    export.save_trak_scores(path, scores, eval_indices, run_ids, 0.25,
                            meta={"subset": "0.7", "proj_dim": 1024})
    loaded = export.load_trak_scores(path)
    assert loaded["scores"].dtype == np.float32
    np.testing.assert_array_equal(loaded["scores"], scores)
    np.testing.assert_array_equal(loaded["eval_indices"], eval_indices)
    np.testing.assert_array_equal(loaded["run_ids"], run_ids)
    assert loaded["lambda_reg"] == 0.25
    assert loaded["meta"] == {"kind": "trak", "subset": "0.7", "proj_dim": 1024}
    generic = export.load_attribution_scores(path)
    assert generic["kind"] == "trak" and generic["self_influence"] is None
    np.testing.assert_array_equal(generic["scores"], scores)
    with pytest.raises(ValueError, match="one column per eval example"):
        export.save_trak_scores(path, scores, eval_indices[:3], run_ids, 0.25)


def test_trak_file_as_the_front_door_writes_it_today_loads(tmp_path):
    """Files written before the save function (no meta) load with both loaders."""
    path = str(tmp_path / "old.npz")
    files.write_npz(path, {"scores": np.ones((3, 2)), "eval_indices": np.array([0, 1]),
                           "run_ids": np.array([4]), "lambda_reg": np.float64(1.0)})
    assert export.load_trak_scores(path)["meta"] == {}
    assert export.load_attribution_scores(path)["kind"] == "trak"


@pytest.mark.parametrize("top_k", [None, 3])
def test_datamodels_round_trip_and_read_as_attribution_scores(tmp_path, top_k):
    masks, outputs = _tiny_runs()
    fitted = datamodels.fit_datamodels(masks, outputs, top_k=top_k)
    eval_indices, run_ids = np.array([4, 0, 9, 2, 5]), np.arange(40)
    path = str(tmp_path / "datamodels-0.7.npz")
    export.save_datamodels(path, fitted, eval_indices, run_ids,
                           meta={"subset": "0.7", "metric": "logodds"})
    loaded = export.load_datamodels(path)
    assert loaded["meta"] == {"kind": "datamodels", "selection": fitted.selection,
                              "subset": "0.7", "metric": "logodds"}
    for field in dataclasses.fields(fitted):
        expected, got = getattr(fitted, field.name), getattr(loaded["datamodels"], field.name)
        if isinstance(expected, np.ndarray):
            assert got.dtype == expected.dtype, field.name
            np.testing.assert_array_equal(got, expected, err_msg=field.name)
        else:
            assert got == expected, field.name
    np.testing.assert_array_equal(loaded["eval_indices"], eval_indices)
    np.testing.assert_array_equal(loaded["run_ids"], run_ids)
    generic = export.load_attribution_scores(path)
    assert generic["kind"] == "datamodels"
    if top_k is None:
        np.testing.assert_array_equal(generic["scores"], fitted.weights)
    else:
        assert generic["scores"] is None


def test_datamodels_file_as_the_front_door_writes_it_today_loads(tmp_path):
    masks, outputs = _tiny_runs(2)
    fitted = datamodels.fit_datamodels(masks, outputs)
    path = str(tmp_path / "old.npz")
    files.write_npz(path, {"eval_indices": np.arange(5), "intercept": fitted.intercept,
                           "lam": fitted.lam, "run_ids": np.arange(40),
                           "weights": fitted.weights})
    loaded = export.load_datamodels(path)
    np.testing.assert_array_equal(loaded["datamodels"].weights, fitted.weights)
    assert loaded["datamodels"].selection == "unknown"
    assert loaded["datamodels"].lambdas.shape == (0,)


def test_lds_round_trip_keeps_per_example_values_and_settings(tmp_path):
    masks, outputs = _tiny_runs(3)
    scores = datamodels.fit_datamodels(masks[:30], outputs[:30]).weights
    result = lds.lds(scores, masks[30:], outputs[30:], num_bootstrap=200, seed=4)
    eval_indices, run_ids = np.array([3, 1, 4, 0, 2]), np.arange(30, 40)
    path = str(tmp_path / "lds.npz")
    settings = {"method": "datamodels", "scores_file": "datamodels-0.7.npz",
                "lds_subset": "0.5", "output": "logodds", "confidence": 0.95,
                "num_bootstrap": 200, "seed": 4}
    export.save_lds(path, result, eval_indices, run_ids, meta=settings)
    loaded = export.load_lds(path)
    got = loaded["result"]
    assert (got.mean, got.ci_low, got.ci_high, got.num_runs) == \
        (result.mean, result.ci_low, result.ci_high, 10)
    np.testing.assert_array_equal(got.per_example, result.per_example)
    np.testing.assert_array_equal(loaded["eval_indices"], eval_indices)
    np.testing.assert_array_equal(loaded["run_ids"], run_ids)
    assert loaded["meta"] == {"kind": "lds", **settings}
    with pytest.raises(ValueError, match="10 runs, given 5 eval indices and 9 run ids"):
        export.save_lds(path, result, eval_indices, run_ids[:9])


@pytest.mark.parametrize("loader, what", [
    (export.load_lds, "an LDS result"), (export.load_trak_scores, "a TRAK scores file"),
    (export.load_datamodels, "a datamodels file")])
def test_new_loaders_name_the_file_they_cannot_read(tmp_path, loader, what):
    other = str(tmp_path / "other.npz")
    files.write_npz(other, {"x": np.zeros(2)})
    with pytest.raises(files.StoredFileError, match=f"other.npz: not {what}"):
        loader(other)


def test_attribution_scores_of_the_wrong_shape_are_refused(tmp_path):
    bad = str(tmp_path / "bad.npz")
    files.write_npz(bad, {"scores": np.ones((3, 2)), "eval_indices": np.arange(3),
                          "run_ids": np.array([0]), "lambda_reg": np.float64(1.0)})
    with pytest.raises(files.StoredFileError, match="bad.npz: scores of shape"):
        export.load_attribution_scores(bad)
