"""heldout: training-data attribution by retraining on random subsets.

Train many models on random subsets of a training set, record what each got right,
and estimate memorization and influence from those records (Feldman & Zhang 2020).
"""

from heldout.analysis import (
    Estimates,
    estimate_experiment,
    format_report,
    plot_estimates,
    save_estimates,
)
from heldout.data import Dataset, load_dataset
from heldout.estimators import (
    SelfInfluence,
    influence,
    influence_blocks,
    memorization,
    self_influence,
    top_influence_pairs,
)
from heldout.experiment import TrainSummary, read_experiment_info, train_experiment
from heldout.runs import Experiment, RunFileError, load_experiment, load_run, save_run
from heldout.subsets import parse_run_ids, subset_indices
from heldout.training import EnsembleTrainer, TrainConfig

__version__ = "0.1.0"

__all__ = [
    "Dataset", "EnsembleTrainer", "Estimates", "Experiment", "RunFileError",
    "SelfInfluence", "TrainConfig", "TrainSummary", "estimate_experiment",
    "format_report", "influence", "influence_blocks", "load_dataset",
    "load_experiment", "load_run", "memorization", "parse_run_ids", "plot_estimates",
    "read_experiment_info", "save_estimates", "save_run", "self_influence",
    "subset_indices", "top_influence_pairs", "train_experiment",
]
