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

The airbench94 network (`--model=airbench`) has its own `airbench.AirbenchTrainer`
(K runs at once with grouped convolutions); `make_trainer` picks it.

All return, per run, predictions on the whole train and test splits: correctness,
the max-margin (correct logit minus the largest other logit) and the log-odds margin
(correct logit minus the logsumexp of the other logits).

Precision (`TrainConfig.precision`): ``float32``, or ``mixed_bfloat16`` /
``mixed_float16``, where variables stay float32 (the master weights) and the forward
and backward passes of the training step compute in the 16-bit type: images are cast
on entry and every module except batch normalization reads its variables cast
(`compute_precision`, a `snt.custom_variable_getter`); batch normalization gets
16-bit activations but float32 scale, offset and statistics (the fused kernel's
mixed mode), and logits and loss are float32. ``mixed_float16`` scales the loss
dynamically (`DynamicLossScale`). Predictions are always computed in float32, so a
checkpoint restored by ``demo.py`` reproduces the recorded arrays.

Published recipes (`RECIPES`, `apply_recipe`): the settings `small_inception` and
`airbench` are meant to be trained with; ``train.py`` applies them by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.data import augment as augment_lib
from heldout.data.dataset import Dataset
from heldout.models import ensemble as models_lib
from heldout.models.predict import (  # noqa: F401
    Predictions,
    predict_in_chunks,
    prediction_arrays,
)

LR_SCHEDULES = ("cosine", "linear", "constant")  # decays after a warm-up from zero
# All schedules: those, and airbench94's "triangle": linear from TRIANGLE_START * peak at
# step 0 to the peak at the end of warm-up, then linear to TRIANGLE_END * peak at the end.
ALL_LR_SCHEDULES = (*LR_SCHEDULES, "triangle")
TRIANGLE_START = 0.2
TRIANGLE_END = 0.07

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
                  "mixed_float16": tf.float16}
# Stateless-seed stream of a run's alternating-flip phase (steps use streams 0, 1, ...).
FLIP_PHASE_STREAM = 2**31 - 1


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
    lr_schedule: str = "cosine"  # decay after warm-up: one of ALL_LR_SCHEDULES
    warmup_epochs: float = 1.0  # linear warm-up from 0 to learning_rate
    label_smoothing: float = 0.0  # weight of the uniform distribution in the targets
    augment: str = "none"  # batch augmentation: one of augment.AUGMENTATIONS
    checkpoint_every: int = 0  # with checkpoints: also save every this many epochs (TracIn)
    models_at_once: int = 250  # K: small models trained together in one program
    xla: bool = True  # compile the training program with XLA
    precision: str = "float32"  # compute type of training steps: one of PRECISIONS
    test_time_flip: bool = False  # record predictions averaged with the mirrored image's

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
        if self.lr_schedule not in ALL_LR_SCHEDULES:
            raise ValueError(f"--lr_schedule={self.lr_schedule!r}: expected one of "
                             f"{', '.join(ALL_LR_SCHEDULES)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint_every={self.checkpoint_every}: expected >= 0")
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision={self.precision}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        if self.model in models_lib.ENSEMBLE_MODELS and self.precision != "float32":
            raise ValueError(f"--precision={self.precision}: the K-at-once models "
                             f"({', '.join(models_lib.ENSEMBLE_MODELS)}) train in float32; "
                             "mixed precision is for small_inception, resnet50 and airbench")
        if self.model in models_lib.ENSEMBLE_MODELS and self.test_time_flip:
            raise ValueError(f"--test_time_flip: only for image models (small_inception, "
                             f"resnet50, airbench), not --model={self.model}")

    @property
    def one_model_at_a_time(self) -> bool:
        """Whether the model trains one run per program (`SingleModelTrainer`)."""
        return self.model in models_lib.SINGLE_MODELS


@contextlib.contextmanager
def compute_precision(model: tf.Module, precision: str,
                      keep_float32: tuple[type, ...] = (snt.BaseBatchNorm,)
                      ) -> Iterator[tf.DType]:
    """Makes `model` compute in the 16-bit type of a mixed `precision` while active.

    Every module of `model` except those of the `keep_float32` types (and their
    submodules: batch normalization and its moving averages) reads its float32
    variables cast to the compute type, so gradients still flow to the float32
    variables. Active while a `tf.function` traces the call. Yields the compute type,
    to cast the inputs with.
    """
    dtype = COMPUTE_DTYPES[precision]
    if dtype == tf.float32:
        yield dtype
        return
    kept = set()
    for module in (model, *model.submodules):
        if isinstance(module, keep_float32):
            kept.update(id(m) for m in (module, *module.submodules))
    cast = [m for m in (model, *model.submodules) if id(m) not in kept]

    def getter(variable: tf.Variable) -> tf.Tensor:
        return tf.cast(variable, dtype) if variable.dtype == tf.float32 else variable

    with snt.custom_variable_getter(getter, instances=cast):
        yield dtype


class DynamicLossScale:
    """Dynamic loss scaling for float16 training, one scale per model of a group.

    The loss is multiplied by the scale before differentiation and the gradients
    divided by it after, so small float16 gradients do not flush to zero. A step
    whose gradients are not finite is skipped and the scale halved; after
    `GROWTH_INTERVAL` finite steps in a row the scale doubles. Disabled (scale 1, no
    checks) for float32 and bfloat16, whose exponent range needs none.
    """

    INITIAL = 2.0 ** 15
    GROWTH_INTERVAL = 2000  # optimizer steps
    FACTOR = 2.0

    def __init__(self, enabled: bool, num_models: int = 1):
        self.enabled = enabled
        self.scale = tf.Variable(tf.fill([num_models], self.INITIAL if enabled else 1.0),
                                 trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(tf.zeros([num_models], tf.int32), trainable=False,
                                      name="loss_scale_good_steps")

    def reset(self) -> None:
        self.scale.assign(tf.fill(tf.shape(self.scale), self.INITIAL if self.enabled else 1.0))
        self.good_steps.assign(tf.zeros_like(self.good_steps))

    def scale_loss(self, losses: tf.Tensor) -> tf.Tensor:
        """The scalar to differentiate: per-model losses ``[K]`` scaled and summed."""
        return tf.reduce_sum(losses * self.scale if self.enabled else losses)

    def unscale(self, grads: Sequence[tf.Tensor], model_axis: bool
                ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Gradients divided by the scale, and which models' are all finite (bool ``[K]``).

        Args:
            grads: gradients of `scale_loss`.
            model_axis: whether every gradient has the models on its leading axis (else
                all belong to one model).
        """
        if not self.enabled:
            return list(grads), tf.ones(tf.shape(self.scale), tf.bool)
        if model_axis:
            grads = [g / tf.reshape(self.scale, [-1] + [1] * (len(g.shape) - 1))
                     for g in grads]
            finite = tf.reduce_all(tf.stack([
                tf.reduce_all(tf.math.is_finite(tf.reshape(g, [tf.shape(g)[0], -1])), axis=1)
                for g in grads]), axis=0)
        else:
            grads = [g / self.scale[0] for g in grads]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])[None]
        return grads, finite

    def update(self, finite: tf.Tensor) -> None:
        """Halves the scale of models with non-finite gradients, grows the others'."""
        if not self.enabled:
            return
        good = tf.where(finite, self.good_steps + 1, 0)
        grow = good >= self.GROWTH_INTERVAL
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * self.FACTOR, self.scale),
                                   tf.maximum(self.scale / self.FACTOR, 1.0)))
        self.good_steps.assign(tf.where(grow, 0, good))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A model saved during training (`TrainConfig.checkpoint_every`), as TracIn needs it."""

    epoch: int  # epochs completed
    steps: int  # optimizer steps taken
    learning_rate: float  # mean learning rate over the steps of that epoch
    model: tf.Module


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One model after training: its predictions on the whole train and test splits."""

    train: Predictions
    test: Predictions
    steps: int  # optimizer steps taken
    model: tf.Module | None = None  # the single model, if exported for checkpoints
    snapshots: tuple[Snapshot, ...] = ()  # models during training, if exported
    test_accuracy_tta: float | None = None  # with flip test-time augmentation (airbench)


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
        snapshots: list[list[Snapshot]] = [[] for _ in range(num_runs)]
        for epoch in range(config.epochs):
            batches = _epoch_batches(subsets, order_rngs, int(steps.max()), config.batch_size)
            self._train_steps(tf.constant(batches), tf.constant(epoch, tf.int32),
                              tf.constant(steps), tf.constant(warmup_steps))
            if export_models and _snapshot_due(config, epoch):
                for k in range(num_runs):
                    snapshots[k].append(Snapshot(
                        epoch + 1, int(steps[k]) * (epoch + 1),
                        epoch_learning_rate(config, epoch, int(steps[k]), int(warmup_steps[k])),
                        self.model.export(k, self.dataset.input_shape)))
            if on_epoch is not None:
                on_epoch(int(steps.max()))

        train = self.predict(self.dataset.x_train, self.dataset.y_train, save_logits)
        test = self.predict(self.dataset.x_test, self.dataset.y_test, save_logits)
        return [TrainedRun(
            train=train[k], test=test[k], steps=int(steps[k]) * config.epochs,
            model=self.model.export(k, self.dataset.input_shape) if export_models else None,
            snapshots=tuple(snapshots[k]),
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
        self._loss_scale = DynamicLossScale(config.precision == "mixed_float16")
        # XLA compiles one optimizer step; the loop over an epoch's steps stays a plain
        # TensorFlow loop (XLA:CPU runs convolutions inside its own loops ~50x slower).
        self._train_step = tf.function(self._train_step_eager, jit_compile=config.xla,
                                       reduce_retracing=True)
        self._train_epoch = tf.function(self._train_epoch_eager, reduce_retracing=True)
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
            self._loss_scale.reset()
            steps = (self.steps_per_epoch(len(subset)) if steps_per_epoch is None
                     else int(steps_per_epoch[k]))
            warmup = int(round(self.config.warmup_epochs * steps))
            order_rng = np.random.default_rng(order_seed)
            augment_seed = order_rng.integers(0, 2**31 - 1, size=2)
            snapshots = []
            for epoch in range(self.config.epochs):
                batches = _epoch_batches([subset], [order_rng], steps, self.config.batch_size)
                self._train_epoch(tf.constant(batches[:, 0]), tf.constant(epoch, tf.int32),
                                  tf.constant(steps, tf.int32), tf.constant(warmup, tf.int32),
                                  tf.constant(augment_seed, tf.int32))
                if export_models and _snapshot_due(self.config, epoch):
                    snapshots.append(Snapshot(
                        epoch + 1, steps * (epoch + 1),
                        epoch_learning_rate(self.config, epoch, steps, warmup),
                        self._copy_model()))
                if on_epoch is not None:
                    on_epoch(steps)
            train = predict_in_chunks(self._logits, self.dataset.x_train, self.dataset.y_train,
                                      self.eval_batch_size, save_logits)[0]
            test = predict_in_chunks(self._logits, self.dataset.x_test, self.dataset.y_test,
                                     self.eval_batch_size, save_logits)[0]
            results.append(TrainedRun(train=train, test=test, steps=steps * self.config.epochs,
                                      model=self._copy_model() if export_models else None,
                                      snapshots=tuple(snapshots)))
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
        logits = tf.cast(self.model(images, is_training=False), tf.float32)
        if self.config.test_time_flip:
            mirrored = self.model(tf.reverse(images, axis=[2]), is_training=False)
            logits = 0.5 * (logits + tf.cast(mirrored, tf.float32))
        return logits[None]

    def _train_epoch_eager(self, batches: tf.Tensor, epoch: tf.Tensor, steps_per_epoch: tf.Tensor,
                           warmup_steps: tf.Tensor, augment_seed: tf.Tensor) -> None:
        """One epoch over ``batches[steps, batch_size]`` of training indices."""
        phase = None
        if self.config.augment in augment_lib.ALTERNATING:
            phase = augment_lib.flip_phase(
                augment_lib.fold_in(augment_seed, FLIP_PHASE_STREAM),
                self.dataset.num_train)
        for i in tf.range(tf.shape(batches)[0]):
            self._train_step(batches[i], epoch * steps_per_epoch + i, steps_per_epoch,
                             warmup_steps, augment_seed, epoch, phase)

    def _train_step_eager(self, indices: tf.Tensor, step: tf.Tensor, steps_per_epoch: tf.Tensor,
                          warmup_steps: tf.Tensor, augment_seed: tf.Tensor, epoch: tf.Tensor,
                          phase: tf.Tensor | None) -> None:
        """Optimizer step `step` (0-based, of the run) on training indices ``[batch_size]``."""
        config = self.config
        num_classes = self.dataset.num_classes
        total_steps = steps_per_epoch * config.epochs
        images = tf.gather(self._x_train, indices)
        flips = (None if phase is None
                 else augment_lib.alternating_flips(tf.gather(phase, indices), epoch))
        images = augment_lib.augment(
            images, augment_lib.fold_in(augment_seed, step),
            config.augment, flips)
        targets = tf.one_hot(tf.gather(self._y_train, indices), num_classes)
        targets = targets * (1.0 - config.label_smoothing) + \
            config.label_smoothing / num_classes
        with tf.GradientTape() as tape:
            with compute_precision(self.model, config.precision) as dtype:
                logits = self.model(tf.cast(images, dtype), is_training=True)
            logits = tf.cast(logits, tf.float32)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
            scaled_loss = self._loss_scale.scale_loss(loss[None])
        grads, finite = self._loss_scale.unscale(tape.gradient(scaled_loss, self._trainable),
                                                 model_axis=False)
        self._loss_scale.update(finite)
        lr = learning_rate_at(step, total_steps, warmup_steps, config.learning_rate,
                              config.lr_schedule)
        for variable, velocity, grad, decay in zip(
                self._trainable, self._velocity, grads, self._decays, strict=True):
            if decay:
                grad += config.weight_decay * variable
            new_velocity = config.momentum * velocity + grad
            update = grad + config.momentum * new_velocity if config.nesterov else new_velocity
            if self._loss_scale.enabled:  # a step with overflowing gradients is skipped
                new_velocity = tf.where(finite[0], new_velocity, velocity)
                update = tf.where(finite[0], update, tf.zeros_like(update))
            velocity.assign(new_velocity)
            variable.assign_sub(lr * update)


def _snapshot_due(config: TrainConfig, epoch: int) -> bool:
    """Whether a model is saved after 0-based `epoch` (the final model is saved anyway)."""
    done = epoch + 1
    return bool(config.checkpoint_every) and done % config.checkpoint_every == 0 \
        and done < config.epochs


def epoch_learning_rate(config: TrainConfig, epoch: int, steps_per_epoch: int,
                        warmup_steps: int) -> float:
    """Mean learning rate over the optimizer steps of 0-based `epoch` (TracIn's weight)."""
    first = epoch * steps_per_epoch
    rates = learning_rate_at(tf.range(first, first + steps_per_epoch),
                             steps_per_epoch * config.epochs, warmup_steps,
                             config.learning_rate, config.lr_schedule)
    return float(tf.reduce_mean(rates))


def learning_rate_at(step: tf.Tensor, total_steps: tf.Tensor, warmup_steps: tf.Tensor,
                     peak: float, schedule: str) -> tf.Tensor:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.

    Warm-up rises linearly to `peak` over `warmup_steps` (from ``peak / warmup_steps``,
    or for ``triangle`` from ``TRIANGLE_START * peak``); then ``cosine``, ``linear``
    (to zero), ``constant``, or ``triangle`` (linear to ``TRIANGLE_END * peak``).
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
    elif schedule == "triangle":
        warming = peak * (TRIANGLE_START + (1.0 - TRIANGLE_START) * step / tf.maximum(warmup, 1.0))
        decayed = peak * (1.0 + (TRIANGLE_END - 1.0) * progress)
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
