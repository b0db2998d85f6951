"""The published CIFAR architecture (SmallInception), checkpoint-compatible by name.

The released Feldman-Zhang CIFAR-10/CIFAR-100 checkpoints are
``tf.train.Checkpoint(model=SmallInception, epoch=, global_step=)``. A checkpoint is
restored by object-graph path, so the attribute names here (``conv1``, ``stage1``,
``_body``, ``conv1x1``, ``bn``, ``_pred``, ...) are API: renaming one breaks restoring
the released runs. `heldout.models.checkpoints.checkpoint_variable_shapes` lists that object
graph, for tests and for error messages that name the variables that do not fit.

BatchNorm settings are those of the published code, which calls
``snt.BatchNorm(create_scale=True, create_offset=True)`` with Sonnet's defaults:
moving averages with decay 0.999 (zero-debiased, hence the ``_counter`` and ``_hidden``
variables beside ``average``) and epsilon 1e-5. (``snt.nets.ResNet50``, used unchanged
for ImageNet, has its own default of decay 0.9, epsilon 1e-5.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sonnet as snt
import tensorflow as tf

# Channels of the published model: per stage, the (1x1, 3x3) output channels of its
# multi-branch blocks, and the output channels of its 3x3 stride-2 downsampling unit
# (0: no downsampling).
STAGES: tuple[tuple[tuple[tuple[int, int], ...], int], ...] = (
    (((32, 32), (32, 48)), 160),
    (((112, 48), (96, 64), (80, 80), (48, 96)), 240),
    (((176, 160), (176, 160)), 0),
)
STEM_CHANNELS = 96

# Images taller or wider than this (in pixels) get the large-input stem of the published
# code (7x7 stride-2 convolution, 3x3 stride-2 max pool) unless `large_inputs` says
# otherwise. CIFAR (32 px, the released runs) and downsampled ImageNet up to 64 px keep
# the 3x3 stride-1 stem.
LARGE_INPUT_THRESHOLD = 64

_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class ConvBNReLU(snt.Module):
    """Convolution without bias, batch normalization, ReLU: ``[B, H, W, C] -> [B, H', W', F]``.

    Attributes ``conv`` (``snt.Conv2D``) and ``bn`` (``snt.BatchNorm``) are checkpoint paths.
    """

    def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1,
                 name: str | None = None):
        super().__init__(name=name)
        self.conv = snt.Conv2D(output_channels, kernel_shape, stride=stride, padding="SAME",
                               with_bias=False, name="conv")
        self.bn = snt.BatchNorm(create_scale=True, create_offset=True, name="bn")

    def __call__(self, inputs: tf.Tensor, is_training: bool) -> tf.Tensor:
        return tf.nn.relu(self.bn(self.conv(inputs), is_training=is_training))


class MultiBranchBlock(snt.Module):
    """A 1x1 and a 3x3 `ConvBNReLU` side by side, concatenated along channels.

    ``[B, H, W, C] -> [B, H, W, channels_1x1 + channels_3x3]``.
    """

    def __init__(self, channels_1x1: int, channels_3x3: int, name: str | None = None):
        super().__init__(name=name)
        self.conv1x1 = ConvBNReLU(channels_1x1, 1, name="conv1x1")
        self.conv3x3 = ConvBNReLU(channels_3x3, 3, name="conv3x3")

    def __call__(self, inputs: tf.Tensor, is_training: bool) -> tf.Tensor:
        return tf.concat([self.conv1x1(inputs, is_training),
                          self.conv3x3(inputs, is_training)], axis=-1)


class SmallInceptionStage(snt.Module):
    """Multi-branch blocks in sequence, then an optional 3x3 stride-2 downsampling unit.

    ``[B, H, W, C] -> [B, H/2, W/2, downsample_channels]`` (rounded up by SAME padding),
    or ``[B, H, W, channels of the last block]`` without downsampling.
    """

    def __init__(self, block_channels: Sequence[tuple[int, int]], downsample_channels: int,
                 with_residual: bool = False, name: str | None = None):
        """Builds the stage.

        Args:
            block_channels: ``(channels_1x1, channels_3x3)`` of each multi-branch block.
            downsample_channels: output channels of the downsampling unit; 0 for none.
            with_residual: add the stage's input to the output of its last block (off in
                the published models; needs equal channel counts).
            name: module name.
        """
        super().__init__(name=name)
        if not block_channels:
            raise ValueError("block_channels must name at least one block")
        if downsample_channels < 0:
            raise ValueError(f"downsample_channels must be >= 0, got {downsample_channels}")
        self._with_residual = with_residual
        self._body = [MultiBranchBlock(c1, c3, name=f"block{i + 1}")
                      for i, (c1, c3) in enumerate(block_channels)]
        self._downsample = (ConvBNReLU(downsample_channels, 3, stride=2, name="downsample")
                            if downsample_channels > 0 else None)

    def __call__(self, inputs: tf.Tensor, is_training: bool) -> tf.Tensor:
        outputs = inputs
        for block in self._body:
            outputs = block(outputs, is_training)
        if self._with_residual:
            if outputs.shape[-1] != inputs.shape[-1]:
                raise ValueError(
                    f"with_residual=True needs equal channels in and out of the stage, got "
                    f"{inputs.shape[-1]} in and {outputs.shape[-1]} out")
            outputs += inputs
        if self._downsample is not None:
            outputs = self._downsample(outputs, is_training)
        return outputs


class SmallInception(snt.Module):
    """The Inception-style CIFAR network of Feldman & Zhang (2020), ~1.9M parameters.

    A stem (``conv1``), three stages, a global max pool over height and width and a
    linear head (``_pred``): ``[B, H, W, C] -> [B, num_classes]`` logits. At
    ``width_multiplier=1`` the object graph and every variable shape equal those of the
    released checkpoints (see ``tests/test_small_inception.py``).

    The stem is a 3x3 stride-1 `ConvBNReLU` with 96 channels, or for large inputs a 7x7
    stride-2 one followed by a 3x3 stride-2 max pool. Which one is decided when the model
    first sees inputs (Sonnet's lazy construction), so ``conv1`` exists only after the
    first call; a checkpoint restored before that is applied when it is created.
    """

    def __init__(self, num_classes: int, width_multiplier: float = 1.0,
                 large_inputs: bool | None = None, name: str | None = None):
        """Configures the model.

        Args:
            num_classes: number of logits.
            width_multiplier: scales every channel count (rounded, at least 1), for tiny
                models in tests; 1.0 gives the published shapes.
            large_inputs: use the 7x7 stride-2 stem with max pool. None decides on the
                first call: inputs taller or wider than `LARGE_INPUT_THRESHOLD` pixels.
            name: module name.

        Raises:
            ValueError: `num_classes` < 1 or `width_multiplier` <= 0.
        """
        super().__init__(name=name)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        self.num_classes = num_classes
        self.width_multiplier = width_multiplier
        self._large_inputs = large_inputs

        def width(channels: int) -> int:
            return scale_channels(channels, width_multiplier)

        def stage(index: int) -> SmallInceptionStage:
            blocks, downsample = STAGES[index]
            return SmallInceptionStage([(width(c1), width(c3)) for c1, c3 in blocks],
                                       width(downsample) if downsample else 0)

        self.stage1 = stage(0)
        self.stage2 = stage(1)
        self.stage3 = stage(2)
        self._pred = snt.Linear(num_classes, name="pred")

    @snt.once
    def _create_stem(self, images: tf.Tensor) -> None:
        large = self._large_inputs
        if large is None:
            height, width = images.shape[1], images.shape[2]
            if height is None or width is None:
                raise ValueError(
                    "SmallInception needs static image height and width on its first call to "
                    "choose its stem, or an explicit large_inputs=True/False")
            large = max(height, width) > LARGE_INPUT_THRESHOLD
        self._large_inputs = large
        channels = scale_channels(STEM_CHANNELS, self.width_multiplier)
        if large:
            self.conv1 = ConvBNReLU(channels, 7, stride=2, name="conv1")
        else:
            self.conv1 = ConvBNReLU(channels, 3, name="conv1")

    @property
    def large_inputs(self) -> bool | None:
        """Whether the stem is the large-input one (None until the first call decides)."""
        return self._large_inputs

    def features(self, images: tf.Tensor, is_training: bool) -> tf.Tensor:
        """The representation before the head: ``[B, H, W, C] -> [B, 336 * width]``."""
        self._create_stem(images)
        outputs = self.conv1(images, is_training)
        if self._large_inputs:
            outputs = tf.nn.max_pool2d(outputs, ksize=3, strides=2, padding="SAME")
        outputs = self.stage1(outputs, is_training)
        outputs = self.stage2(outputs, is_training)
        outputs = self.stage3(outputs, is_training)
        return tf.reduce_max(outputs, axis=[1, 2])

    def __call__(self, images: tf.Tensor, is_training: bool) -> tf.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, H, W, C]``.

        Args:
            images: float32 images (the published runs scale uint8 pixels to [0, 1]).
            is_training: use batch statistics and update BatchNorm's moving averages;
                when False, normalize with the moving averages and change no variable.
        """
        return self._pred(self.features(images, is_training))


def scale_channels(channels: int, width_multiplier: float) -> int:
    """``channels * width_multiplier`` rounded to the nearest integer, at least 1."""
    return max(1, round(channels * width_multiplier))
