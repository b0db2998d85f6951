"""Tests of heldout/training/losses.py: the cross-entropy of training, whose bits do not
depend on how many models share a program.

Checked against a NumPy loop (the summation order, and the values in float64), against
TensorFlow's own ops (gradients bit for bit where XLA sums in the same order), and
between one model's rows computed alone and inside 250 models' (bit for bit).
"""

import numpy as np
import pytest
import tensorflow as tf

from heldout.training import losses

MODELS, BATCH, CLASSES = 250, 64, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((MODELS, BATCH, CLASSES)) * 3).astype(np.float32)
    labels = rng.integers(0, CLASSES, (MODELS, BATCH)).astype(np.int32)
    targets = rng.dirichlet(np.ones(CLASSES), (MODELS, BATCH)).astype(np.float32)
    return logits, labels, targets


def _lane_order_sum(rows: np.ndarray) -> np.ndarray:
    """The documented order by hand, one float32 addition at a time."""
    out = np.empty(len(rows), np.float32)
    for r, row in enumerate(rows):
        lanes = [np.float32(row[c]) for c in range(min(4, len(row)))]
        for c in range(4, len(row)):
            lanes[c % 4] = np.float32(lanes[c % 4] + row[c])
        while len(lanes) > 1:
            lanes = [np.float32(lanes[i] + lanes[i + 1]) if i + 1 < len(lanes) else lanes[i]
                     for i in range(0, len(lanes), 2)]
        out[r] = lanes[0]
    return out


@pytest.mark.parametrize("classes", [1, 3, 4, 5, 10, 100])
def test_class_sum_adds_in_the_documented_order(classes):
    rng = np.random.default_rng(classes)
    # Magnitudes from 1e-3 to 1e3: the order shows in the last bits.
    rows = (rng.standard_normal((200, classes)) *
            rng.choice([1e-3, 1.0, 1e3], size=(200, classes))).astype(np.float32)
    found = tf.function(losses.class_sum, jit_compile=True)(tf.constant(rows)).numpy()
    np.testing.assert_array_equal(found, _lane_order_sum(rows))
    if classes >= 5:  # another order gives other bits, so the check can fail
        assert not np.array_equal(np.cumsum(rows, axis=1, dtype=np.float32)[:, -1], found)


def _loss_and_grad(fn, logits, second):
    @tf.function(jit_compile=True, autograph=False)
    def run(logits, second):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            values = fn(second, logits)
            # Each model's mean over its batch, summed over models, as training does.
            loss = tf.reduce_sum(tf.reduce_mean(values, axis=1))
        return values, tape.gradient(loss, logits)

    values, grad = run(tf.constant(logits), tf.constant(second))
    return values.numpy(), grad.numpy()


def _float64_reference(logits, targets):
    z = logits.astype(np.float64)
    log_softmax = z - z.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    values = -(targets * log_softmax).sum(-1)
    grad = (np.exp(log_softmax) - targets) / logits.shape[1]
    return values, grad


@pytest.mark.parametrize("sparse", [True, False])
def test_cross_entropy_equals_tensorflow_and_float64(data, sparse):
    logits, labels, targets = data
    ours, theirs = (losses.sparse_cross_entropy, tf.nn.sparse_softmax_cross_entropy_with_logits) \
        if sparse else (losses.cross_entropy, tf.nn.softmax_cross_entropy_with_logits)
    second = labels if sparse else targets
    values, grad = _loss_and_grad(ours, logits, second)
    op_values, op_grad = _loss_and_grad(theirs, logits, second)
    # 250 x 64 x 10 logits: XLA sums the op's classes in four lanes, our fixed order.
    np.testing.assert_array_equal(grad, op_grad)
    if sparse:
        np.testing.assert_array_equal(values, op_values)
    else:
        np.testing.assert_allclose(values, op_values, rtol=1e-6, atol=1e-6)
    dense_targets = np.eye(CLASSES, dtype=np.float64)[labels] if sparse else targets
    ref_values, ref_grad = _float64_reference(logits, dense_targets)
    np.testing.assert_allclose(values, ref_values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sparse", [True, False])
def test_one_models_rows_do_not_depend_on_the_others(data, sparse):
    """Rows of model 0 computed in programs of 1, 5, 50 and 250 models: the same bits
    (TensorFlow's op changes order between 50 and 52 models of this shape)."""
    logits, labels, targets = data
    fn = losses.sparse_cross_entropy if sparse else losses.cross_entropy
    second = labels if sparse else targets
    alone = _loss_and_grad(fn, logits[:1], second[:1])
    for models in (5, 50, 250):
        values, grad = _loss_and_grad(fn, logits[:models], second[:models])
        np.testing.assert_array_equal(values[:1], alone[0], err_msg=f"{models} models")
        np.testing.assert_array_equal(grad[:1], alone[1], err_msg=f"{models} models")
    op = tf.nn.sparse_softmax_cross_entropy_with_logits if sparse else \
        tf.nn.softmax_cross_entropy_with_logits
    op_alone, op_all = (_loss_and_grad(op, logits[:n], second[:n]) for n in (1, MODELS))
    # The op itself differs: this test would catch a return to it.
    assert not np.array_equal(op_alone[1], op_all[1][:1])
