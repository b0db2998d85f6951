"""heldout: training-data attribution by retraining on random subsets.

Train many models on random subsets of a training set, record what each got right,
and estimate memorization and influence from those records (Feldman & Zhang 2020).

Layering rule: the package is seven layers, each a subpackage, and a module imports only
from its own layer and the layers listed before it (never a later one), so there are no
import cycles (`tests/test_layering.py` parses every import and enforces this):

    data         what the examples are: Dataset, sources, ImageNet records, augmentation
    store        everything about an experiment directory: layout, files, runs, designs,
                 targets, coordination of workers, released tarballs (no model math)
    models       Sonnet modules, prediction, checkpoints (attribute names are API)
    training     configs, recipes, trainers and the experiment orchestration
    estimate     estimators, statistics, reports, exports and plots (pure NumPy cores)
    attribution  gradient-based estimators judged against retraining
    app          the front doors: one typed job per mode of each CLI (the top)

This module is the small stable public API (`__all__`); the subpackages hold the rest.
Its three front doors are what the CLIs call, one each, so a notebook gets exactly the
behaviour of the command line (checks, defaults, presets, output paths):

    train(TrainDesign | TrainDrop | TrainPreset) -> TrainReport   train.py
    run_estimate(estimate_job({...})) -> EstimateReport            estimate.py
    run_demo(demo_job({...})) -> DemoReport                        demo.py

`estimate_job` and `demo_job` take the settings given, by parameter name, and return
the one typed job (`heldout.app.estimate_jobs`, `heldout.app.demo`) they ask for,
refusing a setting that job does not take. Errors are `heldout.errors.ParameterError`s
(`ValueError`s) naming the parameter; `str()` of a report is what the CLI prints.
"""

from __future__ import annotations

import importlib
from typing import Any

from heldout import runtime

runtime.quiet_tensorflow_logging()

__version__ = "0.1.0"

# Public name -> (module, attribute; None: the module itself). Loaded on first use
# (PEP 562), so ``import heldout`` is instant and loads no TensorFlow; TensorFlow is
# imported quietly (`heldout.runtime`) before the first module that needs it.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "Dataset": ("heldout.data.dataset", "Dataset"),
    "load_dataset": ("heldout.data.sources", "load_dataset"),
    "export": ("heldout.estimate.export", None),
    "targeted": ("heldout.estimate.targeted", None),
    "CScore": ("heldout.estimate.estimators", "CScore"),
    "InfluencePairs": ("heldout.estimate.estimators", "InfluencePairs"),
    "SelfInfluence": ("heldout.estimate.estimators", "SelfInfluence"),
    "TopInfluences": ("heldout.estimate.estimators", "TopInfluences"),
    "cscore": ("heldout.estimate.estimators", "cscore"),
    "influence": ("heldout.estimate.estimators", "influence"),
    "influence_blocks": ("heldout.estimate.estimators", "influence_blocks"),
    "memorization": ("heldout.estimate.estimators", "memorization"),
    "pair_statistics": ("heldout.estimate.estimators", "pair_statistics"),
    "self_influence": ("heldout.estimate.estimators", "self_influence"),
    "top_influence_pairs": ("heldout.estimate.estimators", "top_influence_pairs"),
    "top_influences": ("heldout.estimate.estimators", "top_influences"),
    "save_estimates": ("heldout.estimate.export", "save_estimates"),
    "write_tables": ("heldout.estimate.export", "write_tables"),
    "ESTIMATORS": ("heldout.estimate.config", "ESTIMATORS"),
    "EstimateConfig": ("heldout.estimate.config", "EstimateConfig"),
    "Estimates": ("heldout.estimate.pipeline", "Estimates"),
    "estimate_experiment": ("heldout.estimate.pipeline", "estimate_experiment"),
    "format_report": ("heldout.estimate.pipeline", "format_report"),
    "plot_estimates": ("heldout.estimate.pipeline", "plot_estimates"),
    "RunCheck": ("heldout.models.checkpoints", "RunCheck"),
    "check_run": ("heldout.models.checkpoints", "check_run"),
    "restore_run_model": ("heldout.models.checkpoints", "restore_run_model"),
    "coordination": ("heldout.store.coordination", None),
    "released": ("heldout.store.released", None),
    "runs": ("heldout.store.runs", None),
    "targets": ("heldout.store.targets", None),
    "designs": ("heldout.store.designs", None),
    "parse_run_ids": ("heldout.store.designs", "parse_run_ids"),
    "parse_shard": ("heldout.store.designs", "parse_shard"),
    "read_indices": ("heldout.store.designs", "read_indices"),
    "subset_indices": ("heldout.store.designs", "subset_indices"),
    "ExperimentInfo": ("heldout.store.experiment_info", "ExperimentInfo"),
    "read_experiment_info": ("heldout.store.experiment_info", "read_experiment_info"),
    "Experiment": ("heldout.store.runs", "Experiment"),
    "RunFileError": ("heldout.store.runs", "RunFileError"),
    "load_experiment": ("heldout.store.runs", "load_experiment"),
    "load_run": ("heldout.store.runs", "load_run"),
    "RunRecord": ("heldout.store.records", "RunRecord"),
    "read_run_record": ("heldout.store.records", "read_run_record"),
    "save_run": ("heldout.store.runs", "save_run"),
    "DataSource": ("heldout.app.train", "DataSource"),
    "RunSettings": ("heldout.app.train", "RunSettings"),
    "TrainDesign": ("heldout.app.train", "TrainDesign"),
    "TrainDrop": ("heldout.app.train", "TrainDrop"),
    "TrainPreset": ("heldout.app.train", "TrainPreset"),
    "TrainReport": ("heldout.app.train", "TrainReport"),
    "train": ("heldout.app.train", "train"),
    "TrainConfig": ("heldout.training.config", "TrainConfig"),
    "EnsembleTrainer": ("heldout.training.ensemble", "EnsembleTrainer"),
    "TrainSummary": ("heldout.training.experiment", "TrainSummary"),
    "resolve_targets": ("heldout.training.experiment", "resolve_targets"),
    "train_experiment": ("heldout.training.experiment", "train_experiment"),
    "train_targeted_experiment": ("heldout.training.experiment", "train_targeted_experiment"),
    "EstimateReport": ("heldout.app.estimate", "EstimateReport"),
    "estimate_job": ("heldout.app.estimate_jobs", "estimate_job"),
    "run_estimate": ("heldout.app.estimate", "run"),
    "DemoReport": ("heldout.app.demo", "DemoReport"),
    "demo_job": ("heldout.app.demo", "demo_job"),
    "run_demo": ("heldout.app.demo", "run"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'heldout' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    runtime.import_tensorflow()
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    # modules
    "coordination", "designs", "export", "released", "runs", "targeted", "targets",
    # training
    "TrainDesign", "TrainDrop", "TrainPreset", "DataSource", "RunSettings", "TrainReport",
    "train",
    "EnsembleTrainer", "TrainConfig", "TrainSummary", "ExperimentInfo", "read_experiment_info",
    "resolve_targets", "train_experiment", "train_targeted_experiment",
    # data and runs
    "Dataset", "Experiment", "RunFileError", "load_dataset", "load_experiment", "load_run",
    "RunRecord", "parse_run_ids", "parse_shard", "read_indices", "read_run_record", "save_run",
    "subset_indices",
    # estimators
    "CScore", "InfluencePairs", "SelfInfluence", "TopInfluences", "cscore", "influence",
    "influence_blocks", "memorization", "pair_statistics", "self_influence",
    "top_influence_pairs", "top_influences",
    # analysis and checkpoints
    "estimate_job", "EstimateReport", "run_estimate", "demo_job", "DemoReport", "run_demo",
    "ESTIMATORS", "EstimateConfig", "Estimates", "RunCheck", "check_run",
    "estimate_experiment", "format_report", "plot_estimates", "restore_run_model",
    "save_estimates", "write_tables",
]
