"""Trains airbench94 (Keller Jordan's CIFAR-10 speed-run network) K runs at once.

The network lives in `heldout.models.airbench`; this module holds its training recipe,
the lookahead weight averaging and the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.data.dataset import Dataset
from heldout.models import registry
from heldout.models.airbench import EVAL_BATCH_SIZE, WHITENING_IMAGES, BatchNorm
from heldout.training import core

# --- Hyperparameters ------------------------------------------------------------------
# The recipe's (optimizer, schedule, augmentation) live in `airbench_recipe`, importable
# without TensorFlow; these are the trainer's own.
BIAS_LR_SCALE = 64.0  # batch-norm offsets learn this many times faster (decay unscaled)
WHITEN_BIAS_EPOCHS = 3  # the whitening layer's bias trains in these first epochs only
# Lookahead-style weight averaging: every LOOKAHEAD_EVERY steps from epoch
# LOOKAHEAD_START_EPOCH on, average <- decay * average + (1 - decay) * weights, then
# weights <- average, with decay = (LOOKAHEAD_DECAY_BASE ** LOOKAHEAD_EVERY)
# * (step / total_steps) ** LOOKAHEAD_DECAY_POWER: fast moves early, strong averaging
# at the end. The averages are copied back into the weights after every epoch.
LOOKAHEAD_START_EPOCH = 3  # 0-based epoch of the first averaging
LOOKAHEAD_EVERY = 5  # optimizer steps between averagings
LOOKAHEAD_DECAY_BASE = 0.95  # per optimizer step
LOOKAHEAD_DECAY_POWER = 3.0


# --- Schedule and weight averaging ------------------------------------------------------


def lookahead_decay(step: tf.Tensor, total_steps: tf.Tensor) -> tf.Tensor:
    """Decay of the averaging after optimizer step `step` (1-based count) of `total_steps`."""
    progress = tf.cast(step, tf.float32) / tf.cast(total_steps, tf.float32)
    return LOOKAHEAD_DECAY_BASE ** LOOKAHEAD_EVERY * progress ** LOOKAHEAD_DECAY_POWER


def lookahead_update(average: tf.Tensor, weights: tf.Tensor, decay: tf.Tensor
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """One averaging: the new average, which is also the weights' new value."""
    average = decay * average + (1.0 - decay) * weights
    return average, average


# --- Training ---------------------------------------------------------------------------


class AirbenchTrainer(core.Trainer):
    """Trains groups of up to K = ``config.models_at_once`` airbench runs in one program.

    The skeleton (`core.Trainer`) does the rest; what is airbench's own: the summed
    (not averaged) loss over the batch, batch-norm offsets at `BIAS_LR_SCALE` times the
    rate with decay divided by it, decay on every trainable variable (the published
    recipe), the whitening bias frozen after `WHITEN_BIAS_EPOCHS`, whitening from each
    run's own subset, the lookahead averaging, and flip-averaged test accuracy reported
    per run (``TrainedRun.test_accuracy_tta``). Each run has its own subset, order,
    augmentation, initial weights, whitening, weight averages and loss scale, so its
    result does not depend on the other runs of its group.
    """

    kind = "airbench"
    whole_epoch_xla = False
    loss_reduction = "sum"
    reports_flip_accuracy = True
    keep_float32 = (BatchNorm,)
    default_eval_batch_size = EVAL_BATCH_SIZE

    def __init__(self, dataset: Dataset, config: core.TrainConfig,
                 eval_batch_size: int | None = None):
        super().__init__(dataset, config, eval_batch_size)
        self._averaged = self._variables + self._statistics
        self._averages = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._averaged]
        self._averaging_started = tf.Variable(tf.zeros([self.num_models], tf.bool),
                                              trainable=False)
        self._whitening_bias = [v is self.model.whiten.b for v in self._variables]

    def _build_model(self, num_models: int | None = None) -> tf.Module:
        model = registry.build_ensemble("airbench", self.dataset.num_classes,
                                        num_models or self.num_models, self.config.model_width)
        model(tf.zeros([1, *self.dataset.input_shape]), is_training=False)
        return model

    def _variable_rule(self, variable: tf.Variable) -> tuple[float, float]:
        """Every variable decays; batch-norm offsets learn `BIAS_LR_SCALE` times faster."""
        if any(variable is norm.offset for norm in self.model.batch_norms()):
            return BIAS_LR_SCALE, self.config.weight_decay / BIAS_LR_SCALE
        return 1.0, self.config.weight_decay

    def _moving_statistics(self) -> list[tf.Variable]:
        return [v for norm in self.model.batch_norms()
                for v in (norm.moving_mean, norm.moving_variance)]

    def _moving(self, index: int, moving: tf.Tensor | None, epoch: tf.Tensor
                ) -> tf.Tensor | None:
        if not self._whitening_bias[index]:
            return moving
        training = tf.fill([self.num_models], epoch < WHITEN_BIAS_EPOCHS)
        return training if moving is None else moving & training

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        images = {}  # whitening images per distinct subset (padding repeats the last)
        for subset in subsets:
            if id(subset) not in images:
                images[id(subset)] = self.dataset.x_train[np.sort(subset)[:WHITENING_IMAGES]]
        self.model.initialize([np.random.default_rng(s) for s in init_seeds],
                              [images[id(s)] for s in subsets])
        for average in self._averages:
            average.assign(tf.zeros_like(average))
        self._averaging_started.assign(tf.zeros_like(self._averaging_started))

    def _after_step(self, step: tf.Tensor, active: tf.Tensor, epoch: tf.Tensor,
                    total_steps: tf.Tensor) -> None:
        """The lookahead averaging, every `LOOKAHEAD_EVERY` steps from its start epoch."""
        count = step + 1  # optimizer steps taken so far
        averaging = (active & (epoch >= LOOKAHEAD_START_EPOCH)
                     & (count % LOOKAHEAD_EVERY == 0))
        first = averaging & ~self._averaging_started
        decay = lookahead_decay(count, total_steps)
        for variable, average in zip(self._averaged, self._averages, strict=True):
            new_average, new_value = lookahead_update(average, variable,
                                                      _per_model(decay, variable))
            average.assign(tf.where(_per_model(first, variable), variable,
                                    tf.where(_per_model(averaging, variable), new_average,
                                             average)))
            variable.assign(tf.where(_per_model(averaging & ~first, variable), new_value,
                                     variable))
        self._averaging_started.assign(self._averaging_started | averaging)

    def _after_epoch(self) -> None:
        """Every model whose averaging has started takes its averaged weights."""
        for variable, average in zip(self._averaged, self._averages, strict=True):
            variable.assign(tf.where(_per_model(self._averaging_started, variable), average,
                                     variable))


_per_model = core._per_model
