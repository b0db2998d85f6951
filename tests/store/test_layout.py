"""Tests of heldout.store.layout: the one owner of an experiment directory's paths."""

import re

import pytest

from heldout.store import layout


def test_every_path_of_the_documented_layout():
    experiment = layout.ExperimentDir("gs://bucket/exp")
    run = experiment.run("0.7", 12)
    assert experiment.experiment_info == "gs://bucket/exp/experiment.json"
    assert experiment.subset("drop-nsi") == "gs://bucket/exp/drop-nsi"
    assert run.path == "gs://bucket/exp/0.7/12"
    assert run.aux_arrays == "gs://bucket/exp/0.7/12/aux_arrays.npz"
    assert run.run_info == "gs://bucket/exp/0.7/12/run.json"
    assert run.checkpoints == "gs://bucket/exp/0.7/12/checkpoints"
    assert run.checkpoint(3) == "gs://bucket/exp/0.7/12/checkpoints/ckpt-3"
    assert run.checkpoint_indexes == "gs://bucket/exp/0.7/12/checkpoints/ckpt-*.index"
    assert (run.subset_dir, run.run_id) == ("gs://bucket/exp/0.7", "12")
    assert re.fullmatch(r"gs://bucket/exp/0\.7/\.corrupt/12-\d+\.npz", run.corrupt())
    assert experiment.aux_arrays_glob("0.7") == "gs://bucket/exp/0.7/*/aux_arrays.npz"
    assert experiment.targets("nsi") == "gs://bucket/exp/targets/nsi.json"
    assert experiment.claims("0.7") == "gs://bucket/exp/.claims/0.7"
    assert layout.claim_file(experiment.claims("0.7"), 4) == "gs://bucket/exp/.claims/0.7/4.json"
    assert experiment.estimates("0.7") == "gs://bucket/exp/estimates-0.7.npz"
    assert experiment.estimates(None) == "gs://bucket/exp/estimates-cscore.npz"
    assert experiment.targeted_report("nsi") == "gs://bucket/exp/self_influence-nsi.npz"
    assert experiment.attribution("tracin", "0.7", 0) == "gs://bucket/exp/tracin-0.7-run0.npz"
    assert (experiment.plots, experiment.tables) == ("gs://bucket/exp/plots",
                                                     "gs://bucket/exp/tables")
    assert layout.output_file("out/csv", "memorization", "csv") == "out/csv/memorization.csv"


def test_local_root_and_trailing_slash():
    assert layout.ExperimentDir("exp/").run("full", 0).aux_arrays == "exp/full/0/aux_arrays.npz"


def test_empty_experiment_dir_is_refused():
    with pytest.raises(ValueError, match="experiment_dir: expected a directory"):
        layout.ExperimentDir(" ")
