"""Large models with batch normalization (small_inception, resnet50), one run at a time.

One model object and one compiled program serve every run: before each run the
variables (weights, batch-norm statistics) are re-assigned the initial values that the
run's seed gives a freshly built model. XLA compiles one optimizer step; batches are
gathered and augmented on the device. All else is the skeleton's
(`heldout.training.core.Trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.models import registry
from heldout.training import core


class SingleModelTrainer(core.Trainer):
    """Trains runs of a large model one at a time (groups of one run)."""

    kind = "single"
    whole_epoch_xla = False
    model_axis = False
    default_eval_batch_size = 256

    def _group_size(self) -> int:
        return 1

    def _build_model(self, num_models: int | None = None) -> tf.Module:
        del num_models  # always one
        return self._build(seed=0)

    def _build(self, seed: int) -> tf.Module:
        """A new model whose initial weights depend on `seed` only, variables created."""
        tf.random.set_seed(seed)
        model = registry.build_single(self.config.model, self.dataset.num_classes,
                                      self.config.model_width)
        model(tf.zeros([1, *self.dataset.input_shape]), is_training=False)
        return model

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        del subsets
        fresh = self._build(int(init_seeds[0].generate_state(1)[0] % 2**31))
        for variable, initial in zip(self.model.variables, fresh.variables, strict=True):
            variable.assign(initial)

    def _apply(self, images: tf.Tensor, is_training: bool,
               model: tf.Module | None = None) -> tf.Tensor:
        return (self.model if model is None else model)(images[0],
                                                        is_training=is_training)[None]

    def _export(self, k: int) -> tf.Module:
        del k
        copy = self._build(seed=0)
        for target, source in zip(copy.variables, self.model.variables, strict=True):
            target.assign(source)
        return copy

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch=None, example_weights: Sequence[np.ndarray] | None = None
              ) -> list[core.TrainedRun]:
        """Trains the given runs one after another; arguments as `core.Trainer.train`."""
        results = []
        for k, (subset, init_seed, order_seed) in enumerate(
                zip(subsets, init_seeds, order_seeds, strict=True)):
            results += super().train(
                [subset], [init_seed], [order_seed], save_logits, export_models,
                None if steps_per_epoch is None else [steps_per_epoch[k]], on_epoch,
                None if example_weights is None else [example_weights[k]])
        return results
