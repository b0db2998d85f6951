"""Tests of heldout/training/retrain.py: which complete runs lack what a request asks for,
read from their files and records (no training)."""

import numpy as np

from heldout.store import files, layout, records, runs
from heldout.training import retrain
from heldout.training.config import TrainConfig

CONFIG = TrainConfig(epochs=4, checkpoint_every=2)


def _run(directory, run_id, checkpoint_epochs, record):
    run_dir = runs.run_dir(directory, "0.7", run_id)
    runs.save_run(run_dir, runs.aux_arrays(np.array([0, 2]), np.ones(3, bool), np.ones(2, bool)),
                  record)
    for epoch in checkpoint_epochs:  # what restoring looks for: the index files
        files.write_bytes(layout.RunDir(run_dir).checkpoint(epoch) + ".index", b"")


def test_runs_lacking_checkpoints_or_their_recorded_learning_rates(tmp_path):
    directory = str(tmp_path)
    snapshot = records.CheckpointRecord(2, 20, 0.05)
    final = records.CheckpointRecord(4, 40, 0.01)
    _run(directory, 0, [2, 4], records.RunRecord(checkpoints=(snapshot,),
                                                 final_checkpoint=final))
    # Trained by an earlier version: files all there, the final learning rate not recorded.
    _run(directory, 1, [2, 4], records.RunRecord(checkpoints=(snapshot,)))
    _run(directory, 2, [4], records.RunRecord(final_checkpoint=final))  # no snapshot
    _run(directory, 3, [], records.RunRecord())  # no checkpoints at all
    ids = range(5)  # run 4 does not exist: not complete, nothing to retrain
    assert retrain.lacking(directory, "0.7", ids, CONFIG, True, False) == [1, 2, 3]
    # Without snapshots asked for, only the final model's checkpoint file counts.
    plain = TrainConfig(epochs=4)
    assert retrain.lacking(directory, "0.7", ids, plain, True, False) == [3]
    assert retrain.lacking(directory, "0.7", ids, CONFIG, False, False) == []
