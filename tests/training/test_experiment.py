"""Tests of heldout.training.experiment: the orchestration's trust rules (issue 13)."""

import json
import pathlib
import time

import numpy as np
import pytest

from heldout.data import sources
from heldout.store import coordination, runs
from heldout.store import experiment_info as info_lib
from heldout.training import experiment
from heldout.training.core import TrainConfig

TINY = TrainConfig(models_at_once=4, epochs=1, batch_size=16)


def _write_small_npz(path, shift=0.0):
    digits = sources.load_digits()
    np.savez(path, x_train=digits.x_train[:80] + shift, y_train=digits.y_train[:80],
             x_test=digits.x_test[:30], y_test=digits.y_test[:30])


def test_runs_of_a_replaced_data_file_and_claimed_runs(tmp_path):
    data_file = tmp_path / "data.npz"
    _write_small_npz(data_file)
    directory = str(tmp_path / "exp")
    claims = pathlib.Path(directory, ".claims", "0.7")
    claims.mkdir(parents=True)
    for run_id in (2, 3):  # live claims of another worker
        (claims / f"{run_id}.json").write_text(json.dumps({
            "token": "other", "host": "another-host", "pid": 1, "task": "slurm:1:1",
            "expires": time.time() + 3600}))
    summary = experiment.train_experiment(directory, f"npz:{data_file}", TINY, 0.7,
                                          range(4), progress=False, settle_seconds=0.0)
    assert summary.trained == (0, 1) and summary.still_claimed == (2, 3)
    assert summary.exit_status == coordination.EXIT_RUNS_CLAIMED_ELSEWHERE == 3
    recorded = info_lib.read_experiment_info(directory)
    assert recorded.data == info_lib.data_fingerprint(
        sources.load_dataset(f"npz:{data_file}"))
    assert runs.verify_runs(directory) == (2, [])

    _write_small_npz(data_file, shift=0.25)  # another file behind the same spec
    with pytest.raises(info_lib.SettingsMismatchError, match=r"data\.sha256") as error:
        experiment.train_experiment(directory, f"npz:{data_file}", TINY, 0.7, range(4, 6),
                                    progress=False, settle_seconds=0.0)
    assert "\n" not in str(error.value)
    with pytest.raises(info_lib.SettingsMismatchError,
                       match=r"train_config\.epochs \(stored 1, given 2\)"):
        experiment.train_experiment(directory, f"npz:{data_file}",
                                    TrainConfig(models_at_once=4, epochs=2, batch_size=16),
                                    0.7, range(4, 6), progress=False, settle_seconds=0.0)
    assert runs.list_runs(directory, "0.7") == ([0, 1], [])


def test_directory_with_runs_but_no_experiment_json_is_refused(tmp_path):
    directory = str(tmp_path / "released")
    arrays = runs.aux_arrays(np.arange(3), np.ones(5, bool), np.ones(2, bool))
    runs.save_run(runs.run_dir(directory, "0.7", 0), arrays)
    with pytest.raises(ValueError, match="holds runs but no experiment.json"):
        experiment.train_experiment(directory, "digits", TINY, 0.7, range(2), progress=False)
    assert runs.load_run(runs.run_dir(directory, "0.7", 0))  # reading stays allowed


def test_diverged_runs_are_not_written_and_the_error_names_run_and_learning_rate(tmp_path):
    data_file = tmp_path / "data.npz"
    _write_small_npz(data_file)
    directory = str(tmp_path / "exp")
    config = TrainConfig(models_at_once=4, epochs=1, batch_size=16, learning_rate=1e30)
    with pytest.raises(experiment.NonFiniteRunError) as error:
        experiment.train_experiment(directory, f"npz:{data_file}", config, 0.7, range(4),
                                    progress=False, settle_seconds=0.0, claim_runs=False)
    message = str(error.value)
    assert message.startswith("run 0 (and runs 1-3) of ") and "learning_rate (1e+30)" in message
    assert "\n" not in message
    assert runs.list_runs(directory, "0.7")[0] == []


def test_writer_threads_fewer_for_local_disks_than_remote_stores(tmp_path):
    from heldout.training import experiment
    assert experiment._writer_threads(str(tmp_path)) == experiment.LOCAL_WRITER_THREADS
    assert experiment._writer_threads(f"file://{tmp_path}") == experiment.LOCAL_WRITER_THREADS
    assert experiment._writer_threads("gs://bucket/exp") == experiment.REMOTE_WRITER_THREADS
    assert experiment.LOCAL_WRITER_THREADS < experiment.REMOTE_WRITER_THREADS


def test_bank_runs_share_the_base_seeds_and_store_their_weights(tmp_path):
    """A bank design: run 0 is the base (all weights 1), run 1 drops 10% of the
    examples as zero weights, stored beside its aux arrays; the base equals a run of
    the same seeds trained by the trainer directly, and run 1 retrained with its stored
    weights is reproduced bit for bit."""
    from heldout.store import designs
    from heldout.training.ensemble import EnsembleTrainer

    data_file = tmp_path / "data.npz"
    _write_small_npz(data_file)
    directory = str(tmp_path / "exp")
    experiment.train_experiment(directory, f"npz:{data_file}", TINY, "bank-0.1", [0, 1],
                                progress=False)
    base = runs.load_run(runs.run_dir(directory, "bank-0.1", 0))
    dropped = runs.load_run(runs.run_dir(directory, "bank-0.1", 1))
    assert (base[runs.EXAMPLE_WEIGHTS] == 1).all()
    assert (dropped[runs.EXAMPLE_WEIGHTS] == 0).sum() == 8
    assert len(dropped[runs.SUBSET_INDICES]) == 80  # every example keeps its batch slots
    data = sources.load_dataset(f"npz:{data_file}")
    seeds = designs.bank_seeds(0)
    again = EnsembleTrainer(data, TINY).train(
        [np.arange(80)] * 2, [seeds.init] * 2, [seeds.order] * 2,
        example_weights=[base[runs.EXAMPLE_WEIGHTS], dropped[runs.EXAMPLE_WEIGHTS]])
    np.testing.assert_array_equal(again[0].test.logodds, base["logodds_test"])
    np.testing.assert_array_equal(again[1].test.logodds, dropped["logodds_test"])
    assert not np.array_equal(base["logodds_test"], dropped["logodds_test"])
