"""demo.py and heldout.models.checkpoints: restore a run's model, evaluate, compare with
aux arrays."""

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import heldout
from heldout.models import checkpoints
from heldout.store import records, runs
from heldout.training import core as training
from tests.models.test_small_inception import _hand_built_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EPS = 1e-5  # Sonnet BatchNorm's default, the published setting


def _unit_forward(unit, x, stride=1):
    """conv -> batch norm (moving statistics) -> relu, written with plain tf.nn ops."""
    y = tf.nn.conv2d(x, unit.conv.w, stride, "SAME")
    mean = tf.reshape(unit.bn.moving_mean.average, [-1])
    variance = tf.reshape(unit.bn.moving_variance.average, [-1])
    y = (y - mean) * tf.math.rsqrt(variance + EPS) * unit.bn.scale + unit.bn.offset
    return tf.nn.relu(y)


def _independent_logits(hand, images):
    """The published SmallInception forward pass (inference), independent of Sonnet."""
    x = _unit_forward(hand.conv1, images)
    for name in ("stage1", "stage2", "stage3"):
        stage = getattr(hand, name)
        for block in stage._body:
            x = tf.concat([_unit_forward(block.conv1x1, x), _unit_forward(block.conv3x3, x)], -1)
        if hasattr(stage, "_downsample"):
            x = _unit_forward(stage._downsample, x, stride=2)
    return tf.matmul(tf.reduce_max(x, axis=[1, 2]), hand._pred.w) + hand._pred.b


@pytest.fixture(scope="module")
def released_like_run(tmp_path_factory):
    """A run written by 'another program': hand-built published graph, its own predictions."""
    root = tmp_path_factory.mktemp("released")
    rng = np.random.default_rng(3)
    hand = _hand_built_model(rng, 10)
    for variable in hand.trainable_variables:  # keep activations in a sensible range
        if len(variable.shape) == 4:
            fan_in = np.prod(variable.shape[:3])
            variable.assign(variable / np.sqrt(fan_in))
    images = {split: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
              for split, n in (("train", 48), ("test", 24))}
    predicted = {split: np.argmax(_independent_logits(hand, x.astype(np.float32) / 255), 1)
                 for split, x in images.items()}
    # Labels: the model's own prediction for two thirds of the examples, another class else.
    labels = {split: np.where(np.arange(len(p)) % 3 == 0, (p + 1) % 10, p)
              for split, p in predicted.items()}
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images["train"], y_train=labels["train"],
             x_test=images["test"], y_test=labels["test"], num_classes=10)
    (root / "data.npz").write_bytes(buffer.getvalue())
    data = heldout.load_dataset(f"npz:{root / 'data.npz'}")

    run_dir = root / "cifar10" / "0.5" / "7"
    subset = np.sort(rng.choice(data.num_train, data.num_train // 2, replace=False))
    correct = {split: predicted[split] == labels[split] for split in predicted}
    runs.save_run(str(run_dir), runs.aux_arrays(subset, correct["train"], correct["test"]))
    tf.train.Checkpoint(model=hand, epoch=tf.Variable(17, dtype=tf.int64),
                        global_step=tf.Variable(3400, dtype=tf.int64)).write(
                            str(run_dir / "checkpoints" / "ckpt-17"))
    return root, run_dir, data, correct["test"]


def test_independent_checkpoint_restores_and_all_predictions_match(released_like_run):
    _, run_dir, data, correct_test = released_like_run
    assert 0 < correct_test.sum() < len(correct_test)  # a check that can fail
    check = heldout.check_run(str(run_dir), "small_inception", data, "test")
    assert (check.restored.epoch, check.restored.global_step) == (17, 3400)
    assert check.matches == check.total == data.num_test
    assert check.accuracy == pytest.approx(correct_test.mean())
    assert check.subset_fraction == pytest.approx(0.5)
    train_check = heldout.check_run(str(run_dir), "small_inception", data, "train")
    assert train_check.matches == train_check.total == data.num_train


def test_demo_cli_prints_all_predictions_match(released_like_run):
    root, run_dir, _, _ = released_like_run
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), f"--run_dir={run_dir}",
         "--arch=small_inception", f"--dataset=npz:{root / 'data.npz'}", "--split=test"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert "epoch 17, global_step 3400" in result.stdout
    assert "Subset fraction: 0.500" in result.stdout
    assert "24 out of 24 predictions match" in result.stdout


def test_demo_cli_names_variables_of_a_wrong_architecture(released_like_run):
    root, run_dir, _, _ = released_like_run
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), f"--run_dir={run_dir}", "--arch=mlp",
         f"--dataset=npz:{root / 'data.npz'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "does not fit --arch=mlp" in last
    assert "missing from checkpoint: model/_layers/0/w" in last and "more)" in last


def test_wrong_width_names_the_first_mismatched_variables(released_like_run):
    _, run_dir, data, _ = released_like_run
    with pytest.raises(ValueError, match=r"model/_pred/w.*\[336, 10\]|\[336, 10\].*_pred"):
        checkpoints.restore_run_model(str(run_dir), "small_inception", 10, (32, 32, 3),
                                      width=0.5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoints.find_checkpoint(str(tmp_path))


@pytest.mark.slow
def test_small_inception_trained_on_mock_cifar10_round_trips_through_demo(tmp_path):
    """train_experiment at tiny width on mock CIFAR-10, then the demo check on its run."""
    config = training.TrainConfig(model="small_inception", model_width=0.125, epochs=1,
                                  batch_size=16, augment="crop_flip", xla=False)
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = heldout.train_experiment(str(tmp_path), "tfds:cifar10", config, 0.5, [0, 1],
                                           save_checkpoints=True, progress=False)
        data = heldout.load_dataset("tfds:cifar10")
    assert summary.trained == (0, 1)
    run_dir = runs.run_dir(str(tmp_path), "0.5", 1)
    record = records.read_run_record(run_dir)
    assert record.model == "small_inception"
    check = heldout.check_run(run_dir, "small_inception", data, "train", width=0.125)
    assert check.restored.epoch == 1 and check.restored.global_step == record.optimizer_steps
    assert check.matches == check.total == data.num_train
    assert check.subset_fraction == pytest.approx(0.5)


def test_run_without_checkpoints_is_refused_with_the_command_that_adds_them(tmp_path):
    run_dir = runs.run_dir(str(tmp_path / "exp"), "0.7", 3)
    subset = np.arange(3)
    runs.save_run(run_dir, runs.aux_arrays(subset, np.ones(4, bool), np.ones(2, bool)),
                  records.RunRecord(dataset="digits", train_config={"model": "mlp"}))
    with pytest.raises(ValueError) as raised:
        heldout.run_demo(heldout.demo_job({"run_dir": run_dir}))
    message = str(raised.value)
    assert message.startswith(f"run_dir={run_dir}: no checkpoint")
    assert (f"--save_checkpoints --retrain_complete --experiment_dir={tmp_path / 'exp'} "
            "--subset=0.7 --run_ids=3") in message
    with pytest.raises(ValueError, match="not a complete run"):
        heldout.run_demo(heldout.demo_job({"run_dir": str(tmp_path / "nothing")}))
    with pytest.raises(ValueError, match="run_dir: empty"):
        heldout.demo_job({"run_dir": ""})


def test_truncated_checkpoint_is_one_line_naming_it(released_like_run, tmp_path):
    """Issue 13 case 6 in demo.py: the error the CLI prints for a damaged checkpoint."""
    import shutil

    from heldout.app import cli

    root, run_dir, _, _ = released_like_run
    damaged = tmp_path / "0.5" / "7"
    shutil.copytree(run_dir, damaged)
    (data_file,) = (damaged / "checkpoints").glob("ckpt-17.data*")
    os.truncate(data_file, data_file.stat().st_size // 2)
    with pytest.raises((ValueError, OSError, tf.errors.OpError)) as raised:
        heldout.run_demo(heldout.demo_job({"run_dir": str(damaged), "arch": "small_inception",
                                           "dataset": f"npz:{root / 'data.npz'}"}))
    line = cli.one_line(raised.value, cli.flag_namer({"run_dir": None}))
    assert "ckpt-17" in line and "\n" not in line, line


@pytest.mark.slow
def test_demo_streams_records_and_matches_by_index(tmp_path):
    """demo.py --records: the published ImageNet demo's path, on a ResNet-50-shaped run
    whose stored correctness was computed independently (tests/models/test_evaluate.py)."""
    from tests.data.test_build_imagenet import SYNSETS
    from tests.models.test_evaluate import IMAGE_SIZE, resnet_run

    root, run_dir, correct, _ = resnet_run.__wrapped__(_Factory(tmp_path))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), f"--run_dir={run_dir}", "--arch=resnet50",
         f"--records={root / 'records' / 'validation-*'}", f"--num_classes={len(SYNSETS)}",
         f"--image_size={IMAGE_SIZE}", "--progress=false"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    total = len(correct["test"])
    assert f"accuracy {correct['test'].mean():.4f} on {total} examples" in result.stdout
    assert result.stdout.strip().endswith(f"{total} out of {total} predictions match")


class _Factory:
    """The one method of pytest's tmp_path_factory a fixture body uses."""

    def __init__(self, path):
        self._path = path

    def mktemp(self, name):
        directory = self._path / name
        directory.mkdir()
        return directory
