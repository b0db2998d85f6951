"""Issue 24, item 10 (library halves): malformed merge parts and parts with impossible
values (NaN/inf, |influence| > 1 on correctness) refused in one line naming the part,
and npz data sets with a non-scalar ``num_classes`` or a scalar ``x_train`` refused in
one line naming the file.
"""

import json

import numpy as np
import pytest

from heldout.data import sources
from heldout.estimate import merge, pipeline
from heldout.estimate.export import save_estimates
from heldout.store import files, runs

NUM_RUNS, NUM_TRAIN, NUM_TEST = 24, 20, 8


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Two shards of a tiny experiment (random subsets, correctness), saved as files."""
    directory = tmp_path_factory.mktemp("experiment")
    rng = np.random.default_rng(3)
    for r in range(NUM_RUNS):
        runs.save_run(runs.run_dir(str(directory), "0.7", r), runs.aux_arrays(
            np.sort(rng.choice(NUM_TRAIN, 14, replace=False)), rng.random(NUM_TRAIN) < 0.6,
            rng.random(NUM_TEST) < 0.6))
    paths = []
    for i in range(2):
        config = pipeline.EstimateConfig(estimators=("memorization", "influence"), top_k=3,
                                         eval_shard=(i, 2), min_runs=2)
        path = str(directory / f"part{i}.npz")
        save_estimates(pipeline.estimate_experiment(str(directory), config, progress=False),
                       path)
        paths.append(path)
    return paths


def _edited(path, out, change):
    arrays = files.read_npz(path)
    change(arrays)
    files.write_npz(str(out), arrays)
    return str(out)


def _refused(paths, *fragments):
    with pytest.raises(ValueError) as info:
        merge.merge_estimate_files(paths)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_good_parts_merge(parts):
    merged = merge.merge_estimate_files(parts)
    assert merged.influence.matrix.shape == (NUM_TRAIN, NUM_TEST)
    assert np.nanmax(np.abs(merged.influence.matrix)) <= 1.0


def test_impossible_values_are_refused(parts, tmp_path):
    def big(arrays):
        arrays["infl_matrix"] = arrays["infl_matrix"].copy()
        arrays["infl_matrix"][2, 1] = 1.5

    def infinite(arrays):
        arrays["mem_score"] = arrays["mem_score"].copy()
        arrays["mem_score"][4] = np.inf

    def scattered_nan(arrays):
        matrix = arrays["infl_matrix"].copy()
        row = int(np.flatnonzero(np.isfinite(matrix).all(axis=1))[0])
        matrix[row, 0] = np.nan
        arrays["infl_matrix"] = matrix

    def nan_top(arrays):
        arrays["infl_topk_score"] = arrays["infl_topk_score"].copy()
        arrays["infl_topk_score"][0, 0] = np.nan

    for change, fragment in ((big, "influence matrix[2, 1] is 1.5"),
                             (infinite, "memorization score[4] is inf"),
                             (scattered_nan, "NaN for some test examples only"),
                             (nan_top, "influence top-k score[0, 0] is nan")):
        bad = _edited(parts[1], tmp_path / "bad.npz", change)
        _refused([parts[0], bad], bad, fragment)


def test_malformed_parts_are_refused_in_one_line(parts, tmp_path):
    missing = _edited(parts[1], tmp_path / "missing.npz", lambda a: a.pop("infl_topk_train"))
    _refused([parts[0], missing], missing, "not a readable estimates part")

    def bad_meta(arrays):
        meta = json.loads(str(arrays["meta"]))
        meta["config"]["no_such_setting"] = 1
        arrays["meta"] = np.array(json.dumps(meta))

    meta = _edited(parts[1], tmp_path / "meta.npz", bad_meta)
    _refused([parts[0], meta], meta)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _refused([parts[0], str(tmp_path / "junk.npz")], str(tmp_path / "junk.npz"))


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"num_classes": np.array([3, 4])}, "num_classes is [3, 4]"),
    ({"num_classes": np.array(2.5)}, "expected one integer"),
    ({"x_train": np.float64(3.0)}, "x_train has shape []"),
    ({"y_test": np.int64(1)}, "y_test must be a 1-D array"),
])
def test_malformed_npz_data_sets_are_refused(tmp_path, extra, fragment):
    path = str(tmp_path / "data.npz")
    base = dict(x_train=np.zeros((4, 3)), y_train=np.array([0, 1, 2, 0]),
                x_test=np.zeros((2, 3)), y_test=np.array([0, 1]))
    np.savez(path, **{**base, **extra})
    with pytest.raises(ValueError) as info:
        sources.load_dataset(f"npz:{path}")
    assert fragment in str(info.value) and path in str(info.value)
    assert "\n" not in str(info.value)
