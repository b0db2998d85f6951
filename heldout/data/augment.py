"""Data augmentation of whole batches on the device: no per-example Python, no tf.data map.

Every function takes a batch ``[batch, H, W, C]`` and a stateless seed (``int32 [2]``),
so a run's augmentation is a pure function of its seed and step. The random numbers come
from an integer hash (`uniform`), not ``tf.random.stateless_uniform``, whose numbers
change when XLA compiles the program: a run is the same with and without ``--xla``
(which the toolkit treats as a speed-only setting) and on CPU, GPU and TPU.
Alternating flips (airbench's) also depend on the epoch and on a per-run, per-example
phase (`flip_phase`, `alternating_flips`). All ops compile with XLA.
"""

from __future__ import annotations

import tensorflow as tf

from heldout.data.augment_kinds import ALTERNATING, AUGMENTATIONS
from heldout.errors import ParameterError

CROP_PADDING = 4  # pixels of zero padding per side for crop_* (the published CIFAR runs)
AIRBENCH_TRANSLATE = 2  # pixels of reflect padding per side for airbench94's translation
CUTOUT_SIZE = 12  # side in pixels of the square that cutout zeroes (airbench96's size)


_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters over 32 bits


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) of uint32 values."""
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint32)))
        x = x * tf.constant(multiplier, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def fold_in(seed: tf.Tensor, data: int | tf.Tensor) -> tf.Tensor:
    """A new seed ``int32 [2]`` from `seed` and an integer (a step, a stream number).

    Plays the role of ``tf.random.experimental.stateless_fold_in`` and ``stateless_split``,
    whose results change inside XLA-compiled programs; this is plain integer hashing.
    """
    words = tf.bitcast(tf.cast(seed, tf.int32), tf.uint32)
    value = tf.bitcast(tf.cast(data, tf.int32), tf.uint32)
    golden = tf.constant(_GOLDEN, tf.uint32)
    first = _mix32(words[0] + _mix32(value * golden + words[1]))
    second = _mix32(words[1] ^ _mix32(first + golden))
    return tf.bitcast(tf.stack([first, second]), tf.int32)


def uniform(shape: list[int | tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
    """float32 numbers in [0, 1) of `shape`, a pure function of the seed ``int32 [2]``.

    Counter-based: element i is the hash of (seed, i), in 24-bit steps. Plain integer
    arithmetic gives the same bits under XLA and TensorFlow kernels on every device.
    """
    words = tf.bitcast(tf.cast(seed, tf.int32), tf.uint32)
    golden = tf.constant(_GOLDEN, tf.uint32)
    key = _mix32(tf.bitwise.bitwise_xor(words[0], _mix32(words[1] + golden)))
    counters = tf.bitcast(tf.range(tf.reduce_prod(tf.stack(shape))), tf.uint32)
    bits = _mix32(counters * golden + key)
    numbers = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32)
    return tf.reshape(numbers * 2.0**-24, shape)


def uniform_integers(shape: list[int | tf.Tensor], seed: tf.Tensor, maxval: int) -> tf.Tensor:
    """int32 numbers in [0, maxval) of `shape` (see `uniform`)."""
    draws = tf.cast(uniform(shape, seed) * maxval, tf.int32)
    return tf.minimum(draws, maxval - 1)


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def random_crop(images: tf.Tensor, seed: tf.Tensor, padding: int = CROP_PADDING,
                mode: str = "CONSTANT") -> tf.Tensor:
    """Pads each image by `padding` pixels per side and crops it back at a random offset.

    `mode` is `tf.pad`'s: ``"CONSTANT"`` pads with zeros, ``"REFLECT"`` mirrors the
    border (airbench's translation).
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]], mode=mode)
    offsets = uniform_integers([batch, 2], seed, 2 * padding + 1)
    rows = offsets[:, :1] + tf.range(height)[None, :]  # [batch, H]
    columns = offsets[:, 1:] + tf.range(width)[None, :]  # [batch, W]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [batch, H, W + 2p, C]
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def flip_phase(seed: tf.Tensor, num_examples: int) -> tf.Tensor:
    """A run's per-example starting flip for alternating flips: bool ``[num_examples]``."""
    return uniform([num_examples], seed) < 0.5


def alternating_flips(phase: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """Which images of a batch to mirror in `epoch`, given their `flip_phase` entries.

    Each example is mirrored in every other epoch, starting from its random phase, so
    over two epochs every example is seen both ways (airbench's alternating flip,
    more diverse than drawing a fresh random flip each epoch).
    """
    return tf.math.logical_xor(phase, tf.math.floormod(epoch, 2) == 1)


def cutout(images: tf.Tensor, seed: tf.Tensor, size: int = CUTOUT_SIZE) -> tf.Tensor:
    """Zeroes one random `size` x `size` square per image, placed fully inside it."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    places = tf.constant([[height - size + 1, width - size + 1]], tf.float32)
    corners = tf.cast(uniform([batch, 2], seed) * places, tf.int32)
    rows = tf.range(height)[None, :] - corners[:, :1]  # [batch, H]
    columns = tf.range(width)[None, :] - corners[:, 1:]  # [batch, W]
    in_rows, in_columns = (rows >= 0) & (rows < size), (columns >= 0) & (columns < size)
    inside = in_rows[:, :, None] & in_columns[:, None, :]  # [batch, H, W]
    return tf.where(inside[..., None], tf.zeros_like(images), images)


def augment(images: tf.Tensor, seed: tf.Tensor, kind: str,
            flips: tf.Tensor | None = None) -> tf.Tensor:
    """Applies the augmentation named `kind` (one of `AUGMENTATIONS`).

    Args:
        images: a batch ``[batch, H, W, C]``.
        seed: stateless seed ``int32 [2]`` of this batch.
        kind: ``none``; ``flip`` (random mirror); ``crop_flip`` (pad 4, random crop,
            random mirror); ``altflip`` / ``crop_altflip`` (the same with alternating
            flips); ``crop_flip_cutout`` (crop_flip, then a `CUTOUT_SIZE` square
            zeroed); ``airbench`` (airbench94: reflect-pad 2 and random translation,
            alternating flips).
        flips: bool ``[batch]``, the images to mirror, for the kinds in `ALTERNATING`
            (see `alternating_flips`).

    Raises:
        ValueError: unknown `kind`, or an alternating kind without `flips`.
    """
    if kind not in AUGMENTATIONS:
        raise ParameterError("augment", f"expected one of {', '.join(AUGMENTATIONS)}", kind)
    if kind in ALTERNATING and flips is None:
        raise ParameterError("augment", "alternates flips by epoch: pass `flips`", kind)
    if kind == "none":
        return images
    if kind == "flip":
        return random_flip(images, seed)
    if kind == "crop_flip":
        crop_seed, flip_seed = fold_in(seed, 0), fold_in(seed, 1)
        return random_flip(random_crop(images, crop_seed), flip_seed)
    crop_seed, flip_seed, cutout_seed = (fold_in(seed, stream) for stream in range(3))
    if kind == "airbench":
        images = random_crop(images, crop_seed, AIRBENCH_TRANSLATE, mode="REFLECT")
    elif kind.startswith("crop_"):
        images = random_crop(images, crop_seed)
    if kind in ALTERNATING:
        images = tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
    else:
        images = random_flip(images, flip_seed)
    if kind.endswith("_cutout"):
        images = cutout(images, cutout_seed)
    return images
