"""Influence functions checked against the exact damped Fisher, NumPy covariances and loops.

Where KFAC is exact: for one linear softmax layer the per-example gradient is
``vec(G) = a (x) s`` (input with bias 1, times ``s = p - onehot(y)``), so the Fisher is
``F = E[(a a^T) (x) (s s^T)]``. It equals ``E[a a^T] (x) E[s s^T]`` exactly when the
distribution of s does not depend on a. Two setups make that so:

1. Zero weights and the expected (true) Fisher: every example has the same predictive
   distribution ``p = softmax(b)``, so ``E_y[s s^T] = diag(p) - p p^T`` for every input.
2. Labels drawn from the model (the sampled Fisher, as the `true` option does) with all
   inputs equal: then ``a a^T`` is one matrix and factors out of the mean.

In both, ``(A (x) S + damping I)^{-1}`` is the exact damped Fisher inverse, and EKFAC's
eigenvalues along ``Q_A (x) Q_S`` are exactly the Fisher's, so both must equal
``np.linalg.solve(F + damping I, g)``.
"""

import numpy as np
import pytest
import tensorflow as tf

from heldout.attribution import influence_functions as if_lib
from heldout.models import ensemble as models

LAYER = "_layers/0"  # the only layer of MLP((), num_classes)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _linear_softmax(x, w, b):
    model = models.MLP((), len(b))
    model(tf.constant(x[:1]))
    model._layers[0].w.assign(w.astype(np.float32))
    model._layers[0].b.assign(b.astype(np.float32))
    return model


def _rows(x):
    """Layer inputs with the bias column."""
    return np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)


def _exact_fisher(x, w, b, labels=None):
    """``E[vec(G) vec(G)^T]`` over examples, and over classes when `labels` is None."""
    a = _rows(x)
    p = _softmax(x.astype(np.float64) @ w + b)
    fisher = 0
    for n in range(len(x)):
        if labels is None:
            s_cov = np.diag(p[n]) - np.outer(p[n], p[n])
        else:
            s = p[n] - np.eye(len(b))[labels[n]]
            s_cov = np.outer(s, s)
        fisher = fisher + np.kron(np.outer(a[n], a[n]), s_cov)
    return fisher / len(x)


def _loss_gradients(x, w, b, labels):
    """``[n, rows * columns]`` flat loss gradients ``a (x) (p - onehot(y))``."""
    a = _rows(x)
    s = _softmax(x.astype(np.float64) @ w + b) - np.eye(len(b))[labels]
    return np.stack([np.kron(a[n], s[n]) for n in range(len(x))])


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
def test_kfac_and_ekfac_equal_the_exact_expected_fisher_inverse(strategy):
    rng = np.random.default_rng(0)
    dim, classes, n = 4, 3, 12
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    w, b = np.zeros((dim, classes)), rng.normal(size=classes)
    model = _linear_softmax(x, w, b)
    config = if_lib.InfluenceConfig(strategy=strategy, fisher="expected", batch_size=5)
    x_query, y_query = x[:3] + 0.5, y[:3]
    result = if_lib.score_influence_functions(model, x, y, x_query, y_query, config)

    fisher = _exact_fisher(x, w, b)
    damping = 0.1 * np.linalg.eigvalsh(fisher).mean()
    assert result.damping[LAYER] == pytest.approx(damping, rel=1e-5)
    inverse = np.linalg.inv(fisher + damping * np.eye(len(fisher)))
    g = rng.normal(size=(2, dim + 1, classes))
    expected = (g.reshape(2, -1) @ inverse).reshape(g.shape)
    np.testing.assert_allclose(if_lib.precondition(result.factors, [g], config)[0], expected,
                               rtol=1e-4, atol=1e-6)
    train, query = _loss_gradients(x, w, b, y), _loss_gradients(x_query, w, b, y_query)
    np.testing.assert_allclose(result.self_influence,
                               np.einsum("ni,ij,nj->n", train, inverse, train), rtol=1e-4)
    np.testing.assert_allclose(result.scores, train @ inverse @ query.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
def test_kfac_and_ekfac_equal_the_exact_sampled_fisher_inverse(strategy):
    rng = np.random.default_rng(1)
    dim, classes, n = 3, 4, 20
    x = np.repeat(rng.normal(size=(1, dim)), n, axis=0).astype(np.float32)
    w, b = rng.normal(size=(dim, classes)), rng.normal(size=classes)
    model = _linear_softmax(x, w, b)
    # Labels sampled from the model's predictive distribution, given as the labels of an
    # empirical Fisher so the exact Fisher can use the very same samples.
    p = _softmax(x[:1].astype(np.float64) @ w + b)[0]
    sampled = rng.choice(classes, size=n, p=p)
    config = if_lib.InfluenceConfig(strategy=strategy, fisher="empirical", damping=1e-3)
    factors = if_lib.fit_factors(model, x, sampled, config)
    fisher = _exact_fisher(x, w, b, sampled)
    g = rng.normal(size=(3, dim + 1, classes))
    expected = np.linalg.solve(fisher + 1e-3 * np.eye(len(fisher)), g.reshape(3, -1).T).T
    np.testing.assert_allclose(if_lib.precondition(factors, [g], config)[0],
                               expected.reshape(g.shape), rtol=2e-3, atol=1e-4)


def test_factors_are_the_fisher_moments_in_general():
    """Away from exactness: A, S, EKFAC eigenvalues and the diagonal from their definitions."""
    rng = np.random.default_rng(2)
    dim, classes, n = 3, 4, 15
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    w, b = rng.normal(size=(dim, classes)), rng.normal(size=classes)
    model = _linear_softmax(x, w, b)
    ekfac = if_lib.fit_factors(model, x, y, if_lib.InfluenceConfig(fisher="empirical",
                                                                     batch_size=4))
    layer = ekfac.layers[LAYER]
    a = _rows(x)
    s = _softmax(x.astype(np.float64) @ w + b) - np.eye(classes)[y]
    np.testing.assert_allclose(layer.activation_covariance, a.T @ a / n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.gradient_covariance, s.T @ s / n, rtol=1e-5, atol=1e-6)
    fisher = _exact_fisher(x, w, b, y)
    basis = np.kron(layer.activation_eigenvectors, layer.gradient_eigenvectors)
    lambdas = np.diag(basis.T @ fisher @ basis)
    np.testing.assert_allclose(layer.lambdas.ravel(), lambdas, rtol=1e-4, atol=1e-6)
    # EKFAC's scores divide by these eigenvalues (plus 0.1 x their mean) in that basis.
    result = if_lib.score_influence_functions(
        model, x, y, config=if_lib.InfluenceConfig(fisher="empirical"), factors=ekfac)
    inverse = basis @ np.diag(1 / (lambdas + 0.1 * lambdas.mean())) @ basis.T
    train = _loss_gradients(x, w, b, y)
    np.testing.assert_allclose(result.self_influence,
                               np.einsum("ni,ij,nj->n", train, inverse, train), rtol=1e-3)
    diagonal = if_lib.fit_factors(model, x, y, if_lib.InfluenceConfig(
        strategy="diagonal", fisher="empirical"))
    np.testing.assert_allclose(diagonal.layers[LAYER].diagonal.ravel(), np.diag(fisher),
                               rtol=1e-4, atol=1e-7)


def test_true_fisher_samples_labels_from_the_model():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    # A model sure of class 2 whatever the input: every sampled label is 2.
    model = _linear_softmax(x, 0.01 * rng.normal(size=(3, 4)), np.array([0.0, 0.0, 30.0, 0.0]))
    labels = rng.integers(0, 4, 10)
    true = if_lib.fit_factors(model, x, labels, if_lib.InfluenceConfig(strategy="kfac"))
    empirical = if_lib.fit_factors(model, x, np.full(10, 2), if_lib.InfluenceConfig(
        strategy="kfac", fisher="empirical"))
    np.testing.assert_allclose(true.layers[LAYER].gradient_covariance,
                               empirical.layers[LAYER].gradient_covariance, atol=1e-12)
    data_labels = if_lib.fit_factors(model, x, labels, if_lib.InfluenceConfig(
        strategy="kfac", fisher="empirical"))
    assert not np.allclose(true.layers[LAYER].gradient_covariance,
                           data_labels.layers[LAYER].gradient_covariance)


@pytest.mark.parametrize("strategy", ["identity", "diagonal", "kfac", "ekfac"])
def test_self_scores_are_the_diagonal_of_pairwise_scores(strategy):
    rng = np.random.default_rng(4)
    x = rng.random((9, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 9)
    model = models.MLP((7,), 10)
    config = if_lib.InfluenceConfig(strategy=strategy, batch_size=4)
    result = if_lib.score_influence_functions(model, x, y, x, y, config)
    np.testing.assert_allclose(result.self_influence, np.diag(result.scores), rtol=1e-4)
    assert (result.self_influence > 0).all()


def _cnn_forward_with_conv_output(model, x):
    """`models.CNN` with one convolution, written out, returning logits and the conv output."""
    conv_output = model._convs[0](x)
    outputs = tf.nn.max_pool2d(tf.nn.relu(conv_output), 2, 2, "VALID")
    outputs = tf.nn.relu(model._hidden(tf.reshape(outputs, [len(x), -1])))
    return model._head(outputs), conv_output


def test_convolution_factors_and_scores_against_loops():
    rng = np.random.default_rng(5)
    n = 6
    x = rng.random((n, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 4, n)
    model = models.CNN((3,), 5, 4)
    config = if_lib.InfluenceConfig(fisher="empirical", batch_size=4)
    result = if_lib.score_influence_functions(model, x, y, x[:2], y[:2], config)

    # A: im2col patches (3x3, SAME: zero border of 1) with the bias 1, mean over positions.
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]).astype(np.float64)
    patches = np.stack([padded[:, i:i + 3, j:j + 3, :].reshape(n, -1)
                        for i in range(6) for j in range(6)], axis=1)
    a = np.concatenate([patches, np.ones((n, 36, 1))], axis=2)
    conv = result.factors.layers["_convs/0"]
    np.testing.assert_allclose(conv.activation_covariance,
                               np.einsum("nti,ntj->ij", a, a) / (n * 36), rtol=1e-5, atol=1e-6)
    # S: gradients at the convolution's outputs, summed over positions.
    s = []
    for i in range(n):
        with tf.GradientTape() as tape:
            logits, conv_output = _cnn_forward_with_conv_output(model, x[i:i + 1])
            loss = tf.reduce_logsumexp(logits[0]) - logits[0, int(y[i])]
        s.append(tape.gradient(loss, conv_output).numpy().reshape(36, 3))
    s = np.stack(s).astype(np.float64)
    np.testing.assert_allclose(conv.gradient_covariance, np.einsum("nto,ntp->op", s, s) / n,
                               rtol=1e-4, atol=1e-8)

    # Scores: one tape per example, preconditioned by the NumPy reference.
    layers = {"_convs/0": model._convs[0], "_head": model._head, "_hidden": model._hidden}

    def loop(xs, ys):
        per_layer = {name: [] for name in layers}
        for i in range(len(xs)):
            with tf.GradientTape() as tape:
                logits = model(tf.constant(xs[i:i + 1]))[0]
                loss = tf.reduce_logsumexp(logits) - logits[int(ys[i])]
            grads = tape.gradient(loss, {name: (layer.w, layer.b)
                                         for name, layer in layers.items()})
            for name, (gw, gb) in grads.items():
                per_layer[name].append(np.concatenate(
                    [gw.numpy().reshape(-1, gb.shape[0]), gb.numpy()[None]]))
        return [np.stack(per_layer[name]) for name in result.factors.layers]

    train, query = loop(x, y), loop(x[:2], y[:2])
    preconditioned = if_lib.precondition(result.factors, train, config)
    expected_self = sum(np.einsum("nio,nio->n", g, p)
                        for g, p in zip(train, preconditioned, strict=True))
    expected = sum(np.einsum("nio,qio->nq", p, q)
                   for p, q in zip(preconditioned, query, strict=True))
    np.testing.assert_allclose(result.self_influence, expected_self, rtol=1e-3)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-3, atol=1e-3 * np.abs(
        expected).max())


def test_factors_round_trip_through_disk_and_are_reused(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.random((10, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 10)
    model = models.MLP((5,), 10)
    path = str(tmp_path / "factors" / "ekfac.npz")
    config = if_lib.InfluenceConfig(batch_size=4)
    assert not if_lib.factors_exist(path)
    first = if_lib.score_influence_functions(model, x, y, x[:3], y[:3], config,
                                             factors_path=path)
    assert if_lib.factors_exist(path) and not first.timings.factors_loaded
    assert first.timings.fit_covariance > 0 and first.timings.fit_lambda > 0

    loaded = if_lib.load_factors(path)
    assert (loaded.strategy, loaded.fisher, loaded.num_examples) == ("ekfac", "true", 10)
    assert loaded.shapes == first.factors.shapes and list(loaded.layers) == ["_layers/0",
                                                                             "_layers/1"]
    for name, layer in first.factors.layers.items():
        for field in ("activation_covariance", "gradient_eigenvectors", "lambdas"):
            np.testing.assert_array_equal(getattr(loaded.layers[name], field),
                                          getattr(layer, field))
        assert loaded.layers[name].diagonal is None

    second = if_lib.score_influence_functions(model, x, y, x[:3], y[:3], config,
                                              factors_path=path)
    assert second.timings.factors_loaded and second.timings.fit_covariance == 0
    np.testing.assert_allclose(second.self_influence, first.self_influence, rtol=1e-6)
    np.testing.assert_allclose(second.scores, first.scores, rtol=1e-6)
    table = second.timings.format()
    for phase in if_lib.PHASES:
        assert phase in table
    with pytest.raises(ValueError, match="strategy=ekfac, but strategy=kfac"):
        if_lib.score_influence_functions(model, x, y, config=if_lib.InfluenceConfig(
            strategy="kfac"), factors_path=path)


def test_damping_changes_without_refitting():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model = _linear_softmax(x, rng.normal(size=(3, 3)), np.zeros(3))
    factors = if_lib.fit_factors(model, x, y, if_lib.InfluenceConfig(strategy="kfac"))
    mean = factors.layers[LAYER].activation_eigenvalues.mean() * factors.layers[
        LAYER].gradient_eigenvalues.mean()
    assert if_lib.layer_damping(factors, if_lib.InfluenceConfig(strategy="kfac"))[
        LAYER] == pytest.approx(0.1 * mean)
    assert if_lib.layer_damping(factors, if_lib.InfluenceConfig(
        strategy="kfac", damping_factor=0.5))[LAYER] == pytest.approx(0.5 * mean)
    assert if_lib.layer_damping(factors, if_lib.InfluenceConfig(
        strategy="kfac", damping=2.0))[LAYER] == 2.0


@pytest.mark.parametrize("kwargs, parameter", [
    ({"strategy": "kfc"}, "^strategy='kfc'"), ({"fisher": "model"}, "^fisher='model'"),
    ({"damping": -1.0}, "^damping=-1.0"), ({"damping_factor": 0.0}, "^damping_factor=0.0"),
    ({"measurement": "accuracy"}, "^measurement='accuracy'"),
    ({"batch_size": 0}, "^batch_size=0"), ({"fisher_draws": 0}, "^fisher_draws=0"),
    ({"fisher": "empirical", "fisher_draws": 2}, "^fisher_draws=2: only fisher='true'"),
])
def test_config_validation_names_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        if_lib.InfluenceConfig(**kwargs)


def test_empirical_fisher_is_the_closed_form_mean_of_squared_loss_gradients():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    y = rng.integers(0, 4, 9)
    w, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    model = _linear_softmax(x, w, b)
    grads = _loss_gradients(x, w, b, y)  # a (x) (p - onehot(y)), from the closed form
    diagonal = if_lib.fit_factors(model, x, y, if_lib.InfluenceConfig(
        strategy="diagonal", fisher="empirical", batch_size=4))
    np.testing.assert_allclose(diagonal.layers[LAYER].diagonal.ravel(),
                               np.mean(grads ** 2, axis=0), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("strategy", ["diagonal", "kfac"])
def test_true_fisher_of_n_draws_is_the_mean_of_n_single_draws(strategy):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(11, 3)).astype(np.float32)
    model = _linear_softmax(x, rng.normal(size=(3, 4)), rng.normal(size=4))
    y = np.zeros(11, np.int64)  # unused by the true Fisher

    def fit(seed, draws):
        return if_lib.fit_factors(model, x, y, if_lib.InfluenceConfig(
            strategy=strategy, fisher_seed=seed, fisher_draws=draws, batch_size=4)
                                  ).layers[LAYER]

    field = "diagonal" if strategy == "diagonal" else "gradient_covariance"
    singles = [getattr(fit(seed, 1), field) for seed in (5, 6, 7)]
    assert not np.allclose(singles[0], singles[1])  # the draw matters
    np.testing.assert_allclose(getattr(fit(5, 3), field), np.mean(singles, axis=0),
                               rtol=1e-6, atol=1e-9)
