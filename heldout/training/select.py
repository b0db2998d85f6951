"""Choosing the trainer of a model: the registry's trainer kind -> trainer class."""

from __future__ import annotations

from heldout.data.dataset import Dataset
from heldout.training import airbench, core, ensemble, single
from heldout.training.config import TrainConfig

TRAINERS: dict[str, type[core.Trainer]] = {
    "ensemble": ensemble.EnsembleTrainer,
    "single": single.SingleModelTrainer,
    "airbench": airbench.AirbenchTrainer,
}


def make_trainer(dataset: Dataset, config: TrainConfig) -> core.Trainer:
    """The trainer of ``config.model``'s kind (`heldout.models.registry.ModelSpec.trainer`)."""
    return TRAINERS[config.spec.trainer](dataset, config)
