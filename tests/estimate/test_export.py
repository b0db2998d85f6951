"""Tests of heldout.estimate.export not covered beside their producers.

Estimates and targeted reports round-trip in test_pipeline.py and test_targeted.py (where
their fixtures live); here the attribution scores file and the errors.
"""

import numpy as np
import pytest

from heldout.estimate import export
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

