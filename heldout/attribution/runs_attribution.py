"""Gradient-based attribution of one trained run, read from its run directory.

The front door of ``estimate.py --estimator=tracin|if_<strategy>``: restores the
run's checkpoints, scores every training example (self-influence) and the chosen test
examples (train x test), and sets the self-influence beside the retraining ground truth
of the same experiment. Influence functions use the final model. TracIn uses every
checkpoint saved during training (``checkpoint_every``) AND the final model, each
weighted by the mean learning rate of the stretch of steps that ended there: the same
checkpoints as ``benchmarks/attribution_quality.py`` (one after every epoch, the last
being the final model), which TracIn-CP's sum over the whole training path asks for.
Every checkpoint's learning rate is read from the run's record (``run.json``,
`heldout.store.records.RunRecord`), where training wrote it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from scipy import stats as scipy_stats

from heldout.attribution import config as attribution_config
from heldout.attribution import influence_functions, tracin, trak
from heldout.attribution.config import METHODS
from heldout.data.dataset import Dataset
from heldout.estimate import estimators, export
from heldout.models import checkpoints as checkpoints_lib
from heldout.store import layout as layout_lib
from heldout.store import records
from heldout.store import runs as runs_lib


@dataclasses.dataclass(frozen=True)
class RunAttribution:
    """Scores of one method on one run."""

    method: str
    run_dir: str
    self_influence: np.ndarray  # [num_train], every training example
    in_subset: np.ndarray  # bool [num_train]: the run trained on the example
    scores: np.ndarray | None  # [num_train, num_eval] train x test, if asked
    eval_indices: np.ndarray  # [num_eval] test indices of the score columns
    timings: str  # phase table (influence functions) or total seconds (TracIn)
    agreement: dict[str, float]  # Spearman correlation with retraining estimates


def attribute_run(run_dir: str, method: str, data: Dataset, eval_indices: np.ndarray | None,
                  measurement: str = "loss", damping: float | None = None,
                  projection_dim: int | None = None, factors_path: str | None = None,
                  retraining: runs_lib.Experiment | None = None, fisher: str = "true",
                  fisher_seed: int = 0, fisher_draws: int = 1,
                  config: tracin.TracInConfig | attribution_config.InfluenceConfig | None = None,
                  progress: bool = True) -> RunAttribution:
    """Scores the training examples of `data` with `method` using the run's checkpoints.

    Args:
        run_dir: a run trained with ``--save_checkpoints`` (TracIn also needs
            ``--checkpoint_every``).
        method: one of `METHODS`.
        data: the run's data set.
        eval_indices: test examples to score influence on; None: no train x test scores.
        measurement: of the queries: ``loss`` or ``margin``.
        damping: influence functions' damping; None: 0.1 x each layer's mean eigenvalue.
        projection_dim: TracIn: random projection of gradients to this many dimensions.
        factors_path: influence functions: reuse / save the fitted factors here.
        retraining: the experiment's runs, to compare self-influence with memorization
            and margin self-influence (Spearman correlation).
        fisher: influence functions: labels of the Fisher (``true``, ``empirical``,
            ``expected``).
        fisher_seed: seed of the true Fisher's sampled labels.
        fisher_draws: true Fisher: average its moments over this many label draws.
        config: the method's whole config (`TracInConfig` / `InfluenceConfig` with the
            method's strategy); when given, the single settings above are not used.
        progress: show a progress bar of the gradients.

    Raises:
        ValueError: unknown method, or the run lacks the checkpoints the method needs.
    """
    if method not in METHODS:
        raise ValueError(f"method={method}: expected one of {', '.join(METHODS)}")
    record = records.read_run_record(run_dir)
    arch, width = record.model, record.model_width
    if not arch:
        raise ValueError(f"{run_dir}: no run.json naming the model; gradient methods need "
                         "runs trained by train.py with save_checkpoints")
    arrays = runs_lib.load_run(run_dir)
    in_subset = np.zeros(data.num_train, dtype=bool)
    in_subset[arrays[runs_lib.SUBSET_INDICES]] = True
    x_query = y_query = None
    if eval_indices is not None:
        x_query, y_query = data.x_test[eval_indices], data.y_test[eval_indices]
    if method == "tracin":
        if not record.checkpoints:
            raise ValueError(f"{run_dir}: TracIn needs checkpoints saved during training "
                             "(train with save_checkpoints checkpoint_every=N)")
        models = [tracin.Checkpoint(_restore(run_dir, arch, data, width, epoch), rate)
                  for epoch, rate in record.tracin_checkpoints(run_dir)]
        result = tracin.score_tracin(
            models, data.x_train, data.y_train, x_query, y_query,
            config or tracin.TracInConfig(measurement=measurement,
                                          projection_dim=projection_dim), progress=progress)
        timings = f"TracIn over {len(models)} checkpoints: {result.seconds:.1f} s"
    else:
        model = checkpoints_lib.restore_run_model(
            run_dir, arch, data.num_classes, data.input_shape, width).model
        result = influence_functions.score_influence_functions(
            model, data.x_train, data.y_train, x_query, y_query,
            config or attribution_config.InfluenceConfig(
                strategy=method[len("if_"):], damping=damping, measurement=measurement,
                fisher=fisher, fisher_seed=fisher_seed, fisher_draws=fisher_draws),
            factors_path=factors_path, progress=progress)
        timings = result.timings.format()
    agreement = {}
    if retraining is not None:
        agreement = _agreement(result.self_influence, retraining)
    return RunAttribution(method=method, run_dir=run_dir,
                          self_influence=np.asarray(result.self_influence),
                          in_subset=in_subset, scores=result.scores,
                          eval_indices=np.zeros(0, np.int64) if eval_indices is None
                          else np.asarray(eval_indices), timings=timings, agreement=agreement)


def restore_final_models(run_dirs: Sequence[str], data: Dataset) -> list[tf.Module]:
    """The final model of each run (trained with ``save_checkpoints``), e.g. for TRAK."""
    models = []
    for run_dir in run_dirs:
        record = records.read_run_record(run_dir)
        if not record.model:
            raise ValueError(f"run_dirs: {run_dir} has no run.json naming the model")
        models.append(checkpoints_lib.restore_run_model(
            run_dir, record.model, data.num_classes, data.input_shape,
            record.model_width).model)
    return models


def trak_of_runs(run_dirs: Sequence[str], data: Dataset, eval_indices: np.ndarray,
                 config: attribution_config.TRAKConfig | None = None,
                 selection: runs_lib.Experiment | None = None, progress: bool = True
                 ) -> trak.TRAKResult:
    """TRAK scores ``[num_train, num_eval]`` of the final models of `run_dirs`.

    Args:
        run_dirs: the runs whose final checkpoints form the ensemble.
        data: their data set; every training example is scored.
        eval_indices: test examples to attribute.
        config: TRAK settings (default `TRAKConfig()`); a grid of lambda_reg is chosen
            on `selection`.
        selection: runs (with ``logodds_test``) to choose lambda_reg on; never the runs
            TRAK is judged on, and best not the ensemble's own runs.
        progress: show a progress bar of the gradients (most of TRAK's time).
    """
    eval_indices = np.asarray(eval_indices)
    config = config or attribution_config.TRAKConfig()
    masks = outputs = None
    if selection is not None:
        if selection.logodds_test is None:
            raise ValueError("selection: its runs have no logodds_test arrays")
        masks, outputs = selection.membership, selection.logodds_test[:, eval_indices]
    return trak.score_trak(restore_final_models(run_dirs, data), data.x_train, data.y_train,
                           data.x_test[eval_indices], data.y_test[eval_indices], config,
                           masks, outputs, progress)


def save_attribution(attribution: RunAttribution, path: str) -> None:
    """Writes ``self_influence``, ``in_subset``, ``eval_indices`` and ``scores`` to an ``.npz``."""
    export.save_attribution_scores(
        path, attribution.self_influence, attribution.in_subset, attribution.eval_indices,
        attribution.scores, meta={"method": attribution.method, "run_dir": attribution.run_dir})


def format_attribution(attribution: RunAttribution, labels: np.ndarray | None = None,
                       top: int = 10) -> str:
    """The most self-influential training examples, the timings, and the agreement."""
    order = np.argsort(-np.nan_to_num(attribution.self_influence, nan=-np.inf))[:top]
    lines = [f"{attribution.method} on {attribution.run_dir}: top {top} self-influence",
             f"{'index':>7} {'label':>5} {'self-influence':>15} {'trained on':>10}"]
    for i in order:
        label = "-" if labels is None else str(labels[i])
        lines.append(f"{i:>7} {label:>5} {attribution.self_influence[i]:>15.4g} "
                     f"{'yes' if attribution.in_subset[i] else 'no':>10}")
    lines += ["", attribution.timings]
    for name, value in attribution.agreement.items():
        lines.append(f"Spearman correlation with retraining {name}: {value:.3f}")
    return "\n".join(lines)


def _restore(run_dir: str, arch: str, data: Dataset, width: float, epoch: int) -> tf.Module:
    prefix = layout_lib.RunDir(run_dir).checkpoint(epoch)
    return checkpoints_lib.restore_run_model(run_dir, arch, data.num_classes, data.input_shape,
                                             width, prefix=prefix).model


def _agreement(self_influence: np.ndarray, retraining: runs_lib.Experiment) -> dict[str, float]:
    """Spearman correlation of a self-influence with the retraining estimates."""
    reference = {"memorization": estimators.memorization(
        retraining.membership, retraining.correctness_train).score}
    if retraining.margin_train is not None:
        reference["margin self-influence"] = estimators.self_influence(
            retraining.membership, retraining.margin_train).score
    agreement = {}
    for name, scores in reference.items():
        finite = np.isfinite(scores) & np.isfinite(self_influence)
        agreement[f"{name} ({retraining.num_runs} runs)"] = float(
            scipy_stats.spearmanr(self_influence[finite], scores[finite]).statistic)
    return agreement
