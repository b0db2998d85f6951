"""Training runs: K small models at once, or one large model at a time.

Small models (`models.ENSEMBLE_MODELS`): one `EnsembleTrainer` holds one compiled
TensorFlow program for a fixed number of models K. It is reused for every group of K
runs: variables and optimizer state are re-assigned, not re-created, so the program is
traced and compiled once per process.
Each model sees only its own training subset, in its own shuffled order, and starts
from weights drawn from its own run seed, so a run's result does not depend on which
runs share its group.

Optimizer: SGD with (heavy-ball) momentum and L2 weight decay on weights (not biases),
learning rate warmed up linearly and then decayed by the chosen schedule, all per
optimizer step. The loss is each model's mean cross-entropy, summed over models, so
every model gets exactly the gradient it would get if trained alone.

Large models with batch normalization (`models.SINGLE_MODELS`: SmallInception,
ResNet-50): one `SingleModelTrainer` trains one run at a time with one compiled
program, re-initializing the same variables for every run; batches are gathered and
augmented on the device.

Both return, per run, predictions on the whole train and test splits: correctness,
the max-margin (correct logit minus the largest other logit) and the log-odds margin
(correct logit minus the logsumexp of the other logits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from heldout import augment as augment_lib
from heldout import models as models_lib
from heldout.data import Dataset

LR_SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every run of an experiment is trained."""

    model: str = "mlp"  # a name in models.ENSEMBLE_MODELS or models.SINGLE_MODELS
    model_width: float = 1.0  # channel multiplier of SINGLE_MODELS (1: published widths)
    epochs: int = 20  # passes over each run's own subset
    batch_size: int = 64  # examples per model per optimizer step
    learning_rate: float = 0.1  # peak learning rate, per optimizer step
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum instead of heavy-ball
    weight_decay: float = 5e-4  # L2 coefficient on weights, added to the gradient
    lr_schedule: str = "cosine"  # decay after warm-up: one of LR_SCHEDULES
    warmup_epochs: float = 1.0  # linear warm-up from 0 to learning_rate
    label_smoothing: float = 0.0  # weight of the uniform distribution in the targets
    augment: str = "none"  # batch augmentation: one of augment.AUGMENTATIONS
    models_at_once: int = 250  # K: small models trained together in one program
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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing={self.label_smoothing}: expected a number "
                             "in [0, 1)")
        if self.augment not in augment_lib.AUGMENTATIONS:
            raise ValueError(f"--augment={self.augment}: expected one of "
                             f"{', '.join(augment_lib.AUGMENTATIONS)}")
        if self.model not in models_lib.ENSEMBLE_MODELS | models_lib.SINGLE_MODELS:
            models_lib.make_ensemble(self.model, 1, 1)  # raises the ValueError
        if not self.model_width > 0:
            raise ValueError(f"--model_width={self.model_width}: expected a positive number")

    @property
    def one_model_at_a_time(self) -> bool:
        """Whether the model trains one run per program (`SingleModelTrainer`)."""
        return self.model in models_lib.SINGLE_MODELS


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What one trained model predicts on one split, for every example of the split."""

    correctness: np.ndarray  # bool [num_examples]
    margin: np.ndarray  # float32 [num_examples]: correct logit minus largest other
    logodds: np.ndarray  # float32 [num_examples]: correct logit minus logsumexp of others
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
            train=train[k], test=test[k], steps=int(steps[k]) * config.epochs,
            model=self.model.export(k, self.dataset.input_shape) if export_models else None,
        ) for k in range(num_runs)]

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return math.ceil(subset_size / self.config.batch_size)

    def predict(self, x: np.ndarray, y: np.ndarray, save_logits: bool = False
                ) -> list[Predictions]:
        """Predictions of every model of the group on ``x``, one `Predictions` per model."""
        return predict_in_chunks(self._logits, x, y, self.eval_batch_size, save_logits)

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


class SingleModelTrainer:
    """Trains runs of a large model (with batch normalization) one at a time.

    One model object and one compiled program serve every run: before each run the
    variables (weights, batch-norm statistics) are re-assigned the initial values that
    the run's seed gives a freshly built model, and the momentum is zeroed.
    """

    num_models = 1  # runs per program; `train` takes any number, one after another

    def __init__(self, dataset: Dataset, config: TrainConfig, eval_batch_size: int = 256):
        self.dataset = dataset
        self.config = config
        self.eval_batch_size = eval_batch_size
        self.model = self._build(seed=0)
        self._x_train = tf.constant(dataset.x_train)
        self._y_train = tf.constant(dataset.y_train, tf.int32)
        self._trainable = list(self.model.trainable_variables)
        self._velocity = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._trainable]
        self._decays = [v.name.split("/")[-1].startswith("w") for v in self._trainable]
        self._train_epoch = tf.function(self._train_epoch_eager, jit_compile=config.xla,
                                        reduce_retracing=True)
        self._logits = tf.function(self._logits_eager, jit_compile=config.xla)

    def _build(self, seed: int) -> tf.Module:
        """A new model whose initial weights depend on `seed` only, variables created."""
        tf.random.set_seed(seed)
        model = models_lib.make_single(self.config.model, self.dataset.num_classes,
                                       self.config.model_width)
        model(tf.zeros([1, *self.dataset.input_shape]), is_training=False)
        return model

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch: Callable[[int], None] | None = None) -> list[TrainedRun]:
        """Trains the given runs one after another; arguments as `EnsembleTrainer.train`."""
        results = []
        for k, (subset, init_seed, order_seed) in enumerate(
                zip(subsets, init_seeds, order_seeds, strict=True)):
            fresh = self._build(int(init_seed.generate_state(1)[0] % 2**31))
            for variable, initial in zip(self.model.variables, fresh.variables, strict=True):
                variable.assign(initial)
            for velocity in self._velocity:
                velocity.assign(tf.zeros_like(velocity))
            steps = (self.steps_per_epoch(len(subset)) if steps_per_epoch is None
                     else int(steps_per_epoch[k]))
            warmup = int(round(self.config.warmup_epochs * steps))
            order_rng = np.random.default_rng(order_seed)
            augment_seed = order_rng.integers(0, 2**31 - 1, size=2)
            for epoch in range(self.config.epochs):
                batches = _epoch_batches([subset], [order_rng], steps, self.config.batch_size)
                self._train_epoch(tf.constant(batches[:, 0]), tf.constant(epoch, tf.int32),
                                  tf.constant(steps, tf.int32), tf.constant(warmup, tf.int32),
                                  tf.constant(augment_seed, tf.int32))
                if on_epoch is not None:
                    on_epoch(steps)
            train = predict_in_chunks(self._logits, self.dataset.x_train, self.dataset.y_train,
                                      self.eval_batch_size, save_logits)[0]
            test = predict_in_chunks(self._logits, self.dataset.x_test, self.dataset.y_test,
                                     self.eval_batch_size, save_logits)[0]
            results.append(TrainedRun(train=train, test=test, steps=steps * self.config.epochs,
                                      model=self._copy_model() if export_models else None))
        return results

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return math.ceil(subset_size / self.config.batch_size)

    def _copy_model(self) -> tf.Module:
        copy = self._build(seed=0)
        for target, source in zip(copy.variables, self.model.variables, strict=True):
            target.assign(source)
        return copy

    def _logits_eager(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(images, is_training=False), tf.float32)[None]

    def _train_epoch_eager(self, batches: tf.Tensor, epoch: tf.Tensor, steps_per_epoch: tf.Tensor,
                           warmup_steps: tf.Tensor, augment_seed: tf.Tensor) -> None:
        """One epoch over ``batches[steps, batch_size]`` of training indices."""
        config = self.config
        num_classes = self.dataset.num_classes
        total_steps = steps_per_epoch * config.epochs
        for i in tf.range(tf.shape(batches)[0]):
            step = epoch * steps_per_epoch + i
            indices = batches[i]
            images = tf.gather(self._x_train, indices)
            images = augment_lib.augment(
                images, tf.random.experimental.stateless_fold_in(augment_seed, step),
                config.augment)
            targets = tf.one_hot(tf.gather(self._y_train, indices), num_classes)
            targets = targets * (1.0 - config.label_smoothing) + \
                config.label_smoothing / num_classes
            with tf.GradientTape() as tape:
                logits = tf.cast(self.model(images, is_training=True), tf.float32)
                loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
            grads = tape.gradient(loss, self._trainable)
            lr = learning_rate_at(step, total_steps, warmup_steps, config.learning_rate,
                                  config.lr_schedule)
            for variable, velocity, grad, decay in zip(
                    self._trainable, self._velocity, grads, self._decays, strict=True):
                if decay:
                    grad += config.weight_decay * variable
                velocity.assign(config.momentum * velocity + grad)
                update = grad + config.momentum * velocity if config.nesterov else velocity
                variable.assign_sub(lr * update)


def make_trainer(dataset: Dataset, config: TrainConfig
                 ) -> EnsembleTrainer | SingleModelTrainer:
    """The trainer for `config.model`: K at once for small models, else one at a time."""
    if config.one_model_at_a_time:
        return SingleModelTrainer(dataset, config)
    return EnsembleTrainer(dataset, config)


def predict_in_chunks(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray,
                      y: np.ndarray, chunk_size: int, save_logits: bool = False
                      ) -> list[Predictions]:
    """Predictions of K models from ``logits_fn(images[chunk]) -> [K, chunk, classes]``.

    Chunks are padded to `chunk_size` so a compiled `logits_fn` is traced once.
    """
    parts = []
    for start in range(0, len(y), chunk_size):
        chunk = x[start:start + chunk_size]
        padded = np.zeros((chunk_size, *chunk.shape[1:]), np.float32)
        padded[:len(chunk)] = chunk
        logits = np.asarray(logits_fn(tf.constant(padded)), np.float32)[:, :len(chunk)]
        parts.append((*prediction_arrays(logits, y[start:start + chunk_size]),
                      logits if save_logits else None))
    columns = list(zip(*parts, strict=True))
    correctness, margin, logodds = (np.concatenate(c, axis=1) for c in columns[:3])
    logits = np.concatenate(columns[3], axis=1) if save_logits else None
    return [Predictions(correctness=correctness[k], margin=margin[k], logodds=logodds[k],
                        logits=None if logits is None else logits[k])
            for k in range(correctness.shape[0])]


def prediction_arrays(logits: np.ndarray, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correctness, max-margin and log-odds margin of logits ``[K, n, classes]``, each ``[K, n]``.

    The max-margin is the correct logit minus the largest other logit (> 0 exactly when
    the prediction is right, ties aside); the log-odds margin is the correct logit minus
    the logsumexp of the other logits, the log of p(correct) / (1 - p(correct)).
    """
    logits = logits.astype(np.float64)
    index = np.broadcast_to(labels[None, :, None], (*logits.shape[:2], 1))
    correct_logit = np.take_along_axis(logits, index, axis=2)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, index, -np.inf, axis=2)
    largest_other = others.max(axis=2)
    logsumexp_others = largest_other + np.log(
        np.exp(others - largest_other[..., None]).sum(axis=2))
    correctness = logits.argmax(axis=2) == labels[None, :]
    return (correctness, (correct_logit - largest_other).astype(np.float32),
            (correct_logit - logsumexp_others).astype(np.float32))


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
