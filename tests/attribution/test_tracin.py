"""TracIn-CP checked against a hand loop over checkpoints and example pairs."""

import numpy as np
import pytest
import tensorflow as tf

from heldout.attribution import projection, tracin
from heldout.models import ensemble as models


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n)


def _checkpoints(learning_rates):
    """Models of one architecture with different weights (as checkpoints of a run are)."""
    result = []
    for seed, lr in enumerate(learning_rates):
        tf.random.set_seed(seed)
        model = models.MLP((6,), 10)
        model(tf.zeros([1, 8, 8, 1]))
        for v in model.trainable_variables:  # non-zero biases too
            v.assign(v + tf.random.normal(v.shape, stddev=0.1))
        result.append(tracin.Checkpoint(model, lr))
    return result


def _gradient(model, x, label, measurement):
    """One example's flat gradient, from its own tape."""
    with tf.GradientTape() as tape:
        logits = model(tf.constant(x[None]))[0]
        if measurement == "loss":
            value = tf.reduce_logsumexp(logits) - logits[label]
        else:
            others = tf.concat([logits[:label], logits[label + 1:]], axis=0)
            value = logits[label] - tf.reduce_max(others)
    grads = tape.gradient(value, model.trainable_variables)
    return np.concatenate([g.numpy().ravel() for g in grads])


@pytest.mark.parametrize("measurement", ["loss", "margin"])
def test_tracin_equals_a_hand_loop_over_checkpoints(measurement):
    x_train, y_train = _data(7, 0)
    x_query, y_query = _data(4, 1)
    checkpoints = _checkpoints([0.3, 0.1, 0.02])
    before = [v.numpy() for v in checkpoints[0].model.variables]
    result = tracin.score_tracin(checkpoints, x_train, y_train, x_query, y_query,
                           tracin.TracInConfig(measurement=measurement, batch_size=3))
    expected_self = np.zeros(7)
    expected = np.zeros((7, 4))
    sign = 1.0 if measurement == "loss" else -1.0  # helping = lower loss, higher margin
    for checkpoint in checkpoints:
        train = [_gradient(checkpoint.model, x, y, "loss")
                 for x, y in zip(x_train, y_train, strict=True)]
        query = [_gradient(checkpoint.model, x, y, measurement)
                 for x, y in zip(x_query, y_query, strict=True)]
        for i, g in enumerate(train):
            expected_self[i] += checkpoint.learning_rate * g @ g
            for j, q in enumerate(query):
                expected[i, j] += checkpoint.learning_rate * sign * g @ q
    np.testing.assert_allclose(result.self_influence, expected_self, rtol=1e-4)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-6)
    # The first checkpoint's model served as the template and has its weights back.
    for v, value in zip(checkpoints[0].model.variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), value)


def test_projected_tracin_is_tracin_of_projected_gradients():
    x_train, y_train = _data(5, 2)
    x_query, y_query = _data(3, 3)
    checkpoints = _checkpoints([0.2, 0.05])
    config = tracin.TracInConfig(projection_dim=64, projection_seed=7)
    result = tracin.score_tracin(checkpoints, x_train, y_train, x_query, y_query, config)
    sizes = [64 * 6 + 6, 6 * 10 + 10]  # linear_0 (w, b), linear_1 (w, b) in row layout
    matrix = projection.GaussianProjection(sizes, 64, seed=7).matrix()
    expected_self = np.zeros(5)
    expected = np.zeros((5, 3))
    for checkpoint in checkpoints:
        model = checkpoint.model
        train = np.stack([_layer_rows(model, _gradient(model, x, y, "loss"))
                          for x, y in zip(x_train, y_train, strict=True)]) @ matrix
        query = np.stack([_layer_rows(model, _gradient(model, x, y, "loss"))
                          for x, y in zip(x_query, y_query, strict=True)]) @ matrix
        expected_self += checkpoint.learning_rate * (train * train).sum(axis=1)
        expected += checkpoint.learning_rate * train @ query.T
    np.testing.assert_allclose(result.self_influence, expected_self, rtol=1e-4)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-6)


def _layer_rows(model, flat):
    """A flat gradient in trainable-variable order (b, w per layer) to the row layout
    ``[w; b]`` per layer that the projection multiplies."""
    parts, offset = {}, 0
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        parts[v.name] = flat[offset:offset + size].reshape(v.shape)
        offset += size
    rows = []
    for layer in ("linear_0", "linear_1"):
        w, b = parts[f"mlp/{layer}/w:0"], parts[f"mlp/{layer}/b:0"]
        rows.append(np.concatenate([w, b[None]]).ravel())
    return np.concatenate(rows)


def test_config_and_checkpoint_validation():
    with pytest.raises(ValueError, match="measurement="):
        tracin.TracInConfig(measurement="accuracy")
    with pytest.raises(ValueError, match="projection_dim="):
        tracin.TracInConfig(projection_dim=0)
    with pytest.raises(ValueError, match="learning_rate"):
        tracin.Checkpoint(models.MLP((6,), 10), -0.1)
    x, y = _data(3, 0)
    mismatched = [_checkpoints([0.1])[0], tracin.Checkpoint(models.MLP((5,), 10), 0.1)]
    with pytest.raises(ValueError, match="checkpoint 1"):
        tracin.score_tracin(mismatched, x, y)
