"""Datamodels: per eval example, a linear model from run membership to output.

For eval example j, ``outputs[r, j] ~ weights[:, j] . masks[r, :] + intercept[j]`` over the
fit runs r, by ridge regression with an unpenalized intercept, in the dual form on centered
data (``M_c``, ``f_c``):

    weights = M_c^T (M_c M_c^T + lam I)^-1 f_c,    intercept = mean(f) - mean(M) . weights.

Everything that depends on ``lam`` lives in the ``k x k`` space of runs: one symmetric
eigendecomposition ``M_c M_c^T = U diag(s) U^T`` (built from the uncentered Gram matrix
``M M^T``) makes every lambda of the grid cost ``O(k^2)`` per eval example, and the only
products over training examples are ``M M^T`` (once, ``k^2 x num_train``) and the final
``M^T alpha`` (``k x num_train x num_eval``), taken in blocks of eval examples so memory is
``O(num_train * block_size)`` whatever ``num_eval`` is.

The penalty ``lam`` is chosen from a grid for each eval example separately (default), by
its own cross-validated squared error, since eval examples differ widely in how much their
output depends on membership (a memorized example vs. a typical one); ``share_lambda=True``
picks one ``lam`` for all by the summed error instead. Cross-validation:

* ``"loo"``: exact leave-one-run-out error in closed form, ``e_r / (1 - H_rr)`` with the
  ridge hat matrix ``H = 11^T/k + U diag(s / (s + lam)) U^T`` (the intercept is refitted
  without each run, as a brute-force loop would).
* ``"kfold"``: run r is in fold ``r % folds``; each fold is refitted from the sub-blocks of
  the same Gram matrix (no further pass over training examples).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from heldout.errors import ParameterError

DEFAULT_LAMBDAS = tuple(float(x) for x in np.logspace(-1, 4, 11))  # 0.1 ... 10,000
SELECTIONS = ("loo", "kfold")
PRECISIONS = ("float32", "float64")
ENGINES = ("auto", "numpy", "tensorflow")
_AUTO_MIN_MULTIPLY_ADDS = 2e8  # below this TensorFlow's fixed costs outweigh its speed


@dataclasses.dataclass(frozen=True)
class Datamodels:
    """Fitted datamodels of `num_eval` eval examples.

    Attributes:
        weights: ``[num_train, num_eval]`` weights in the chosen precision (None in
            top-k form).
        top_train: int64 ``[num_eval, top_k]`` training examples of highest weight per eval
            example, highest first (None unless `top_k`).
        top_weights: ``[num_eval, top_k]`` their weights (None unless `top_k`).
        intercept: float64 ``[num_eval]``.
        lam: float64 ``[num_eval]`` chosen ridge penalty of each eval example (all equal
            with ``share_lambda``).
        lambdas: float64 ``[num_lambdas]`` the grid.
        cv_error: float64 ``[num_lambdas, num_eval]`` cross-validated mean squared error
            of each lambda for each eval example.
        selection: ``"loo"`` or ``"kfold"``.
    """

    weights: np.ndarray | None
    top_train: np.ndarray | None
    top_weights: np.ndarray | None
    intercept: np.ndarray
    lam: np.ndarray
    lambdas: np.ndarray
    cv_error: np.ndarray
    selection: str


def fit_datamodels(masks: np.ndarray, outputs: np.ndarray, *,
                   lambdas: tuple[float, ...] | np.ndarray = DEFAULT_LAMBDAS,
                   selection: str = "loo", folds: int = 5, share_lambda: bool = False,
                   block_size: int = 1024, top_k: int | None = None,
                   precision: str = "float32", engine: str = "auto") -> Datamodels:
    """Ridge datamodels of every eval example, lambda chosen by cross-validation.

    Args:
        masks: ``[k, num_train]`` membership of the fit runs (bool or 0/1).
        outputs: ``[k, num_eval]`` output of every fit run on every eval example.
        lambdas: grid of positive ridge penalties (sklearn's ``alpha``).
        selection: ``"loo"`` (closed-form leave-one-run-out) or ``"kfold"``.
        folds: number of folds for ``"kfold"`` (run r in fold ``r % folds``); must be 5
            (the default) unless `selection` is ``"kfold"``.
        share_lambda: one lambda for all eval examples (smallest summed CV error) instead
            of one per eval example.
        block_size: eval examples per block of the final product ``M^T alpha``.
        top_k: keep only the `top_k` highest weights of each eval example (the form for
            CIFAR scale, where the dense matrix would be ``num_train x num_eval``).
        precision: ``"float32"`` (default: the products over training examples at twice
            the speed and half the memory; weights good to about 1e-6 relative) or
            ``"float64"`` (everything in float64).
        engine: who takes the products over training examples (``M M^T`` and
            ``M^T alpha``), the leave-one-out residual products and the top-k:
            ``"numpy"``, ``"tensorflow"`` (its matrix product is about twice NumPy's on
            the development CPU, and `tf.math.top_k` avoids a partition and sort of every
            block), or ``"auto"`` (default:
            TensorFlow from 2e8 multiply-adds ``k * num_train * num_eval`` on). Both
            compute the same quantities in the same precision; they differ only in the
            order of float32 summation.

    Returns:
        `Datamodels`.
    """
    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64)
    lambdas = np.asarray(lambdas, dtype=np.float64).ravel()
    _check(masks, outputs, lambdas, selection, folds, block_size, top_k)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: expected one of {ENGINES}")
    dtype = np.dtype(precision)
    num_runs, num_train = masks.shape
    num_eval = outputs.shape[1]
    if engine == "auto":
        engine = ("tensorflow" if float(num_runs) * num_train * num_eval
                  >= _AUTO_MIN_MULTIPLY_ADDS else "numpy")
    products = _TensorFlowProducts(masks, dtype) if engine == "tensorflow" else (
        _NumPyProducts(masks, dtype))
    # The Gram matrix is exact in float32 for 0/1 masks (counts < 2^24); the k x k
    # algebra is in float64 whatever the precision.
    gram = products.gram()  # [k, k] float64
    mean_mask = masks.mean(axis=0, dtype=np.float64)  # [num_train]
    mean_out = outputs.mean(axis=0)
    centered_out = outputs - mean_out
    values, vectors = _eigh_psd(_center_gram(gram))
    projected = vectors.T @ centered_out  # [k, num_eval]
    if selection == "loo":
        cv_error = _loo_errors(values, vectors, projected, lambdas, dtype, products.matmul)
    else:
        cv_error = _kfold_errors(gram, outputs, lambdas, folds)
    if share_lambda:
        choice = np.full(num_eval, np.argmin(cv_error.sum(axis=1)))
    else:
        choice = np.argmin(cv_error, axis=0)
    lam = lambdas[choice]

    # alpha_j = U diag(1 / (s + lam_j)) U^T f_c[:, j], for each eval example's own lam.
    alpha = vectors @ (projected / (values[:, None] + lam[None, :]))  # [k, num_eval]
    # weights = M_c^T alpha = M^T alpha - mean(M) 1^T alpha (1^T alpha is ~0 analytically).
    alpha_sums = alpha.sum(axis=0)
    intercept = np.empty(num_eval)
    weights = None if top_k else np.empty((num_train, num_eval), dtype)
    top_train = np.empty((num_eval, top_k), np.int64) if top_k else None
    top_weights = np.empty((num_eval, top_k), dtype) if top_k else None
    for start in range(0, num_eval, block_size):
        cols = slice(start, min(start + block_size, num_eval))
        # [block, num_train] weights, and the block's intercepts.
        block, dot_mean = products.weights(alpha[:, cols], alpha_sums[cols], mean_mask)
        intercept[cols] = mean_out[cols] - dot_mean
        if top_k:
            top_train[cols], top_weights[cols] = products.top_k(block, top_k)
        else:
            weights[:, cols] = products.to_numpy(block).T
    return Datamodels(weights=weights, top_train=top_train, top_weights=top_weights,
                      intercept=intercept, lam=lam, lambdas=lambdas, cv_error=cv_error,
                      selection=selection)


class _NumPyProducts:
    """The products over training examples, with NumPy."""

    def __init__(self, masks: np.ndarray, dtype: np.dtype):
        self._masks, self._dtype = masks.astype(dtype), dtype

    def gram(self) -> np.ndarray:
        return (self._masks @ self._masks.T).astype(np.float64)

    matmul = staticmethod(np.matmul)

    def weights(self, alpha: np.ndarray, alpha_sums: np.ndarray, mean_mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """``M_c^T alpha`` as ``[block, num_train]``, and its rows' dot with `mean_mask`."""
        block = alpha.T.astype(self._dtype) @ self._masks
        block -= (alpha_sums[:, None] * mean_mask[None, :]).astype(self._dtype)
        return block, block.astype(np.float64) @ mean_mask

    @staticmethod
    def top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Columns and values of the k largest entries of each row, largest first."""
        k = min(k, block.shape[1])
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_values), axis=1)  # by value, ties by lower index
        return (np.take_along_axis(top, order, axis=1),
                np.take_along_axis(top_values, order, axis=1))

    @staticmethod
    def to_numpy(block: np.ndarray) -> np.ndarray:
        return block


class _TensorFlowProducts:
    """The same products with TensorFlow (imported only when this engine is used)."""

    def __init__(self, masks: np.ndarray, dtype: np.dtype):
        import tensorflow as tf

        self._tf = tf
        self._masks = tf.cast(tf.constant(masks.astype(np.uint8)), dtype.name)

    def gram(self) -> np.ndarray:
        tf = self._tf
        return tf.matmul(self._masks, self._masks, transpose_b=True).numpy().astype(np.float64)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._tf.matmul(a, b).numpy()

    def weights(self, alpha: np.ndarray, alpha_sums: np.ndarray, mean_mask: np.ndarray):
        tf = self._tf
        dtype = self._masks.dtype
        block = tf.matmul(tf.constant(alpha.T, dtype), self._masks)
        block -= tf.constant(alpha_sums[:, None] * mean_mask[None, :], dtype)
        dot_mean = tf.linalg.matvec(tf.cast(block, tf.float64), tf.constant(mean_mask))
        return block, dot_mean.numpy()

    def top_k(self, block, k: int) -> tuple[np.ndarray, np.ndarray]:
        top = self._tf.math.top_k(block, min(k, block.shape[1]))  # ties: lower index first
        return top.indices.numpy().astype(np.int64), top.values.numpy()

    @staticmethod
    def to_numpy(block) -> np.ndarray:
        return block.numpy()


def _center_gram(gram: np.ndarray) -> np.ndarray:
    """``C G C`` with ``C = I - 11^T/k``: the Gram matrix of the centered rows."""
    row = gram.mean(axis=1, keepdims=True)
    return gram - row - row.T + gram.mean()


def _eigh_psd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix.

    On one BLAS thread: LAPACK's tridiagonal reduction is a chain of small steps whose
    thread synchronisation dominates on a few shared cores (measured 4x faster for a
    2000 x 2000 matrix on the 2-core development machine under load).
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=1, user_api="blas"):
        values, vectors = np.linalg.eigh(matrix)
    return np.clip(values, 0.0, None), vectors


def _loo_errors(values: np.ndarray, vectors: np.ndarray, projected: np.ndarray,
                lambdas: np.ndarray, dtype: np.dtype, matmul=np.matmul) -> np.ndarray:
    """Exact leave-one-run-out mean squared error, ``[num_lambdas, num_eval]``.

    Args:
        values: ``[k]`` eigenvalues of the centered Gram matrix.
        vectors: ``[k, k]`` its eigenvectors.
        projected: ``[k, num_eval]`` ``vectors^T f_c``.
        lambdas: the grid.
        dtype: precision of the ``k x k x num_eval`` residual products.
        matmul: the engine's product of two NumPy arrays, returning a NumPy array.
    """
    num_runs = len(values)
    squared = vectors**2
    vectors_low = vectors.astype(dtype)
    errors = np.empty((len(lambdas), projected.shape[1]))
    for index, lam in enumerate(lambdas):
        shrink = lam / (values + lam)
        # Residuals of the full fit: (I - H) f_c = U diag(lam / (s + lam)) U^T f_c.
        residuals = matmul(vectors_low, (shrink[:, None] * projected).astype(dtype))
        leverage = 1.0 / num_runs + squared @ (values / (values + lam))
        residuals /= (1.0 - leverage).astype(dtype)[:, None]
        errors[index] = np.einsum("rj,rj->j", residuals, residuals,
                                  dtype=np.float64) / num_runs
    return errors


def _kfold_errors(gram: np.ndarray, outputs: np.ndarray, lambdas: np.ndarray, folds: int
                  ) -> np.ndarray:
    """k-fold mean squared error over all runs, ``[num_lambdas, num_eval]``.

    Fold f holds out the runs ``r % folds == f``; the ridge fit on the others is
    evaluated on them using only sub-blocks of the uncentered Gram matrix.
    """
    num_runs = gram.shape[0]
    squared_sum = np.zeros((len(lambdas), outputs.shape[1]))
    fold_of = np.arange(num_runs) % folds
    for fold in range(folds):
        test, fit = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        fit_gram = gram[np.ix_(fit, fit)]
        # (M_test - 1 mu^T) (M_fit - 1 mu^T)^T with mu the mean mask of the fit runs.
        fit_col = fit_gram.mean(axis=0)
        cross = (gram[np.ix_(test, fit)] - gram[np.ix_(test, fit)].mean(axis=1, keepdims=True)
                 - fit_col[None, :] + fit_gram.mean())
        values, vectors = _eigh_psd(_center_gram(fit_gram))
        fit_mean = outputs[fit].mean(axis=0)
        projected = vectors.T @ (outputs[fit] - fit_mean)
        cross_vectors = cross @ vectors
        for index, lam in enumerate(lambdas):
            predicted = fit_mean + cross_vectors @ (projected / (values + lam)[:, None])
            squared_sum[index] += ((outputs[test] - predicted) ** 2).sum(axis=0)
    return squared_sum / num_runs


def _check(masks, outputs, lambdas, selection, folds, block_size, top_k) -> None:
    if masks.ndim != 2:
        raise ValueError(f"masks has shape {masks.shape}, expected [k, num_train]")
    if not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must hold only 0/1 (or bool) membership")
    if outputs.ndim != 2 or outputs.shape[0] != masks.shape[0]:
        raise ValueError(f"outputs has shape {outputs.shape}, expected "
                         f"[{masks.shape[0]}, num_eval] (runs of masks)")
    if not np.isfinite(outputs).all():
        raise ValueError("outputs must be finite")
    if len(lambdas) == 0 or not (lambdas > 0).all() or not np.isfinite(lambdas).all():
        raise ValueError(f"lambdas={lambdas.tolist()}: expected a non-empty grid of "
                         "positive numbers")
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}: expected one of {SELECTIONS}")
    if selection == "kfold" and not 2 <= folds <= masks.shape[0]:
        raise ValueError(f"folds={folds}: expected 2 <= folds <= number of runs "
                         f"({masks.shape[0]})")
    if selection != "kfold" and folds != 5:
        raise ValueError(f"folds={folds} is only used with selection='kfold', got "
                         f"selection={selection!r}")
    if selection == "loo" and masks.shape[0] < 3:
        raise ValueError(f"masks has {masks.shape[0]} runs, leave-one-out needs >= 3")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: expected a positive number")
    if top_k is not None and not 1 <= top_k <= masks.shape[1]:
        raise ParameterError("top_k", f"expected a whole number from 1 to the "
                             f"{masks.shape[1]:,} training examples (or None)", top_k)


def fit_lasso(masks: np.ndarray, outputs: np.ndarray, *, alpha: float,
              max_iter: int = 10_000, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (L1) datamodels via scikit-learn's coordinate descent, for small problems.

    Minimizes ``||f_j - M w_j - b_j||^2 / (2k) + alpha ||w_j||_1`` for each eval example j
    independently (the published datamodels' estimator, without their GPU solver).

    Args:
        masks: ``[k, num_train]`` membership (bool or 0/1).
        outputs: ``[k, num_eval]``.
        alpha: L1 penalty (scikit-learn's ``alpha``), positive.
        max_iter: coordinate-descent iterations.
        tol: coordinate-descent tolerance.

    Returns:
        ``(weights [num_train, num_eval], intercept [num_eval])``, float64.
    """
    from sklearn.linear_model import Lasso  # heavy import only when asked for

    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64)
    _check(masks, outputs, np.array([1.0]), "loo", 5, 1, None)
    if not alpha > 0:
        raise ValueError(f"alpha={alpha}: expected a positive number")
    model = Lasso(alpha=alpha, fit_intercept=True, max_iter=max_iter, tol=tol)
    model.fit(masks.astype(np.float64), outputs)
    weights = np.atleast_2d(model.coef_).T
    return weights, np.atleast_1d(model.intercept_).astype(np.float64)
