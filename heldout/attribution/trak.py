"""TRAK: train-to-query attribution from projected output gradients, ensembled over models.

TRAK (Park et al. 2023) linearizes each trained model around its weights: for model m,
the features of an example are the gradient of its output ``f`` with respect to all
parameters, projected to d dimensions by a random matrix ``P_m``,
``phi_m(x) = P_m^T grad_theta f(x; theta_m)``. The output is the log-odds margin
``f = logit_y - logsumexp(other logits)`` (as published, and the output LDS judges).
With ``Phi_m`` the features of every training example ``[num_train, d]`` and
``Q_m = diag(1 - p_m)`` (``p_m`` the model's probability of the correct class of each
training example: the derivative of the loss with respect to ``f``), the scores are

    tau = mean_m [Phi_m (Phi_m^T Phi_m + lambda_m I)^{-1} phi_m(query)^T]  *  mean_m (1 - p_m)

(``reweighting="published"``: the public code, ``TRAKer.finalize_scores`` of
MadryLab/trak, averages the per-model scores and multiplies them by the mean over
models of ``1 - p``), or ``mean_m [Q_m Phi_m (...)^{-1} phi_m(query)^T]`` (``per_model``),
or without the ``1 - p`` factor (``none``). Positive
scores mean that training on the example raises the query's output.

``lambda_reg`` (the public code's ``lambda_reg``, added to ``Phi^T Phi``) is relative
here: the absolute ``lambda_m = lambda_reg * trace(Phi_m^T Phi_m) / d``, the mean
eigenvalue, so one grid serves every projection size and model. Without it the kernel
is singular once d approaches the number of training examples. ``lambda_reg = 0`` uses
the pseudo-inverse (the limit lambda -> 0). A grid of values is chosen by the mean LDS
on selection runs (which must not be the runs TRAK is later judged on).

Not copied from the public code: it divides query gradients by ``sqrt(num_params)``
(a constant factor: no change to any ranking or LDS) and rescales each model's inverse
kernel by its mean absolute entry (a per-model weight in the ensemble, which the
published formula does not have). Each model gets its own projection, seeded by
``(seed, model_index)``.

Each model's kernel is eigendecomposed once (``d x d``, or ``n x n`` through
``Phi (Phi^T Phi + lambda I)^{-1} = (Phi Phi^T + lambda I)^{-1} Phi`` when d exceeds the
number of training examples n), so scores for a whole grid of lambdas cost one matrix
product each.
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
from heldout.attribution.config import (
    REWEIGHTINGS,
    TRAKConfig,
)
from heldout.estimate import lds as lds_lib
from heldout.progress import Progress

OUTPUT = "logodds"  # TRAK's output function f
# Eigenvalues below this fraction of the largest count as zero in a pseudo-inverse.
_PINV_RTOL = 1e-10


@dataclasses.dataclass(frozen=True)
class TRAKFeatures:
    """One model's TRAK features.

    Attributes:
        train: ``[num_train, d]`` projected output gradients of the training examples.
        query: ``[num_query, d]`` the same for the queries.
        one_minus_p: ``[num_train]`` 1 - the model's probability of each training label.
        seconds: wall time of computing them.
    """

    train: np.ndarray
    query: np.ndarray
    one_minus_p: np.ndarray
    seconds: float


class Kernel:
    """One model's ``Phi (Phi^T Phi + lambda I)^{-1} phi(query)^T`` for any lambda.

    From the eigendecomposition of the smaller Gram matrix, scores for a given lambda
    are ``left diag(1 / (eigenvalues + lambda)) right^T``.

    Args:
        features: the model's `TRAKFeatures`.
    """

    def __init__(self, features: TRAKFeatures):
        phi = np.asarray(features.train, np.float64)
        query = np.asarray(features.query, np.float64)
        num_train, dim = phi.shape
        self.one_minus_p = np.asarray(features.one_minus_p, np.float64)
        self.mean_eigenvalue = float(np.sum(phi * phi)) / dim
        if dim <= num_train:  # Phi V diag(1/(e + l)) V^T phi_q^T
            values, vectors = np.linalg.eigh(phi.T @ phi)
            self.left, self.right = phi @ vectors, query @ vectors
        else:  # V diag(1/(e + l)) V^T Phi phi_q^T
            values, vectors = np.linalg.eigh(phi @ phi.T)
            self.left, self.right = vectors, (vectors.T @ (phi @ query.T)).T
        self.eigenvalues = np.maximum(values, 0.0)

    def scores(self, lambda_reg: float) -> np.ndarray:
        """``[num_train, num_query]`` kernel scores (without the ``1 - p`` factor).

        Args:
            lambda_reg: relative regularization (x the mean eigenvalue of Phi^T Phi);
                0: the pseudo-inverse.
        """
        damping = lambda_reg * self.mean_eigenvalue
        if damping > 0:
            weights = 1.0 / (self.eigenvalues + damping)
        else:
            keep = self.eigenvalues > _PINV_RTOL * max(self.eigenvalues.max(), 0.0)
            weights = np.where(keep, 1.0 / np.where(keep, self.eigenvalues, 1.0), 0.0)
        return (self.left * weights) @ self.right.T


@dataclasses.dataclass(frozen=True)
class TRAKResult:
    """TRAK scores of one call.

    Attributes:
        scores: ``[num_train, num_query]``; positive: training on the example raises the
            query's log-odds.
        lambda_reg: the relative regularization used (chosen from the grid, if one).
        selection: mean LDS on the selection runs of every candidate lambda_reg (empty
            without a grid).
        num_models: models averaged.
        seconds: wall time (features, kernels, selection and scores).
    """

    scores: np.ndarray
    lambda_reg: float
    selection: dict[float, float]
    num_models: int
    seconds: float


def trak_features(model: snt.Module, x_train: np.ndarray, y_train: np.ndarray,
                  x_query: np.ndarray, y_query: np.ndarray,
                  config: TRAKConfig = TRAKConfig(), model_index: int = 0) -> TRAKFeatures:
    """Projected log-odds gradients of training examples and queries under one model.

    Args:
        model: Sonnet model called as ``model(inputs, is_training=False)`` -> logits.
        x_train: ``[num_train, *input_shape]`` training inputs.
        y_train: ``[num_train]`` their labels.
        x_query: ``[num_query, *input_shape]`` query inputs.
        y_query: ``[num_query]`` their labels.
        config: projection, layers and batch size.
        model_index: m, which seeds this model's projection with ``(config.seed, m)``.
    """
    return ensemble_features([model], x_train, y_train, x_query, y_query, config,
                             first_index=model_index)[0]


def ensemble_features(models: Sequence[snt.Module], x_train: np.ndarray, y_train: np.ndarray,
                      x_query: np.ndarray, y_query: np.ndarray,
                      config: TRAKConfig = TRAKConfig(), first_index: int = 0,
                      progress: bool = False) -> list[TRAKFeatures]:
    """`trak_features` of every model, model m seeding its projection with m + first_index.

    The models' weights are loaded in turn into the first model, whose compiled
    gradient functions are traced once; its own weights are restored at the end. Every
    model must have the same architecture. With `progress`, a bar counts the examples
    whose gradients are done (training examples and queries, under every model).
    """
    if not models:
        raise ValueError("models: TRAK needs at least one model")
    template = models[0]
    bar = Progress(len(models) * (len(x_train) + len(x_query)), "TRAK features",
                                "example", enabled=progress)
    engine = gradients_lib.LayerGradients(template, np.shape(x_train)[1:], config.layers,
                                          config.batch_size, progress=bar)
    logodds_function = tf.function(lambda x, y: gradients_lib.measure(
        tf.cast(template(x, is_training=False), tf.float32), y, OUTPUT), autograph=False)
    dim = config.dim or engine.num_parameters
    saved = [v.numpy() for v in template.variables]
    result = []
    try:
        for offset, model in enumerate(models):
            start = time.time()
            gradients_lib.copy_weights(model, template, engine.input_shape)
            projection = None
            if config.projection != "none":
                projection = projection_lib.RandomProjection(
                    [spec.size for spec in engine.specs], config.dim,
                    (config.seed, first_index + offset), config.projection)

            train, query = (_features(engine, projection, x, y, dim)
                            for x, y in ((x_train, y_train), (x_query, y_query)))
            logodds = np.concatenate([
                logodds_function(tf.constant(x_train[i:i + 1024], tf.float32),
                                 tf.constant(y_train[i:i + 1024], tf.int64)).numpy()
                for i in range(0, len(x_train), 1024)])
            one_minus_p = 1.0 / (1.0 + np.exp(logodds.astype(np.float64)))  # 1 - sigmoid(f)
            result.append(TRAKFeatures(train, query, one_minus_p, time.time() - start))
    finally:
        bar.close()
        for variable, value in zip(template.variables, saved, strict=True):
            variable.assign(value)
    return result


def _features(engine: gradients_lib.LayerGradients,
              projection: projection_lib.RandomProjection | None, x: np.ndarray,
              y: np.ndarray, dim: int) -> np.ndarray:
    """``[n, dim]`` (projected) log-odds gradients of a whole set."""
    parts = [f.numpy() for _, f in projection_lib.gradient_features(engine, projection, x, y,
                                                                     OUTPUT)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def trak_scores(kernels: Sequence[Kernel], lambda_reg: float,
                reweighting: str = "published") -> np.ndarray:
    """``[num_train, num_query]`` TRAK scores of an ensemble at one `lambda_reg`.

    Args:
        kernels: one `Kernel` per model.
        lambda_reg: relative regularization.
        reweighting: one of `REWEIGHTINGS` (see the module docstring).
    """
    if not kernels:
        raise ValueError("kernels: TRAK needs at least one model")
    if reweighting not in REWEIGHTINGS:
        raise ValueError(f"reweighting={reweighting!r}: expected one of "
                         f"{', '.join(REWEIGHTINGS)}")
    total = 0.0
    for kernel in kernels:
        scores = kernel.scores(lambda_reg)
        total = total + (scores * kernel.one_minus_p[:, None] if reweighting == "per_model"
                         else scores)
    total = total / len(kernels)
    if reweighting == "published":
        total = total * np.mean([k.one_minus_p for k in kernels], axis=0)[:, None]
    return total


def select_lambda(kernels: Sequence[Kernel], grid: Sequence[float], masks: np.ndarray,
                  outputs: np.ndarray, reweighting: str = "published", seed: int = 0
                  ) -> tuple[float, dict[float, float]]:
    """The `lambda_reg` of `grid` with the highest mean LDS on selection runs.

    Args:
        kernels: one `Kernel` per model.
        grid: candidate values of lambda_reg.
        masks: bool ``[num_runs, num_train]`` membership of the selection runs: runs other
            than the LDS evaluation runs TRAK will be judged on.
        outputs: ``[num_runs, num_query]`` their log-odds on the queries.
        reweighting: one of `REWEIGHTINGS`.
        seed: of LDS's bootstrap (which does not change the mean).

    Returns:
        ``(best lambda_reg, {lambda_reg: mean LDS})``; ties go to the larger lambda.
    """
    if len(masks) < 3:
        raise ValueError(f"masks: {len(masks)} selection runs; choosing lambda_reg by LDS "
                         "needs at least 3")
    selection = {}
    for value in grid:
        scores = trak_scores(kernels, value, reweighting)
        selection[float(value)] = float(lds_lib.lds(scores, masks, outputs, num_bootstrap=0,
                                                     seed=seed).mean)
    finite = {v: s for v, s in selection.items() if np.isfinite(s)}
    if not finite:
        raise ValueError("lambda_reg: no candidate gave a finite LDS on the selection runs")
    best = max(sorted(finite, reverse=True), key=lambda v: finite[v])
    return best, selection


def score_trak(models: Sequence[snt.Module], x_train: np.ndarray, y_train: np.ndarray,
               x_query: np.ndarray, y_query: np.ndarray, config: TRAKConfig = TRAKConfig(),
               selection_masks: np.ndarray | None = None,
               selection_outputs: np.ndarray | None = None, progress: bool = False
               ) -> TRAKResult:
    """TRAK scores of an ensemble of trained models, in one call.

    Args:
        models: the M trained models (e.g. runs' final checkpoints), one architecture.
        x_train: ``[num_train, *input_shape]`` every training example (scores for all).
        y_train: ``[num_train]`` their labels.
        x_query: ``[num_query, *input_shape]`` queries (e.g. test examples).
        y_query: ``[num_query]`` their labels.
        config: projection, lambda_reg (or a grid), reweighting, layers, batch size.
        selection_masks: with a grid of lambda_reg: bool ``[runs, num_train]`` membership
            of selection runs (never the runs TRAK is evaluated on).
        selection_outputs: ``[runs, num_query]`` their log-odds on the queries.
        progress: show a progress bar of the gradients (the bulk of the time).

    Raises:
        ValueError: no model, or a grid without selection runs.
    """
    start = time.time()
    if not models:
        raise ValueError("models: TRAK needs at least one model")
    grid = config.lambda_grid
    if len(grid) > 1 and (selection_masks is None or selection_outputs is None):
        raise ValueError(f"lambda_reg={config.lambda_reg}: a grid needs selection_masks and "
                         "selection_outputs to choose from")
    kernels = [Kernel(features) for features in ensemble_features(
        models, x_train, y_train, x_query, y_query, config, progress=progress)]
    selection: dict[float, float] = {}
    chosen = grid[0]
    if len(grid) > 1:
        chosen, selection = select_lambda(kernels, grid, selection_masks, selection_outputs,
                                          config.reweighting, config.seed)
    scores = trak_scores(kernels, chosen, config.reweighting)
    return TRAKResult(scores, chosen, selection, len(models), time.time() - start)
