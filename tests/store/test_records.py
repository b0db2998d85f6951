"""Tests of heldout/store/records.py: the run record (run.json) round trip, files of
earlier versions and of released runs, damaged files, and TracIn's checkpoint weights."""

import json

import numpy as np
import pytest

from heldout.errors import ParameterError
from heldout.store import files, records, runs

# A run.json as the version before the typed record wrote it (a run trained with
# save_checkpoints and checkpoint_every=2 of 4 epochs), key for key.
EARLIER_VERSION = {
    "dataset": "digits", "seed": 0,
    "train_config": {"model": "mlp", "model_width": 0.5, "epochs": 4, "learning_rate": 0.1},
    "data": {"num_train": 1352, "num_test": 445, "sha256": "ab12"},
    "subset": "0.7", "run_id": 2, "num_train_examples": 946, "optimizer_steps": 120,
    "accuracy": {"train": 1.0, "removed": 0.96875, "test": 0.9775},
    "seconds": 1.25, "models_trained_together": 8,
    "finished_at": "2026-12-01T10:00:00+0000", "host": "node-3", "pid": 4242,
    "versions": {"python": "3.11.7", "tensorflow": "2.21.0", "sonnet": "2.0.2",
                 "numpy": "2.1.0"},
    "checkpoints": [{"epoch": 2, "global_step": 60, "learning_rate": 0.0875}],
}


def _record(**changes):
    fields = dict(
        dataset="digits", seed=3, train_config={"model": "cnn", "epochs": 6},
        data={"num_train": 10}, subset="drop-nsi", run_id=7, num_train_examples=9,
        optimizer_steps=36, accuracy=records.Accuracy(train=1.0, removed=None, test=0.5),
        seconds=2.5, models_trained_together=4, finished_at="now", host="h", pid=1,
        versions={"numpy": "2"}, targets={"name": "nsi", "groups": {"user": [3]}},
        checkpoints=(records.CheckpointRecord(2, 12, 0.05),
                     records.CheckpointRecord(4, 24, 0.025)),
        final_checkpoint=records.CheckpointRecord(6, 36, 0.0125))
    fields.update(changes)
    return records.RunRecord(**fields)


def test_write_then_read_round_trips_every_field(tmp_path):
    directory = runs.run_dir(str(tmp_path), "drop-nsi", 7)
    record = _record()
    records.write_run_record(directory, record)
    assert records.read_run_record(directory) == record
    # The file is plain JSON under the documented keys (readable without this module).
    content = json.loads((tmp_path / "drop-nsi" / "7" / "run.json").read_text())
    assert content["final_checkpoint"] == {"epoch": 6, "global_step": 36,
                                           "learning_rate": 0.0125}
    assert content["checkpoints"][1] == {"epoch": 4, "global_step": 24, "learning_rate": 0.025}
    assert content["accuracy"] == {"train": 1.0, "removed": None, "test": 0.5}
    assert content["train_config"]["model"] == "cnn" and content["run_id"] == 7
    assert records.RunRecord.from_json(content) == record


def test_save_run_writes_the_record_and_none_without_one(tmp_path):
    arrays = runs.aux_arrays(np.array([0, 2]), np.array([True, False, True]), np.array([True]))
    with_record = runs.run_dir(str(tmp_path), "0.7", 0)
    runs.save_run(with_record, arrays, _record(run_id=0))
    assert records.read_run_record(with_record).run_id == 0
    without = runs.run_dir(str(tmp_path), "0.7", 1)
    runs.save_run(without, arrays)
    assert not (tmp_path / "0.7" / "1" / "run.json").exists()
    assert records.read_run_record(without) == records.RunRecord()


def test_earlier_version_file_reads(tmp_path):
    directory = runs.run_dir(str(tmp_path), "0.7", 2)
    files.write_json(f"{directory}/run.json", EARLIER_VERSION)
    record = records.read_run_record(directory)
    assert (record.model, record.model_width, record.seed) == ("mlp", 0.5, 0)
    assert record.accuracy == records.Accuracy(1.0, 0.96875, 0.9775)
    assert record.checkpoints == (records.CheckpointRecord(2, 60, 0.0875),)
    assert record.final_checkpoint is None and record.targets is None and not record.extra
    assert record.to_json() == EARLIER_VERSION  # nothing lost, nothing added
    # It never recorded the final model's learning rate: TracIn refuses, in one line.
    with pytest.raises(ParameterError) as raised:
        record.tracin_checkpoints(directory)
    assert raised.value.parameter == "run_dir" and raised.value.value == directory
    assert "earlier version" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ParameterError, match="^run_dir: run.json records no final"):
        record.tracin_checkpoints()


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    later = {**EARLIER_VERSION, "gpu": {"name": "v5e"}, "notes": ["resumed"]}
    record = records.RunRecord.from_json(later)
    assert record.extra == {"gpu": {"name": "v5e"}, "notes": ["resumed"]}
    directory = runs.run_dir(str(tmp_path), "0.7", 2)
    records.write_run_record(directory, record)
    assert json.loads((tmp_path / "0.7" / "2" / "run.json").read_text()) == later


def test_released_runs_and_empty_files_give_an_empty_record(tmp_path):
    directory = runs.run_dir(str(tmp_path), "0.7", 0)
    assert records.read_run_record(directory) == records.RunRecord()
    files.write_json(f"{directory}/run.json", {})
    empty = records.read_run_record(directory)
    assert empty == records.RunRecord() and empty.is_empty and not _record().is_empty
    assert (empty.model, empty.model_width, empty.checkpoints, empty.saved_epochs()) == (
        None, 1.0, (), [])
    assert empty.to_json() == {}


@pytest.mark.parametrize("content, named", [
    (b"{half a", "not a valid JSON file"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"seed": "three"}', "malformed 'seed'"),
    (b'{"run_id": 2.5}', "malformed 'run_id'"),
    (b'{"train_config": [1]}', "malformed 'train_config'"),
    (b'{"checkpoints": [{"epoch": 2}]}', "malformed 'checkpoints'"),
    (b'{"accuracy": {"train": 1}}', "malformed 'accuracy'"),
])
def test_damaged_files_name_the_file_and_key(tmp_path, content, named):
    directory = runs.run_dir(str(tmp_path), "0.7", 0)
    files.write_bytes(f"{directory}/run.json", content)
    with pytest.raises(files.StoredFileError, match=named) as raised:
        records.read_run_record(directory)
    assert str(raised.value).startswith(f"{directory}/run.json: ")


def test_tracin_checkpoints_and_saved_epochs():
    record = _record()
    assert record.saved_epochs() == [2, 4, 6]
    assert record.tracin_checkpoints() == [(2, 0.05), (4, 0.025), (6, 0.0125)]
    # Checkpoints listed out of order are sorted; a final model only: itself.
    shuffled = _record(checkpoints=tuple(reversed(record.checkpoints)))
    assert shuffled.tracin_checkpoints() == record.tracin_checkpoints()
    final_only = _record(checkpoints=())
    assert final_only.tracin_checkpoints() == [(6, 0.0125)] and final_only.saved_epochs() == [6]


def test_with_settings_adds_the_experiment_settings():
    bare = _record(dataset=None, seed=None, train_config={}, data=None)
    settings = {"dataset": "digits", "seed": 3, "train_config": {"model": "cnn", "epochs": 6},
                "data": {"num_train": 10}, "note": "kept"}
    record = bare.with_settings(settings)
    assert record == _record(extra={"note": "kept"})
    with pytest.raises(files.StoredFileError, match="^settings: malformed 'seed'"):
        bare.with_settings({"seed": "three"})
