"""Tests of heldout.estimate.merge: sharded estimates merged equal the one-machine result."""

import dataclasses

import numpy as np
import pytest

from heldout.estimate import merge, pipeline
from heldout.store import runs

try:  # the save/load pair of estimate files (heldout.estimate.export, from the store work)
    from heldout.estimate.export import load_estimates, save_estimates
except ImportError:  # before it lands, pipeline writes the files
    from heldout.estimate.pipeline import save_estimates
    load_estimates = None

NUM_RUNS, NUM_TRAIN, NUM_TEST = 40, 25, 11


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny experiment written with save_run: random membership and correctness, with a
    planted influence (training example 3 helps test example 2)."""
    directory = tmp_path_factory.mktemp("experiment")
    rng = np.random.default_rng(0)
    membership = rng.random((NUM_RUNS, NUM_TRAIN)) < 0.7
    correct_train = rng.random((NUM_RUNS, NUM_TRAIN)) < 0.6
    correct_test = rng.random((NUM_RUNS, NUM_TEST)) < 0.6
    correct_test[:, 2] = np.where(membership[:, 3], rng.random(NUM_RUNS) < 0.95,
                                  rng.random(NUM_RUNS) < 0.2)
    for r in range(NUM_RUNS):
        runs.save_run(runs.run_dir(str(directory), "0.7", r),
                      runs.aux_arrays(np.flatnonzero(membership[r]), correct_train[r],
                                      correct_test[r]))
    return str(directory)


def _config(**kwargs) -> pipeline.EstimateConfig:
    settings = dict(estimators=("memorization", "influence", "cscore"), top_k=4,
                    threshold=0.2, num_pairs=7)
    settings.update(kwargs)
    return pipeline.EstimateConfig(**settings)


def _arrays(estimates, path) -> dict:
    save_estimates(estimates, str(path))
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files if key != "meta"}  # meta: JSON of settings


@pytest.mark.parametrize("count", [1, 3, 4])
def test_merged_shards_equal_the_one_machine_result_bit_for_bit(experiment, tmp_path, count):
    whole = pipeline.estimate_experiment(experiment, _config(), progress=False)
    parts = [pipeline.estimate_experiment(experiment, _config(eval_shard=(i, count)),
                                          progress=False) for i in range(count)]
    merged = merge.merge_estimates(parts[::-1])  # any order
    assert merged.config == whole.config
    expected, got = _arrays(whole, tmp_path / "whole.npz"), _arrays(merged, tmp_path / "m.npz")
    assert sorted(got) == sorted(expected) and "infl_above_train" in got
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert np.array_equal(got[key], value, equal_nan=True), key
    # The planted pair is found by the merged result too.
    assert (3, 2) in set(zip(merged.influence.pairs.train, merged.influence.pairs.eval,
                             strict=True))


def test_parts_that_do_not_belong_together(experiment):
    parts = [pipeline.estimate_experiment(experiment, _config(eval_shard=(i, 3)),
                                          progress=False) for i in range(3)]
    names = ["a.npz", "b.npz", "c.npz"]
    with pytest.raises(ValueError, match="shard\\(s\\) 1/3 missing"):
        merge.merge_estimates([parts[0], parts[2]])
    with pytest.raises(ValueError, match="c.npz and b.npz: both are shard 1/3"):
        merge.merge_estimates([parts[0], parts[1], parts[1]], names)
    other = pipeline.estimate_experiment(experiment, _config(eval_shard=(2, 3), min_runs=2),
                                         progress=False)
    with pytest.raises(ValueError, match="c.npz: settings differ .*min_runs=2 vs \\d+"):
        merge.merge_estimates([parts[0], parts[1], other], names)
    fewer_runs = dataclasses.replace(parts[2], run_ids=parts[2].run_ids[:-1])
    with pytest.raises(ValueError, match="c.npz: estimated from other runs"):
        merge.merge_estimates([parts[0], parts[1], fewer_runs], names)
    elsewhere = dataclasses.replace(parts[1], experiment_dir="/elsewhere")
    with pytest.raises(ValueError, match="b.npz: experiment_dir '/elsewhere' differs"):
        merge.merge_estimates([parts[0], elsewhere, parts[2]], names)
    overlapping = dataclasses.replace(parts[2], influence=dataclasses.replace(
        parts[2].influence, eval_indices=parts[2].influence.eval_indices - 1))
    with pytest.raises(ValueError, match="c.npz and b.npz: both cover test example"):
        merge.merge_estimates([parts[0], parts[1], overlapping], names)
    whole = pipeline.estimate_experiment(experiment, _config(), progress=False)
    with pytest.raises(ValueError, match="a.npz: not a shard"):
        merge.merge_estimates([whole], ["a.npz"])


@pytest.mark.skipif(load_estimates is None, reason="needs heldout.estimate.export")
def test_merging_files_written_by_shards(experiment, tmp_path):
    paths = []
    for i in range(3):
        part = pipeline.estimate_experiment(experiment, _config(eval_shard=(i, 3)),
                                            progress=False)
        paths.append(str(tmp_path / f"part{i}.npz"))
        save_estimates(part, paths[-1])
    merged = merge.merge_estimate_files(paths)
    whole = pipeline.estimate_experiment(experiment, _config(), progress=False)
    expected, got = _arrays(whole, tmp_path / "whole.npz"), _arrays(merged, tmp_path / "m.npz")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(got[key], value, equal_nan=True), key
    with pytest.raises(ValueError, match="part2.npz: settings differ"):
        save_estimates(pipeline.estimate_experiment(
            experiment, _config(eval_shard=(2, 3), top_k=3), progress=False), paths[2])
        merge.merge_estimate_files(paths)
