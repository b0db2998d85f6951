"""Softmax cross-entropy whose bits do not depend on how many models share a program.

Why not TensorFlow's op: under XLA on a CPU, `tf.nn.sparse_softmax_cross_entropy_with_logits`
sums each row's exponentials with a reduction whose order XLA picks from the size of
the whole input: one after another below 32768 elements (fewer than 52 models of the
digits MLP's 64 x 10 logits), in four interleaved lanes above. A run trained in a
group of 50 therefore differed in its last bits from the same run in a group of 250,
and K-at-once training could not train its models in cache-sized chunks without
changing results.

Here the sum over classes is written out in one fixed order, XLA's order for large
inputs (`class_sum`), so every row is summed the same way at any K; every other
operation and the gradient are the op's own (``backprop = exp(z - max) / sum - labels``,
times the incoming gradient), so the digits default's arrays are the bits it produced
before with K = 250. Checked against the op and against K = 1 in
``tests/training/test_losses.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# XLA:CPU's large row reductions keep this many partial sums (lanes).
_LANES = 4


def class_sum(values: tf.Tensor) -> tf.Tensor:
    """Sum over the last axis in one fixed order, whatever the other dimensions.

    Element ``c`` goes into lane ``c % 4``, each lane summed in index order, and the
    lanes are added as a tree: ``(l0 + l1) + (l2 + l3)``. For 10 classes:
    ``((x0 + x4 + x8) + (x1 + x5 + x9)) + ((x2 + x6) + (x3 + x7))``.
    """
    size = values.shape[-1]
    if size is None:
        raise ValueError("class_sum: the number of classes must be known when tracing")
    lanes = [values[..., c] for c in range(min(_LANES, size))]
    for c in range(_LANES, size):
        lanes[c % _LANES] = lanes[c % _LANES] + values[..., c]
    while len(lanes) > 1:
        lanes = [lanes[i] + lanes[i + 1] if i + 1 < len(lanes) else lanes[i]
                 for i in range(0, len(lanes), 2)]
    return lanes[0]


def _softmax_cross_entropy(logits: tf.Tensor, targets: tf.Tensor,
                           values_of: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Per-example values ``values_of(log_softmax(logits))`` with the gradient of
    TensorFlow's cross-entropy ops against (one-hot or soft) `targets`:
    ``(exp(z - max z) / sum - targets) * upstream``, the sum in `class_sum`'s order."""

    @tf.custom_gradient
    def loss(logits: tf.Tensor) -> tuple[tf.Tensor, object]:
        shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
        exp_shifted = tf.exp(shifted)
        total = class_sum(exp_shifted)[..., None]
        backprop = exp_shifted / total - targets

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return upstream[..., None] * backprop

        return values_of(shifted - tf.math.log(total)), grad

    return loss(logits)


def sparse_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example ``-log softmax(logits)[label]``: logits ``[..., classes]``, int labels
    ``[...]``; the values and gradient of `tf.nn.sparse_softmax_cross_entropy_with_logits`
    (labels assumed in range), summed over classes in `class_sum`'s order."""
    one_hot = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return _softmax_cross_entropy(
        logits, one_hot,
        lambda log_softmax: -tf.gather(log_softmax, labels, batch_dims=len(labels.shape)))


def cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example ``-sum_c targets_c log softmax(logits)_c`` against soft targets (label
    smoothing); the gradient of `tf.nn.softmax_cross_entropy_with_logits` bit for bit,
    the value to float32 round-off (both sums over classes in `class_sum`'s order).
    The targets are constants: no gradient flows to them."""
    targets = tf.stop_gradient(targets)
    return _softmax_cross_entropy(logits, targets,
                                  lambda log_softmax: class_sum(-targets * log_softmax))
