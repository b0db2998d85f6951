"""Choosing the trainer of a model: the registry's trainer kind -> trainer class."""

from __future__ import annotations

from heldout.data.dataset import Dataset
from heldout.training import airbench, concurrent, core, ensemble, single
from heldout.training.config import TrainConfig

TRAINERS: dict[str, type[core.Trainer]] = {
    "ensemble": ensemble.EnsembleTrainer,
    "single": single.SingleModelTrainer,
    "airbench": airbench.AirbenchTrainer,
}


def make_trainer(dataset: Dataset, config: TrainConfig, eval_batch_size: int | None = None
                 ) -> core.Trainer | concurrent.ConcurrentTrainer:
    """The trainer of ``config.model``'s kind (`heldout.models.registry.ModelSpec.trainer`);
    with ``config.programs`` > 1, that many of them side by side
    (`heldout.training.concurrent`)."""
    kind = TRAINERS[config.spec.trainer]
    if config.programs == 1:
        return kind(dataset, config, eval_batch_size)
    return concurrent.ConcurrentTrainer([kind(dataset, config, eval_batch_size)
                                         for _ in range(config.programs)])
