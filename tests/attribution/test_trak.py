"""TRAK checked against a direct NumPy computation of the published formula.

The reference takes each example's log-odds gradient from its own `tf.GradientTape`
(a plain loop, no per-example machinery of the package), forms
``Phi (Phi^T Phi + lambda I)^{-1} Phi_query^T`` with `np.linalg.solve` on the full
``[num_params, num_params]`` matrix, and applies the ``1 - p`` reweighting as the public
TRAK code does (mean over models of the scores, times the mean over models of 1 - p).
"""

import numpy as np
import pytest
import tensorflow as tf

from heldout.attribution import config as attribution_config
from heldout.attribution import projection, trak
from heldout.models import ensemble as models

INPUT_SHAPE = (2, 2, 1)
CLASSES = 3


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *INPUT_SHAPE)).astype(np.float32),
            rng.integers(0, CLASSES, n))


def _model(seed):
    tf.random.set_seed(seed)
    model = models.MLP((3,), CLASSES)  # 4*3+3 + 3*3+3 = 27 parameters
    model(tf.zeros([1, *INPUT_SHAPE]))
    for v in model.trainable_variables:
        v.assign(v + tf.random.normal(v.shape, stddev=0.5))
    return model


def _loop_features(model, x, y):
    """``[n, num_params]`` log-odds gradients, one tape per example; and ``[n]`` 1 - p."""
    rows, one_minus_p = [], []
    for xi, yi in zip(x, y, strict=True):
        with tf.GradientTape() as tape:
            logits = model(tf.constant(xi[None]))[0]
            others = tf.concat([logits[:yi], logits[yi + 1:]], axis=0)
            logodds = logits[yi] - tf.reduce_logsumexp(others)
        grads = tape.gradient(logodds, model.trainable_variables)
        rows.append(np.concatenate([g.numpy().ravel() for g in grads]))
        p = tf.nn.softmax(logits).numpy().astype(np.float64)[yi]
        one_minus_p.append(1.0 - p)
    return np.array(rows, np.float64), np.array(one_minus_p)


def _reference(models_, x_train, y_train, x_query, y_query, lambda_reg, reweighting):
    per_model, weights = [], []
    for model in models_:
        phi, one_minus_p = _loop_features(model, x_train, y_train)
        query, _ = _loop_features(model, x_query, y_query)
        dim = phi.shape[1]
        damping = lambda_reg * np.trace(phi.T @ phi) / dim
        scores = phi @ np.linalg.solve(phi.T @ phi + damping * np.eye(dim), query.T)
        per_model.append(scores * one_minus_p[:, None] if reweighting == "per_model"
                         else scores)
        weights.append(one_minus_p)
    mean = np.mean(per_model, axis=0)
    if reweighting == "published":
        mean = mean * np.mean(weights, axis=0)[:, None]
    return mean


@pytest.mark.parametrize("num_train,lambda_reg,reweighting", [
    (40, 1e-3, "published"),  # d = 27 < n: the primal (d x d) kernel
    (40, 0.05, "per_model"),
    (12, 0.1, "published"),  # d = 27 > n: the dual (n x n) form
    (12, 0.1, "none"),
])
def test_unprojected_trak_equals_the_published_formula(num_train, lambda_reg, reweighting):
    x_train, y_train = _data(num_train, 0)
    x_query, y_query = _data(5, 1)
    ensemble = [_model(1), _model(2)]
    config = attribution_config.TRAKConfig(projection="none", projection_dim=None,
                                           lambda_reg=lambda_reg, reweighting=reweighting,
                                           batch_size=7)
    result = trak.score_trak(ensemble, x_train, y_train, x_query, y_query, config)
    expected = _reference(ensemble, x_train, y_train, x_query, y_query, lambda_reg,
                          reweighting)
    assert result.scores.shape == (num_train, 5) and result.num_models == 2
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_lambda_zero_beyond_the_number_of_examples_is_the_pseudo_inverse():
    """lambda_reg = 0: the limit lambda -> 0, ``Phi pinv(Phi^T Phi) phi_q^T`` (d > n here)."""
    x_train, y_train = _data(10, 3)
    x_query, y_query = _data(4, 4)
    model = _model(5)
    config = attribution_config.TRAKConfig(projection="none", projection_dim=None, lambda_reg=0.0,
                             reweighting="none")
    scores = trak.score_trak([model], x_train, y_train, x_query, y_query, config).scores
    phi, _ = _loop_features(model, x_train, y_train)
    query, _ = _loop_features(model, x_query, y_query)
    # The log-odds gradients have a null space (the last layer's columns sum to zero),
    # so Phi^T Phi is singular even when d < n; float32 rounding leaves its zero
    # eigenvalues near 1e-14 x the largest, hence the cut-off.
    expected = phi @ np.linalg.pinv(phi.T @ phi, rcond=1e-10, hermitian=True) @ query.T
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projected_features_are_gradients_times_the_seeded_matrix(kind):
    x_train, y_train = _data(9, 6)
    x_query, y_query = _data(3, 7)
    model = _model(8)
    raw = trak.trak_features(model, x_train, y_train, x_query, y_query,
                             attribution_config.TRAKConfig(projection="none",
                                                           projection_dim=None))
    config = attribution_config.TRAKConfig(projection=kind, projection_dim=16, seed=4)
    projected = trak.trak_features(model, x_train, y_train, x_query, y_query, config,
                                   model_index=2)
    matrix = projection.RandomProjection([15, 12], 16, (4, 2), kind).matrix()
    np.testing.assert_allclose(projected.train, raw.train @ matrix, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(projected.query, raw.query @ matrix, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(projected.one_minus_p, raw.one_minus_p)
    if kind == "rademacher":
        np.testing.assert_array_equal(np.abs(matrix), np.float32(0.25))
    other = trak.trak_features(model, x_train, y_train, x_query, y_query, config,
                               model_index=3)
    assert not np.allclose(other.train, projected.train)  # one projection per model


def test_a_grid_needs_selection_runs_and_settings_are_checked():
    x, y = _data(6, 9)
    with pytest.raises(ValueError, match="lambda_reg=.*selection_masks"):
        trak.score_trak([_model(0)], x, y, x, y,
                        attribution_config.TRAKConfig(lambda_reg=(0.1, 1.0)))
    bad = [({"projection": "sparse"}, "projection="),
           ({"projection": "none", "projection_dim": 1024}, "projection_dim=1024: not used"),
           ({"projection_dim": 0}, "projection_dim=0"),
           ({"lambda_reg": -1.0}, "lambda_reg="),
           ({"lambda_reg": ()}, "lambda_reg="),
           ({"reweighting": "sqrt"}, "reweighting="),
           ({"batch_size": 0}, "batch_size=0")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            attribution_config.TRAKConfig(**kwargs)


def test_lambda_is_chosen_by_the_mean_spearman_over_selection_runs():
    """Against a direct computation: NumPy solve per lambda, scipy Spearman per query."""
    from scipy import stats

    rng = np.random.default_rng(10)
    num_train, num_query, dim, runs = 30, 6, 12, 40
    features = [trak.TRAKFeatures(rng.normal(size=(num_train, dim)).astype(np.float32),
                                  rng.normal(size=(num_query, dim)).astype(np.float32),
                                  rng.random(num_train), 0.0) for _ in range(2)]
    masks = rng.random((runs, num_train)) < 0.5
    outputs = masks @ rng.normal(size=(num_train, num_query)) + rng.normal(size=(runs,
                                                                              num_query))
    grid = (0.0, 0.1, 10.0)
    best, table = trak.select_lambda([trak.Kernel(f) for f in features], grid, masks, outputs)
    expected = {}
    for value in grid:
        per_model = []
        for f in features:
            phi, query = f.train.astype(np.float64), f.query.astype(np.float64)
            damping = value * np.sum(phi ** 2) / dim
            per_model.append(phi @ np.linalg.solve(phi.T @ phi + damping * np.eye(dim),
                                                   query.T))
        scores = np.mean(per_model, axis=0) * np.mean([f.one_minus_p for f in features],
                                                      axis=0)[:, None]
        predicted = masks @ scores
        expected[value] = np.mean([stats.spearmanr(predicted[:, j], outputs[:, j]).statistic
                                   for j in range(num_query)])
    assert list(table) == list(grid)
    np.testing.assert_allclose([table[v] for v in grid], [expected[v] for v in grid],
                               atol=1e-9)
    assert best == max(grid, key=lambda v: expected[v])
