"""Sonnet models, each in two forms: an ensemble of K models trained in one program,
and the single model a run's checkpoint holds.

Heldout estimates need hundreds of trainings of small models; training them one at a
time leaves the hardware idle. An ensemble model stacks the weights of K independent
models along a leading axis (``w[K, fan_in, fan_out]``) and runs them as batched
matrix products, so K models cost about as much wall time as one until the device is
saturated. Convolutions become batched products over image patches (im2col), which
needs no grouped-convolution kernel and compiles with XLA on every device.

Inputs of an ensemble are ``[K, batch, ...]`` (each model its own batch) or
``[1, batch, ...]`` (one batch shared by all models, for evaluation); outputs are
``[K, batch, num_classes]`` logits. ``export(k)`` copies model k into the single
model (plain ``snt.Linear``/``snt.Conv2D``), which is what checkpoints store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf


class EnsembleLinear(snt.Module):
    """K independent linear layers: ``[K|1, batch, fan_in] -> [K, batch, output_size]``."""

    def __init__(self, output_size: int, num_models: int, name: str | None = None):
        super().__init__(name=name)
        self.output_size = output_size
        self.num_models = num_models

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        fan_in = inputs.shape[-1]
        self.w = tf.Variable(tf.zeros([self.num_models, fan_in, self.output_size]), name="w")
        self.b = tf.Variable(tf.zeros([self.num_models, 1, self.output_size]), name="b")

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        self._create_variables(inputs)
        return tf.matmul(inputs, self.w) + self.b

    def export_to(self, layer: snt.Linear, k: int) -> None:
        """Copies model k's weights into a single ``snt.Linear``."""
        layer.w.assign(self.w[k])
        layer.b.assign(self.b[k, 0])


class EnsembleConv2D(snt.Module):
    """K independent stride-1 SAME convolutions: ``[K|1, batch, H, W, C] -> [K, batch, H, W, F]``.

    Weights are stored as ``w[K, kernel*kernel*C, F]``, the im2col layout whose
    reshape to ``[kernel, kernel, C, F]`` is exactly an ``snt.Conv2D`` filter.
    """

    def __init__(self, output_channels: int, kernel_size: int, num_models: int,
                 name: str | None = None):
        super().__init__(name=name)
        self.output_channels = output_channels
        self.kernel_size = kernel_size
        self.num_models = num_models

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        fan_in = self.kernel_size * self.kernel_size * inputs.shape[-1]
        self.w = tf.Variable(tf.zeros([self.num_models, fan_in, self.output_channels]), name="w")
        self.b = tf.Variable(tf.zeros([self.num_models, 1, self.output_channels]), name="b")

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        self._create_variables(inputs)
        models, batch, height, width, channels = _static_or_dynamic_shape(inputs)
        images = tf.reshape(inputs, [-1, height, width, channels])
        size = [1, self.kernel_size, self.kernel_size, 1]
        patches = tf.image.extract_patches(images, size, [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
        patches = tf.reshape(patches, [models, -1, patches.shape[-1]])
        outputs = tf.matmul(patches, self.w) + self.b
        return tf.reshape(outputs, [self.num_models, batch, height, width, self.output_channels])

    def export_to(self, layer: snt.Conv2D, k: int) -> None:
        """Copies model k's weights into a single ``snt.Conv2D``."""
        layer.w.assign(tf.reshape(self.w[k], layer.w.shape))
        layer.b.assign(self.b[k, 0])


def _static_or_dynamic_shape(x: tf.Tensor) -> list:
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape)]


def _max_pool_2x2(inputs: tf.Tensor) -> tf.Tensor:
    """2x2 max pooling of ``[K, batch, H, W, C]`` inputs."""
    models, batch, height, width, channels = _static_or_dynamic_shape(inputs)
    pooled = tf.nn.max_pool2d(tf.reshape(inputs, [-1, height, width, channels]), 2, 2, "VALID")
    return tf.reshape(pooled, [models, batch, height // 2, width // 2, channels])


def _relu_stack(layers: Sequence[snt.Module], outputs: tf.Tensor) -> tf.Tensor:
    """The layers in turn with a ReLU between them (none after the last: logits)."""
    for i, layer in enumerate(layers):
        outputs = layer(outputs)
        if i < len(layers) - 1:
            outputs = tf.nn.relu(outputs)
    return outputs


def _flatten_examples(inputs: tf.Tensor, leading_dims: int) -> tf.Tensor:
    """Flattens everything after the first `leading_dims` axes."""
    shape = _static_or_dynamic_shape(inputs)
    return tf.reshape(inputs, shape[:leading_dims] + [math.prod(inputs.shape[leading_dims:])])


class MLP(snt.Module):
    """A ReLU perceptron on flattened inputs: ``[batch, ...] -> [batch, num_classes]``."""

    def __init__(self, hidden_sizes: Sequence[int], num_classes: int, name: str | None = None):
        super().__init__(name=name)
        sizes = list(hidden_sizes) + [num_classes]
        self._layers = [snt.Linear(size, name=f"linear_{i}") for i, size in enumerate(sizes)]

    def __call__(self, images: tf.Tensor, is_training: bool = False) -> tf.Tensor:
        del is_training  # No dropout or batch statistics.
        return _relu_stack(self._layers, _flatten_examples(images, 1))


class EnsembleMLP(snt.Module):
    """K independent `MLP`s: ``[K|1, batch, ...] -> [K, batch, num_classes]``."""

    def __init__(self, hidden_sizes: Sequence[int], num_classes: int, num_models: int,
                 name: str | None = None):
        super().__init__(name=name)
        self.hidden_sizes = tuple(hidden_sizes)
        self.num_classes = num_classes
        self.num_models = num_models
        sizes = list(hidden_sizes) + [num_classes]
        self._layers = [EnsembleLinear(size, num_models, name=f"linear_{i}")
                        for i, size in enumerate(sizes)]

    def __call__(self, images: tf.Tensor, is_training: bool = False) -> tf.Tensor:
        del is_training
        return _relu_stack(self._layers, _flatten_examples(images, 2))

    def export(self, k: int, input_shape: Sequence[int]) -> MLP:
        """Model k of the ensemble as a single `MLP` with the same weights."""
        model = MLP(self.hidden_sizes, self.num_classes)
        model(tf.zeros([1, *input_shape]))
        for ensemble_layer, layer in zip(self._layers, model._layers, strict=True):
            ensemble_layer.export_to(layer, k)
        return model


class CNN(snt.Module):
    """A small ReLU convolutional network for small images.

    Two stride-1 3x3 convolutions, a 2x2 max pool, a hidden linear layer and the
    linear head: ``[batch, H, W, C] -> [batch, num_classes]``.
    """

    def __init__(self, channels: Sequence[int], hidden_size: int, num_classes: int,
                 name: str | None = None):
        super().__init__(name=name)
        self._convs = [snt.Conv2D(c, 3, padding="SAME", name=f"conv_{i}")
                       for i, c in enumerate(channels)]
        self._hidden = snt.Linear(hidden_size, name="hidden")
        self._head = snt.Linear(num_classes, name="head")

    def __call__(self, images: tf.Tensor, is_training: bool = False) -> tf.Tensor:
        del is_training
        outputs = images
        for conv in self._convs:
            outputs = tf.nn.relu(conv(outputs))
        outputs = tf.nn.max_pool2d(outputs, 2, 2, "VALID")
        outputs = tf.nn.relu(self._hidden(_flatten_examples(outputs, 1)))
        return self._head(outputs)


class EnsembleCNN(snt.Module):
    """K independent `CNN`s: ``[K|1, batch, H, W, C] -> [K, batch, num_classes]``."""

    def __init__(self, channels: Sequence[int], hidden_size: int, num_classes: int,
                 num_models: int, name: str | None = None):
        super().__init__(name=name)
        self.channels = tuple(channels)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.num_models = num_models
        self._convs = [EnsembleConv2D(c, 3, num_models, name=f"conv_{i}")
                       for i, c in enumerate(channels)]
        self._hidden = EnsembleLinear(hidden_size, num_models, name="hidden")
        self._head = EnsembleLinear(num_classes, num_models, name="head")

    def __call__(self, images: tf.Tensor, is_training: bool = False) -> tf.Tensor:
        del is_training
        outputs = images
        for conv in self._convs:
            outputs = tf.nn.relu(conv(outputs))
        outputs = _max_pool_2x2(outputs)
        outputs = tf.nn.relu(self._hidden(_flatten_examples(outputs, 2)))
        return self._head(outputs)

    def export(self, k: int, input_shape: Sequence[int]) -> CNN:
        """Model k of the ensemble as a single `CNN` with the same weights."""
        model = CNN(self.channels, self.hidden_size, self.num_classes)
        model(tf.zeros([1, *input_shape]))
        for ensemble_conv, conv in zip(self._convs, model._convs, strict=True):
            ensemble_conv.export_to(conv, k)
        self._hidden.export_to(model._hidden, k)
        self._head.export_to(model._head, k)
        return model


def initial_values(variable: tf.Variable, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Initial value of an ensemble variable ``[K, ...]``, slice k drawn from ``rngs[k]``.

    Weights ``w[K, fan_in, fan_out]`` follow Sonnet's default for Linear and Conv2D
    (truncated normal, stddev ``1/sqrt(fan_in)``); biases start at zero. Drawing each
    model from its own generator makes a run's initialization depend on its seed only,
    not on which other runs share its ensemble.
    """
    shape = tuple(variable.shape)
    if variable.name.split("/")[-1].startswith("b"):
        return np.zeros(shape, dtype=np.float32)
    stddev = 1.0 / math.sqrt(shape[1])
    return np.stack([_truncated_normal(rng, shape[1:]) * stddev for rng in rngs]).astype(np.float32)


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal samples redrawn until they lie within two standard deviations."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2
    return values
