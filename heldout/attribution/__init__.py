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

from heldout.attribution.gradients import (
    MEASUREMENTS,
    LayerGradients,
    LayerSpec,
    find_layers,
    measure,
    per_example_gradients,
)
from heldout.attribution.influence_functions import (
    FISHERS,
    PHASES,
    STRATEGIES,
    Factors,
    InfluenceConfig,
    InfluenceFunctionsResult,
    LayerFactors,
    Timings,
    factors_exist,
    fit_factors,
    layer_damping,
    load_factors,
    precondition,
    save_factors,
    score_influence_functions,
    scores_from_factors,
)
from heldout.attribution.metagradient import (
    MetagradientConfig,
    MetagradientScores,
    Trajectory,
    load_metagradient_scores,
    metagradients,
    save_metagradient_scores,
    score_metagradient,
)
from heldout.attribution.projection import GaussianProjection, RandomProjection
from heldout.attribution.tracin import (
    Checkpoint,
    TracInConfig,
    TracInResult,
    score_tracin,
    tracin_scores,
    tracin_self_influence,
)
from heldout.attribution.trak import (
    Kernel,
    TRAKConfig,
    TRAKFeatures,
    TRAKResult,
    ensemble_features,
    score_trak,
    select_lambda,
    trak_features,
    trak_scores,
)

__all__ = [
    "FISHERS", "MEASUREMENTS", "PHASES", "STRATEGIES", "Checkpoint", "Factors",
    "GaussianProjection", "InfluenceConfig", "InfluenceFunctionsResult", "Kernel",
    "LayerFactors",
    "LayerGradients", "LayerSpec", "MetagradientConfig", "MetagradientScores", "Trajectory",
    "load_metagradient_scores", "metagradients", "save_metagradient_scores",
    "score_metagradient", "RandomProjection", "TRAKConfig", "TRAKFeatures",
    "TRAKResult", "Timings", "TracInConfig", "TracInResult",
    "factors_exist", "find_layers", "fit_factors", "layer_damping", "load_factors", "measure",
    "per_example_gradients", "precondition", "save_factors", "score_influence_functions",
    "ensemble_features", "score_tracin", "score_trak", "scores_from_factors", "select_lambda",
    "tracin_scores", "tracin_self_influence", "trak_features", "trak_scores",
]
