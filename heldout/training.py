"""Training K models at once, each on its own subset with its own batches.

One `EnsembleTrainer` holds one compiled TensorFlow program for a fixed number of
models K. It is reused for every group of K runs: variables and optimizer state are
re-assigned, not re-created, so the program is traced and compiled once per process.
Each model sees only its own training subset, in its own shuffled order, and starts
from weights drawn from its own run seed, so a run's result does not depend on which
runs share its group.

Optimizer: SGD with (heavy-ball) momentum and L2 weight decay on weights (not biases),
learning rate warmed up linearly and then decayed by the chosen schedule, all per
optimizer step. The loss is each model's mean cross-entropy, summed over models, so
every model gets exactly the gradient it would get if trained alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from heldout import models as models_lib
from heldout.data import Dataset

LR_SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every run of an experiment is trained."""

    model: str = "mlp"  # a name in models.ENSEMBLE_MODELS
    epochs: int = 20  # passes over each run's own subset
    batch_size: int = 64  # examples per model per optimizer step
    learning_rate: float = 0.1  # peak learning rate, per optimizer step
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 coefficient on weights, added to the gradient
    lr_schedule: str = "cosine"  # decay after warm-up: one of LR_SCHEDULES
    warmup_epochs: float = 1.0  # linear warm-up from 0 to learning_rate
    models_at_once: int = 250  # K: models trained together in one program
    xla: bool = True  # compile the training program with XLA

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate,
                    "models_at_once": self.models_at_once}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"--{name}={value}: expected a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum={self.momentum}: expected a number in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay={self.weight_decay}: expected >= 0")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"--warmup_epochs={self.warmup_epochs}: expected a number "
                             f"in [0, epochs={self.epochs}]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr_schedule={self.lr_schedule!r}: expected one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.model not in models_lib.ENSEMBLE_MODELS:
            models_lib.make_ensemble(self.model, 1, 1)  # raises the ValueError


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What one trained model predicts on one split, for every example of the split."""

    correctness: np.ndarray  # bool [num_examples]
    margin: np.ndarray  # float32 [num_examples]: correct logit minus largest other
    logits: np.ndarray | None = None  # float32 [num_examples, num_classes], if asked


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One model after training: its predictions on the whole train and test splits."""

    train: Predictions
    test: Predictions
    steps: int  # optimizer steps taken
    model: tf.Module | None = None  # the single model, if exported for checkpoints


class EnsembleTrainer:
    """Trains groups of `config.models_at_once` runs on one data set with one program."""

    def __init__(self, dataset: Dataset, config: TrainConfig, eval_batch_size: int = 512):
        self.dataset = dataset
        self.config = config
        self.num_models = config.models_at_once
        self.eval_batch_size = eval_batch_size
        self.model = models_lib.make_ensemble(config.model, dataset.num_classes,
                                              self.num_models)
        self._x_train = tf.constant(dataset.x_train)
        self._y_train = tf.constant(dataset.y_train, tf.int32)
        self.model(tf.zeros([1, 1, *dataset.input_shape]))  # creates the variables
        self._variables = list(self.model.trainable_variables)
        self._velocity = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._variables]
        self._decays = [0.0 if v.name.split("/")[-1].startswith("b") else 1.0
                        for v in self._variables]
        self._train_steps = tf.function(self._train_steps_eager, jit_compile=config.xla,
                                        reduce_retracing=True)
        self._logits = tf.function(self._logits_eager, jit_compile=config.xla)

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch: Callable[[int], None] | None = None) -> list[TrainedRun]:
        """Trains one group of up to K runs and predicts on both splits.

        Args:
            subsets: per run, the sorted training indices it trains on.
            init_seeds: per run, the seed of its initial weights.
            order_seeds: per run, the seed of its batch order.
            save_logits: also return every model's logits.
            export_models: also return each run as a single Sonnet model (for checkpoints).
            steps_per_epoch: per run, optimizer steps per epoch; by default enough to
                visit its subset once (`steps_per_epoch(len(subset))`). Designs that
                compare subsets of different sizes at equal steps set it.
            on_epoch: called with the number of optimizer steps after every epoch.

        Returns:
            One `TrainedRun` per given subset, in order.
        """
        num_runs = len(subsets)
        if not 0 < num_runs <= self.num_models:
            raise ValueError(f"a group holds 1 to {self.num_models} runs, got {num_runs}")
        # Pad a short group with copies of its last run so the compiled program fits.
        padding = self.num_models - num_runs
        subsets = list(subsets) + [subsets[-1]] * padding
        init_seeds = list(init_seeds) + [init_seeds[-1]] * padding
        order_seeds = list(order_seeds) + [order_seeds[-1]] * padding
        order_rngs = [np.random.default_rng(s) for s in order_seeds]
        self._reset([np.random.default_rng(s) for s in init_seeds])

        config = self.config
        steps = np.array([self.steps_per_epoch(len(s)) for s in subsets], np.int32)
        if steps_per_epoch is not None:
            steps[:num_runs] = steps_per_epoch
            steps[num_runs:] = steps[num_runs - 1]
        warmup_steps = np.round(config.warmup_epochs * steps).astype(np.int32)
        for epoch in range(config.epochs):
            batches = _epoch_batches(subsets, order_rngs, int(steps.max()), config.batch_size)
            self._train_steps(tf.constant(batches), tf.constant(epoch, tf.int32),
                              tf.constant(steps), tf.constant(warmup_steps))
            if on_epoch is not None:
                on_epoch(int(steps.max()))

        train = self.predict(self.dataset.x_train, self.dataset.y_train, save_logits)
        test = self.predict(self.dataset.x_test, self.dataset.y_test, save_logits)
        return [TrainedRun(
            train=Predictions(*(None if a is None else a[k] for a in train)),
            test=Predictions(*(None if a is None else a[k] for a in test)),
            steps=int(steps[k]) * config.epochs,
            model=self.model.export(k, self.dataset.input_shape) if export_models else None,
        ) for k in range(num_runs)]

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return math.ceil(subset_size / self.config.batch_size)

    def predict(self, x: np.ndarray, y: np.ndarray, save_logits: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Correctness ``[K, n]``, margins ``[K, n]`` and optionally logits ``[K, n, classes]``."""
        correctness, margins, all_logits = [], [], []
        size = self.eval_batch_size
        for start in range(0, len(y), size):
            chunk = x[start:start + size]
            padded = np.zeros((size, *chunk.shape[1:]), np.float32)
            padded[:len(chunk)] = chunk
            logits = self._logits(tf.constant(padded)).numpy()[:, :len(chunk)]
            labels = y[start:start + size]
            correct_logit = np.take_along_axis(logits, labels[None, :, None], axis=2)[..., 0]
            others = logits.copy()
            np.put_along_axis(others, labels[None, :, None], -np.inf, axis=2)
            margins.append(correct_logit - others.max(axis=2))
            correctness.append(logits.argmax(axis=2) == labels[None, :])
            if save_logits:
                all_logits.append(logits)
        return (np.concatenate(correctness, axis=1),
                np.concatenate(margins, axis=1).astype(np.float32),
                np.concatenate(all_logits, axis=1) if save_logits else None)

    def _reset(self, init_rngs: Sequence[np.random.Generator]) -> None:
        for variable, velocity in zip(self._variables, self._velocity, strict=True):
            variable.assign(models_lib.initial_values(variable, init_rngs))
            velocity.assign(tf.zeros_like(velocity))

    def _logits_eager(self, images: tf.Tensor) -> tf.Tensor:
        return self.model(images[None], is_training=False)

    def _train_steps_eager(self, batches: tf.Tensor, epoch: tf.Tensor,
                           steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor) -> None:
        """One epoch over ``batches[steps, K, batch_size]`` of training indices.

        Model k takes only its own ``steps_per_epoch[k]`` steps; in the remaining steps
        of the group its weights and momentum stay as they are, so its training is
        what it would be alone.
        """
        config = self.config
        total_steps = steps_per_epoch * config.epochs
        for i in tf.range(tf.shape(batches)[0]):
            indices = batches[i]
            images = tf.gather(self._x_train, indices)
            labels = tf.gather(self._y_train, indices)
            with tf.GradientTape() as tape:
                logits = self.model(images, is_training=True)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                loss = tf.reduce_sum(tf.reduce_mean(losses, axis=1))
            grads = tape.gradient(loss, self._variables)
            active = tf.cast(i < steps_per_epoch, tf.float32)  # [K]
            lr = active * learning_rate_at(epoch * steps_per_epoch + i, total_steps,
                                           warmup_steps, config.learning_rate,
                                           config.lr_schedule)
            for variable, velocity, grad, decay in zip(
                    self._variables, self._velocity, grads, self._decays, strict=True):
                if decay:
                    grad += config.weight_decay * variable
                per_model = [-1] + [1] * (len(variable.shape) - 1)
                keep = tf.reshape(active, per_model) > 0
                velocity.assign(tf.where(keep, config.momentum * velocity + grad, velocity))
                variable.assign_sub(tf.reshape(lr, per_model) * velocity)


def learning_rate_at(step: tf.Tensor, total_steps: tf.Tensor, warmup_steps: tf.Tensor,
                     peak: float, schedule: str) -> tf.Tensor:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.

    Works elementwise, so one call gives every model of a group its own rate.
    """
    step = tf.cast(step, tf.float32)
    total = tf.cast(total_steps, tf.float32)
    warmup = tf.cast(warmup_steps, tf.float32)
    warming = peak * (step + 1.0) / tf.maximum(warmup, 1.0)
    progress = (step - warmup) / tf.maximum(total - warmup, 1.0)
    if schedule == "cosine":
        decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif schedule == "linear":
        decayed = peak * (1.0 - progress)
    else:
        decayed = tf.fill([], tf.constant(peak, tf.float32))
    return tf.where(step < warmup, warming, decayed)


def _epoch_batches(subsets: Sequence[np.ndarray], rngs: Sequence[np.random.Generator],
                   steps: int, batch_size: int) -> np.ndarray:
    """Training indices ``[steps, K, batch_size]`` of one epoch.

    Model k visits its own subset in a fresh random order; when its subset does not
    fill ``steps * batch_size`` slots it continues from the start of that order, so
    every model takes the same number of steps and sees each of its examples at least
    once per epoch.
    """
    slots = steps * batch_size
    batches = np.empty((len(subsets), slots), np.int32)
    for k, (subset, rng) in enumerate(zip(subsets, rngs, strict=True)):
        order = subset[rng.permutation(len(subset))]
        batches[k] = order[np.arange(slots) % len(order)]
    return batches.reshape(len(subsets), steps, batch_size).transpose(1, 0, 2)
