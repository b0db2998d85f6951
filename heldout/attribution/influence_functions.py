"""Influence functions with identity, diagonal, KFAC and EKFAC approximations of the Fisher.

The influence of training example z on a query q (Koh & Liang 2017) is
``grad cost(q)^T (F + damping I)^{-1} grad loss(z)``: how much training on z is
predicted to lower q's cost, so positive means z helps q (cost = loss, or minus the
margin). The Hessian is replaced by the Fisher F, which for a softmax cross-entropy is
the Gauss-Newton matrix. Self-influence puts z's own loss on both sides. F is
approximated layer by layer (no cross-layer terms), as in Grosse et al. (2023) and
kronfluence; a layer's gradient is the matrix ``G = sum_t a_t s_t^T`` of
`heldout.attribution.gradients` (``[rows, columns]``, the bias as last row).

* ``identity``: F = I and no damping: plain gradient dot products.
* ``diagonal``: F = diag(E[G * G]).
* ``kfac``: F = A (x) S with ``A = E[a a^T]`` the covariance of the layer's inputs (with
  the column of ones of the bias) and ``S = E[s s^T]`` that of the gradients at its
  pre-activation outputs (Martens & Grosse 2015). For a convolution A averages over
  output positions and S sums over them (KFC, Grosse & Martens 2016), so
  ``A (x) S = T E_t[a a^T] (x) E_t[s s^T]`` for T positions. The damped inverse is
  applied exactly in the eigenbases, ``(A (x) S + damping I)^{-1} vec(G) =
  Q_A [(Q_A^T G Q_S) / (lambda_A lambda_S^T + damping)] Q_S^T``.
* ``ekfac``: the same eigenbasis, with the eigenvalues replaced by the Fisher's own
  second moments along it, ``Lambda = E[(Q_A^T G Q_S)^2]`` (George et al. 2018).

Fisher labels (``fisher``): ``true`` samples each example's label from the model's own
predictive distribution (the true Fisher; batch b of the fitting data uses the
stateless seed ``(fisher_seed, b)``); ``empirical`` takes the data set's labels;
``expected`` averages exactly over all classes weighted by their probabilities (one
backward pass per class). With one draw, true-Fisher scores depend on the seed (issue
15 saw seed-to-seed Spearman correlations of about 0.5 on digits); ``fisher_draws=n``
averages the Fisher's moments over n draws with seeds ``fisher_seed + k``, the Monte
Carlo estimate of the true Fisher with n sampled labels per example.

Damping is per layer: `damping` if given, else `damping_factor` (0.1) x the mean
eigenvalue of that layer's approximate Fisher. Factors are fitted once on the
training set, can be saved to an ``.npz`` (local or gs://) and reused, and the damping
can change without refitting. Every call reports seconds per phase (fit covariance,
eigendecomposition, fit lambda, scores).

Memory: training examples stream through in batches, but the preconditioned query
gradients are held whole (``num_query x num_parameters`` floats); for many queries on a
large model, call once per chunk of queries with the same factors.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.attribution import gradients as gradients_lib
from heldout.attribution.config import InfluenceConfig
from heldout.progress import Progress
from heldout.store import files

_FISHER_TARGETS = {"true": "sampled", "empirical": "loss", "expected": "expected"}
PHASES = ("fit covariance", "eigendecomposition", "fit lambda", "scores")
_FIT_PHASES = PHASES[:3]
# Passes over the training examples (per Fisher draw) that fitting a strategy takes.
_FIT_PASSES = {"identity": 0, "diagonal": 1, "kfac": 1, "ekfac": 2}
# Damping used where a layer's mean eigenvalue is zero (a layer that never receives
# gradient), so the preconditioner stays finite.
_MIN_DAMPING = 1e-8
_META_KEY = "__meta__"


@dataclasses.dataclass(frozen=True)
class LayerFactors:
    """One layer's approximate Fisher; which fields are set depends on the strategy.

    Attributes:
        activation_covariance: A ``[rows, rows]`` (kfac, ekfac).
        gradient_covariance: S ``[columns, columns]`` (kfac, ekfac).
        activation_eigenvalues: ``[rows]``, ascending, clipped at 0.
        activation_eigenvectors: Q_A ``[rows, rows]``, eigenvectors as columns.
        gradient_eigenvalues: ``[columns]``.
        gradient_eigenvectors: Q_S ``[columns, columns]``.
        lambdas: EKFAC eigenvalues ``[rows, columns]`` in the basis ``Q_A (x) Q_S``.
        diagonal: diagonal Fisher ``[rows, columns]`` (diagonal).
    """

    activation_covariance: np.ndarray | None = None
    gradient_covariance: np.ndarray | None = None
    activation_eigenvalues: np.ndarray | None = None
    activation_eigenvectors: np.ndarray | None = None
    gradient_eigenvalues: np.ndarray | None = None
    gradient_eigenvectors: np.ndarray | None = None
    lambdas: np.ndarray | None = None
    diagonal: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Factors:
    """The approximate Fisher of every layer, and how it was fitted.

    Attributes:
        strategy: one of `STRATEGIES`.
        fisher: one of `FISHERS`.
        num_examples: examples the factors were fitted on.
        layers: per layer (attribute path, in model order), its `LayerFactors`.
        shapes: per layer, the ``(rows, columns)`` of its gradient matrix.
        seconds: wall time of each fitting phase.
    """

    strategy: str
    fisher: str
    num_examples: int
    layers: dict[str, LayerFactors]
    shapes: dict[str, tuple[int, int]]
    seconds: dict[str, float]

    def eigenvalues(self, layer: str) -> np.ndarray | None:
        """``[rows, columns]`` curvature of `layer` along the preconditioner's basis.

        None for the identity strategy, which has no curvature.
        """
        factors = self.layers[layer]
        if self.strategy == "diagonal":
            return factors.diagonal
        if self.strategy == "kfac":
            return np.outer(factors.activation_eigenvalues, factors.gradient_eigenvalues)
        if self.strategy == "ekfac":
            return factors.lambdas
        return None


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds spent in each phase of one influence computation."""

    fit_covariance: float = 0.0
    eigendecomposition: float = 0.0
    fit_lambda: float = 0.0
    scores: float = 0.0
    factors_loaded: bool = False  # the fitting phases were skipped: factors came from disk

    @property
    def total(self) -> float:
        return self.fit_covariance + self.eigendecomposition + self.fit_lambda + self.scores

    def as_dict(self) -> dict[str, float]:
        """``{phase: seconds}`` in the order of `PHASES`, plus ``total``."""
        return {"fit covariance": self.fit_covariance,
                "eigendecomposition": self.eigendecomposition,
                "fit lambda": self.fit_lambda, "scores": self.scores, "total": self.total}

    def format(self) -> str:
        """A table of seconds and share per phase."""
        lines = [f"{'phase':<20} {'seconds':>9} {'share':>7}"]
        for phase, seconds in self.as_dict().items():
            share = 100.0 * seconds / self.total if self.total > 0 else 0.0
            lines.append(f"{phase:<20} {seconds:>9.3f} {share:>6.1f}%")
        if self.factors_loaded:
            lines.append("(factors loaded from disk: no fitting)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


@dataclasses.dataclass(frozen=True)
class InfluenceFunctionsResult:
    """Influence-function scores of one call.

    Attributes:
        self_influence: ``[num_train]`` self-influence, or None if not asked for.
        scores: ``[num_train, num_query]`` train x query influence, or None without queries.
        factors: the factors used.
        timings: seconds per phase.
        damping: the damping of each layer.
    """

    self_influence: np.ndarray | None
    scores: np.ndarray | None
    factors: Factors
    timings: Timings
    damping: dict[str, float]


def score_influence_functions(model: snt.Module, x_train: np.ndarray, y_train: np.ndarray,
                        x_query: np.ndarray | None = None, y_query: np.ndarray | None = None,
                        config: InfluenceConfig = InfluenceConfig(),
                        factors: Factors | None = None, factors_path: str | None = None,
                        self_influence: bool = True, progress: bool = False
                        ) -> InfluenceFunctionsResult:
    """Self-influence of training examples and their influence on queries, in one call.

    Factors come from `factors`, else from `factors_path` when that file exists, else
    they are fitted on ``(x_train, y_train)`` (and saved to `factors_path` if given).

    Args:
        model: Sonnet model called as ``model(inputs, is_training=False)`` -> logits.
        x_train: ``[num_train, *input_shape]`` training inputs.
        y_train: ``[num_train]`` their labels.
        x_query: ``[num_query, *input_shape]`` query inputs, or None.
        y_query: ``[num_query]`` query labels.
        config: strategy, Fisher, damping, measurement, layers, batch size.
        factors: factors fitted before, reused as they are.
        factors_path: ``.npz`` file to reuse factors from, or to save them to.
        self_influence: also compute self-influence.
        progress: show a progress bar of the passes over the examples (fitting the
            factors, then scoring).

    Returns:
        An `InfluenceFunctionsResult`.

    Raises:
        ValueError: loaded factors were made with another strategy, Fisher or layers.
    """
    if (x_query is None) != (y_query is None):
        raise ValueError("give both x_query and y_query, or neither")
    loaded = factors is not None
    if factors is None and factors_path and factors_exist(factors_path):
        factors = load_factors(factors_path)
        loaded = True
    num_query = 0 if x_query is None else len(x_query)
    scored = len(x_train) if self_influence or num_query else 0
    fitted = 0 if loaded else _FIT_PASSES[config.strategy] * config.fisher_draws * len(x_train)
    bar = Progress(fitted + num_query + scored, "influence functions", "example",
                                enabled=progress)
    engine = gradients_lib.LayerGradients(model, np.shape(x_train)[1:], config.layers,
                                          config.batch_size, progress=bar)
    with bar:
        if factors is None:
            factors = _fit(engine, x_train, y_train, config)
            if factors_path:
                save_factors(factors, factors_path)
        _check_factors(factors, engine, config, factors_path)
        start = time.time()
        damping = layer_damping(factors, config)
        self_scores, scores = _scores(engine, factors, damping, config, x_train, y_train,
                                      x_query, y_query, self_influence)
    fit_seconds = dict.fromkeys(_FIT_PHASES, 0.0) if loaded else factors.seconds
    timings = Timings(fit_covariance=fit_seconds["fit covariance"],
                      eigendecomposition=fit_seconds["eigendecomposition"],
                      fit_lambda=fit_seconds["fit lambda"], scores=time.time() - start,
                      factors_loaded=loaded)
    return InfluenceFunctionsResult(self_scores, scores, factors, timings, damping)


def fit_factors(model: snt.Module, x: np.ndarray, y: np.ndarray,
                config: InfluenceConfig = InfluenceConfig()) -> Factors:
    """Fits the approximate Fisher of `config.strategy` on ``(x, y)``.

    Args:
        model: Sonnet model called as ``model(inputs, is_training=False)`` -> logits.
        x: ``[n, *input_shape]`` inputs (the training set).
        y: ``[n]`` labels (used by the empirical Fisher only).
        config: strategy, Fisher labels, layers, batch size, seed.
    """
    engine = gradients_lib.LayerGradients(model, np.shape(x)[1:], config.layers,
                                          config.batch_size)
    return _fit(engine, x, y, config)


def _fit(engine: gradients_lib.LayerGradients, x: np.ndarray, y: np.ndarray,
         config: InfluenceConfig) -> Factors:
    n = len(x)
    if n == 0:
        raise ValueError("cannot fit factors on zero examples")
    target = _FISHER_TARGETS[config.fisher]
    seconds = dict.fromkeys(_FIT_PHASES, 0.0)
    names = [spec.name for spec in engine.specs]
    fields: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    draws = config.fisher_draws
    if config.strategy == "diagonal":
        start = time.time()
        sums = _accumulate_draws(engine, x, y, _diagonal_sums, "diagonal", target, config)
        for name, total in zip(names, sums, strict=True):
            fields[name]["diagonal"] = total / (n * draws)
        seconds["fit covariance"] = time.time() - start
    elif config.strategy in ("kfac", "ekfac"):
        start = time.time()
        sums = _accumulate_draws(engine, x, y, _covariance_sums, "covariance", target, config)
        for i, name in enumerate(names):
            fields[name]["activation_covariance"] = sums[2 * i] / (n * draws)
            fields[name]["gradient_covariance"] = sums[2 * i + 1] / (n * draws)
        seconds["fit covariance"] = time.time() - start
        start = time.time()
        for name in names:
            for kind in ("activation", "gradient"):
                covariance = fields[name][f"{kind}_covariance"]
                values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
                fields[name][f"{kind}_eigenvalues"] = np.maximum(values, 0.0)
                fields[name][f"{kind}_eigenvectors"] = vectors
        seconds["eigendecomposition"] = time.time() - start
        if config.strategy == "ekfac":
            start = time.time()
            bases = _bases(fields, names)
            sums = _accumulate_draws(engine, x, y, _lambda_sums, "lambda", target, config,
                                     bases)
            for name, total in zip(names, sums, strict=True):
                fields[name]["lambdas"] = total / (n * draws)
            seconds["fit lambda"] = time.time() - start
    return Factors(strategy=config.strategy, fisher=config.fisher, num_examples=n,
                   layers={name: LayerFactors(**fields[name]) for name in names},
                   shapes={s.name: (s.rows, s.columns) for s in engine.specs},
                   seconds=seconds)


def _accumulate_draws(engine: gradients_lib.LayerGradients, x: np.ndarray, y: np.ndarray,
                      fn, key: str, target: str, config: InfluenceConfig,
                      constants: Sequence[tf.Tensor] = ()) -> list[np.ndarray]:
    """Batch sums of `fn`, summed over the Fisher's label draws.

    Draw k of the true Fisher samples labels with seed ``fisher_seed + k``, so the Fisher
    of n draws is the mean of the n single-draw Fishers with seeds ``fisher_seed``, ...,
    ``fisher_seed + n - 1``. Other Fishers have one draw.
    """
    totals = None
    for draw in range(config.fisher_draws):
        sums = engine.accumulate(x, y, fn, key, target, config.fisher_seed + draw, constants)
        totals = sums if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
    return totals


def layer_damping(factors: Factors, config: InfluenceConfig = InfluenceConfig()
                  ) -> dict[str, float]:
    """Damping of each layer: `config.damping`, or damping_factor x mean eigenvalue.

    The identity strategy has no damping (0).
    """
    damping = {}
    for name in factors.layers:
        eigenvalues = factors.eigenvalues(name)
        if eigenvalues is None:
            damping[name] = 0.0
        elif config.damping is not None:
            damping[name] = float(config.damping)
        else:
            damping[name] = max(config.damping_factor * float(np.mean(eigenvalues)),
                                _MIN_DAMPING)
    return damping


def precondition(factors: Factors, grads: Sequence[np.ndarray],
                 config: InfluenceConfig = InfluenceConfig()) -> list[np.ndarray]:
    """``(F + damping I)^{-1} g`` for per-layer gradients ``[n, rows, columns]``, in NumPy.

    The reference for what the compiled scores compute (and for checks); the layers of
    `grads` are in the order of ``factors.layers``.
    """
    damping = layer_damping(factors, config)
    result = []
    for name, g in zip(factors.layers, grads, strict=True):
        g = np.asarray(g, np.float64)
        layer = factors.layers[name]
        eigenvalues = factors.eigenvalues(name)
        if eigenvalues is None:
            result.append(g)
        elif factors.strategy == "diagonal":
            result.append(g / (eigenvalues + damping[name]))
        else:
            q_a, q_s = layer.activation_eigenvectors, layer.gradient_eigenvectors
            rotated = np.einsum("ij,nio,ok->njk", q_a, g, q_s) / (eigenvalues + damping[name])
            result.append(np.einsum("ij,njk,ok->nio", q_a, rotated, q_s))
    return result


def scores_from_factors(model: snt.Module, factors: Factors, x_train: np.ndarray,
                   y_train: np.ndarray, x_query: np.ndarray | None = None,
                   y_query: np.ndarray | None = None,
                   config: InfluenceConfig = InfluenceConfig(), self_influence: bool = True
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Self-influence ``[num_train]`` and scores ``[num_train, num_query]`` from fitted factors."""
    engine = gradients_lib.LayerGradients(model, np.shape(x_train)[1:], config.layers,
                                          config.batch_size)
    _check_factors(factors, engine, config, None)
    return _scores(engine, factors, layer_damping(factors, config), config, x_train, y_train,
                   x_query, y_query, self_influence)


def _scores(engine: gradients_lib.LayerGradients, factors: Factors, damping: dict[str, float],
            config: InfluenceConfig, x_train: np.ndarray, y_train: np.ndarray,
            x_query: np.ndarray | None, y_query: np.ndarray | None, self_influence: bool
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Scores in the preconditioner's basis: ``sum_l <rot(G_q) / (Lambda + d), rot(G_z)>``."""
    names = list(factors.layers)
    rotated = factors.strategy in ("kfac", "ekfac")
    bases = _bases(factors.layers, names, attribute=True) if rotated else []
    inverse = []
    for name in names:
        eigenvalues = factors.eigenvalues(name)
        rows, columns = factors.shapes[name]
        inverse.append(tf.constant(
            np.ones((rows, columns)) if eigenvalues is None
            else 1.0 / (eigenvalues + damping[name]), tf.float32))
    queries = []
    if x_query is not None:
        sign = 1.0 if config.measurement == "loss" else -1.0
        parts = [[] for _ in names]
        for _, outputs in engine.map_batches(
                x_query, y_query, _query_function(len(names), rotated), f"query-{rotated}",
                config.measurement, constants=[*bases, *inverse]):
            for part, output in zip(parts, outputs, strict=True):
                part.append(sign * output)
        queries = [tf.concat(part, axis=0) for part in parts]
    if not self_influence and not queries:
        return None, None
    self_scores = np.zeros(len(x_train)) if self_influence else None
    scores = np.zeros((len(x_train), len(x_query))) if queries else None
    function = _train_function(len(names), rotated, self_influence, bool(queries))
    key = f"train-{rotated}-{self_influence}-{bool(queries)}"
    for rows, (self_block, pair_block) in engine.map_batches(
            x_train, y_train, function, key, "loss", constants=[*bases, *inverse, *queries]):
        if self_scores is not None:
            self_scores[rows] = self_block.numpy()
        if scores is not None:
            scores[rows] = pair_block.numpy()
    return self_scores, scores


def _bases(layers: dict, names: Sequence[str], attribute: bool = False) -> list[tf.Tensor]:
    """``[Q_A, Q_S]`` of every layer as float32 tensors, from dicts or `LayerFactors`."""
    bases = []
    for name in names:
        for kind in ("activation", "gradient"):
            field = f"{kind}_eigenvectors"
            value = getattr(layers[name], field) if attribute else layers[name][field]
            bases.append(tf.constant(value, tf.float32))
    return bases


def _rotated_gradients(a: tf.Tensor, s: tf.Tensor, q_a: tf.Tensor | None,
                       q_s: tf.Tensor | None) -> tf.Tensor:
    """``[K, batch, rows, columns]`` gradients ``Q_A^T G Q_S`` (or G without bases)."""
    if q_a is not None:
        a = tf.einsum("bti,ij->btj", a, q_a)
        s = tf.einsum("kbto,op->kbtp", s, q_s)
    return gradients_lib.outer_gradients(a, s)


def _split(constants: Sequence[tf.Tensor], num_layers: int, rotated: bool):
    """``(per-layer (Q_A, Q_S) or (None, None), per-layer inverse, rest)``."""
    constants = list(constants)
    if rotated:
        bases = [(constants[2 * i], constants[2 * i + 1]) for i in range(num_layers)]
        constants = constants[2 * num_layers:]
    else:
        bases = [(None, None)] * num_layers
    return bases, constants[:num_layers], constants[num_layers:]


def _query_function(num_layers: int, rotated: bool):
    def query(a, s, *constants):
        bases, inverse, _ = _split(constants, num_layers, rotated)
        return [_rotated_gradients(a_l, s_l, *basis)[0] * inv
                for a_l, s_l, basis, inv in zip(a, s, bases, inverse, strict=True)]
    return query


def _train_function(num_layers: int, rotated: bool, self_influence: bool, pairwise: bool):
    def train(a, s, *constants):
        bases, inverse, queries = _split(constants, num_layers, rotated)
        batch = a[0].shape[0]
        self_scores = tf.zeros([batch])
        pair_scores = tf.zeros([batch, 0])
        for i, (a_l, s_l) in enumerate(zip(a, s, strict=True)):
            g = _rotated_gradients(a_l, s_l, *bases[i])[0]
            if self_influence:
                self_scores += tf.reduce_sum(g * g * inverse[i], axis=[1, 2])
            if pairwise:
                layer_scores = tf.einsum("bij,qij->bq", g, queries[i])
                pair_scores = layer_scores if i == 0 else pair_scores + layer_scores
        return [self_scores, pair_scores]
    return train


def _covariance_sums(a: list[tf.Tensor], s: list[tf.Tensor]) -> list[tf.Tensor]:
    """Per layer: ``sum_n mean_t a a^T`` and ``sum_n sum_t sum_k s s^T``."""
    sums = []
    for a_l, s_l in zip(a, s, strict=True):
        sums.append(tf.einsum("bti,btj->ij", a_l, a_l) / a_l.shape[1])
        sums.append(tf.einsum("kbto,kbtp->op", s_l, s_l))
    return sums


def _diagonal_sums(a: list[tf.Tensor], s: list[tf.Tensor]) -> list[tf.Tensor]:
    """Per layer: ``sum_n sum_k G * G``."""
    return [tf.reduce_sum(tf.square(gradients_lib.outer_gradients(a_l, s_l)), axis=[0, 1])
            for a_l, s_l in zip(a, s, strict=True)]


def _lambda_sums(a: list[tf.Tensor], s: list[tf.Tensor], *bases: tf.Tensor) -> list[tf.Tensor]:
    """Per layer: ``sum_n sum_k (Q_A^T G Q_S)^2``."""
    return [tf.reduce_sum(tf.square(_rotated_gradients(a_l, s_l, bases[2 * i],
                                                       bases[2 * i + 1])), axis=[0, 1])
            for i, (a_l, s_l) in enumerate(zip(a, s, strict=True))]


def _check_factors(factors: Factors, engine: gradients_lib.LayerGradients,
                   config: InfluenceConfig, path: str | None) -> None:
    """Raises ValueError unless `factors` fit the config and the model's chosen layers."""
    source = f"factors_path={path}: " if path else "factors: "
    if factors.strategy != config.strategy:
        raise ValueError(f"{source}fitted for strategy={factors.strategy}, but "
                         f"strategy={config.strategy} was asked for")
    if factors.fisher != config.fisher and config.strategy != "identity":
        raise ValueError(f"{source}fitted with fisher={factors.fisher}, but "
                         f"fisher={config.fisher} was asked for")
    expected = {s.name: (s.rows, s.columns) for s in engine.specs}
    if factors.shapes != expected:
        raise ValueError(f"{source}fitted for layers {factors.shapes}, but the model's chosen "
                         f"layers are {expected}")


def save_factors(factors: Factors, path: str) -> None:
    """Writes factors to an ``.npz`` file (local or gs://), atomically."""
    meta = {"strategy": factors.strategy, "fisher": factors.fisher,
            "num_examples": factors.num_examples, "layers": list(factors.layers),
            "shapes": {name: list(shape) for name, shape in factors.shapes.items()},
            "seconds": factors.seconds}
    arrays = {_META_KEY: np.array(json.dumps(meta))}
    for name, layer in factors.layers.items():
        for field in dataclasses.fields(LayerFactors):
            value = getattr(layer, field.name)
            if value is not None:
                arrays[f"{name}/{field.name}"] = value
    files.write_npz(path, arrays)


def load_factors(path: str) -> Factors:
    """Reads factors written by `save_factors`.

    Raises:
        ValueError: the file is missing or is not a factors file.
    """
    try:
        arrays = files.read_npz(path)
    except files.StoredFileMissing:
        raise ValueError(f"factors_path={path}: file not found") from None
    if _META_KEY not in arrays:
        raise ValueError(f"factors_path={path}: not a factors file (no {_META_KEY} entry)")
    meta = json.loads(str(arrays[_META_KEY]))
    field_names = [f.name for f in dataclasses.fields(LayerFactors)]
    layers = {name: LayerFactors(**{field: arrays.get(f"{name}/{field}")
                                    for field in field_names})
              for name in meta["layers"]}
    return Factors(strategy=meta["strategy"], fisher=meta["fisher"],
                   num_examples=int(meta["num_examples"]), layers=layers,
                   shapes={name: tuple(shape) for name, shape in meta["shapes"].items()},
                   seconds={k: float(v) for k, v in meta["seconds"].items()})


def factors_exist(path: str) -> bool:
    """Whether a factors file exists at `path`."""
    return tf.io.gfile.exists(path)
