"""Trains airbench94 (Keller Jordan's CIFAR-10 speed-run network) K runs at once.

The network lives in `heldout.models.airbench`; this module holds its training recipe,
the lookahead weight averaging and the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from heldout.data import augment as augment_lib
from heldout.data.dataset import Dataset
from heldout.models.airbench import (  # noqa: F401
    EVAL_BATCH_SIZE,
    WHITENING_IMAGES,
    Airbench,
    BatchNorm,
    input_statistics,
    whitening_filters,
)
from heldout.training import core as training

# --- Hyperparameters ------------------------------------------------------------------
# Optimizer: Nesterov SGD on the cross-entropy summed (not averaged) over the batch.
BATCH_SIZE = 1024  # examples per optimizer step
EPOCHS = 10  # passes over the run's subset (published: 9.9)
LEARNING_RATE = 11.5  # per 1024 examples, decoupled from momentum (airbench's unit)
MOMENTUM = 0.85  # Nesterov
WEIGHT_DECAY = 0.0153  # per 1024 examples, decoupled from the learning rate
BIAS_LR_SCALE = 64.0  # batch-norm offsets learn this many times faster (decay unscaled)
LABEL_SMOOTHING = 0.2  # weight of the uniform distribution in the targets
# Learning-rate schedule ("triangle"): from LR_START x the peak at step 0 up to the peak
# at LR_WARMUP_FRACTION of all steps, then linearly down to LR_END x the peak.
LR_START = training.TRIANGLE_START  # 0.2
LR_END = training.TRIANGLE_END  # 0.07
LR_WARMUP_FRACTION = 0.23  # of all optimizer steps
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
# Augmentation: reflect-pad 2 pixels and translate at random, flips alternating by epoch.
AUGMENT = "airbench"
# Network.

def sgd_learning_rate(learning_rate: float = LEARNING_RATE, momentum: float = MOMENTUM) -> float:
    """`learning_rate` (per 1024 examples, decoupled) as a rate per optimizer step.

    With Nesterov momentum and constant gradients a step moves ``1 + 1 / (1 - momentum)``
    gradients' worth, so airbench divides by that (and by 1024, as its loss is a sum).
    """
    return learning_rate / (1024 * (1 + 1 / (1 - momentum)))


def recipe() -> dict[str, object]:
    """The airbench94 recipe as `training.TrainConfig` values.

    ``learning_rate`` is per optimizer step on the summed loss and ``weight_decay`` the
    L2 coefficient added to the gradient (``WEIGHT_DECAY * BATCH_SIZE / LEARNING_RATE``),
    so that ``learning_rate * weight_decay`` is airbench's decoupled decay per step.
    """
    return {
        "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": sgd_learning_rate(),
        "momentum": MOMENTUM, "nesterov": True,
        "weight_decay": WEIGHT_DECAY * BATCH_SIZE / LEARNING_RATE,
        "lr_schedule": "triangle", "warmup_epochs": LR_WARMUP_FRACTION * EPOCHS,
        "label_smoothing": LABEL_SMOOTHING, "augment": AUGMENT, "models_at_once": 1,
    }


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


class AirbenchTrainer:
    """Trains groups of up to K = ``config.models_at_once`` airbench runs in one program.

    Same interface as `training.EnsembleTrainer`. Each run has its own subset, order,
    augmentation (from its order seed), initial weights and whitening (from its init
    seed and subset), weight averages and loss scale, so its result does not depend on
    the other runs of its group (up to float rounding of the grouped computation).

    Per optimizer step and run: gather its batch from the training set held on the
    device, augment it (`augment.augment`, alternating flips by example and epoch),
    take the summed label-smoothed cross-entropy, and update with Nesterov SGD: weight
    decay on every trainable variable, batch-norm offsets at `BIAS_LR_SCALE` times the
    rate with decay divided by it, the whitening bias frozen after `WHITEN_BIAS_EPOCHS`;
    then the lookahead averaging. ``config.learning_rate`` and ``config.weight_decay``
    are per optimizer step (see `recipe`), scheduled by ``config.lr_schedule``.
    """

    def __init__(self, dataset: Dataset, config: training.TrainConfig,
                 eval_batch_size: int = EVAL_BATCH_SIZE):
        if len(dataset.input_shape) != 3:
            raise ValueError(f"--model=airbench needs images [H, W, C], got examples of shape "
                             f"{dataset.input_shape}")
        self.dataset = dataset
        self.config = config
        self.num_models = config.models_at_once
        self.eval_batch_size = eval_batch_size
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        self.model = Airbench(dataset.num_classes, self.num_models, config.model_width,
                              grouped="native" if on_gpu else "split")
        self.model(tf.zeros([1, *dataset.input_shape]), is_training=False)
        self._x_train = tf.constant(dataset.x_train)
        self._y_train = tf.constant(dataset.y_train, tf.int32)
        self._trainable = list(self.model.trainable_variables)
        offsets = {norm.offset.ref() for norm in self.model.batch_norms()}
        self._roles = ["offset" if v.ref() in offsets
                       else "whitening_bias" if v is self.model.whiten.b else "weight"
                       for v in self._trainable]
        self._statistics = [v for norm in self.model.batch_norms()
                            for v in (norm.moving_mean, norm.moving_variance)]
        self._velocity = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._trainable]
        self._averaged = self._trainable + self._statistics
        self._averages = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._averaged]
        self._averaging_started = tf.Variable(tf.zeros([self.num_models], tf.bool),
                                              trainable=False)
        self._loss_scale = training.DynamicLossScale(config.precision == "mixed_float16",
                                                     self.num_models)
        # XLA compiles one optimizer step; the loop over an epoch's steps stays a plain
        # TensorFlow loop (XLA:CPU runs convolutions inside its own loops ~50x slower).
        self._train_step = tf.function(self._train_step_eager, jit_compile=config.xla,
                                       reduce_retracing=True)
        self._train_epoch = tf.function(self._train_epoch_eager, reduce_retracing=True)
        self._logits = tf.function(self._logits_eager, jit_compile=config.xla)
        self._logits_and_tta = tf.function(self._logits_and_tta_eager, jit_compile=config.xla)

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch: Callable[[int], None] | None = None) -> list[training.TrainedRun]:
        """Trains one group of up to K runs; arguments as `training.EnsembleTrainer.train`.

        Returns:
            One `training.TrainedRun` per subset, with ``test_accuracy_tta`` set.
        """
        num_runs = len(subsets)
        if not 0 < num_runs <= self.num_models:
            raise ValueError(f"a group holds 1 to {self.num_models} runs, got {num_runs}")
        padding = self.num_models - num_runs  # copies of the last run fill the program
        subsets = list(subsets) + [subsets[-1]] * padding
        init_seeds = list(init_seeds) + [init_seeds[-1]] * padding
        order_rngs = [np.random.default_rng(s)
                      for s in list(order_seeds) + [order_seeds[-1]] * padding]
        augment_seeds = np.stack([rng.integers(0, 2**31 - 1, size=2) for rng in order_rngs])
        self._reset(subsets, init_seeds)

        config = self.config
        steps = np.array([self.steps_per_epoch(len(s)) for s in subsets], np.int32)
        if steps_per_epoch is not None:
            steps[:num_runs] = steps_per_epoch
            steps[num_runs:] = steps[num_runs - 1]
        warmup_steps = np.round(config.warmup_epochs * steps).astype(np.int32)
        for epoch in range(config.epochs):
            batches = training._epoch_batches(subsets, order_rngs, int(steps.max()),
                                              config.batch_size)
            self._train_epoch(tf.constant(batches), tf.constant(epoch, tf.int32),
                              tf.constant(steps), tf.constant(warmup_steps),
                              tf.constant(augment_seeds, tf.int32))
            if on_epoch is not None:
                on_epoch(int(steps.max()))

        train = training.predict_in_chunks(
            self._logits_and_tta if config.test_time_flip else self._logits,
            self.dataset.x_train, self.dataset.y_train, self.eval_batch_size, save_logits)
        if config.test_time_flip:
            train = train[self.num_models:]
        test = training.predict_in_chunks(self._logits_and_tta, self.dataset.x_test,
                                          self.dataset.y_test, self.eval_batch_size, save_logits)
        plain, tta = test[:self.num_models], test[self.num_models:]
        recorded = tta if config.test_time_flip else plain
        return [training.TrainedRun(
            train=train[k], test=recorded[k], steps=int(steps[k]) * config.epochs,
            model=self.model.export(k, self.dataset.input_shape) if export_models else None,
            test_accuracy_tta=float(tta[k].correctness.mean()),
        ) for k in range(num_runs)]

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return math.ceil(subset_size / self.config.batch_size)

    def _reset(self, subsets: Sequence[np.ndarray],
               init_seeds: Sequence[np.random.SeedSequence]) -> None:
        images = {}  # whitening images per distinct subset (padding repeats the last)
        for subset in subsets:
            if id(subset) not in images:
                images[id(subset)] = self.dataset.x_train[np.sort(subset)[:WHITENING_IMAGES]]
        self.model.initialize([np.random.default_rng(s) for s in init_seeds],
                              [images[id(s)] for s in subsets])
        for variable in self._velocity + self._averages:
            variable.assign(tf.zeros_like(variable))
        self._averaging_started.assign(tf.zeros_like(self._averaging_started))
        self._loss_scale.reset()

    def _logits_eager(self, images: tf.Tensor) -> tf.Tensor:
        """Logits ``[K, n, classes]`` of every model, in float32."""
        return self.model(images[None], is_training=False)

    def _logits_and_tta_eager(self, images: tf.Tensor) -> tf.Tensor:
        """Plain logits of the K models, then the K flip-averaged ones: ``[2K, n, classes]``."""
        logits = self.model(images[None], is_training=False)
        mirrored = self.model(tf.reverse(images, axis=[2])[None], is_training=False)
        return tf.concat([logits, 0.5 * (logits + mirrored)], axis=0)

    def _train_epoch_eager(self, batches: tf.Tensor, epoch: tf.Tensor,
                           steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor,
                           augment_seeds: tf.Tensor) -> None:
        """One epoch over ``batches[steps, K, batch_size]`` of training indices.

        Model k takes only its ``steps_per_epoch[k]`` steps; in the others its weights,
        momentum, statistics and averages stay as they are. At the end every model
        whose averaging has started takes its averaged weights.
        """
        phases = None
        if self.config.augment in augment_lib.ALTERNATING:
            phases = tf.stack([augment_lib.flip_phase(augment_lib.fold_in(
                augment_seeds[k], training.FLIP_PHASE_STREAM), self.dataset.num_train)
                for k in range(self.num_models)])  # [K, num_train]
        for i in tf.range(tf.shape(batches)[0]):
            self._train_step(batches[i], i, epoch, steps_per_epoch, warmup_steps, augment_seeds,
                             phases)
        for variable, average in zip(self._averaged, self._averages, strict=True):
            variable.assign(tf.where(_per_model(self._averaging_started, variable), average,
                                     variable))

    def _train_step_eager(self, indices: tf.Tensor, i: tf.Tensor, epoch: tf.Tensor,
                          steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor,
                          augment_seeds: tf.Tensor, phases: tf.Tensor | None) -> None:
        """Step `i` of `epoch` on training indices ``[K, batch_size]``, then the averaging."""
        config = self.config
        k_models = self.num_models
        num_classes = self.dataset.num_classes
        total_steps = steps_per_epoch * config.epochs
        steps = epoch * steps_per_epoch + i  # [K], 0-based
        active = i < steps_per_epoch  # [K]
        images = tf.gather(self._x_train, indices)  # [K, batch, H, W, C]
        augmented = []
        for k in range(k_models):
            flips = None if phases is None else augment_lib.alternating_flips(
                tf.gather(phases[k], indices[k]), epoch)
            seed = augment_lib.fold_in(augment_seeds[k], steps[k])
            augmented.append(augment_lib.augment(images[k], seed, config.augment, flips))
        images = tf.stack(augmented)
        targets = tf.one_hot(tf.gather(self._y_train, indices), num_classes)
        targets = targets * (1.0 - config.label_smoothing) + \
            config.label_smoothing / num_classes
        statistics = [v.read_value() for v in self._statistics]
        with tf.GradientTape() as tape:
            with training.compute_precision(self.model, config.precision,
                                            keep_float32=(BatchNorm,)) as dtype:
                logits = self.model(tf.cast(images, dtype), is_training=True)
            logits = tf.cast(logits, tf.float32)
            losses = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(targets, logits),
                                   axis=1)  # [K]: summed over the batch, as published
            scaled_loss = self._loss_scale.scale_loss(losses)
        grads, finite = self._loss_scale.unscale(
            tape.gradient(scaled_loss, self._trainable), model_axis=True)
        self._loss_scale.update(finite | ~active)
        for variable, before in zip(self._statistics, statistics, strict=True):
            variable.assign(tf.where(_per_model(active, variable), variable, before))

        stepping = active & finite
        lr = training.learning_rate_at(steps, total_steps, warmup_steps,
                                       config.learning_rate, config.lr_schedule)
        for variable, velocity, grad, role in zip(
                self._trainable, self._velocity, grads, self._roles, strict=True):
            rate, decay, moving = lr, config.weight_decay, stepping
            if role == "offset":
                rate, decay = lr * BIAS_LR_SCALE, decay / BIAS_LR_SCALE
            elif role == "whitening_bias":
                moving = stepping & (epoch < WHITEN_BIAS_EPOCHS)
            grad = grad + decay * variable
            new_velocity = config.momentum * velocity + grad
            update = grad + config.momentum * new_velocity if config.nesterov else new_velocity
            keep = _per_model(moving, variable)
            velocity.assign(tf.where(keep, new_velocity, velocity))
            variable.assign(tf.where(keep, variable - _per_model(rate, variable) * update,
                                     variable))

        count = steps + 1  # optimizer steps taken so far
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


def _per_model(values: tf.Tensor, variable: tf.Variable) -> tf.Tensor:
    """``values[K]`` shaped to broadcast over a variable ``[K, ...]``."""
    return tf.reshape(values, [-1] + [1] * (len(variable.shape) - 1))
