"""heldout: training-data attribution by retraining on random subsets.

Train many models on random subsets of a training set, record what each got right,
and estimate memorization and influence from those records (Feldman & Zhang 2020).

Layering rule: the package is six layers, each a subpackage, and a module imports only
from its own layer and the layers listed before it (never a later one), so there are no
import cycles (`tests/test_layering.py` parses every import and enforces this):

    data         what the examples are: Dataset, sources, ImageNet records, augmentation
    store        everything about an experiment directory: layout, files, runs, designs,
                 targets, coordination of workers, released tarballs (no model math)
    models       Sonnet modules, prediction, checkpoints (attribute names are API)
    training     configs, recipes, trainers and the experiment orchestration
    estimate     estimators, statistics, reports, exports and plots (pure NumPy cores)
    attribution  gradient-based estimators judged against retraining

This module is the small stable public API (`__all__`); the subpackages hold the rest.
Its three front doors are what the CLIs call, one each, so a notebook gets exactly the
behaviour of the command line (checks, defaults, presets, output paths):

    train(TrainRequest(...)) -> TrainReport                 train.py
    run_estimate(EstimateRequest(...)) -> EstimateReport    estimate.py
    run_demo(DemoRequest(...)) -> DemoReport                demo.py

Their errors are `ValueError`s naming the request's parameters; `str()` of a report is
what the CLI prints.
"""

from heldout.attribution.api import run_estimate
from heldout.data.dataset import Dataset
from heldout.data.sources import load_dataset
from heldout.estimate import export, targeted
from heldout.estimate import pipeline as analysis
from heldout.estimate.api import EstimateReport, EstimateRequest
from heldout.estimate.estimators import (
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
from heldout.estimate.export import save_estimates, write_tables
from heldout.estimate.pipeline import (
    ESTIMATORS,
    EstimateConfig,
    Estimates,
    estimate_experiment,
    format_report,
    plot_estimates,
)
from heldout.models.checkpoints import RunCheck, check_run, restore_run_model
from heldout.models.demo import DemoReport, DemoRequest, run_demo
from heldout.store import coordination, released, runs, targets
from heldout.store import designs as subsets
from heldout.store.designs import parse_run_ids, parse_shard, read_indices, subset_indices
from heldout.store.experiment_info import read_experiment_info
from heldout.store.runs import (
    Experiment,
    RunFileError,
    load_experiment,
    load_run,
    read_run_info,
    save_run,
)
from heldout.training.api import TrainReport, TrainRequest, train
from heldout.training.core import TrainConfig
from heldout.training.ensemble import EnsembleTrainer
from heldout.training.experiment import (
    TrainSummary,
    resolve_targets,
    train_experiment,
    train_targeted_experiment,
)

__version__ = "0.1.0"

__all__ = [
    # modules
    "analysis", "coordination", "export", "released", "runs", "subsets", "targeted",
    "targets",
    # training
    "TrainRequest", "TrainReport", "train",
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
    "EstimateRequest", "EstimateReport", "run_estimate", "DemoRequest", "DemoReport",
    "run_demo",
    "ESTIMATORS", "EstimateConfig", "Estimates", "RunCheck", "check_run",
    "estimate_experiment", "format_report", "plot_estimates", "restore_run_model",
    "save_estimates", "write_tables",
]
