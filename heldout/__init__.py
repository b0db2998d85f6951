"""heldout: training-data attribution by retraining on random subsets.

Train many models on random subsets of a training set, record what each got right,
and estimate memorization and influence from those records (Feldman & Zhang 2020).
"""

from heldout import analysis, coordination, released, runs, subsets, targeted, targets
from heldout.analysis import (
    ESTIMATORS,
    EstimateConfig,
    Estimates,
    estimate_experiment,
    format_report,
    plot_estimates,
    save_estimates,
    write_tables,
)
from heldout.checkpoints import RunCheck, check_run, restore_run_model
from heldout.data import Dataset, load_dataset
from heldout.estimators import (
    CScore,
    InfluencePairs,
    SelfInfluence,
    TopInfluences,
    cscore,
    influence,
    influence_blocks,
    memorization,
    pair_statistics,
    self_influence,
    top_influence_pairs,
    top_influences,
)
from heldout.experiment import (
    TrainSummary,
    read_experiment_info,
    resolve_targets,
    train_experiment,
    train_targeted_experiment,
)
from heldout.runs import (
    Experiment,
    RunFileError,
    load_experiment,
    load_run,
    read_run_info,
    save_run,
)
from heldout.subsets import parse_run_ids, parse_shard, read_indices, subset_indices
from heldout.training import EnsembleTrainer, TrainConfig

__version__ = "0.1.0"

__all__ = [
    # modules
    "analysis", "coordination", "released", "runs", "subsets", "targeted", "targets",
    # training
    "EnsembleTrainer", "TrainConfig", "TrainSummary", "read_experiment_info",
    "resolve_targets", "train_experiment", "train_targeted_experiment",
    # data and runs
    "Dataset", "Experiment", "RunFileError", "load_dataset", "load_experiment", "load_run",
    "parse_run_ids", "parse_shard", "read_indices", "read_run_info", "save_run",
    "subset_indices",
    # estimators
    "CScore", "InfluencePairs", "SelfInfluence", "TopInfluences", "cscore", "influence",
    "influence_blocks", "memorization", "pair_statistics", "self_influence",
    "top_influence_pairs", "top_influences",
    # analysis and checkpoints
    "ESTIMATORS", "EstimateConfig", "Estimates", "RunCheck", "check_run",
    "estimate_experiment", "format_report", "plot_estimates", "restore_run_model",
    "save_estimates", "write_tables",
]
