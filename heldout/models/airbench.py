"""The airbench94 CIFAR-10 network and its training recipe, in Sonnet, K runs at once.

airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024;
PyPI ``airbench``) trains a small convolutional network to 94.0% mean CIFAR-10 test
accuracy in 3.8 s on one A100. Heldout estimates need thousands of trainings, so the
cost of one training decides what a researcher can afford. This module tells the
same story in the same order: hyperparameters -> data (patch whitening) -> network ->
schedule and weight averaging -> training (`AirbenchTrainer`) -> evaluation.

Deliberate differences from the published script:
    * Each run trains on its own subset. An epoch is ``ceil(n / batch_size)`` steps
      that wrap around the run's shuffled order (the toolkit's convention, so every
      example of the subset is seen each epoch), not ``n // batch_size``; training
      lasts 10 whole epochs, not 9.9.
    * The whitening filters and the input normalization come from the first
      `WHITENING_IMAGES` examples of the run's own subset (published: the first 5,000
      CIFAR-10 training images and CIFAR-10's channel statistics), so nothing of the
      held-out examples enters a model.
    * Test-time augmentation averages the logits of the image and its mirror image
      (published level 2 adds one-pixel translations). It gives the reported
      ``TrainedRun.test_accuracy_tta``; the recorded predictions use none unless
      ``TrainConfig.test_time_flip``.
    * float32 unless ``TrainConfig.precision`` says otherwise (published: float16
      weights and activations with float32 batch norm, on a GPU).

Several runs at once: `Airbench` holds K models whose channels sit side by side
(``[batch, H, W, K * C]``, model k in channels ``k*C .. (k+1)*C - 1``); every
convolution is one grouped convolution on a GPU (K plain ones on a CPU), and batch
norm, GELU and max pooling act per channel, so the K models never mix. Every variable
has the models on its leading axis; ``export(k)`` copies model k into a single-model
`Airbench` (K = 1), which is what checkpoints hold and ``demo.py`` restores. With
K = 1 the convolutions are plain ``tf.nn.conv2d`` calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

# --- Network hyperparameters ----------------------------------------------------------
WIDTHS = (64, 256, 256)  # output channels of the three conv groups
WHITENING_KERNEL = 2  # pixels per side of the whitening patches
WHITENING_EPS = 5e-4  # added to the patch-covariance eigenvalues before 1 / sqrt
WHITENING_IMAGES = 5000  # subset examples the whitening and input statistics come from
BN_DECAY = 0.6  # moving-average decay, TF convention (PyTorch momentum 1 - 0.6 = 0.4)
BN_EPSILON = 1e-12
HEAD_SCALE = 1 / 9  # the linear head's logits are multiplied by this
EVAL_BATCH_SIZE = 500  # examples per prediction call


# --- Data: input statistics and patch whitening ----------------------------------------


def input_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of images ``[n, H, W, C]``, each ``[C]``."""
    images = images.astype(np.float64)
    mean = images.mean(axis=(0, 1, 2))
    std = np.sqrt(((images - mean) ** 2).mean(axis=(0, 1, 2)))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def patch_covariance(images: np.ndarray, kernel: int = WHITENING_KERNEL,
                     chunk: int = 500) -> np.ndarray:
    """Second moment ``E[p p^T]`` of all `kernel` x `kernel` patches (uncentered, as published).

    A patch is flattened in the order of a convolution filter ``[kh, kw, C]``, so the
    result is ``[kernel * kernel * C]`` square (float64).
    """
    _, height, width, channels = images.shape
    size = kernel * kernel * channels
    total = np.zeros((size, size))
    count = 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float64)
        patches = np.concatenate(
            [x[:, dy:height - kernel + 1 + dy, dx:width - kernel + 1 + dx]
             for dy in range(kernel) for dx in range(kernel)], axis=-1).reshape(-1, size)
        total += patches.T @ patches
        count += len(patches)
    return total / count


def whitening_filters(images: np.ndarray, kernel: int = WHITENING_KERNEL,
                      eps: float = WHITENING_EPS) -> np.ndarray:
    """The frozen first-layer filters ``[kernel, kernel, C, 2 * kernel * kernel * C]``.

    The eigenvectors of the patch covariance, largest eigenvalue first, each divided by
    ``sqrt(eigenvalue + eps)`` (so the layer's outputs have about unit variance and are
    uncorrelated), followed by their negatives (so GELU keeps both signs).
    """
    channels = images.shape[-1]
    eigenvalues, eigenvectors = np.linalg.eigh(patch_covariance(images, kernel))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # descending
    filters = (eigenvectors / np.sqrt(eigenvalues + eps)).reshape(
        kernel, kernel, channels, kernel * kernel * channels)
    return np.concatenate([filters, -filters], axis=-1).astype(np.float32)


# --- Network -----------------------------------------------------------------------------


def _grouped_conv2d(inputs: tf.Tensor, w: tf.Tensor, padding: str, grouped: str) -> tf.Tensor:
    """K convolutions ``[B, H, W, K*C] * w[K, kh, kw, C, F] -> [B, H', W', K*F]``.

    ``grouped="native"`` runs one grouped ``tf.nn.conv2d`` (GPU); ``"split"`` runs K
    convolutions (CPU: TensorFlow has no grouped-convolution gradients there, and
    XLA:CPU runs grouped convolutions far slower than K plain ones).
    """
    num_models = w.shape[0]
    if num_models == 1:
        return tf.nn.conv2d(inputs, w[0], 1, padding)
    if grouped == "native":
        kh, kw, channels, features = w.shape[1:]
        filters = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]),
                             [kh, kw, channels, num_models * features])
        return tf.nn.conv2d(inputs, filters, 1, padding)
    parts = tf.split(inputs, num_models, axis=-1)
    return tf.concat([tf.nn.conv2d(x, w[k], 1, padding) for k, x in enumerate(parts)], -1)


_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@tf.function(jit_compile=True, autograph=False)
def _gelu_forward(x: tf.Tensor) -> tf.Tensor:
    return x * (0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF)))


@tf.function(jit_compile=True, autograph=False)
def _gelu_backward(x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    cdf = 0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF))
    return upstream * (cdf + x * tf.exp(-0.5 * x * x) * _INV_SQRT_2PI)


@tf.custom_gradient
def gelu(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    """Exact (erf) GELU, as ``tf.nn.gelu(x, approximate=False)``, in two fused kernels.

    The forward pass and the hand-written derivative each compile (XLA) into one loop
    over the tensor instead of TensorFlow's chain of elementwise ops and their
    autodiff: on a CPU 2.5x faster than ``tf.nn.gelu`` (and than PyTorch's), which is
    a seventh of airbench's training step. Values agree to float32 round-off (tested).
    """
    return _gelu_forward(x), lambda upstream: _gelu_backward(x, upstream)


class PatchWhitening(snt.Module):
    """Input normalization and the frozen 2x2 whitening convolution with a trainable bias.

    ``[B, H, W, K*C] -> [B, H-1, W-1, K * 8C]`` (VALID padding). Variables, all with
    the models on the leading axis: ``input_mean``, ``input_std`` ``[K, C]`` and ``w``
    ``[K, 2, 2, C, 8C]`` (not trainable, set from data by `Airbench.initialize`), ``b``
    ``[K, 8C]`` (trainable for the first `WHITEN_BIAS_EPOCHS` epochs).
    """

    def __init__(self, num_models: int, kernel: int = WHITENING_KERNEL,
                 grouped: str = "native", name: str | None = None):
        super().__init__(name=name)
        self.num_models = num_models
        self.kernel = kernel
        self._grouped = grouped

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        channels = inputs.shape[-1] // self.num_models
        features = 2 * self.kernel * self.kernel * channels
        k = self.num_models
        self.input_mean = tf.Variable(tf.zeros([k, channels]), trainable=False,
                                      name="input_mean")
        self.input_std = tf.Variable(tf.ones([k, channels]), trainable=False, name="input_std")
        self.w = tf.Variable(tf.zeros([k, self.kernel, self.kernel, channels, features]),
                             trainable=False, name="w")
        self.b = tf.Variable(tf.zeros([k, features]), name="b")

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        self._create_variables(inputs)
        normalized = ((inputs - tf.reshape(self.input_mean, [-1]))
                      / tf.reshape(self.input_std, [-1]))
        outputs = _grouped_conv2d(normalized, self.w, "VALID", self._grouped)
        return outputs + tf.reshape(self.b, [-1])


class GroupedConv(snt.Module):
    """K independent 3x3 SAME convolutions without bias: ``[B, H, W, K*C] -> [B, H, W, K*F]``.

    ``w[K, 3, 3, C, F]``: slice k is an ``snt.Conv2D`` filter of model k.
    """

    def __init__(self, output_channels: int, num_models: int, kernel: int = 3,
                 grouped: str = "native", name: str | None = None):
        super().__init__(name=name)
        self.output_channels = output_channels
        self.num_models = num_models
        self.kernel = kernel
        self._grouped = grouped

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        channels = inputs.shape[-1] // self.num_models
        self.w = tf.Variable(tf.zeros([self.num_models, self.kernel, self.kernel, channels,
                                       self.output_channels]), name="w")

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        self._create_variables(inputs)
        return _grouped_conv2d(inputs, self.w, "SAME", self._grouped)


class BatchNorm(snt.Module):
    """airbench's batch normalization of K models: ``[B, H, W, K*C]`` in and out.

    Scale frozen at 1 (no variable), trainable ``offset`` ``[K, C]``, moving statistics
    ``moving_mean`` / ``moving_variance`` ``[K, C]`` starting at 0 / 1 and updated as
    ``decay * moving + (1 - decay) * batch`` without zero-debiasing (PyTorch's running
    statistics, with the unbiased batch variance). The fused kernel keeps statistics,
    offset and moving averages in float32 when the activations are 16-bit.
    """

    def __init__(self, num_models: int, decay: float = BN_DECAY, eps: float = BN_EPSILON,
                 name: str | None = None):
        super().__init__(name=name)
        self.num_models = num_models
        self.decay = decay
        self.eps = eps

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        shape = [self.num_models, inputs.shape[-1] // self.num_models]
        self.offset = tf.Variable(tf.zeros(shape), name="offset")
        self.moving_mean = tf.Variable(tf.zeros(shape), trainable=False, name="moving_mean")
        self.moving_variance = tf.Variable(tf.ones(shape), trainable=False,
                                           name="moving_variance")

    def __call__(self, inputs: tf.Tensor, is_training: bool) -> tf.Tensor:
        self._create_variables(inputs)
        offset = tf.reshape(self.offset, [-1])
        scale = tf.ones_like(offset)
        if not is_training:
            return tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=scale, offset=offset, mean=tf.reshape(self.moving_mean, [-1]),
                variance=tf.reshape(self.moving_variance, [-1]), epsilon=self.eps,
                is_training=False)[0]
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32), epsilon=self.eps, is_training=True)
        shape = tf.shape(self.offset)
        self.moving_mean.assign(self.decay * self.moving_mean
                                + (1.0 - self.decay) * tf.reshape(mean, shape))
        self.moving_variance.assign(self.decay * self.moving_variance
                                    + (1.0 - self.decay) * tf.reshape(variance, shape))
        return outputs


class ConvGroup(snt.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU: halves height and width."""

    def __init__(self, channels: int, num_models: int, grouped: str = "native",
                 name: str | None = None):
        super().__init__(name=name)
        self.conv1 = GroupedConv(channels, num_models, grouped=grouped, name="conv1")
        self.norm1 = BatchNorm(num_models, name="norm1")
        self.conv2 = GroupedConv(channels, num_models, grouped=grouped, name="conv2")
        self.norm2 = BatchNorm(num_models, name="norm2")

    def __call__(self, inputs: tf.Tensor, is_training: bool) -> tf.Tensor:
        outputs = tf.nn.max_pool2d(self.conv1(inputs), 2, 2, "VALID")
        outputs = gelu(self.norm1(outputs, is_training))
        outputs = self.conv2(outputs)
        return gelu(self.norm2(outputs, is_training))


class Head(snt.Module):
    """K linear heads without bias, scaled by `HEAD_SCALE`: ``[K, B, D] -> [K, B, classes]``."""

    def __init__(self, num_classes: int, num_models: int, name: str | None = None):
        super().__init__(name=name)
        self.num_classes = num_classes
        self.num_models = num_models

    @snt.once
    def _create_variables(self, inputs: tf.Tensor) -> None:
        self.w = tf.Variable(tf.zeros([self.num_models, inputs.shape[-1], self.num_classes]),
                             name="w")

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        self._create_variables(inputs)
        return tf.matmul(inputs, self.w) * HEAD_SCALE


class Airbench(snt.Module):
    """The airbench94 network, K models side by side (K = 1: one model).

    ``whiten`` (`PatchWhitening`) -> GELU -> ``group1``, ``group2``, ``group3``
    (`ConvGroup`, widths 64/256/256 times `width_multiplier`) -> max pool 3 -> flatten
    -> ``head`` (`Head`). About 1.97 M trainable parameters for 10 classes.
    """

    def __init__(self, num_classes: int, num_models: int = 1, width_multiplier: float = 1.0,
                 grouped: str = "native", name: str | None = None):
        """Configures the network.

        Args:
            num_classes: number of logits.
            num_models: K, models trained side by side.
            width_multiplier: scales the three group widths (rounded, at least 1).
            grouped: how K > 1 convolutions run: ``"native"`` (one grouped convolution,
                for GPUs) or ``"split"`` (K convolutions, for CPUs).
            name: module name.

        Raises:
            ValueError: an argument is out of range.
        """
        super().__init__(name=name)
        if num_classes < 1 or num_models < 1 or not width_multiplier > 0:
            raise ValueError(f"Airbench needs num_classes >= 1, num_models >= 1 and "
                             f"width_multiplier > 0, got {num_classes}, {num_models}, "
                             f"{width_multiplier}")
        if grouped not in ("native", "split"):
            raise ValueError(f"grouped={grouped!r}: expected 'native' or 'split'")
        self.num_classes = num_classes
        self.num_models = num_models
        self.width_multiplier = width_multiplier
        self.widths = tuple(max(1, round(w * width_multiplier)) for w in WIDTHS)
        self.whiten = PatchWhitening(num_models, grouped=grouped, name="whiten")
        self.group1 = ConvGroup(self.widths[0], num_models, grouped, name="group1")
        self.group2 = ConvGroup(self.widths[1], num_models, grouped, name="group2")
        self.group3 = ConvGroup(self.widths[2], num_models, grouped, name="group3")
        self.head = Head(num_classes, num_models, name="head")

    def __call__(self, images: tf.Tensor, is_training: bool) -> tf.Tensor:
        """Logits of images.

        Args:
            images: ``[B, H, W, C]`` (every model sees them), or ``[K, B, H, W, C]`` (model
                k sees ``images[k]``), or ``[1, B, H, W, C]`` (shared).
            is_training: normalize with batch statistics and update the moving averages.

        Returns:
            ``[K, B, num_classes]``; ``[B, num_classes]`` for rank-4 images when K = 1 (the
            single-model call of checkpoints and ``demo.py``).
        """
        k = self.num_models
        if images.shape.rank == 4 or images.shape[0] == 1:
            shared = images if images.shape.rank == 4 else images[0]
            stacked = tf.tile(shared, [1, 1, 1, k])
        else:
            shape = tf.shape(images)
            stacked = tf.reshape(tf.transpose(images, [1, 2, 3, 0, 4]),
                                 [shape[1], shape[2], shape[3], k * images.shape[-1]])
        outputs = gelu(self.whiten(stacked))
        outputs = self.group1(outputs, is_training)
        outputs = self.group2(outputs, is_training)
        outputs = self.group3(outputs, is_training)
        outputs = tf.nn.max_pool2d(outputs, 3, 3, "VALID")
        _, height, width, channels = outputs.shape
        features = channels // k
        outputs = tf.reshape(outputs, [-1, height, width, k, features])
        outputs = tf.reshape(tf.transpose(outputs, [3, 0, 1, 2, 4]),
                             [k, -1, height * width * features])
        logits = self.head(outputs)
        return logits[0] if images.shape.rank == 4 and k == 1 else logits

    def batch_norms(self) -> list[BatchNorm]:
        """The batch-norm modules, in order."""
        return [norm for group in (self.group1, self.group2, self.group3)
                for norm in (group.norm1, group.norm2)]

    def initialize(self, rngs: Sequence[np.random.Generator],
                   whitening_images: Sequence[np.ndarray]) -> None:
        """Sets every variable for a fresh start; model k depends on ``rngs[k]`` and its images.

        Convolutions: uniform in ``+-1 / sqrt(fan_in)`` (PyTorch's default), then the
        first ``min(C, F)`` filters replaced by the identity (Dirac), an implicit
        residual. Head: the same uniform. Whitening and input statistics from
        ``whitening_images[k]`` ``[n, H, W, C]``; biases and offsets 0; moving mean 0,
        moving variance 1. Call the model once first (Sonnet creates variables lazily).
        """
        if len(rngs) != self.num_models or len(whitening_images) != self.num_models:
            raise ValueError(f"initialize needs {self.num_models} generators and image sets")
        statistics = [input_statistics(x) for x in whitening_images]
        self.whiten.input_mean.assign(np.stack([mean for mean, _ in statistics]))
        self.whiten.input_std.assign(np.stack([std for _, std in statistics]))
        self.whiten.w.assign(np.stack([
            whitening_filters((x - mean) / std)
            for x, (mean, std) in zip(whitening_images, statistics, strict=True)]))
        self.whiten.b.assign(tf.zeros_like(self.whiten.b))
        for group in (self.group1, self.group2, self.group3):
            for conv in (group.conv1, group.conv2):
                conv.w.assign(np.stack([_dirac_uniform(rng, conv.w.shape[1:]) for rng in rngs]))
        fan_in = self.head.w.shape[1]
        self.head.w.assign(np.stack([
            rng.uniform(-1, 1, self.head.w.shape[1:]) / math.sqrt(fan_in) for rng in rngs
        ]).astype(np.float32))
        for norm in self.batch_norms():
            norm.offset.assign(tf.zeros_like(norm.offset))
            norm.moving_mean.assign(tf.zeros_like(norm.moving_mean))
            norm.moving_variance.assign(tf.ones_like(norm.moving_variance))

    def export(self, k: int, input_shape: Sequence[int]) -> Airbench:
        """Model k as a single-model `Airbench` (K = 1) with the same values."""
        single = Airbench(self.num_classes, 1, self.width_multiplier)
        single(tf.zeros([1, *input_shape]), is_training=False)
        for target, source in zip(single.variables, self.variables, strict=True):
            target.assign(source[k:k + 1])
        return single


def _dirac_uniform(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A ``[kh, kw, C, F]`` filter: uniform ``+-1/sqrt(kh*kw*C)``, first min(C, F) = identity."""
    kh, kw, channels, features = shape
    w = rng.uniform(-1, 1, shape) / math.sqrt(kh * kw * channels)
    n = min(channels, features)
    w[..., :n] = 0.0
    w[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    return w.astype(np.float32)
