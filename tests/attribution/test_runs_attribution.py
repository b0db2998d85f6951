"""Gradient methods on a trained run: checkpoints during training, TracIn/IF wiring, CLI."""

import dataclasses
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import heldout
from heldout.attribution import config as attribution_config
from heldout.attribution import influence_functions, runs_attribution, tracin, trak
from heldout.models import checkpoints
from heldout.store import records, runs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = heldout.TrainConfig(models_at_once=8, epochs=4, checkpoint_every=2, warmup_epochs=1.0)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("attribution") / "exp")
    heldout.train_experiment(directory, "digits", CONFIG, 0.7, range(8), save_checkpoints=True,
                             progress=False, settle_seconds=0.0)
    return directory


def test_checkpoints_during_training_record_their_learning_rate(experiment):
    run_dir = runs.run_dir(experiment, "0.7", 2)
    record = records.read_run_record(run_dir)
    steps = math.ceil(946 / CONFIG.batch_size)  # 70% of 1352 digits
    assert [c.epoch for c in record.checkpoints] == [2]
    assert record.checkpoints[0].global_step == 2 * steps
    # Mean of the schedule over every step since the start (issue 15): one epoch of linear
    # warm-up, then cosine.
    total, warmup = 4 * steps, steps
    rates = [CONFIG.learning_rate * (s + 1) / warmup if s < warmup else
             CONFIG.learning_rate * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
             for s in range(0, 2 * steps)]
    assert record.checkpoints[0].learning_rate == pytest.approx(np.mean(rates), rel=1e-5)
    # The final model: epochs 3-4, recorded by training (TracIn reads it, issue 23).
    final_rates = [CONFIG.learning_rate * 0.5 * (
        1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(2 * steps, total)]
    assert (record.final_checkpoint.epoch, record.final_checkpoint.global_step) == (4, total)
    assert record.final_checkpoint.learning_rate == pytest.approx(np.mean(final_rates),
                                                                  rel=1e-5)
    names = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert "ckpt-2.index" in names and "ckpt-4.index" in names


def test_tracin_of_a_run_equals_scoring_its_checkpoints_directly(experiment):
    """Both checkpoints: the one saved during training and the final model (epoch 4),
    weighted by the mean learning rate of epochs 3-4 (brute force over the schedule)."""
    data = heldout.load_dataset("digits")
    run_dir = runs.run_dir(experiment, "0.7", 2)
    result = runs_attribution.attribute_run(run_dir, "tracin", data, np.arange(5))
    steps = math.ceil(946 / CONFIG.batch_size)
    total, warmup = 4 * steps, steps
    final_rate = np.mean([CONFIG.learning_rate * 0.5 * (
        1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(2 * steps, total)])
    record = records.read_run_record(run_dir)
    assert record.tracin_checkpoints(run_dir) == [
        (2, record.checkpoints[0].learning_rate), (4, pytest.approx(final_rate, rel=1e-5))]
    direct_checkpoints = []
    for epoch, rate in ((2, record.checkpoints[0].learning_rate), (4, final_rate)):
        model = checkpoints.restore_run_model(run_dir, "mlp", 10, (8, 8, 1),
                                              prefix=f"{run_dir}/checkpoints/ckpt-{epoch}").model
        direct_checkpoints.append(tracin.Checkpoint(model, rate))
    direct = tracin.score_tracin(direct_checkpoints, data.x_train, data.y_train,
                                 data.x_test[:5], data.y_test[:5])
    np.testing.assert_allclose(result.self_influence, direct.self_influence, rtol=1e-5)
    np.testing.assert_allclose(result.scores, direct.scores, rtol=1e-4, atol=1e-6)
    subset = runs.load_run(run_dir)["subsample_idx"]
    assert result.in_subset.sum() == len(subset) and result.in_subset[subset].all()


def test_influence_functions_of_a_run_use_its_final_model(experiment, tmp_path):
    data = heldout.load_dataset("digits")
    run_dir = runs.run_dir(experiment, "0.7", 1)
    factors = str(tmp_path / "factors.npz")
    result = runs_attribution.attribute_run(run_dir, "if_kfac", data, None,
                                            factors_path=factors)
    final = checkpoints.restore_run_model(run_dir, "mlp", 10, (8, 8, 1)).model
    direct = influence_functions.score_influence_functions(
        final, data.x_train, data.y_train, config=attribution_config.InfluenceConfig(
            strategy="kfac"))
    np.testing.assert_allclose(result.self_influence, direct.self_influence, rtol=1e-4)
    assert os.path.exists(factors) and result.scores is None


def test_tracin_without_checkpoints_during_training_is_a_clear_error(tmp_path):
    directory = str(tmp_path / "exp")
    heldout.train_experiment(directory, "digits", heldout.TrainConfig(models_at_once=2, epochs=1),
                             0.7, [0], save_checkpoints=True, progress=False,
                             settle_seconds=0.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        runs_attribution.attribute_run(runs.run_dir(directory, "0.7", 0), "tracin",
                                       heldout.load_dataset("digits"), None)


@pytest.mark.slow
def test_estimate_cli_runs_ekfac_beside_retraining(experiment):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "estimate.py"), f"--experiment_dir={experiment}",
         "--estimator=if_ekfac", "--run_id=3", "--eval_indices=0-9", "--progress=false"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    for phase in ("fit covariance", "eigendecomposition", "fit lambda", "scores"):
        assert phase in result.stdout
    assert "Spearman correlation with retraining memorization (8 runs)" in result.stdout
    saved = np.load(os.path.join(experiment, "if_ekfac-0.7-run3.npz"))
    assert saved["scores"].shape == (1352, 10)
    assert saved["eval_indices"].tolist() == list(range(10))


def test_trak_of_runs_uses_their_final_models_and_chooses_lambda_on_other_runs(experiment):
    data = heldout.load_dataset("digits")
    run_dirs = [runs.run_dir(experiment, "0.7", r) for r in (0, 1)]
    config = attribution_config.TRAKConfig(projection_dim=32, lambda_reg=(0.1, 10.0))
    selection = heldout.load_experiment(experiment, "0.7", progress=False)
    others = ~np.isin(selection.run_ids, [0, 1])
    selection = dataclasses.replace(selection, run_ids=selection.run_ids[others],
                                    membership=selection.membership[others],
                                    logodds_test=selection.logodds_test[others])
    eval_indices = np.arange(3, 9)
    result = runs_attribution.trak_of_runs(run_dirs, data, eval_indices, config, selection)
    models = [checkpoints.restore_run_model(d, "mlp", 10, (8, 8, 1)).model for d in run_dirs]
    direct = trak.score_trak(models, data.x_train, data.y_train, data.x_test[eval_indices],
                             data.y_test[eval_indices], config, selection.membership,
                             selection.logodds_test[:, eval_indices])
    assert result.lambda_reg == direct.lambda_reg and set(result.selection) == {0.1, 10.0}
    np.testing.assert_allclose(result.scores, direct.scores, rtol=1e-6)
