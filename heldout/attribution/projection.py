"""Seeded Gaussian random projection of per-example gradients to a few dimensions.

For a large model, gradients of ``D`` parameters do not fit in memory for every
example. A Gaussian matrix ``P[D, d]`` with entries drawn from ``N(0, 1/d)`` keeps inner
products in expectation (``E[P P^T] = I``) and, with high probability, within a
relative error of about ``sqrt(1/d)`` (Johnson-Lindenstrauss), so TracIn scores can be
computed from ``d``-dimensional vectors. ``P`` is stored one block of rows per layer,
each drawn from its own generator seeded by ``(seed, layer)``: stacking independent
Gaussian blocks is a Gaussian matrix for the concatenated gradient, and the same seed
gives the same projection on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


class GaussianProjection:
    """Projects per-layer gradients ``[n, rows, columns]`` to vectors ``[n, dim]``.

    Args:
        layer_sizes: number of parameters of each layer, in the order of the gradients.
        dim: dimension d of the projection.
        seed: seed of the projection matrix.
    """

    def __init__(self, layer_sizes: Sequence[int], dim: int, seed: int = 0):
        if dim < 1:
            raise ValueError(f"--projection_dim={dim}: expected a positive number")
        self.dim = dim
        self.seed = seed
        self.matrices = [
            tf.constant(np.random.default_rng([seed, layer]).standard_normal(
                (size, dim), dtype=np.float32) / np.float32(np.sqrt(dim)))
            for layer, size in enumerate(layer_sizes)]

    def __call__(self, grads: Sequence[tf.Tensor]) -> tf.Tensor:
        """``sum_l flat(grads[l]) @ P_l``: ``[n, dim]``."""
        if len(grads) != len(self.matrices):
            raise ValueError(f"{len(grads)} layers of gradients, but the projection was made "
                             f"for {len(self.matrices)}")
        return project(grads, self.matrices)

    def matrix(self) -> np.ndarray:
        """The whole projection ``[num_parameters, dim]`` (for checks at small sizes)."""
        return np.concatenate([p.numpy() for p in self.matrices])


def project(grads: Sequence[tf.Tensor], matrices: Sequence[tf.Tensor]) -> tf.Tensor:
    """``sum_l flat(grads[l]) @ matrices[l]``: per-layer gradients to ``[n, dim]``."""
    return tf.add_n([tf.reshape(g, [tf.shape(g)[0], -1]) @ p
                     for g, p in zip(grads, matrices, strict=True)])
