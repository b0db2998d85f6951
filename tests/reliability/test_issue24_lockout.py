"""Issue 24, item 3 (lock-out): a first attempt that is refused or diverges leaves nothing
that blocks the corrected command, while two workers started at once with different
settings still never mix their runs; leases and float settings refuse NaN and infinity.

In process, on the embedded digits at tiny sizes (K = 4, one epoch).
"""

import concurrent.futures
import json
import math
import threading

import pytest

import heldout
from heldout.app import train as train_job
from heldout.errors import ParameterError
from heldout.store import coordination, records, runs
from heldout.store import experiment_info as info_lib
from heldout.training import experiment
from heldout.training.config import TrainConfig

TINY = {"num_runs": 2, "models_at_once": 4, "epochs": 1, "progress": False,
        "claim_runs": False}


def _job(directory, **given):
    return train_job.job_from_flags({**TINY, "experiment_dir": str(directory), **given})


def test_diverged_first_attempt_does_not_block_the_corrected_command(tmp_path):
    """--learning_rate=1e30: every run diverges and none is written, so the attempt takes
    its record back; the same command with a sane rate then trains (before: refused,
    naming train_config.learning_rate, until experiment.json was deleted by hand)."""
    with pytest.raises(experiment.NonFiniteRunError, match="learning_rate"):
        heldout.train(_job(tmp_path, learning_rate=1e30))
    assert info_lib.read_experiment_info(str(tmp_path)) is None
    assert runs.list_runs(str(tmp_path), "0.7")[0] == []
    report = heldout.train(_job(tmp_path, learning_rate=0.1))
    assert report.summaries[0].trained == (0, 1)
    recorded = info_lib.read_experiment_info(str(tmp_path))
    assert recorded.train_config["learning_rate"] == 0.1
    # The record belongs to the runs written: each run.json holds the same settings.
    info = records.read_run_record(runs.run_dir(str(tmp_path), "0.7", 0)).to_json()
    assert {k: info[k] for k in recorded.to_json()} == recorded.to_json()


def test_refused_first_attempt_records_nothing(tmp_path):
    """A setting the trainer refuses (augment on streamed records, here through the
    library, past the front door's own check) and a NaN weight decay leave no
    experiment.json behind."""
    import numpy as np

    from heldout.data import imagenet
    from tests.data.test_imagenet import _write_shards
    from tests.training.test_streaming import IMAGE_SIZE, _split

    rng = np.random.default_rng(0)
    train = _write_shards(tmp_path, "train", _split(rng, 8), 1)
    test = _write_shards(tmp_path, "validation", _split(rng, 4), 1)
    spec = f"imagenet:{train},{test}"
    directory = str(tmp_path / "streamed")
    with pytest.raises(ParameterError, match="^augment=flip"):
        experiment.train_experiment(
            directory, spec, TrainConfig(model="small_inception", augment="flip", epochs=1),
            "0.5", [0], data=imagenet.streaming_data(spec, IMAGE_SIZE), progress=False,
            claim_runs=False, settle_seconds=0)
    assert info_lib.read_experiment_info(directory) is None

    with pytest.raises(ParameterError) as raised:
        heldout.train(_job(tmp_path / "nan", weight_decay=math.nan))
    assert raised.value.parameter == "weight_decay"
    assert not (tmp_path / "nan").exists()


def test_racing_workers_with_different_settings_still_never_mix(tmp_path):
    """Two workers start at once on an empty directory with different epochs: exactly
    one writes runs, the other is refused before writing any, naming the differing key."""
    directory = str(tmp_path)
    start = threading.Barrier(2)

    def work(epochs):
        config = TrainConfig(models_at_once=4, epochs=epochs)
        start.wait()
        try:
            experiment.train_experiment(directory, "digits", config, 0.7, range(4),
                                        progress=False, claim_runs=False, settle_seconds=0)
        except info_lib.SettingsMismatchError as e:
            return str(e)
        return None

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(work, (1, 2)))
    assert sum(o is None for o in outcomes) == 1, outcomes
    winner = 1 if outcomes[0] is None else 2
    assert "train_config.epochs" in next(o for o in outcomes if o is not None)
    assert info_lib.read_experiment_info(directory).train_config["epochs"] == winner
    written = runs.list_runs(directory, "0.7")[0]
    assert written == [0, 1, 2, 3]
    for run_id in written:
        info = json.loads((tmp_path / "0.7" / str(run_id) / "run.json").read_text())
        assert info["train_config"]["epochs"] == winner


@pytest.mark.parametrize("lease", [math.nan, math.inf, 0.0, -5.0])
def test_leases_that_never_expire_or_never_hold_are_refused(tmp_path, lease):
    """--lease_seconds=nan wrote claims that never expired, inf crashed the heartbeat."""
    with pytest.raises(ParameterError) as raised:
        coordination.Claims(str(tmp_path), lease_seconds=lease)
    assert raised.value.parameter == "lease_seconds"
    with pytest.raises(ParameterError) as raised:
        _job(tmp_path, claim_runs=True, lease_seconds=lease)
    assert raised.value.parameter == "lease_seconds"


def test_a_record_taken_back_meanwhile_is_made_again_before_the_first_run(tmp_path,
                                                                          monkeypatch):
    """A worker that found another's record (same settings) keeps going if that other
    worker's first attempt fails and takes its record back: the worker records again
    before its first run, so its runs never stand without experiment.json."""
    record = info_lib.record_experiment_info
    calls = []

    def record_then_taken_back(directory, info, settle_seconds=1.0):
        calls.append(directory)
        created = record(directory, info, settle_seconds)
        if len(calls) == 1:  # the other worker's failed attempt removes the record now
            info_lib.remove_experiment_info(directory)
            return False  # and this worker did not create it
        return created

    monkeypatch.setattr(info_lib, "record_experiment_info", record_then_taken_back)
    summary = experiment.train_experiment(
        str(tmp_path), "digits", TrainConfig(models_at_once=4, epochs=1), 0.7, range(2),
        progress=False, claim_runs=False, settle_seconds=0)
    assert summary.trained == (0, 1) and len(calls) == 2
    assert info_lib.read_experiment_info(str(tmp_path)).train_config["epochs"] == 1
