"""K small models (mlp, cnn) trained at once in one program, with stacked weights.

One `EnsembleTrainer` holds one compiled TensorFlow program for a fixed number of
models K, reused for every group of K runs: variables and optimizer state are
re-assigned, not re-created, so the program is traced and compiled once per process.
The whole epoch loop is one XLA program (dense models gain from it on a CPU). All else
is the skeleton's (`heldout.training.core.Trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.models import ensemble as ensemble_lib
from heldout.models import registry
from heldout.training import core


class EnsembleTrainer(core.Trainer):
    """Trains groups of `config.models_at_once` runs of an ensemble model in one program."""

    kind = "ensemble"

    def _build_model(self) -> tf.Module:
        config = self.config
        model = registry.build_ensemble(config.model, self.dataset.num_classes,
                                        self.num_models, config.model_width)
        model(tf.zeros([1, 1, *self.dataset.input_shape]))  # creates the variables
        return model

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        """Model k's weights drawn from its own init seed (`ensemble.initial_values`)."""
        del subsets
        rngs = [np.random.default_rng(s) for s in init_seeds]
        for variable in self._variables:
            variable.assign(ensemble_lib.initial_values(variable, rngs))
