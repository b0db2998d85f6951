"""Seeded random projections (Gaussian or Rademacher) of per-example gradients.

For a large model, gradients of ``D`` parameters do not fit in memory for every
example. A random matrix ``P[D, d]`` with independent entries of mean 0 and variance
``1/d`` keeps inner products in expectation (``E[P P^T] = I``) and, with high
probability, within a relative error of about ``sqrt(1/d)`` (Johnson-Lindenstrauss),
so TracIn and TRAK can work with ``d``-dimensional vectors. Entries are Gaussian
``N(0, 1/d)`` or Rademacher ``+-1/sqrt(d)`` (the public TRAK code's default kind, as
cheap to draw and as good for this purpose). ``P`` is stored one block of rows per
layer, each drawn from its own generator seeded by ``(seed, layer)``: stacking
independent blocks gives a matrix of the same law for the concatenated gradient, and
the same seed gives the same projection on any machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from heldout.attribution import config as attribution_config
from heldout.attribution import gradients as gradients_lib
from heldout.errors import ParameterError

MAX_MATRIX_BYTES = 8 << 30  # most memory the projection matrices may take

KINDS = ("gaussian", "rademacher")


class RandomProjection:
    """Projects per-layer gradients ``[n, rows, columns]`` to vectors ``[n, dim]``.

    Args:
        layer_sizes: number of parameters of each layer, in the order of the gradients.
        dim: dimension d of the projection.
        seed: seed of the projection matrix: an int, or a sequence of ints (e.g.
            ``(seed, model_index)`` for one independent projection per model).
        kind: ``gaussian`` or ``rademacher`` entries.
    """

    def __init__(self, layer_sizes: Sequence[int], dim: int, seed: int | Sequence[int] = 0,
                 kind: str = "gaussian"):
        attribution_config.check_size("projection_dim", dim,
                                      attribution_config.MAX_PROJECTION_DIM)
        size = 4 * dim * int(sum(layer_sizes))  # float32 matrices
        if size > MAX_MATRIX_BYTES:
            raise ParameterError("projection_dim", f"a projection of the {sum(layer_sizes):,} "
                                 f"parameters to {dim:,} dimensions needs {size / 2**30:.1f} "
                                 f"GiB, above the {MAX_MATRIX_BYTES / 2**30:.0f} GiB allowed",
                                 dim)
        if kind not in KINDS:
            raise ValueError(f"projection={kind!r}: expected one of {', '.join(KINDS)}")
        self.dim = dim
        self.seed = seed
        self.kind = kind
        root = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
        scale = np.float32(1.0 / np.sqrt(dim))
        self.matrices = []
        for layer, size in enumerate(layer_sizes):
            rng = np.random.default_rng([*root, layer])
            if kind == "gaussian":
                block = rng.standard_normal((size, dim), dtype=np.float32)
            else:
                block = (2.0 * rng.integers(0, 2, (size, dim), dtype=np.int8) - 1.0
                         ).astype(np.float32)
            self.matrices.append(tf.constant(block * scale))

    def __call__(self, grads: Sequence[tf.Tensor]) -> tf.Tensor:
        """``sum_l flat(grads[l]) @ P_l``: ``[n, dim]``."""
        if len(grads) != len(self.matrices):
            raise ValueError(f"{len(grads)} layers of gradients, but the projection was made "
                             f"for {len(self.matrices)}")
        return project(grads, self.matrices)

    def matrix(self) -> np.ndarray:
        """The whole projection ``[num_parameters, dim]`` (for checks at small sizes)."""
        return np.concatenate([p.numpy() for p in self.matrices])


class GaussianProjection(RandomProjection):
    """A `RandomProjection` with Gaussian entries ``N(0, 1/d)``."""

    def __init__(self, layer_sizes: Sequence[int], dim: int, seed: int | Sequence[int] = 0):
        super().__init__(layer_sizes, dim, seed, "gaussian")


def project(grads: Sequence[tf.Tensor], matrices: Sequence[tf.Tensor]) -> tf.Tensor:
    """``sum_l flat(grads[l]) @ matrices[l]``: per-layer gradients to ``[n, dim]``."""
    return tf.add_n([tf.reshape(g, [tf.shape(g)[0], -1]) @ p
                     for g, p in zip(grads, matrices, strict=True)])


def gradient_features(engine: gradients_lib.LayerGradients,
                      projection: RandomProjection | None, x: np.ndarray, y: np.ndarray,
                      measurement: str = "loss") -> Iterator[tuple[slice, tf.Tensor]]:
    """Per batch, ``(rows, features)``: flat gradients ``[batch, D]`` of a measurement, or
    their projection ``[batch, d]`` (computed in the compiled batch function, so the
    ``D``-dimensional gradients of a whole data set never exist at once)."""
    if projection is None:
        batches = engine.map_batches(x, y, _flat_gradients, "flat", measurement)
    else:
        batches = engine.map_batches(x, y, _projected_gradients, "projected", measurement,
                                     constants=projection.matrices)
    for rows, (features,) in batches:
        yield rows, features


def _flat_gradients(a, s):
    return [gradients_lib.flatten([gradients_lib.outer_gradients(a_l, s_l)[0]
                                   for a_l, s_l in zip(a, s, strict=True)])]


def _projected_gradients(a, s, *matrices):
    grads = [gradients_lib.outer_gradients(a_l, s_l)[0] for a_l, s_l in zip(a, s, strict=True)]
    return [project(grads, matrices)]
