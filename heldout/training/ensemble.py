"""K small models (mlp, cnn) trained at once in one program, with stacked weights.

One `EnsembleTrainer` holds one compiled TensorFlow program for a fixed number of
models K, reused for every group of K runs: variables and optimizer state are
re-assigned, not re-created, so the program is traced and compiled once per process.
The whole epoch loop is one XLA program (dense models gain from it on a CPU); with
``chunk_models`` it trains the K models M at a time (`core.Trainer._chunk_size`). All
else is the skeleton's (`heldout.training.core.Trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.models import ensemble as ensemble_lib
from heldout.models import registry
from heldout.training import core

# Programs hold at least this many models (a smaller K is padded). XLA:CPU vectorizes the
# reductions over a batch (bias gradients) differently below 4 models, so a run trained
# in a group of 1-3 differed in its last bits from the same run in a larger group. With
# the floor, and the cross-entropy summed over classes in one fixed order
# (`heldout.training.losses`: TensorFlow's op changed order at 52 digits MLPs), a run's
# arrays are bit-identical whatever K and whatever chunk size (tested in
# tests/training/test_ensemble.py: mlp at K = 4, 5, 64, 250 and in chunks; cnn at K = 4, 8).
_MIN_PROGRAM_MODELS = 4


class EnsembleTrainer(core.Trainer):
    """Trains groups of `config.models_at_once` runs of an ensemble model in one program."""

    kind = "ensemble"

    def _group_size(self) -> int:
        """K, at least `_MIN_PROGRAM_MODELS`, and with chunks a multiple of their size."""
        models = max(self.config.models_at_once, _MIN_PROGRAM_MODELS)
        chunk = self.config.chunk_models
        if not chunk or models <= chunk:
            return models
        return -(-models // chunk) * chunk

    def _chunk_size(self) -> int:
        """``config.chunk_models`` models per optimizer step (0 or more than K: all K)."""
        return min(self.num_models, self.config.chunk_models or self.num_models)

    def _build_model(self, num_models: int | None = None) -> tf.Module:
        config = self.config
        model = registry.build_ensemble(config.model, self.dataset.num_classes,
                                        num_models or self.num_models, config.model_width)
        model(tf.zeros([1, 1, *self.dataset.input_shape]))  # creates the variables
        return model

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        """Model k's weights drawn from its own init seed (`ensemble.initial_values`)."""
        del subsets
        rngs = [np.random.default_rng(s) for s in init_seeds]
        for variable in self._variables:
            variable.assign(ensemble_lib.initial_values(variable, rngs))
