"""TracIn-CP: influence as a sum over checkpoints of learning rate x gradient dot products.

Pruthi et al. (2020) trace how much each training example's gradient steps moved a
query's loss: ``TracIn(z, q) = sum_c lr_c <grad loss(z; theta_c), grad cost(q; theta_c)>``
over saved checkpoints ``theta_c``, with ``lr_c`` the learning rate of the stretch of
training that checkpoint stands for. Self-influence ``sum_c lr_c |grad loss(z; theta_c)|^2``
is large for examples the model keeps having to fit (mislabeled, atypical).

Sign: positive means the training example is predicted to help the query, i.e. to
lower its loss (measurement ``loss``) or raise its margin (measurement ``margin``, whose
gradient enters with a minus sign). Momentum and weight decay are not modelled: with
a fixed momentum they scale every score alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.attribution import gradients as gradients_lib
from heldout.attribution import projection as projection_lib
from heldout.attribution.config import TracInConfig
from heldout.attribution.projection import GaussianProjection
from heldout.progress import Progress


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved state of a training run and the learning rate it stands for.

    Attributes:
        model: the Sonnet model with the checkpoint's weights.
        learning_rate: per-step learning rate of the training stretch that ended at
            this checkpoint (e.g. the mean over an epoch's steps).
    """

    model: snt.Module
    learning_rate: float

    def __post_init__(self):
        if not np.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(f"checkpoint learning_rate={self.learning_rate}: expected a "
                             "finite number >= 0")


@dataclasses.dataclass(frozen=True)
class TracInResult:
    """TracIn scores of one call.

    Attributes:
        self_influence: ``[num_train]`` self-influence, or None if not asked for.
        scores: ``[num_train, num_query]`` train x query influence, or None without queries.
        seconds: wall time.
    """

    self_influence: np.ndarray | None
    scores: np.ndarray | None
    seconds: float


def score_tracin(checkpoints: Sequence[Checkpoint], x_train: np.ndarray, y_train: np.ndarray,
           x_query: np.ndarray | None = None, y_query: np.ndarray | None = None,
           config: TracInConfig = TracInConfig(), self_influence: bool = True,
           progress: bool = False) -> TracInResult:
    """TracIn-CP self-influence of training examples and their influence on queries.

    The checkpoints' weights are loaded in turn into the first checkpoint's model,
    whose compiled gradient functions are traced once; its own weights are restored
    at the end. Every checkpoint must have the same architecture.

    Args:
        checkpoints: the saved states and their learning rates.
        x_train: ``[num_train, *input_shape]`` training inputs.
        y_train: ``[num_train]`` their (training) labels.
        x_query: ``[num_query, *input_shape]`` query inputs, or None.
        y_query: ``[num_query]`` query labels.
        config: measurement, layers, projection and batch size.
        self_influence: also compute self-influence.
        progress: show a progress bar of the gradients (examples under every checkpoint).

    Returns:
        A `TracInResult`.
    """
    start = time.time()
    if not checkpoints:
        raise ValueError("TracIn needs at least one checkpoint")
    if (x_query is None) != (y_query is None):
        raise ValueError("give both x_query and y_query, or neither")
    template = checkpoints[0].model
    per_checkpoint = len(x_train) + (0 if x_query is None else len(x_query))
    bar = Progress(len(checkpoints) * per_checkpoint, "TracIn", "example",
                                enabled=progress)
    engine = gradients_lib.LayerGradients(template, np.shape(x_train)[1:], config.layers,
                                          config.batch_size, progress=bar)
    projection = None
    if config.projection_dim is not None:
        projection = GaussianProjection([s.size for s in engine.specs], config.projection_dim,
                                        config.projection_seed)
    sign = 1.0 if config.measurement == "loss" else -1.0
    num_train = len(x_train)
    self_scores = np.zeros(num_train) if self_influence else None
    scores = None if x_query is None else np.zeros((num_train, len(x_query)))
    saved = [v.numpy() for v in template.variables]
    try:
        for i, checkpoint in enumerate(checkpoints):
            gradients_lib.copy_weights(checkpoint.model, template, engine.input_shape,
                                       f"checkpoint {i}")
            lr = checkpoint.learning_rate
            query = None
            if scores is not None:
                query = sign * tf.concat(list(_features(engine, projection, x_query, y_query,
                                                        config.measurement)), axis=0)
            for rows, train in _batched_features(engine, projection, x_train, y_train):
                if self_scores is not None:
                    self_scores[rows] += lr * tf.reduce_sum(train * train, axis=1).numpy()
                if query is not None:
                    scores[rows] += lr * tf.matmul(train, query, transpose_b=True).numpy()
    finally:
        bar.close()
        for variable, value in zip(template.variables, saved, strict=True):
            variable.assign(value)
    return TracInResult(self_scores, scores, time.time() - start)


def tracin_self_influence(checkpoints: Sequence[Checkpoint], x: np.ndarray, y: np.ndarray,
                          config: TracInConfig = TracInConfig()) -> np.ndarray:
    """``[n]`` TracIn self-influence ``sum_c lr_c |grad loss(z_i; theta_c)|^2``."""
    return score_tracin(checkpoints, x, y, config=config).self_influence


def tracin_scores(checkpoints: Sequence[Checkpoint], x_train: np.ndarray, y_train: np.ndarray,
                  x_query: np.ndarray, y_query: np.ndarray,
                  config: TracInConfig = TracInConfig()) -> np.ndarray:
    """``[num_train, num_query]`` TracIn influence of each training example on each query."""
    return score_tracin(checkpoints, x_train, y_train, x_query, y_query, config,
                  self_influence=False).scores


def _features(engine: gradients_lib.LayerGradients, projection: GaussianProjection | None,
              x: np.ndarray, y: np.ndarray, measurement: str):
    """Per batch, the flat (or projected) gradients ``[batch, D or d]``."""
    for _, features in _batched_features(engine, projection, x, y, measurement):
        yield features


def _batched_features(engine: gradients_lib.LayerGradients,
                      projection: GaussianProjection | None, x: np.ndarray, y: np.ndarray,
                      measurement: str = "loss"):
    return projection_lib.gradient_features(engine, projection, x, y, measurement)
