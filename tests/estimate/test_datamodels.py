"""Tests of heldout.estimate.datamodels against scikit-learn and brute-force refits."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from heldout.estimate import datamodels

K, NUM_TRAIN, NUM_EVAL = 30, 45, 7  # fewer runs than training examples, as at scale


def _problem(seed=0, num_runs=K):
    rng = np.random.default_rng(seed)
    masks = rng.random((num_runs, NUM_TRAIN)) < 0.5
    truth = rng.normal(size=(NUM_TRAIN, NUM_EVAL)) * (rng.random((NUM_TRAIN, 1)) < 0.2)
    outputs = masks @ truth + rng.normal(size=(num_runs, NUM_EVAL)) + 2.0
    return masks, outputs


@pytest.mark.parametrize("lam", [0.3, 5.0, 200.0])
def test_ridge_matches_sklearn(lam):
    masks, outputs = _problem(seed=1)
    model = datamodels.fit_datamodels(masks, outputs, lambdas=(lam,), precision="float64",
                                      block_size=3)
    for j in range(NUM_EVAL):
        reference = Ridge(alpha=lam, fit_intercept=True).fit(masks.astype(float),
                                                             outputs[:, j])
        np.testing.assert_allclose(model.weights[:, j], reference.coef_, atol=1e-6, rtol=0)
        assert model.intercept[j] == pytest.approx(reference.intercept_, abs=1e-6)
    np.testing.assert_array_equal(model.lam, lam)


def test_float32_is_close_to_float64():
    masks, outputs = _problem(seed=2)
    exact = datamodels.fit_datamodels(masks, outputs, precision="float64")
    fast = datamodels.fit_datamodels(masks, outputs)
    assert fast.weights.dtype == np.float32
    np.testing.assert_array_equal(fast.lam, exact.lam)
    np.testing.assert_allclose(fast.weights, exact.weights, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.intercept, exact.intercept, atol=1e-4, rtol=0)


def _brute_cv(masks, outputs, lam, held_out_sets):
    """Mean squared error over all runs of sklearn Ridge refitted without each set."""
    squared = np.zeros(outputs.shape[1])
    for held in held_out_sets:
        keep = np.setdiff1d(np.arange(len(masks)), held)
        for j in range(outputs.shape[1]):
            fit = Ridge(alpha=lam).fit(masks[keep].astype(float), outputs[keep, j])
            squared[j] += ((outputs[held, j] - fit.predict(masks[held].astype(float))) ** 2
                           ).sum()
    return squared / len(masks)


def test_loo_error_matches_brute_force_refits():
    masks, outputs = _problem(seed=3)
    lambdas = (0.5, 20.0)
    model = datamodels.fit_datamodels(masks, outputs, lambdas=lambdas, precision="float64")
    for index, lam in enumerate(lambdas):
        expected = _brute_cv(masks, outputs, lam, [[r] for r in range(K)])
        np.testing.assert_allclose(model.cv_error[index], expected, rtol=1e-8)


def test_kfold_error_matches_brute_force_refits():
    masks, outputs = _problem(seed=4)
    lambdas = (1.0, 50.0)
    model = datamodels.fit_datamodels(masks, outputs, lambdas=lambdas, selection="kfold",
                                      folds=4, precision="float64")
    folds = [np.flatnonzero(np.arange(K) % 4 == f) for f in range(4)]
    for index, lam in enumerate(lambdas):
        expected = _brute_cv(masks, outputs, lam, folds)
        np.testing.assert_allclose(model.cv_error[index], expected, rtol=1e-8)


def test_lambda_choice_per_example_and_shared():
    masks, outputs = _problem(seed=5)
    model = datamodels.fit_datamodels(masks, outputs, precision="float64")
    np.testing.assert_array_equal(model.lam, model.lambdas[np.argmin(model.cv_error, 0)])
    shared = datamodels.fit_datamodels(masks, outputs, share_lambda=True,
                                       precision="float64")
    best = model.lambdas[np.argmin(model.cv_error.sum(axis=1))]
    np.testing.assert_array_equal(shared.lam, best)
    for j in (0, NUM_EVAL - 1):  # the chosen lambda's weights, as sklearn fits them
        reference = Ridge(alpha=model.lam[j]).fit(masks.astype(float), outputs[:, j])
        np.testing.assert_allclose(model.weights[:, j], reference.coef_, atol=1e-6, rtol=0)


def test_top_k_form_matches_dense_weights():
    masks, outputs = _problem(seed=6)
    dense = datamodels.fit_datamodels(masks, outputs, precision="float64")
    top = datamodels.fit_datamodels(masks, outputs, precision="float64", top_k=5,
                                    block_size=2)
    assert top.weights is None
    np.testing.assert_allclose(top.intercept, dense.intercept, atol=1e-12)
    for j in range(NUM_EVAL):
        order = sorted(range(NUM_TRAIN), key=lambda i: (-dense.weights[i, j], i))[:5]
        np.testing.assert_array_equal(top.top_train[j], order)
        np.testing.assert_allclose(top.top_weights[j], dense.weights[order, j], atol=1e-12)


@pytest.mark.parametrize("precision, tolerance", [("float64", 1e-9), ("float32", 1e-5)])
def test_tensorflow_engine_matches_numpy_engine(precision, tolerance):
    masks, outputs = _problem(seed=8)
    kwargs = dict(precision=precision, block_size=3)
    numpy_fit = datamodels.fit_datamodels(masks, outputs, engine="numpy", **kwargs)
    tf_fit = datamodels.fit_datamodels(masks, outputs, engine="tensorflow", **kwargs)
    assert tf_fit.weights.dtype == np.dtype(precision)
    np.testing.assert_allclose(tf_fit.weights, numpy_fit.weights, atol=tolerance, rtol=0)
    np.testing.assert_allclose(tf_fit.intercept, numpy_fit.intercept, atol=10 * tolerance)
    np.testing.assert_array_equal(tf_fit.lam, numpy_fit.lam)
    top = datamodels.fit_datamodels(masks, outputs, engine="tensorflow", top_k=4, **kwargs)
    for j in range(NUM_EVAL):
        order = sorted(range(NUM_TRAIN), key=lambda i: (-tf_fit.weights[i, j], i))[:4]
        np.testing.assert_array_equal(top.top_train[j], order)
        np.testing.assert_allclose(top.top_weights[j], tf_fit.weights[order, j], atol=1e-12)


def test_lasso_satisfies_its_optimality_conditions():
    masks, outputs = _problem(seed=7, num_runs=60)
    alpha = 0.05
    weights, intercept = datamodels.fit_lasso(masks, outputs, alpha=alpha, tol=1e-12)
    x = masks.astype(float)
    for j in range(NUM_EVAL):
        residual = outputs[:, j] - x @ weights[:, j] - intercept[j]
        assert abs(residual.mean()) < 1e-8  # the intercept is optimal
        gradient = (x - x.mean(0)).T @ residual / len(x)  # KKT: |g| <= alpha, = on support
        active = weights[:, j] != 0
        assert np.all(np.abs(gradient) <= alpha + 1e-6)
        np.testing.assert_allclose(gradient[active], alpha * np.sign(weights[active, j]),
                                   atol=1e-6)
        assert active.any() and not active.all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(lambdas=()), "lambdas"),
    (dict(lambdas=(1.0, -1.0)), "lambdas"),
    (dict(selection="gcv"), "selection"),
    (dict(selection="kfold", folds=1), "folds"),
    (dict(folds=3), "folds"),
    (dict(block_size=0), "block_size"),
    (dict(top_k=0), "top_k"),
    (dict(precision="bfloat16"), "precision"),
    (dict(engine="jax"), "engine"),
])
def test_bad_settings_are_refused(kwargs, message):
    masks, outputs = _problem()
    with pytest.raises(ValueError, match=message):
        datamodels.fit_datamodels(masks, outputs, **kwargs)


def test_bad_arrays_are_refused():
    masks, outputs = _problem()
    with pytest.raises(ValueError, match="outputs"):
        datamodels.fit_datamodels(masks, outputs[:-1])
    with pytest.raises(ValueError, match="0/1"):
        datamodels.fit_datamodels(masks * 3, outputs)
    with pytest.raises(ValueError, match="alpha"):
        datamodels.fit_lasso(masks, outputs, alpha=0.0)
