"""Tests of heldout/training/airbench.py: whitening, initialization, schedule, weight averaging,
K models side by side, and the trainer end to end on mock CIFAR-10."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import heldout
from heldout.data import sources as data_lib
from heldout.models import airbench as airbench_net
from heldout.store import designs as subsets_lib
from heldout.store import records, runs
from heldout.training import airbench, airbench_recipe
from heldout.training import core as training
from heldout.training import recipes as recipes_lib

TINY_WIDTH = 1 / 16  # group widths 4, 16, 16


def _images(rng, n=40, size=8):
    """Images with correlated channels and neighbouring pixels, like natural ones."""
    base = rng.normal(size=(n, size + 1, size + 1, 1))
    smooth = base[:, 1:, 1:] + base[:, :-1, :-1] + 0.3 * rng.normal(size=(n, size, size, 3))
    return (smooth * [1.0, 0.8, 0.5] + [0.5, 0.4, 0.3]).astype(np.float32)


# --- whitening and initialization ----------------------------------------------------


def test_whitening_filters_are_the_patch_eigenvectors():
    images = _images(np.random.default_rng(0))
    filters = airbench_net.whitening_filters(images)
    assert filters.shape == (2, 2, 3, 24)
    # Plain NumPy: every 2x2 patch flattened as [dy, dx, channel].
    windows = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]

    positive = filters[..., :12].reshape(12, 12)  # column j: filter j
    np.testing.assert_array_equal(filters[..., 12:], -filters[..., :12])
    norms = np.linalg.norm(positive, axis=0)
    np.testing.assert_allclose(norms, 1 / np.sqrt(eigenvalues + airbench_net.WHITENING_EPS),
                               rtol=1e-5)
    unit = positive / norms
    signs = np.sign((unit * eigenvectors).sum(axis=0))  # eigenvectors are defined up to sign
    np.testing.assert_allclose(unit * signs, eigenvectors, atol=1e-5)
    # Together the filters invert the (regularized) patch covariance: they whiten.
    np.testing.assert_allclose(positive @ positive.T,
                               np.linalg.inv(covariance + airbench_net.WHITENING_EPS * np.eye(12)),
                               rtol=1e-3, atol=1e-3)


def _built(num_models=2, width=TINY_WIDTH, grouped="native", shape=(32, 32, 3)):
    model = airbench_net.Airbench(10, num_models, width, grouped=grouped)
    model(tf.zeros([1, *shape]), is_training=False)
    return model


def test_initialize_whitens_each_models_own_images_and_dirac_convs():
    rng = np.random.default_rng(1)
    images = [_images(rng, 30, 32), _images(rng, 30, 32) * 2.0 + 1.0]
    model = _built()
    model.initialize([np.random.default_rng(5), np.random.default_rng(6)], images)
    for k in range(2):
        mean, std = airbench_net.input_statistics(images[k])
        np.testing.assert_allclose(model.whiten.input_mean[k], images[k].mean(axis=(0, 1, 2)),
                                   rtol=1e-5)
        np.testing.assert_allclose(model.whiten.w[k],
                                   airbench_net.whitening_filters((images[k] - mean) / std),
                                   rtol=1e-5)
    # Whitened outputs of a model's own images: uncorrelated, about unit variance.
    single = model.export(1, (32, 32, 3))
    whitened = single.whiten(tf.constant(images[1])).numpy()[..., :12].reshape(-1, 12)
    second_moment = whitened.T @ whitened / len(whitened)
    np.testing.assert_allclose(second_moment, np.eye(12), atol=0.05)
    # Convolutions: identity in the first min(C, F) filters, PyTorch's uniform elsewhere.
    for conv in (model.group1.conv1, model.group2.conv1, model.group3.conv2):
        w = conv.w.numpy()
        _, kh, kw, channels, features = w.shape
        n = min(channels, features)
        identity = np.zeros((kh, kw, channels, n))
        identity[1, 1, np.arange(n), np.arange(n)] = 1
        np.testing.assert_array_equal(w[:, ..., :n], np.broadcast_to(identity, w[..., :n].shape))
        rest = w[..., n:]
        if rest.size:
            assert np.abs(rest).max() <= 1 / math.sqrt(9 * channels)
            assert not np.array_equal(rest[0], rest[1])  # each model from its own seed
    assert all(not np.any(norm.offset.numpy()) for norm in model.batch_norms())


def test_model_has_published_shape_and_parameter_count():
    model = _built(num_models=1, width=1.0)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # Published: convs 24->64->64->256->256->256->256, head 256->10, BN biases, whitening bias.
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 256 * 256 + 256 * 256 + 256 * 256)
    assert trainable == convs + 256 * 10 + 2 * (64 + 256 + 256) + 24
    assert model(tf.zeros([3, 32, 32, 3]), is_training=False).shape == (3, 10)
    assert not model.whiten.w.trainable


@pytest.mark.parametrize("grouped", ["native", "split"])
def test_k_models_side_by_side_equal_each_model_alone(grouped):
    model = _built(num_models=3, grouped=grouped)
    rng = np.random.default_rng(2)
    model.initialize([np.random.default_rng(s) for s in (1, 2, 3)],
                     [_images(rng, 20, 32) for _ in range(3)])
    images = tf.constant(_images(rng, 6, 32))
    per_model = tf.constant(np.stack([_images(rng, 6, 32) for _ in range(3)]))
    separate = model(per_model, is_training=True).numpy()  # also updates the statistics
    shared = model(images, is_training=False).numpy()
    for k in range(3):
        single = model.export(k, (32, 32, 3))
        np.testing.assert_allclose(single(images, is_training=False), shared[k], atol=1e-5)
        np.testing.assert_allclose(single(per_model[k][None], is_training=True)[0],
                                   separate[k], atol=1e-4)
    assert np.abs(shared[0] - shared[1]).max() > 1e-3


def test_batch_norm_keeps_pytorch_running_statistics():
    norm = airbench_net.BatchNorm(num_models=2)
    x = tf.constant(np.random.default_rng(3).normal(2.0, 3.0, (8, 4, 4, 10)), tf.float32)
    out = norm(x, is_training=True).numpy()
    flat = x.numpy().reshape(-1, 10)
    mean, variance = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(out.reshape(-1, 10), (flat - mean) / np.sqrt(variance), atol=1e-4)
    decay = airbench_net.BN_DECAY
    np.testing.assert_allclose(norm.moving_mean.numpy().ravel(), (1 - decay) * mean, rtol=1e-5)
    unbiased = variance * len(flat) / (len(flat) - 1)
    np.testing.assert_allclose(norm.moving_variance.numpy().ravel(),
                               decay + (1 - decay) * unbiased, rtol=1e-5)
    assert [v.name for v in norm.trainable_variables] == ["batch_norm/offset:0"]


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16])
def test_fused_gelu_equals_closed_form_and_its_derivative(dtype):
    x = np.linspace(-6.0, 6.0, 241)
    erf = np.vectorize(math.erf)
    expected = x * 0.5 * (1 + erf(x / math.sqrt(2)))
    expected_grad = 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(
        2 * math.pi)
    inputs = tf.constant(x, dtype)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = airbench_net.gelu(inputs)
    grads = tape.gradient(outputs, inputs)
    assert outputs.dtype == grads.dtype == dtype
    tolerance = {tf.float32: 1e-5, tf.float16: 1e-2, tf.bfloat16: 5e-2}[dtype]
    np.testing.assert_allclose(tf.cast(outputs, tf.float64), expected, atol=tolerance * 6)
    np.testing.assert_allclose(tf.cast(grads, tf.float64), expected_grad, atol=tolerance * 2)


# --- recipe, schedule and weight averaging -------------------------------------------


def test_recipe_in_toolkit_units():
    values = airbench_recipe.recipe()
    kilostep = 1024 * (1 + 1 / (1 - 0.85))  # 7850.67: Nesterov step size per 1024 examples
    assert values["learning_rate"] == pytest.approx(11.5 / kilostep)
    # learning_rate * weight_decay is the published decoupled decay per step.
    assert values["learning_rate"] * values["weight_decay"] == pytest.approx(
        0.0153 * 1024 / kilostep)
    assert (values["batch_size"], values["momentum"], values["nesterov"]) == (1024, 0.85, True)
    assert values["warmup_epochs"] == pytest.approx(0.23 * values["epochs"])
    assert (values["label_smoothing"], values["augment"]) == (0.2, "airbench")
    config = recipes_lib.config_for({"model": "airbench"})
    assert config.lr_schedule == "triangle" and config.models_at_once == 1


def test_triangle_schedule_hand_values():
    peak, total, warmup = 2.0, 100, 23
    # airbench94: interpolate (0, 0.2), (23% of steps, 1), (all steps, 0.07).
    expected = {0: 0.4, 10: 2.0 * (0.2 + 0.8 * 10 / 23), 23: 2.0,
                50: 2.0 * (1 - 0.93 * 27 / 77), 99: 2.0 * (1 - 0.93 * 76 / 77)}
    for step, value in expected.items():
        assert float(training.learning_rate_at(step, total, warmup, peak, "triangle")) == \
            pytest.approx(value, rel=1e-6), step
        assert np.interp(step, [0, 23, 100], [0.4, 2.0, 0.14]) == pytest.approx(value)


def test_lookahead_decay_and_update_hand_values():
    assert float(airbench.lookahead_decay(50, 100)) == pytest.approx(0.95 ** 5 * 0.125)
    assert float(airbench.lookahead_decay(100, 100)) == pytest.approx(0.7737809375)
    assert float(airbench.lookahead_decay(0, 100)) == 0.0
    average, weights = airbench.lookahead_update(tf.constant([1.0, -2.0]),
                                                 tf.constant([3.0, 2.0]), 0.25)
    np.testing.assert_allclose(average, [2.5, 1.0])  # 0.25 * avg + 0.75 * weights
    np.testing.assert_allclose(weights, average)


# --- training on mock CIFAR-10 -------------------------------------------------------


@pytest.fixture(scope="module")
def cifar():
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        return data_lib.load_dataset("tfds:cifar10")


def _config(**kwargs):
    """The airbench recipe at tiny width and batch, with `kwargs` set as if by flags."""
    chosen = {"model_width": TINY_WIDTH, "epochs": 1, "batch_size": 8, "xla": False, **kwargs}
    return recipes_lib.config_for({"model": "airbench", **chosen})


def _group(dataset, run_ids):
    seeds = [subsets_lib.run_seeds(0, "0.5", r) for r in run_ids]
    subsets = [subsets_lib.subset_indices(dataset.num_train, "0.5", 0, r) for r in run_ids]
    return subsets, [s.init for s in seeds], [s.order for s in seeds]


@pytest.mark.slow
def test_airbench_runs_are_complete_and_checkpoints_restore(tmp_path, cifar):
    config = _config(epochs=2)
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = heldout.train_experiment(str(tmp_path), "tfds:cifar10", config, 0.5, [0, 1],
                                           save_checkpoints=True, progress=False, data=cifar)
    assert summary.trained == (0, 1)
    for run_id in (0, 1):
        run_dir = runs.run_dir(str(tmp_path), "0.5", run_id)
        arrays = runs.load_run(run_dir)
        assert len(arrays["subsample_idx"]) == 20 and len(arrays["correctness_test"]) == 40
        record = records.read_run_record(run_dir)
        assert record.model == "airbench"
        assert record.optimizer_steps == 2 * math.ceil(20 / 8)
    # The checkpoint restores into a fresh single model that predicts what was recorded
    # (train split: the 20 trained-on and the 20 held-out examples).
    check = heldout.check_run(run_dir, "airbench", cifar, "train", width=TINY_WIDTH)
    assert check.matches == check.total == 40
    assert check.restored.global_step == record.optimizer_steps


@pytest.mark.slow
def test_run_does_not_depend_on_its_group_and_whitening_bias_freezes(cifar):
    config = _config(epochs=airbench.WHITEN_BIAS_EPOCHS + 1, models_at_once=2)
    trainer = airbench.AirbenchTrainer(cifar, config)
    biases = []
    grouped = trainer.train(*_group(cifar, [0, 1]), save_logits=True,
                            on_epoch=lambda _: biases.append(trainer.model.whiten.b.numpy()))
    # Trained in the first epochs, then frozen (the averaging leaves it alone too).
    assert not np.allclose(biases[0], 0)
    np.testing.assert_array_equal(biases[airbench.WHITEN_BIAS_EPOCHS - 1], biases[-1])
    assert trainer._averaging_started.numpy().all()
    alone = airbench.AirbenchTrainer(cifar, dataclasses.replace(config, models_at_once=1))
    (single,) = alone.train(*[x[1:] for x in _group(cifar, [0, 1])], save_logits=True)
    np.testing.assert_allclose(single.test.logits, grouped[1].test.logits, atol=1e-4)
    assert np.abs(grouped[0].test.logits - grouped[1].test.logits).max() > 1e-3
    assert 0 <= grouped[0].test_accuracy_tta <= 1


def test_mixed_float16_steps_run_with_loss_scaling(cifar):
    """(mixed_bfloat16 runs in tests/test_cifar_trainers.py, on SmallInception.)"""
    trainer = airbench.AirbenchTrainer(cifar, _config(precision="mixed_float16"))
    (run,) = trainer.train(*_group(cifar, [0]))
    assert np.isfinite(run.test.margin).all() and run.steps == 3
    assert all(v.dtype == tf.float32 for v in trainer.model.variables)
    assert trainer._loss_scale.scale.numpy()[0] == training.DynamicLossScale.INITIAL



@pytest.mark.slow
def test_xla_compiled_training_equals_uncompiled(cifar):
    """The whole step under XLA (GPU default) trains the same model as TensorFlow's kernels."""
    runs_by_xla = {}
    for xla in (False, True):
        trainer = airbench.AirbenchTrainer(cifar, _config(xla=xla))
        (runs_by_xla[xla],) = trainer.train(*_group(cifar, [0]), save_logits=True)
    np.testing.assert_allclose(runs_by_xla[True].test.logits, runs_by_xla[False].test.logits,
                               atol=1e-3)
    assert np.abs(runs_by_xla[True].test.logits).max() > 1e-2  # trained, not all zero


def test_checkpoint_every_gives_snapshots_of_the_model_after_that_epoch(cifar):
    """A snapshot holds exactly the weights the group's model had after its epoch."""
    config = _config(epochs=2, checkpoint_every=1, models_at_once=2)
    trainer = airbench.AirbenchTrainer(cifar, config)
    after_epoch = []

    def record(_):
        after_epoch.append([v.numpy()[1] for v in trainer.model.variables])

    tf.config.run_functions_eagerly(True)  # tiny: no tracing needed
    try:
        grouped = trainer.train(*_group(cifar, [0, 1]), export_models=True, on_epoch=record)
    finally:
        tf.config.run_functions_eagerly(False)
    (snapshot,) = grouped[1].snapshots
    assert (snapshot.epoch, snapshot.steps) == (1, math.ceil(20 / 8))
    for value, expected in zip([v.numpy()[0] for v in snapshot.model.variables],
                               after_epoch[0], strict=True):
        np.testing.assert_array_equal(value, expected)
    final = [v.numpy()[0] for v in grouped[1].model.variables]
    assert any(not np.array_equal(a, b) for a, b in zip(final, after_epoch[0], strict=True))
    assert snapshot.learning_rate > 0 and grouped[1].final_learning_rate > 0


def test_example_weights_are_honoured(cifar):
    """Per-example loss weights reach the airbench step: zero weights on 5 of the run's
    examples change it (same seeds and batches; without weights the trainer passes
    weights of 1, the same program)."""
    trainer = airbench.AirbenchTrainer(cifar, _config())
    group = _group(cifar, [0])
    (plain,) = trainer.train(*group, save_logits=True)
    weights = np.ones(cifar.num_train)
    weights[group[0][0][:5]] = 0.0
    (dropped,) = trainer.train(*group, save_logits=True, example_weights=[weights])
    assert np.abs(dropped.test.logits - plain.test.logits).max() > 1e-4
