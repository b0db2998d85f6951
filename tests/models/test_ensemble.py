"""Tests of heldout/models.py: ensemble layers against plain TensorFlow, export to a
single Sonnet model, checkpoints of the exported model, and initial values."""

import math

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from heldout.models import ensemble as models
from heldout.models import registry

# Standard deviation of a standard normal truncated to [-2, 2] (Sonnet's and
# tf.random.truncated_normal's truncation): sqrt(1 - 4 phi(2) / (Phi(2) - Phi(-2))).
TRUNCATED_NORMAL_STD = 0.8796256610342398


def _randomize(module, seed):
    """Assigns standard-normal values (scaled by 1/sqrt(fan_in) for weights) to every
    variable, so biases and all slices are non-trivial."""
    rng = np.random.default_rng(seed)
    for variable in module.variables:
        scale = 1.0 / math.sqrt(variable.shape[1]) if variable.shape[1] > 1 else 0.5
        variable.assign(rng.normal(size=variable.shape).astype(np.float32) * scale)


# --- ensemble layers ----------------------------------------------------------------


def test_ensemble_linear_equals_per_model_matmul():
    num_models, batch, fan_in, fan_out = 3, 5, 7, 4
    layer = models.EnsembleLinear(fan_out, num_models)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_models, batch, fan_in)).astype(np.float32)
    layer(tf.constant(x))
    assert layer.w.shape == (num_models, fan_in, fan_out)
    assert layer.b.shape == (num_models, 1, fan_out)
    _randomize(layer, 1)
    w, b = layer.w.numpy().astype(np.float64), layer.b.numpy().astype(np.float64)
    out = layer(tf.constant(x)).numpy()
    assert out.shape == (num_models, batch, fan_out)
    for k in range(num_models):
        np.testing.assert_allclose(out[k], x[k] @ w[k] + b[k, 0], rtol=1e-5, atol=1e-5)
    # A batch shared by all models.
    shared = layer(tf.constant(x[:1])).numpy()
    assert shared.shape == (num_models, batch, fan_out)
    np.testing.assert_allclose(shared, layer(tf.constant(np.tile(x[:1], (3, 1, 1)))).numpy(),
                               rtol=1e-5, atol=1e-5)
    for k in range(num_models):
        np.testing.assert_allclose(shared[k], x[0] @ w[k] + b[k, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_ensemble_conv2d_equals_tf_conv2d(kernel_size):
    num_models, batch, height, width, channels, filters = 3, 2, 6, 5, 2, 4
    layer = models.EnsembleConv2D(filters, kernel_size, num_models)
    rng = np.random.default_rng(kernel_size)
    x = rng.normal(size=(num_models, batch, height, width, channels)).astype(np.float32)
    layer(tf.constant(x))
    assert layer.w.shape == (num_models, kernel_size * kernel_size * channels, filters)
    _randomize(layer, 2)
    out = layer(tf.constant(x)).numpy()
    assert out.shape == (num_models, batch, height, width, filters)

    def reference(images, k):
        kernel = tf.reshape(layer.w[k], [kernel_size, kernel_size, channels, filters])
        return (tf.nn.conv2d(images, kernel, strides=1, padding="SAME") + layer.b[k, 0]).numpy()

    for k in range(num_models):
        np.testing.assert_allclose(out[k], reference(x[k], k), rtol=1e-5, atol=1e-5)
    shared = layer(tf.constant(x[:1])).numpy()
    tiled = layer(tf.constant(np.tile(x[:1], (num_models, 1, 1, 1, 1)))).numpy()
    np.testing.assert_allclose(shared, tiled, rtol=1e-5, atol=1e-5)
    for k in range(num_models):
        np.testing.assert_allclose(shared[k], reference(x[0], k), rtol=1e-5, atol=1e-5)


def test_ensemble_conv2d_with_unknown_batch_dims():
    """Under tf.function with unknown leading dims (as in a retraced training step)."""
    layer = models.EnsembleConv2D(4, 3, 2)
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 6, 1)).astype(np.float32)
    layer(tf.constant(x))
    _randomize(layer, 4)
    eager = layer(tf.constant(x)).numpy()
    compiled = tf.function(layer.__call__, input_signature=[
        tf.TensorSpec([None, None, 6, 6, 1], tf.float32)])
    np.testing.assert_allclose(compiled(tf.constant(x)).numpy(), eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled(tf.constant(x[:1])).numpy(),
                               layer(tf.constant(np.tile(x[:1], (2, 1, 1, 1, 1)))).numpy(),
                               rtol=1e-5, atol=1e-5)


# --- ensembles and their export -----------------------------------------------------


MODEL_CASES = [("mlp", (8, 8, 1)), ("mlp", (12,)), ("cnn", (8, 8, 1)), ("cnn", (6, 10, 3))]


def _random_ensemble(name, num_classes, num_models, input_shape, seed):
    ensemble = registry.build_ensemble(name, num_classes, num_models)
    ensemble(tf.zeros([1, 1, *input_shape]))
    _randomize(ensemble, seed)
    return ensemble


@pytest.mark.parametrize(("name", "input_shape"), MODEL_CASES)
def test_export_matches_ensemble_model(name, input_shape):
    num_models, num_classes = 3, 10
    ensemble = _random_ensemble(name, num_classes, num_models, input_shape, seed=5)
    x = np.random.default_rng(6).uniform(size=(9, *input_shape)).astype(np.float32)
    logits = ensemble(tf.constant(x[None])).numpy()
    assert logits.shape == (num_models, 9, num_classes)
    # Models really differ, so a wrong slice cannot pass.
    assert np.abs(logits[0] - logits[1]).max() > 1e-2
    for k in range(num_models):
        single = ensemble.export(k, input_shape)
        assert isinstance(single, snt.Module)
        assert not isinstance(single, type(ensemble))
        assert len(single.trainable_variables) == len(ensemble.trainable_variables)
        for variable, ensemble_variable in zip(
                single.trainable_variables, ensemble.trainable_variables, strict=True):
            assert variable.shape.num_elements() * num_models == \
                ensemble_variable.shape.num_elements()
        out = single(tf.constant(x)).numpy()
        assert out.shape == (9, num_classes)
        np.testing.assert_allclose(out, logits[k], rtol=1e-5, atol=1e-5)
    # Model k of a batch of its own equals model k on the shared batch.
    per_model = np.tile(x[None], (num_models, 1, *[1] * len(input_shape)))
    np.testing.assert_allclose(ensemble(tf.constant(per_model)).numpy(), logits,
                               rtol=1e-5, atol=1e-5)


def test_mlp_export_matches_numpy_forward():
    """An independent forward pass of the exported MLP from its ensemble's weights."""
    ensemble = _random_ensemble("mlp", 10, 2, (8, 8, 1), seed=7)
    x = np.random.default_rng(8).uniform(size=(5, 8, 8, 1))
    (w0, b0), (w1, b1) = [(layer.w.numpy()[1], layer.b.numpy()[1, 0])
                          for layer in ensemble._layers]
    hidden = np.maximum(x.reshape(5, 64) @ w0 + b0, 0)
    expected = hidden @ w1 + b1
    single = ensemble.export(1, (8, 8, 1))
    np.testing.assert_allclose(single(tf.constant(x, tf.float32)).numpy(), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "input_shape"), [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1))])
def test_exported_model_checkpoint_round_trip(tmp_path, name, input_shape):
    x = tf.constant(np.random.default_rng(9).uniform(size=(4, *input_shape)), tf.float32)
    single = _random_ensemble(name, 10, 3, input_shape, seed=10).export(2, input_shape)
    expected = single(x).numpy()
    path = tf.train.Checkpoint(
        model=single, epoch=tf.Variable(7, dtype=tf.int64),
        global_step=tf.Variable(1234, dtype=tf.int64)).save(str(tmp_path / "ckpt"))

    fresh = _random_ensemble(name, 10, 1, input_shape, seed=11).export(0, input_shape)
    assert np.abs(fresh(x).numpy() - expected).max() > 1e-2  # differs before restoring
    epoch = tf.Variable(0, dtype=tf.int64)
    global_step = tf.Variable(0, dtype=tf.int64)
    status = tf.train.Checkpoint(model=fresh, epoch=epoch, global_step=global_step).restore(path)
    status.assert_consumed()
    np.testing.assert_array_equal(fresh(x).numpy(), expected)
    assert int(epoch.numpy()) == 7 and int(global_step.numpy()) == 1234


def test_build_ensemble_unknown_model():
    with pytest.raises(ValueError, match=r"model='nope' is not a known model.*cnn, mlp"):
        registry.build_ensemble("nope", 10, 2)


# --- initial values -----------------------------------------------------------------


def _built(name, num_models, input_shape=(8, 8, 1)):
    ensemble = registry.build_ensemble(name, 10, num_models)
    ensemble(tf.zeros([1, 1, *input_shape]))
    return ensemble


def _is_bias(variable):
    return variable.name.split("/")[-1].startswith("b")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_initial_values_per_model_seeds(name):
    seeds = [np.random.SeedSequence(s) for s in (100, 200, 100, 300)]
    ensemble = _built(name, 4)
    alone = _built(name, 1)
    assert sum(_is_bias(v) for v in ensemble.trainable_variables) == \
        len(ensemble.trainable_variables) // 2
    rngs = [np.random.default_rng(s) for s in seeds]
    rngs_alone = [np.random.default_rng(seeds[1])]
    for variable, variable_alone in zip(
            ensemble.trainable_variables, alone.trainable_variables, strict=True):
        values = models.initial_values(variable, rngs)
        assert values.shape == tuple(variable.shape) and values.dtype == np.float32
        if _is_bias(variable):
            assert not values.any()
            continue
        np.testing.assert_array_equal(values[0], values[2])  # same seed, same slice
        assert not np.array_equal(values[0], values[1])
        assert not np.array_equal(values[1], values[3])
        # Model 1's slice does not depend on the other models of its ensemble.
        np.testing.assert_array_equal(models.initial_values(variable_alone, rngs_alone)[0],
                                      values[1])


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_initial_weight_distribution(layer_kind):
    """Truncated normal with stddev 1/sqrt(fan_in), like Sonnet's default initializer."""
    if layer_kind == "linear":
        layer, sonnet_layer = models.EnsembleLinear(256, 2), snt.Linear(256)
        x = tf.zeros([1, 1, 400])
        fan_in = 400
    else:
        layer, sonnet_layer = models.EnsembleConv2D(64, 3, 2), snt.Conv2D(64, 3)
        x = tf.zeros([1, 1, 4, 4, 16])
        fan_in = 3 * 3 * 16
    layer(x)
    sonnet_layer(x[0])
    assert layer.w.shape[1] == fan_in
    values = models.initial_values(layer.w, [np.random.default_rng(s) for s in (1, 2)])
    for k in range(2):
        w = values[k].astype(np.float64)
        assert np.abs(w).max() <= 2.0 / math.sqrt(fan_in) + 1e-7
        assert abs(w.mean()) < 0.05 / math.sqrt(fan_in)
        np.testing.assert_allclose(w.std() * math.sqrt(fan_in), TRUNCATED_NORMAL_STD, rtol=0.03)
        # Close to 1/sqrt(fan_in), and to what Sonnet's own initializer draws.
        np.testing.assert_allclose(w.std(), 1 / math.sqrt(fan_in), rtol=0.15)
        np.testing.assert_allclose(w.std(), sonnet_layer.w.numpy().std(), rtol=0.05)
    biases = models.initial_values(layer.b, [np.random.default_rng(s) for s in (1, 2)])
    assert biases.shape == (2, 1, layer.b.shape[-1]) and not biases.any()
