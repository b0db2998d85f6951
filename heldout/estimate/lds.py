"""Linear datamodeling score (LDS): how well a score matrix predicts retraining.

An attribution method gives a score matrix ``tau[num_train, num_eval]``. On ``k``
evaluation runs with membership ``masks[k, num_train]`` (0/1) and outputs
``outputs[k, num_eval]``, the method predicts run r's output on eval example j as
``(masks @ tau)[r, j]``; ``LDS_j`` is the Spearman rank correlation over the k runs
between those predictions and the real outputs ``outputs[:, j]``. The score of the method
is the mean of ``LDS_j`` over eval examples, with a bootstrap interval over eval examples.

Evaluation runs must not be runs the method was fit on, else a method that memorizes
its fit runs looks perfect. Runs are judged by what they trained on
(`check_disjoint_membership`: an evaluation run whose membership row equals a fit run's
is the same run, whatever folder or id it has, e.g. runs copied into another folder),
and, within one folder, by id (`check_disjoint`).

Pure NumPy and SciPy; ranks and correlations are vectorized over eval examples and
computed in blocks of eval examples, so memory stays ``O(k * block_size)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from heldout.errors import ParameterError
from heldout.estimate import stats


@dataclasses.dataclass(frozen=True)
class LDSResult:
    """LDS of one score matrix on one set of evaluation runs.

    Attributes:
        mean: mean of ``per_example`` over the eval examples where it is defined.
        ci_low: lower end of the percentile bootstrap interval of ``mean`` (resampling
            eval examples with replacement).
        ci_high: upper end of that interval.
        per_example: float64 ``[num_eval]`` Spearman correlation of each eval example;
            NaN where the outputs or the predictions are constant over the runs (a rank
            correlation is undefined there, as in `scipy.stats.spearmanr`).
        num_runs: number of evaluation runs ``k``.
        num_finite: eval examples with a defined ``per_example`` value, the ones ``mean``
            averages; num_eval: all eval examples.
    """

    mean: float
    ci_low: float
    ci_high: float
    per_example: np.ndarray
    num_runs: int
    num_finite: int
    num_eval: int

    def summary(self) -> str:
        """``0.512 [0.480, 0.541] over 54 of 445 eval examples`` (the count is said, and
        why, whenever some eval examples have no value)."""
        text = f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        if self.num_finite == self.num_eval:
            return f"{text} over {self.num_eval} eval examples"
        return (f"{text} over {self.num_finite} of {self.num_eval} eval examples (undefined "
                "for the others: outputs or predictions constant over the runs)")


def lds(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray, *,
        num_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
        block_size: int = 1024) -> LDSResult:
    """Linear datamodeling score of `scores` on evaluation runs (`masks`, `outputs`).

    Args:
        scores: ``[num_train, num_eval]`` score matrix ``tau`` of an attribution method
            (higher: including the training example raises the eval example's output).
        masks: ``[k, num_train]`` membership of the evaluation runs (bool or 0/1).
        outputs: ``[k, num_eval]`` output of each evaluation run on each eval example
            (the log-odds margin in the published protocol).
        num_bootstrap: bootstrap resamples of the eval examples for the interval (0: no
            interval, ``ci_low`` and ``ci_high`` are NaN).
        seed: seed of the bootstrap resampling.
        confidence: coverage of the percentile interval, in ``(0, 1)``.
        block_size: eval examples per block of the rank computation (memory
            ``O(k * block_size)``).

    Returns:
        An `LDSResult`. ``mean`` is over eval examples with a defined (non-NaN) value,
        NaN if there are none.
    """
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores has shape {scores.shape}, expected [num_train, num_eval]")
    if masks.ndim != 2 or masks.shape[1] != scores.shape[0]:
        raise ValueError(f"masks has shape {masks.shape}, expected [k, {scores.shape[0]}] "
                         "(num_train of scores)")
    if not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must hold only 0/1 (or bool) membership")
    if outputs.shape != (masks.shape[0], scores.shape[1]):
        raise ValueError(f"outputs has shape {outputs.shape}, expected "
                         f"[{masks.shape[0]}, {scores.shape[1]}] (runs of masks, num_eval "
                         "of scores)")
    if masks.shape[0] < 2:
        raise ValueError(f"masks has {masks.shape[0]} runs, a rank correlation needs >= 2")
    if num_bootstrap < 0:
        raise ValueError(f"num_bootstrap={num_bootstrap}: expected >= 0")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a number in (0, 1)")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: expected a positive number")
    masks = masks.astype(np.float64)
    num_eval = scores.shape[1]
    per_example = np.empty(num_eval)
    for start in range(0, num_eval, block_size):
        columns = slice(start, min(start + block_size, num_eval))
        predictions = masks @ scores[:, columns]
        per_example[columns] = spearman_columns(outputs[:, columns], predictions)
    defined = per_example[np.isfinite(per_example)]
    mean = float(defined.mean()) if len(defined) else np.nan
    ci_low, ci_high = stats.bootstrap_interval(defined, num_bootstrap, seed, confidence)
    return LDSResult(mean=mean, ci_low=ci_low, ci_high=ci_high, per_example=per_example,
                     num_runs=masks.shape[0], num_finite=len(defined), num_eval=num_eval)


@dataclasses.dataclass(frozen=True)
class NoiseCeiling:
    """How high any method's LDS can go on evaluation runs whose outputs are noisy.

    Each evaluation mask is trained twice, with independent seeds (designs ``<ratio>``
    and ``<ratio>-reseed1``). If a run's output is ``f = g(mask) + noise``, the
    correlation of the two trainings over masks estimates the reliability
    ``rho = var(g) / var(f)``, and no prediction from the mask alone correlates with
    ``f`` better than ``sqrt(rho)``: ``per_example = sqrt(max(rho_j, 0))``
    (rank correlations, as LDS uses).

    Attributes:
        mean: mean of ``per_example`` over the eval examples where it is defined.
        per_example: float64 ``[num_eval]`` ceiling of each eval example's LDS (NaN where
            an output is constant over the masks).
        reliability: float64 ``[num_eval]`` Spearman correlation of the two trainings.
        num_runs: masks trained twice.
    """

    mean: float
    per_example: np.ndarray
    reliability: np.ndarray
    num_runs: int


def noise_ceiling(outputs: np.ndarray, outputs_again: np.ndarray) -> NoiseCeiling:
    """The LDS noise ceiling from two trainings of the same masks (`NoiseCeiling`).

    Args:
        outputs: ``[k, num_eval]`` outputs of the evaluation runs.
        outputs_again: ``[k, num_eval]`` outputs of the same k masks, row for row, trained
            with other seeds.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    outputs_again = np.asarray(outputs_again, dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape != outputs_again.shape:
        raise ValueError(f"outputs have shapes {outputs.shape} and {outputs_again.shape}; "
                         "expected two equal [k, num_eval] arrays (the same masks twice)")
    if outputs.shape[0] < 2:
        raise ValueError(f"outputs have {outputs.shape[0]} runs, a rank correlation needs "
                         ">= 2")
    reliability = spearman_columns(outputs, outputs_again)
    per_example = np.sqrt(np.clip(reliability, 0.0, None))
    defined = per_example[np.isfinite(per_example)]
    return NoiseCeiling(mean=float(defined.mean()) if len(defined) else np.nan,
                        per_example=per_example, reliability=reliability,
                        num_runs=outputs.shape[0])


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of `a` with the same column of `b`.

    Ranks with ties averaged (`scipy.stats.rankdata`), then the Pearson correlation of
    the ranks, as `scipy.stats.spearmanr` does; NaN where either column is constant.

    Args:
        a: ``[k, n]``.
        b: ``[k, n]``.

    Returns:
        float64 ``[n]``.
    """
    rank_a = _centered_ranks(a)
    rank_b = _centered_ranks(b)
    numerator = np.einsum("kn,kn->n", rank_a, rank_b)
    denominator = np.sqrt(np.einsum("kn,kn->n", rank_a, rank_a)
                          * np.einsum("kn,kn->n", rank_b, rank_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = numerator / denominator
    # Constant columns have all ranks equal to (k + 1) / 2 exactly, so zero spread.
    correlation[denominator == 0] = np.nan
    return np.clip(correlation, -1.0, 1.0)


def _centered_ranks(x: np.ndarray) -> np.ndarray:
    ranks = scipy_stats.rankdata(x, axis=0)
    return ranks - (x.shape[0] + 1) / 2.0  # the mean of ranks 1..k, ties averaged or not


def check_disjoint(fit_run_ids: Iterable[int], lds_run_ids: Iterable[int]) -> None:
    """Raises ValueError if any evaluation run was also a run the scores were fit on.

    Args:
        fit_run_ids: ids of the runs an attribution method used.
        lds_run_ids: ids of the runs LDS evaluates on (same id space, e.g. run
            directories of one subset folder).
    """
    overlap = sorted(set(fit_run_ids) & set(lds_run_ids))
    if overlap:
        shown = ", ".join(str(i) for i in overlap[:20])
        more = f" and {len(overlap) - 20} more" if len(overlap) > 20 else ""
        raise ValueError(f"lds_run_ids overlap fit_run_ids in {len(overlap)} runs: "
                         f"{shown}{more}; LDS needs evaluation runs the method was not fit on")


def check_disjoint_membership(fit_masks: np.ndarray, lds_masks: np.ndarray,
                              lds_names: Sequence[str] | None = None) -> None:
    """Refuses evaluation runs that trained on exactly what a fit run trained on.

    Two runs of random subsets with the same membership row are, in practice, the same
    run (copied into another folder or under another id); an LDS over such runs measures
    how well the method remembers its own fit runs (it inflates LDS towards 1).

    Args:
        fit_masks: ``[num_fit, num_train]`` membership of the runs the scores came from.
        lds_masks: ``[k, num_train]`` membership of the evaluation runs.
        lds_names: names of the evaluation runs for the message (``0.5/3``); default
            their row numbers.

    Raises:
        ParameterError: (``lds_subset``) naming how many evaluation runs repeat a fit run,
            and the first few.
    """
    fit_masks = np.asarray(fit_masks, dtype=bool)
    lds_masks = np.asarray(lds_masks, dtype=bool)
    if fit_masks.ndim != 2 or lds_masks.ndim != 2 or fit_masks.shape[1] != lds_masks.shape[1]:
        raise ValueError(f"fit_masks {fit_masks.shape} and lds_masks {lds_masks.shape}: "
                         "expected [runs, num_train] of the same num_train")
    fit_rows = {np.packbits(row).tobytes() for row in fit_masks}
    repeated = [r for r, row in enumerate(lds_masks) if np.packbits(row).tobytes() in fit_rows]
    if repeated:
        names = [str(lds_names[r]) if lds_names is not None else str(r) for r in repeated]
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10
                                         else "")
        raise ParameterError("lds_subset", f"{len(repeated)} of the {len(lds_masks)} "
                             f"evaluation runs ({shown}) trained on exactly the examples of "
                             "a run the scores were fit on; LDS needs runs the method was "
                             "not fit on")
