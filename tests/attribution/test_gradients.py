"""Per-example gradients and projections, each checked against a plain loop over examples."""

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from heldout.attribution import gradients, projection
from heldout.models import ensemble as models


class ConvBatchNormNet(snt.Module):
    """Strided, dilated, VALID/SAME and bias-free convolutions with BatchNorm between."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self.conv = snt.Conv2D(4, 3, stride=2, padding="SAME", with_bias=False, name="conv")
        self.bn = snt.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.9)
        self.dilated = snt.Conv2D(3, 2, rate=2, padding="VALID", name="dilated")
        self.head = snt.Linear(5, name="head")

    def __call__(self, images, is_training=False):
        outputs = tf.nn.relu(self.bn(self.conv(images), is_training=is_training))
        outputs = tf.nn.relu(self.dilated(outputs))
        return self.head(tf.reshape(outputs, [tf.shape(outputs)[0], -1]))


def _data(n, shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def _loop_gradients(model, x, y, measurement):
    """{variable name: [n, *shape]} from one tape per example, measurement written out."""
    variables = model.trainable_variables
    result = {v.name: [] for v in variables}
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = model(tf.constant(x[i:i + 1]), is_training=False)[0]
            label = int(y[i])
            if measurement == "loss":
                value = tf.reduce_logsumexp(logits) - logits[label]
            else:
                others = tf.concat([logits[:label], logits[label + 1:]], axis=0)
                value = logits[label] - tf.reduce_max(others)
        for v, g in zip(variables, tape.gradient(value, variables), strict=True):
            result[v.name].append(np.zeros(v.shape) if g is None else g.numpy())
    return {name: np.stack(values) for name, values in result.items()}


def _conv_bn_net(x):
    model = ConvBatchNormNet()
    model(tf.constant(x), is_training=True)  # moving statistics from a batch
    rng = np.random.default_rng(1)
    model.bn.scale.assign(rng.uniform(0.5, 1.5, model.bn.scale.shape).astype(np.float32))
    model.bn.offset.assign(rng.normal(size=model.bn.offset.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("measurement", ["loss", "margin"])
@pytest.mark.parametrize("method", ["outer_product", "jacobian"])
def test_mlp_gradients_equal_a_loop(measurement, method):
    x, y = _data(11, (8, 8, 1), 10)
    model = models.MLP((16,), 10)
    fast = gradients.per_example_gradients(model, x, y, measurement, batch_size=4,
                                           method=method)
    loop = _loop_gradients(model, x, y, measurement)
    assert sorted(fast) == sorted(loop)
    for name, expected in loop.items():
        np.testing.assert_allclose(fast[name], expected, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("measurement", ["loss", "margin"])
def test_cnn_gradients_equal_a_loop(measurement):
    x, y = _data(9, (8, 8, 1), 10)
    model = models.CNN((4, 6), 12, 10)
    fast = gradients.per_example_gradients(model, x, y, measurement, batch_size=4)
    loop = _loop_gradients(model, x, y, measurement)
    for name, expected in loop.items():
        np.testing.assert_allclose(fast[name], expected, rtol=1e-4, atol=1e-6, err_msg=name)


def test_strided_dilated_convolutions_with_batchnorm_equal_a_loop():
    x, y = _data(7, (9, 9, 2), 5)
    model = _conv_bn_net(x)
    fast = gradients.per_example_gradients(model, x, y, batch_size=3)
    loop = _loop_gradients(model, x, y, "loss")
    # BatchNorm's scale and offset are not Linear/Conv2D parameters: not returned.
    assert sorted(fast) == sorted(n for n in loop if "/batch_norm/" not in n)
    for name, value in fast.items():
        np.testing.assert_allclose(value, loop[name], rtol=1e-4, atol=1e-6, err_msg=name)
    jacobian = gradients.per_example_gradients(model, x, y, batch_size=3, method="jacobian")
    for name, value in jacobian.items():
        np.testing.assert_allclose(value, loop[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_chosen_layers_only_and_layers_restored():
    x, y = _data(5, (8, 8, 1), 10)
    model = models.CNN((4, 6), 12, 10)
    fast = gradients.per_example_gradients(model, x, y, layers=["_head", "_convs/1"])
    assert sorted(fast) == ["cnn/conv_1/b:0", "cnn/conv_1/w:0", "cnn/head/b:0", "cnn/head/w:0"]
    loop = _loop_gradients(model, x, y, "loss")
    for name, value in fast.items():
        np.testing.assert_allclose(value, loop[name], rtol=1e-4, atol=1e-6)
    # The recording subclass is gone once the pass is over.
    assert type(model._head) is snt.Linear and type(model._convs[1]) is snt.Conv2D
    with pytest.raises(ValueError, match="layers=.*no layer nope"):
        gradients.per_example_gradients(model, x, y, layers=["nope"])


def test_layer_names_are_attribute_paths():
    model = models.CNN((4, 6), 12, 10)
    engine = gradients.LayerGradients(model, (8, 8, 1))
    assert [(s.name, s.kind, s.rows, s.columns) for s in engine.specs] == [
        ("_convs/0", "conv2d", 9 + 1, 4), ("_convs/1", "conv2d", 36 + 1, 6),
        ("_head", "linear", 12 + 1, 10), ("_hidden", "linear", 4 * 4 * 6 + 1, 12)]


def test_measure_margin_and_loss():
    logits = tf.constant([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    labels = tf.constant([2, 2])
    np.testing.assert_allclose(gradients.measure(logits, labels, "margin"), [-1.0, 3.5])
    expected = [np.log(np.exp([1, 3, 2]).sum()) - 2, np.log(np.exp([0.5, -1, 4]).sum()) - 4]
    np.testing.assert_allclose(gradients.measure(logits, labels, "loss"), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="measurement="):
        gradients.measure(logits, labels, "accuracy")


def test_projection_is_the_gaussian_matrix_and_keeps_inner_products():
    x, y = _data(6, (8, 8, 1), 10)
    model = models.MLP((8,), 10)
    engine = gradients.LayerGradients(model, (8, 8, 1))
    grads = engine.gradients(x, y)
    flat = gradients.flatten(grads).numpy()
    proj = projection.GaussianProjection([s.size for s in engine.specs], 4096, seed=3)
    projected = proj([tf.constant(g) for g in grads]).numpy()
    np.testing.assert_allclose(projected, flat @ proj.matrix(), rtol=1e-4, atol=1e-5)
    # Johnson-Lindenstrauss: inner products kept to a few percent at d = 4096.
    exact, approx = flat @ flat.T, projected @ projected.T
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.abs(approx - exact).max() / scale.max() < 0.1
    again = projection.GaussianProjection([s.size for s in engine.specs], 4096, seed=3)
    np.testing.assert_array_equal(again.matrix(), proj.matrix())
