"""Data augmentation of whole batches on the device: no per-example Python, no tf.data map.

Every function takes a batch ``[batch, H, W, C]`` and a stateless seed (``int32 [2]``),
so a run's augmentation is a pure function of its seed and step, and the same on
CPU, GPU and TPU. All ops compile with XLA.
"""

from __future__ import annotations

import tensorflow as tf

AUGMENTATIONS = ("none", "flip", "crop_flip")


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def random_crop(images: tf.Tensor, seed: tf.Tensor, padding: int = 4) -> tf.Tensor:
    """Pads each image by `padding` zeros per side and crops it back at a random offset."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=0,
                                          maxval=2 * padding + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]  # [batch, H]
    columns = offsets[:, 1:] + tf.range(width)[None, :]  # [batch, W]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [batch, H, W + 2p, C]
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def augment(images: tf.Tensor, seed: tf.Tensor, kind: str) -> tf.Tensor:
    """Applies the augmentation named `kind` (one of `AUGMENTATIONS`)."""
    if kind == "none":
        return images
    if kind == "flip":
        return random_flip(images, seed)
    if kind == "crop_flip":
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return random_flip(random_crop(images, crop_seed), flip_seed)
    raise ValueError(f"--augment={kind}: expected one of {', '.join(AUGMENTATIONS)}")
