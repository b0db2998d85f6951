"""Gradient-based attribution (TracIn, influence functions, TRAK), beside retraining.

Front doors, each one call from arrays to NumPy scores:

* `score_tracin(checkpoints, x_train, y_train, x_query, y_query, TracInConfig(...))`:
  TracIn-CP self-influence ``[num_train]`` and train x query scores
  ``[num_train, num_query]`` from a list of `Checkpoint(model, learning_rate)`.
* `score_influence_functions(model, x_train, y_train, x_query, y_query, InfluenceConfig(...),
  factors_path=...)`: influence functions with ``identity``, ``diagonal``, ``kfac`` or
  ``ekfac`` factors, with a table of seconds per phase.
* `score_trak(models, x_train, y_train, x_query, y_query, TRAKConfig(...))`: TRAK scores
  ``[num_train, num_query]`` of an ensemble (projected log-odds gradients, regularized
  kernel, ``1 - p`` reweighting), with lambda_reg chosen by LDS on selection runs.
* `score_metagradient(run_dir, data, eval_indices, split, MetagradientConfig(...))`: exact
  metagradients ``[num_train, num_eval]`` of a recorded run (d f_j / d w_i through its
  whole training, replayed bit for bit; NaN rows for examples without a batch slot),
  with `save_metagradient_scores` / `load_metagradient_scores`; `metagradients` for a
  `Trajectory` given directly.
* `per_example_gradients(model, x, y)`: per-example gradients of every Linear/Conv2D
  variable, vectorized over examples.

Scores are signed alike everywhere: positive means the training example is predicted
to help (lower the loss of, raise the margin of) the query.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> its module, loaded on first use (PEP 562): the settings
# (`heldout.attribution.config`) are read without importing TensorFlow.
_EXPORTS = {
    "LayerGradients": "heldout.attribution.gradients",
    "LayerSpec": "heldout.attribution.gradients",
    "MEASUREMENTS": "heldout.attribution.config",
    "find_layers": "heldout.attribution.gradients",
    "measure": "heldout.attribution.gradients",
    "per_example_gradients": "heldout.attribution.gradients",
    "FISHERS": "heldout.attribution.config",
    "Factors": "heldout.attribution.influence_functions",
    "InfluenceConfig": "heldout.attribution.config",
    "InfluenceFunctionsResult": "heldout.attribution.influence_functions",
    "LayerFactors": "heldout.attribution.influence_functions",
    "PHASES": "heldout.attribution.influence_functions",
    "STRATEGIES": "heldout.attribution.config",
    "Timings": "heldout.attribution.influence_functions",
    "factors_exist": "heldout.attribution.influence_functions",
    "fit_factors": "heldout.attribution.influence_functions",
    "layer_damping": "heldout.attribution.influence_functions",
    "load_factors": "heldout.attribution.influence_functions",
    "precondition": "heldout.attribution.influence_functions",
    "save_factors": "heldout.attribution.influence_functions",
    "score_influence_functions": "heldout.attribution.influence_functions",
    "scores_from_factors": "heldout.attribution.influence_functions",
    "MetagradientConfig": "heldout.attribution.metagradient",
    "MetagradientScores": "heldout.attribution.metagradient",
    "Trajectory": "heldout.attribution.metagradient",
    "load_metagradient_scores": "heldout.attribution.metagradient",
    "metagradients": "heldout.attribution.metagradient",
    "save_metagradient_scores": "heldout.attribution.metagradient",
    "score_metagradient": "heldout.attribution.metagradient",
    "GaussianProjection": "heldout.attribution.projection",
    "RandomProjection": "heldout.attribution.projection",
    "Checkpoint": "heldout.attribution.tracin",
    "TracInConfig": "heldout.attribution.config",
    "TracInResult": "heldout.attribution.tracin",
    "score_tracin": "heldout.attribution.tracin",
    "tracin_scores": "heldout.attribution.tracin",
    "tracin_self_influence": "heldout.attribution.tracin",
    "Kernel": "heldout.attribution.trak",
    "TRAKConfig": "heldout.attribution.config",
    "TRAKFeatures": "heldout.attribution.trak",
    "TRAKResult": "heldout.attribution.trak",
    "ensemble_features": "heldout.attribution.trak",
    "score_trak": "heldout.attribution.trak",
    "select_lambda": "heldout.attribution.trak",
    "trak_features": "heldout.attribution.trak",
    "trak_scores": "heldout.attribution.trak",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'heldout.attribution' has no attribute {name!r}")
    from heldout.runtime import import_tensorflow

    import_tensorflow()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
