"""The CIFAR trainers: recipes, precision, on-device augmentation, and SmallInception,
the K-at-once CNN and airbench end to end (mock CIFAR-10, train.py and demo.py)."""

import dataclasses
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf
import tensorflow_datasets as tfds

import heldout
from heldout.data import augment
from heldout.models.small_inception import SmallInception
from heldout.store import records, runs
from heldout.training import core as training
from heldout.training import recipes as recipes_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# --- recipes and settings ------------------------------------------------------------


def test_config_for_keeps_given_settings_and_scales_warmup():
    given = {"model": "small_inception", "epochs": 40, "batch_size": 32}
    config = recipes_lib.config_for(given)
    recipe = recipes_lib.SMALL_INCEPTION_RECIPE
    assert (config.epochs, config.batch_size) == (40, 32)
    assert (config.learning_rate, config.momentum, config.augment, config.lr_schedule) == (
        recipe["learning_rate"], recipe["momentum"], "crop_flip", "linear")
    assert config.warmup_epochs == pytest.approx(recipe["warmup_epochs"] * 40 / recipe["epochs"])
    full = recipes_lib.config_for({"model": "small_inception"})
    assert (full.epochs, full.warmup_epochs, full.models_at_once) == (
        recipe["epochs"], recipe["warmup_epochs"], 1)
    with pytest.raises(ValueError, match="^recipe='nope'"):
        recipes_lib.config_for(given, "nope")
    assert recipes_lib.config_for(given, "none") == training.TrainConfig(**given)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "float16"}, "^precision=float16: expected one of float32, mixed_bfloat16"),
    ({"model": "cnn", "precision": "mixed_bfloat16"}, "K-at-once models .* train in float32"),
    ({"model": "mlp", "test_time_flip": True}, "^test_time_flip: only for image models"),
    ({"augment": "cutout"}, "^augment=cutout"),
])
def test_train_config_rejects_precision_and_augment(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**kwargs)


# --- augmentation on the device ------------------------------------------------------


def _batch(n=6, size=8):
    return tf.constant(np.random.default_rng(0).uniform(size=(n, size, size, 3)), tf.float32)


def _lowbias32(x):
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= x >> shift
        x = (x * multiplier) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_uniform_is_the_integer_hash_and_the_same_under_xla():
    seed = [7, -3]
    words = [s & 0xFFFFFFFF for s in seed]
    key = _lowbias32(words[0] ^ _lowbias32((words[1] + 0x9E3779B9) & 0xFFFFFFFF))
    expected = [(_lowbias32((i * 0x9E3779B9 + key) & 0xFFFFFFFF) >> 8) / 2**24
                for i in range(6)]
    draws = augment.uniform([3, 2], tf.constant(seed))
    np.testing.assert_array_equal(draws.numpy().ravel(), np.float32(expected))
    many = lambda: augment.uniform([50_000], tf.constant(seed))  # noqa: E731
    plain, compiled = many().numpy(), tf.function(many, jit_compile=True)().numpy()
    np.testing.assert_array_equal(plain, compiled)
    assert 0 <= plain.min() and plain.max() < 1
    counts = np.histogram(plain, bins=10, range=(0, 1))[0]
    assert ((counts - 5000) ** 2 / 5000).sum() < 27.9  # chi-square, 9 dof, p = 0.001
    integers = augment.uniform_integers([50_000], tf.constant(seed), 5).numpy()
    np.testing.assert_array_equal(np.unique(integers), np.arange(5))


def test_fold_in_is_the_integer_hash_and_the_same_under_xla():
    seed, data = [7, -3], 12345
    w0, w1 = (s & 0xFFFFFFFF for s in seed)
    first = _lowbias32((w0 + _lowbias32((data * 0x9E3779B9 + w1) & 0xFFFFFFFF)) & 0xFFFFFFFF)
    second = _lowbias32(w1 ^ _lowbias32((first + 0x9E3779B9) & 0xFFFFFFFF))
    expected = np.array([first, second], np.uint32).view(np.int32)
    fold = lambda s, d: augment.fold_in(s, d)  # noqa: E731
    args = (tf.constant(seed), tf.constant(data))
    np.testing.assert_array_equal(fold(*args), expected)
    np.testing.assert_array_equal(tf.function(fold, jit_compile=True)(*args), expected)
    streams = {tuple(augment.fold_in(tf.constant(seed), i).numpy()) for i in range(100)}
    assert len(streams) == 100


def test_alternating_flips_mirror_every_example_once_per_two_epochs():
    phase = augment.flip_phase(tf.constant([1, 2]), 1000)
    assert 400 < int(tf.reduce_sum(tf.cast(phase, tf.int32))) < 600
    indices = tf.constant([3, 999, 3, 17])
    even, odd = (augment.alternating_flips(tf.gather(phase, indices), tf.constant(e))
                 for e in (4, 7))
    np.testing.assert_array_equal(even.numpy(), tf.gather(phase, indices).numpy())
    np.testing.assert_array_equal(odd.numpy(), ~even.numpy())
    images = _batch(4)
    flipped = augment.augment(images, tf.constant([0, 0]), "altflip", flips=odd)
    for i in range(4):
        expected = images[i, :, ::-1] if odd[i] else images[i]
        np.testing.assert_array_equal(flipped[i], expected)
    with pytest.raises(ValueError, match="alternates flips by epoch"):
        augment.augment(images, tf.constant([0, 0]), "airbench")


def test_cutout_zeroes_one_square_inside_each_image():
    images = _batch() + 1.0  # no zeros of its own
    out = augment.cutout(images, tf.constant([3, 4]), size=3).numpy()
    for image in out:
        zero = np.all(image == 0, axis=-1)
        rows, columns = np.nonzero(zero)
        assert zero.sum() == 9 and np.ptp(rows) == 2 and np.ptp(columns) == 2


def test_airbench_translation_is_a_crop_of_the_reflect_padded_image():
    images = _batch(20)
    out = augment.random_crop(images, tf.constant([5, 6]), padding=2, mode="REFLECT").numpy()
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets = set()
    for image, source in zip(out, padded, strict=True):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(image, source[dy:dy + 8, dx:dx + 8])]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 5


# --- precision -----------------------------------------------------------------------


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_interval(monkeypatch):
    monkeypatch.setattr(training.DynamicLossScale, "GROWTH_INTERVAL", 2)
    scale = training.DynamicLossScale(enabled=True, num_models=2)
    grads, finite = scale.unscale([tf.constant([[2.0 ** 15], [np.inf]])], model_axis=True)
    np.testing.assert_array_equal(finite, [True, False])
    assert float(grads[0][0, 0]) == 1.0
    scale.update(finite)
    np.testing.assert_array_equal(scale.scale, [2.0 ** 15, 2.0 ** 14])
    scale.update(tf.constant([True, True]))
    np.testing.assert_array_equal(scale.scale, [2.0 ** 16, 2.0 ** 14])  # two good steps
    assert float(scale.scale_loss(tf.constant([1.0, 2.0]))) == 2.0 ** 16 + 2.0 ** 15
    off = training.DynamicLossScale(enabled=False)
    assert float(off.scale_loss(tf.constant([3.0]))) == 3.0


def test_compute_precision_casts_weights_but_not_batch_norm():
    model = SmallInception(10, width_multiplier=0.125)
    images = tf.zeros([2, 32, 32, 3])
    model(images, is_training=False)
    with tf.GradientTape() as tape:
        with training.compute_precision(model, "mixed_bfloat16") as dtype:
            assert dtype == tf.bfloat16
            assert model.conv1.conv.w.dtype == tf.bfloat16
            assert model.conv1.bn.offset.dtype == tf.float32
            logits = model(tf.cast(images + 0.5, dtype), is_training=True)
        loss = tf.reduce_sum(tf.cast(logits, tf.float32))
    assert logits.dtype == tf.bfloat16
    assert isinstance(model.conv1.conv.w, tf.Variable)  # back to normal outside
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g.dtype == tf.float32 for g in grads)
    assert model.conv1.bn.moving_mean.average.dtype == tf.float32
    assert isinstance(model.conv1.bn, snt.BaseBatchNorm)


# --- trainers end to end on mock CIFAR-10 --------------------------------------------


@pytest.fixture(scope="module")
def cifar():
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        return heldout.load_dataset("tfds:cifar10")


@pytest.mark.slow
def test_small_inception_mixed_precision_runs_restore_through_demo(tmp_path, cifar):
    config = training.TrainConfig(model="small_inception", model_width=0.125, epochs=1,
                                  batch_size=8, augment="crop_altflip", xla=False,
                                  precision="mixed_bfloat16")
    summary = heldout.train_experiment(str(tmp_path), "tfds:cifar10", config, 0.5, [1],
                                       save_checkpoints=True, progress=False, data=cifar)
    assert summary.trained == (1,)
    run_dir = runs.run_dir(str(tmp_path), "0.5", 1)
    assert records.read_run_record(run_dir).train_config["precision"] == "mixed_bfloat16"
    check = heldout.check_run(run_dir, "small_inception", cifar, "test", width=0.125)
    assert check.matches == check.total == 40  # predictions are float32 either way


@pytest.mark.slow
def test_cnn_k_at_once_on_cifar_images(tmp_path, cifar):
    config = training.TrainConfig(model="cnn", epochs=2, batch_size=8, models_at_once=3,
                                  augment="none", xla=False)
    summary = heldout.train_experiment(str(tmp_path), "tfds:cifar10", config, 0.5, [0, 1, 2],
                                       progress=False, data=cifar)
    assert summary.trained == (0, 1, 2)
    experiment = runs.load_experiment(str(tmp_path), "0.5", progress=False)
    assert experiment.membership.shape == (3, 40)
    record = records.read_run_record(runs.run_dir(str(tmp_path), "0.5", 2))
    assert record.models_trained_together == 3


@pytest.mark.slow
def test_train_py_airbench_recipe_and_demo_py(tmp_path, cifar):
    buffer = io.BytesIO()
    np.savez(buffer, x_train=(cifar.x_train * 255).astype(np.uint8), y_train=cifar.y_train,
             x_test=(cifar.x_test * 255).astype(np.uint8), y_test=cifar.y_test, num_classes=10)
    (tmp_path / "cifar.npz").write_bytes(buffer.getvalue())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    experiment_dir = tmp_path / "experiment"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), f"--dataset=npz:{tmp_path / 'cifar.npz'}",
         f"--experiment_dir={experiment_dir}", "--model=airbench", "--model_width=0.0625",
         "--epochs=1", "--batch_size=16", "--xla=false", "--num_runs=1", "--save_checkpoints",
         "--progress=false"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    record = records.read_run_record(runs.run_dir(str(experiment_dir), "0.7", 0))
    recipe = dataclasses.asdict(recipes_lib.config_for(
        {"model": "airbench", "model_width": 0.0625, "epochs": 1, "batch_size": 16}))
    for key in ("learning_rate", "momentum", "nesterov", "label_smoothing", "augment",
                "lr_schedule", "warmup_epochs", "weight_decay"):
        assert record.train_config[key] == recipe[key], key
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"),
         f"--run_dir={runs.run_dir(str(experiment_dir), '0.7', 0)}"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "40 out of 40 predictions match" in result.stdout
