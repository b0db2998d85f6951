"""The one training skeleton that every trainer kind runs.

`Trainer` holds, once for every model: group padding (a short group is filled with
copies of its last run, so one compiled program serves every group), steps per epoch
and warm-up, the epoch loop with checkpoint snapshots, augmentation of image batches,
label smoothing, precision and loss scaling, the SGD step with heavy-ball or Nesterov
momentum and weight decay, and prediction. The trainer kinds
(`heldout.models.registry.TRAINER_KINDS`) supply only what differs:

* `heldout.training.ensemble.EnsembleTrainer`: K small models in one program (stacked
  weights), the whole epoch loop compiled with XLA; with ``chunk_models`` the epoch
  program trains them M at a time (`Trainer._train_epoch_in_chunks`).
* `heldout.training.single.SingleModelTrainer`: one large model (batch normalization) at a
  time, re-initialized in place for every run; XLA compiles one step.
* `heldout.training.airbench.AirbenchTrainer`: K airbench94 networks side by side, with
  airbench's whitening, bias learning rate and lookahead averaging.

Each model sees only its own training subset, in its own shuffled order, starts from
weights drawn from its own run seed, and is augmented from its own seed, so a run's
result does not depend on which runs share its group. Model k takes only its own
``steps_per_epoch[k]`` steps; in the remaining steps of the group its weights, momentum
and statistics stay as they are.

Optimizer, per optimizer step: the loss is each model's mean (``loss_reduction = "sum"``:
summed) cross-entropy over its batch, against targets smoothed by ``label_smoothing``,
each example's loss times its run's weight for it (``example_weights``; 1
unless given, the mean still over the batch's slots), summed over models, so every
model gets exactly the gradient it would get alone. Then, per variable,
`momentum_step`: the gradient plus weight decay, velocity ``v <- momentum * v + g``,
and ``w <- w - lr * v`` (heavy-ball) or ``w <- w - lr * (g + momentum * v)``
(Nesterov). The learning rate is warmed up linearly
and then decayed by the schedule (`learning_rate_at`).

Weight decay, the one rule: a variable decays when Sonnet names it ``w`` (the weights
of linear and convolution layers); biases ``b``, batch-norm offsets and scales and
moving statistics do not. The airbench trainer keeps its published recipe instead:
every trainable variable decays, batch-norm offsets at ``1 / BIAS_LR_SCALE`` of the
coefficient and ``BIAS_LR_SCALE`` times the learning rate.

Precision (`TrainConfig.precision`): ``float32``, or ``mixed_bfloat16`` /
``mixed_float16``, where variables stay float32 (the master weights) and the forward
and backward passes of the training step compute in the 16-bit type: images are cast
on entry and every module except batch normalization reads its variables cast
(`compute_precision`, a `snt.custom_variable_getter`); batch normalization gets
16-bit activations but float32 scale, offset and statistics, and logits and loss are
float32. ``mixed_float16`` scales the loss dynamically (`DynamicLossScale`).
Predictions are always computed in float32, so a restored checkpoint reproduces the
recorded arrays.

Every trainer returns, per run, predictions on the whole train and test splits:
correctness, the max-margin and the log-odds margin (`heldout.models.predict`).
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
from heldout.errors import ParameterError
from heldout.models.predict import Predictions, predict_in_chunks
from heldout.training import losses as losses_lib
from heldout.training.config import COMPUTE_DTYPES, TRIANGLE_END, TRIANGLE_START, TrainConfig

# Stateless-seed stream of a run's alternating-flip phase (steps use streams 0, 1, ...).
FLIP_PHASE_STREAM = 2**31 - 1
# Spawn key that derives a run's augmentation seed from its order seed, without drawing
# from the order's generator (so batch orders do not depend on the augmentation).
AUGMENT_SPAWN_KEY = 0x61756700
# Up to this many models, augmentation is unrolled per model; above, a `tf.map_fn`.
_UNROLLED_AUGMENT_MODELS = 8


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
        if not self.enabled:  # every model's finite: as many as the gradients hold
            models = tf.shape(grads[0])[0] if model_axis else tf.shape(self.scale)[0]
            return list(grads), tf.ones([models], tf.bool)
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
    learning_rate: float  # mean learning rate over the steps since the previous snapshot
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
    final_learning_rate: float = float("nan")  # mean rate since the last snapshot (or start)


class Trainer:
    """The skeleton: trains groups of up to K runs on one data set with one program.

    Subclasses set the class attributes and override the hooks (`_build_model`,
    `_initialize`, and where they differ `_chunk_size`, `_apply`, `_export`, `_variable_rule`,
    `_moving_statistics`, `_moving`, `_after_step`, `_after_epoch`).
    """

    kind = ""  # the registry's trainer kind this class trains
    whole_epoch_xla = True  # XLA compiles the whole epoch loop (else one step)
    loss_reduction = "mean"  # of each model's per-example losses: "mean" or "sum"
    model_axis = True  # whether every variable has the K models on its leading axis
    reports_flip_accuracy = False  # also report flip-averaged test accuracy per run
    keep_float32: tuple[type, ...] = (snt.BaseBatchNorm,)  # modules kept float32 (mixed)
    default_eval_batch_size = 512
    takes_example_weights = True  # trains with per-example loss weights

    def __init__(self, dataset: Dataset, config: TrainConfig,
                 eval_batch_size: int | None = None):
        spec = config.spec
        if spec.trainer != self.kind:
            raise ValueError(f"model={config.model!r} is trained by the {spec.trainer!r} "
                             f"trainer, not {type(self).__name__}")
        images = len(dataset.input_shape) == 3
        if spec.needs_images and not images:
            raise ParameterError("model", "needs images [H, W, C], got examples of shape "
                                 f"{tuple(dataset.input_shape)}", config.model)
        if config.augment != "none" and not images:
            raise ParameterError("augment", "image augmentation needs images [H, W, C], got "
                                 f"examples of shape {tuple(dataset.input_shape)}",
                                 config.augment)
        self.dataset = dataset
        self.config = config
        self.eval_batch_size = eval_batch_size or self.default_eval_batch_size
        self.num_models = self._group_size()
        self.model = self._build_model()
        self._x_train = tf.constant(dataset.x_train)
        self._y_train = tf.constant(dataset.y_train, tf.int32)
        self._variables = list(self.model.trainable_variables)
        self._velocity = [tf.Variable(tf.zeros_like(v), trainable=False)
                          for v in self._variables]
        rules = [self._variable_rule(v) for v in self._variables]
        self._rate_scales = [scale for scale, _ in rules]
        self._decays = [decay for _, decay in rules]
        self._statistics = self._moving_statistics()
        self._loss_scale = DynamicLossScale(config.precision == "mixed_float16",
                                            self.num_models)
        # What an optimizer step trains: the whole group, or with chunks (`_chunk_size`) a
        # model of M models into which the epoch program loads each chunk in turn.
        self.chunk_models = self._chunk_size()
        self._step_model, self._step_variables, self._step_velocity = (
            self.model, self._variables, self._velocity)
        if self.chunk_models != self.num_models:
            if self.num_models % self.chunk_models or not self.whole_epoch_xla \
                    or self._statistics or self._loss_scale.enabled:
                raise ValueError(f"{type(self).__name__}: chunks of {self.chunk_models} "
                                 f"models need a group of a multiple of them (got "
                                 f"{self.num_models}), the whole epoch in one program, no "
                                 "moving statistics and no loss scaling")
            self._step_model = self._build_model(self.chunk_models)
            self._step_variables = list(self._step_model.trainable_variables)
            self._step_velocity = [tf.Variable(tf.zeros_like(v), trainable=False)
                                   for v in self._step_variables]
        # Programs are traced without AutoGraph (their loops are `tf.while_loop`s,
        # `_repeat`): converting every function a step calls took seconds per trainer.
        if self.whole_epoch_xla:
            self._step = self._train_step_eager
            self._train_epoch = tf.function(self._train_epoch_eager, jit_compile=config.xla,
                                            reduce_retracing=True, autograph=False)
        else:
            # XLA compiles one optimizer step; the loop over an epoch's steps stays a plain
            # TensorFlow loop (XLA:CPU runs convolutions inside its own loops ~50x slower).
            self._step = tf.function(self._train_step_eager, jit_compile=config.xla,
                                     reduce_retracing=True, autograph=False)
            self._train_epoch = tf.function(self._train_epoch_eager, reduce_retracing=True,
                                            autograph=False)
        self._one_step = None  # `step_program`, compiled when first asked for
        self._logits = tf.function(self._logits_eager, jit_compile=config.xla,
                                   autograph=False)
        self._logits_with_flip = tf.function(self._logits_with_flip_eager,
                                             jit_compile=config.xla, autograph=False)

    # --- hooks ----------------------------------------------------------------------

    def _group_size(self) -> int:
        """K, the runs of one program."""
        return self.config.models_at_once

    def _build_model(self, num_models: int | None = None) -> tf.Module:
        """The model the program trains (of `num_models` models, default K), its variables
        created."""
        raise NotImplementedError

    def _chunk_size(self) -> int:
        """M, the models an optimizer step trains at once: K (default), or a divisor of
        K with which the epoch program trains the group chunk by chunk."""
        return self.num_models

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        """Sets the model's variables to the initial values of the group's K runs."""
        raise NotImplementedError

    def _apply(self, images: tf.Tensor, is_training: bool,
               model: tf.Module | None = None) -> tf.Tensor:
        """Logits ``[K, batch, classes]`` of images ``[K|1, batch, ...]`` by `model`
        (default: the group's; a training step passes its step model)."""
        return (self.model if model is None else model)(images, is_training=is_training)

    def _export(self, k: int) -> tf.Module:
        """Model k of the group as a single model (what a checkpoint holds)."""
        return self.model.export(k, self.dataset.input_shape)

    def _variable_rule(self, variable: tf.Variable) -> tuple[float, float]:
        """(learning-rate multiplier, weight-decay coefficient) of a trainable variable.

        The one rule: variables named ``w`` decay by ``config.weight_decay``, the others
        (biases, batch-norm offsets and scales) do not; every rate is the scheduled one.
        """
        decays = variable.name.split("/")[-1].startswith("w")
        return 1.0, self.config.weight_decay if decays else 0.0

    def _moving_statistics(self) -> list[tf.Variable]:
        """Variables a training step changes besides the trainable ones (batch-norm
        statistics), restored for the models that take no step."""
        return []

    def _moving(self, index: int, moving: tf.Tensor | None, epoch: tf.Tensor
                ) -> tf.Tensor | None:
        """Which models update trainable variable `index` now (bool ``[K]``; None: all)."""
        del index, epoch
        return moving

    def _after_step(self, step: tf.Tensor, active: tf.Tensor, epoch: tf.Tensor,
                    total_steps: tf.Tensor) -> None:
        """Called after every optimizer step (``step``: 0-based, ``[K]``)."""
        del step, active, epoch, total_steps  # nothing by default

    def _after_epoch(self) -> None:
        """Called at the end of every epoch, inside the epoch program."""
        return  # nothing by default

    # --- training ---------------------------------------------------------------------

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch: Callable[[int], None] | None = None,
              example_weights: Sequence[np.ndarray] | None = None) -> list[TrainedRun]:
        """Trains one group of up to K runs and predicts on both splits.

        Args:
            subsets: per run, the sorted training indices it trains on.
            init_seeds: per run, the seed of its initial weights.
            order_seeds: per run, the seed of its batch order (and augmentation).
            save_logits: also return every model's logits.
            export_models: also return each run as a single Sonnet model (for
                checkpoints), and with ``config.checkpoint_every`` its snapshots.
            steps_per_epoch: per run, optimizer steps per epoch; by default enough to
                visit its subset once (`steps_per_epoch(len(subset))`). Designs that
                compare subsets of different sizes at equal steps set it.
            on_epoch: called with the number of optimizer steps after every epoch.
            example_weights: per run, a float loss weight per training example
                ``[num_train]`` (1 in, 0 dropped, in the same batch slots);
                None: all 1. Seeds, initial weights, batch order and augmentation do not
                depend on them.

        Returns:
            One `TrainedRun` per given subset, in order.

        Raises:
            ValueError: no runs, or more than K.
            ParameterError: `example_weights` of the wrong shape, not finite, or given
                to a trainer that does not take them.
        """
        num_runs = len(subsets)
        if not 0 < num_runs <= self.num_models:
            raise ValueError(f"a group holds 1 to {self.num_models} runs, got {num_runs}")
        weights = self._example_weights(example_weights, num_runs)
        config = self.config
        padding = self.num_models - num_runs
        subsets = list(subsets) + [subsets[-1]] * padding
        init_seeds = list(init_seeds) + [init_seeds[-1]] * padding
        order_seeds = list(order_seeds) + [order_seeds[-1]] * padding
        order_rngs = [np.random.default_rng(s) for s in order_seeds]
        augment_seeds = np.stack([augment_seed(s) for s in order_seeds])
        self._initialize(subsets, init_seeds)
        for velocity in self._velocity:
            velocity.assign(tf.zeros_like(velocity))
        self._loss_scale.reset()

        steps = np.array([self.steps_per_epoch(len(s)) for s in subsets], np.int32)
        if steps_per_epoch is not None:
            steps[:num_runs] = steps_per_epoch
            steps[num_runs:] = steps[num_runs - 1]
        warmup_steps = np.round(config.warmup_epochs * steps).astype(np.int32)
        phases = self.flip_phases(augment_seeds)
        # Every model takes a step at every step of the group: the program skips masking.
        all_active = bool((steps == steps.max()).all())
        snapshots: list[list[Snapshot]] = [[] for _ in range(num_runs)]
        last_snapshot = 0  # epochs completed at the previous snapshot

        rates: dict[tuple[int, int, int, int], float] = {}

        def stretch_rate(k: int, end_epoch: int) -> float:
            # Runs of a group mostly share their steps: each distinct stretch is computed once.
            key = (last_snapshot, end_epoch, int(steps[k]), int(warmup_steps[k]))
            if key not in rates:
                rates[key] = stretch_learning_rate(config, last_snapshot * key[2],
                                                   end_epoch * key[2], key[2], key[3])
            return rates[key]

        for epoch in range(config.epochs):
            batches = _epoch_batches(subsets, order_rngs, int(steps.max()), config.batch_size)
            self._train_epoch(tf.constant(batches), tf.constant(epoch, tf.int32),
                              tf.constant(steps), tf.constant(warmup_steps),
                              tf.constant(augment_seeds), phases, all_active,
                              **({} if weights is None else {"example_weights": weights}))
            if export_models and _snapshot_due(config, epoch):
                for k in range(num_runs):
                    snapshots[k].append(Snapshot(epoch + 1, int(steps[k]) * (epoch + 1),
                                                 stretch_rate(k, epoch + 1), self._export(k)))
                last_snapshot = epoch + 1
            if on_epoch is not None:
                on_epoch(int(steps.max()))

        train, test, flip_accuracy = self._predict_splits(save_logits)
        return [TrainedRun(
            train=train[k], test=test[k], steps=int(steps[k]) * config.epochs,
            model=self._export(k) if export_models else None,
            snapshots=tuple(snapshots[k]),
            test_accuracy_tta=None if flip_accuracy is None else flip_accuracy[k],
            final_learning_rate=stretch_rate(k, config.epochs),
        ) for k in range(num_runs)]

    def _example_weights(self, example_weights: Sequence[np.ndarray] | None,
                         num_runs: int) -> tf.Tensor | None:
        """The group's per-example loss weights ``float32 [K, num_train]`` (padded like
        the runs; all 1 when none are given), or None for a trainer that takes none."""
        num_train = self.dataset.num_train
        if not self.takes_example_weights:
            if example_weights is not None:
                raise ParameterError("example_weights", f"{type(self).__name__} trains "
                                     "without per-example loss weights")
            return None
        if example_weights is None:
            return tf.ones([self.num_models, num_train], tf.float32)
        weights = np.asarray(example_weights, np.float32)
        if weights.shape != (num_runs, num_train) or not np.isfinite(weights).all():
            raise ParameterError("example_weights", f"expected finite weights [{num_runs}, "
                                 f"{num_train}], got shape {weights.shape}")
        padding = np.repeat(weights[-1:], self.num_models - num_runs, axis=0)
        return tf.constant(np.concatenate([weights, padding]))

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return math.ceil(subset_size / self.config.batch_size)

    def predict(self, x: np.ndarray, y: np.ndarray, save_logits: bool = False
                ) -> list[Predictions]:
        """Predictions of every model of the group on ``x``, one `Predictions` per model."""
        return predict_in_chunks(self._logits, x, y, self.eval_batch_size, save_logits)

    def _predict_splits(self, save_logits: bool
                        ) -> tuple[list[Predictions], list[Predictions], list[float] | None]:
        """Train and test predictions of the K models, and their flip-averaged test
        accuracies when the trainer reports them."""
        data = self.dataset
        train = self.predict(data.x_train, data.y_train, save_logits)
        if not self.reports_flip_accuracy:
            return train, self.predict(data.x_test, data.y_test, save_logits), None
        both = predict_in_chunks(self._logits_with_flip, data.x_test, data.y_test,
                                 self.eval_batch_size, save_logits)
        plain, flipped = both[:self.num_models], both[self.num_models:]
        test = flipped if self.config.test_time_flip else plain
        return train, test, [float(p.correctness.mean()) for p in flipped]

    def flip_phases(self, augment_seeds: np.ndarray) -> tf.Tensor | None:
        """Per model, the alternating-flip phase of every training example ``[K, n]``."""
        if self.config.augment not in augment_lib.ALTERNATING:
            return None
        return tf.stack([augment_lib.flip_phase(
            augment_lib.fold_in(tf.constant(seed), FLIP_PHASE_STREAM), self.dataset.num_train)
            for seed in augment_seeds])

    def _logits_eager(self, images: tf.Tensor) -> tf.Tensor:
        """Logits ``[K, n, classes]`` in float32 (flip-averaged with ``test_time_flip``)."""
        logits = tf.cast(self._apply(images[None], is_training=False), tf.float32)
        if self.config.test_time_flip:
            mirrored = self._apply(tf.reverse(images, axis=[2])[None], is_training=False)
            logits = 0.5 * (logits + tf.cast(mirrored, tf.float32))
        return logits

    def _logits_with_flip_eager(self, images: tf.Tensor) -> tf.Tensor:
        """Plain logits of the K models, then the K flip-averaged ones: ``[2K, n, classes]``."""
        logits = tf.cast(self._apply(images[None], is_training=False), tf.float32)
        mirrored = tf.cast(self._apply(tf.reverse(images, axis=[2])[None], is_training=False),
                           tf.float32)
        return tf.concat([logits, 0.5 * (logits + mirrored)], axis=0)

    def _train_epoch_eager(self, batches: tf.Tensor, epoch: tf.Tensor,
                           steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor,
                           augment_seeds: tf.Tensor, phases: tf.Tensor | None,
                           all_active: bool = False,
                           example_weights: tf.Tensor | None = None) -> None:
        """One epoch over ``batches[steps, K, batch_size]`` of training indices.

        With `all_active` (every model takes every step) the steps skip the masks that
        keep idle models unchanged: the same numbers, less memory traffic.
        `example_weights` ``[K, num_train]``: each model's per-example loss weights
        (`_losses`; None: unweighted).
        """
        if self.chunk_models == self.num_models:
            _repeat(tf.shape(batches)[0], lambda i: self._step(
                batches[i], i, epoch, steps_per_epoch, warmup_steps, augment_seeds, phases,
                all_active, example_weights))
        else:
            self._train_epoch_in_chunks(batches, epoch, steps_per_epoch, warmup_steps,
                                        augment_seeds, phases, all_active, example_weights)
        self._after_epoch()

    def _train_epoch_in_chunks(self, batches: tf.Tensor, epoch: tf.Tensor,
                               steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor,
                               augment_seeds: tf.Tensor, phases: tf.Tensor | None,
                               all_active: bool, example_weights: tf.Tensor | None = None
                               ) -> None:
        """The epoch of `_train_epoch_eager` for K / M chunks of M models in turn.

        Each chunk's weights and velocities are loaded into the step model, trained for
        the whole epoch, and stored back: the working set of M models (weights,
        activations, gradients) stays in the processor's cache across the epoch's steps,
        where a step over all K models streams every tensor through memory. A chunk runs
        exactly the step a group of M models runs (`models_at_once` = M), so a run's
        arrays do not depend on the K its chunk belongs to.
        """
        size = self.chunk_models

        def train_chunk(chunk: tf.Tensor) -> None:
            rows = chunk * size + tf.range(size)
            for source, target in zip(self._variables + self._velocity,
                                      self._step_variables + self._step_velocity,
                                      strict=True):
                target.assign(tf.gather(source, rows))
            chunk_batches = tf.gather(batches, rows, axis=1)
            chunk_steps = tf.gather(steps_per_epoch, rows)
            chunk_warmup = tf.gather(warmup_steps, rows)
            chunk_seeds = tf.gather(augment_seeds, rows)
            chunk_phases = None if phases is None else tf.gather(phases, rows)
            chunk_weights = None if example_weights is None else tf.gather(
                example_weights, rows)
            _repeat(tf.shape(batches)[0], lambda i: self._step(
                chunk_batches[i], i, epoch, chunk_steps, chunk_warmup, chunk_seeds,
                chunk_phases, all_active, chunk_weights))
            for target, source in zip(self._variables + self._velocity,
                                      self._step_variables + self._step_velocity,
                                      strict=True):
                target.scatter_update(tf.IndexedSlices(source.read_value(), rows))

        _repeat(tf.constant(self.num_models // size), train_chunk)

    def _train_step_eager(self, indices: tf.Tensor, i: tf.Tensor, epoch: tf.Tensor,
                          steps_per_epoch: tf.Tensor, warmup_steps: tf.Tensor,
                          augment_seeds: tf.Tensor, phases: tf.Tensor | None,
                          all_active: bool = False,
                          example_weights: tf.Tensor | None = None) -> None:
        """Step `i` of `epoch` on training indices ``[K, batch_size]``."""
        images, labels = self.batch_inputs(indices, i, epoch, steps_per_epoch,
                                           augment_seeds, phases)
        weights = None if example_weights is None else tf.gather(
            example_weights, indices, batch_dims=1)
        self._train_step_on_batch(images, labels, i, epoch, steps_per_epoch, warmup_steps,
                                  all_active, weights)

    def batch_inputs(self, indices: tf.Tensor, i: tf.Tensor, epoch: tf.Tensor,
                     steps_per_epoch: tf.Tensor, augment_seeds: tf.Tensor,
                     phases: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        """Images (augmented as step `i` of `epoch` draws them) and int labels of the
        training indices ``[K, batch_size]``: what an optimizer step trains on."""
        images = tf.gather(self._x_train, indices)
        labels = tf.gather(self._y_train, indices)
        if self.config.augment != "none":
            step = epoch * steps_per_epoch + i  # [K], 0-based
            images = self._augment(images, indices, step, epoch, augment_seeds, phases)
        return images, labels

    def _train_step_on_batch(self, images: tf.Tensor, labels: tf.Tensor, i: tf.Tensor,
                             epoch: tf.Tensor, steps_per_epoch: tf.Tensor,
                             warmup_steps: tf.Tensor, all_active: bool = False,
                             weights: tf.Tensor | None = None) -> None:
        """Step `i` of `epoch` on a batch already gathered (and augmented): images
        ``[K, batch_size, ...]`` and int labels ``[K, batch_size]`` (streamed training
        feeds batches here directly), per-example loss weights ``[K, batch_size]`` or
        None."""
        config = self.config
        total_steps = steps_per_epoch * config.epochs
        step = epoch * steps_per_epoch + i  # [K], 0-based
        active = i < steps_per_epoch  # [K]
        statistics = [v.read_value() for v in self._statistics]
        with tf.GradientTape() as tape:
            with compute_precision(self._step_model, config.precision,
                                   self.keep_float32) as dtype:
                logits = self._apply(tf.cast(images, dtype), is_training=True,
                                     model=self._step_model)
            losses = self._losses(tf.cast(logits, tf.float32), labels, weights)  # [K]
            loss = self._loss_scale.scale_loss(losses)
        grads, finite = self._loss_scale.unscale(tape.gradient(loss, self._step_variables),
                                                 model_axis=self.model_axis)
        self._loss_scale.update(finite | ~active)
        if not all_active:
            for variable, before in zip(self._statistics, statistics, strict=True):
                variable.assign(tf.where(_per_model(active, variable), variable, before))
        lr = learning_rate_at(step, total_steps, warmup_steps, config.learning_rate,
                              config.lr_schedule)
        # None: every model moves (no mask needed).
        moving = None if all_active and not self._loss_scale.enabled else active & finite
        for index, (variable, velocity, grad) in enumerate(
                zip(self._step_variables, self._step_velocity, grads, strict=True)):
            scale = self._rate_scales[index]
            keep = self._moving(index, moving, epoch)
            momentum_step(variable, velocity, grad,
                          rate=_per_model(lr * scale if scale != 1.0 else lr, variable),
                          decay=self._decays[index], momentum=config.momentum,
                          nesterov=config.nesterov,
                          keep=None if keep is None else _per_model(keep, variable))
        self._after_step(step, active, epoch, total_steps)

    def parameter_step(self, parameters: Sequence[tf.Tensor], velocities: Sequence[tf.Tensor],
                       images: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
                       step: tf.Tensor, total_steps: tf.Tensor, warmup_steps: tf.Tensor
                       ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """One optimizer step of the group's K models as a pure function of tensors.

        The step `_train_step_on_batch` takes, from the same pieces (`_apply`, `_losses`
        with the per-example `weights`, `learning_rate_at`, the variable rules and
        `momentum_update`), on values standing in for the trainable variables
        (`substituted_variables`) instead of the variables themselves, so it can be
        differentiated with respect to the weights, parameters and velocities (the
        metagradients of `heldout.attribution.metagradient`). Float32 or float64 values;
        no loss scaling, moving statistics or idle models (trainers with these are not
        differentiated).

        Args:
            parameters, velocities: per trainable variable (in the order of
                ``model.trainable_variables``) its values ``[K, ...]`` and momenta.
            images: ``[K|1, batch, ...]`` already gathered and augmented (`batch_inputs`).
            labels, weights: ``[K, batch]``.
            step, total_steps, warmup_steps: 0-based optimizer step and the run's totals.

        Returns:
            The parameters and velocities after the step.
        """
        config = self.config
        with tf.GradientTape() as tape:
            tape.watch(parameters)
            with substituted_variables(self._variables, parameters):
                logits = self._apply(tf.cast(images, parameters[0].dtype), is_training=True)
            loss = tf.reduce_sum(self._losses(logits, labels, weights))
        grads = tape.gradient(loss, list(parameters))
        lr = tf.cast(learning_rate_at(step, total_steps, warmup_steps, config.learning_rate,
                                      config.lr_schedule), parameters[0].dtype)
        new_parameters, new_velocities = [], []
        for index, (value, velocity, grad) in enumerate(
                zip(parameters, velocities, grads, strict=True)):
            scale = self._rate_scales[index]
            value, velocity = momentum_update(
                value, velocity, grad, rate=lr * scale if scale != 1.0 else lr,
                decay=self._decays[index], momentum=config.momentum,
                nesterov=config.nesterov)
            new_parameters.append(value)
            new_velocities.append(velocity)
        return new_parameters, new_velocities

    def initial_parameters(self, subset: np.ndarray,
                           init_seed: np.random.SeedSequence) -> list[np.ndarray]:
        """A run's initial weights, per trainable variable ``[1, ...]`` (model 0 of a
        group all of whose models are that run)."""
        self._initialize([subset] * self.num_models, [init_seed] * self.num_models)
        return [v.numpy()[:1] for v in self._variables]

    def step_program(self) -> Callable[..., None]:
        """The trainer's own optimizer step (`_train_step_eager`: indices ``[K, batch]``,
        step in epoch, epoch, steps per epoch ``[K]``, warm-up steps ``[K]``, augmentation
        seeds ``[K, 2]``, flip phases, all-active, example weights ``[K, num_train]``) as
        a program of one step on the variables, compiled like `_train_epoch`'s. Stepped
        one at a time it reproduces `train` bit for bit (the metagradient engine replays
        runs with it)."""
        if self._one_step is None:
            self._one_step = tf.function(self._train_step_eager, jit_compile=self.config.xla,
                                         reduce_retracing=True, autograph=False)
        return self._one_step

    def load_state(self, parameters: Sequence[tf.Tensor], velocities: Sequence[tf.Tensor]
                   ) -> None:
        """Sets every model of the group to one state: per trainable variable its values
        and momenta ``[1, ...]``."""
        for variable, value in zip(self._variables + self._velocity,
                                   list(parameters) + list(velocities), strict=True):
            variable.assign(tf.broadcast_to(value, variable.shape))

    def model_state(self, k: int = 0) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Copies of model k's parameters and velocities, per variable ``[1, ...]``."""
        return ([tf.identity(v[k:k + 1]) for v in self._variables],
                [tf.identity(v[k:k + 1]) for v in self._velocity])

    def _losses(self, logits: tf.Tensor, labels: tf.Tensor,
                weights: tf.Tensor | None = None) -> tf.Tensor:
        """Each model's loss ``[K]`` from logits ``[K, batch, classes]`` and labels.

        With `weights` ``[K, batch]`` (per-example loss weights) each example's
        loss is multiplied by its weight before the reduction, and the mean still divides
        by the batch's slot count, as with all weights 1: a weight of 0 removes the
        example's gradient and leaves every other example's as it was (dividing by the
        sum of weights instead would rescale the others' and couple all weights).
        """
        smoothing = self.config.label_smoothing
        if smoothing:
            num_classes = logits.shape[-1]
            targets = tf.one_hot(labels, num_classes, dtype=logits.dtype) * (
                1.0 - smoothing) + smoothing / num_classes
            losses = losses_lib.cross_entropy(targets, logits)
        else:
            losses = losses_lib.sparse_cross_entropy(labels, logits)
        if weights is not None:
            losses = losses * tf.cast(weights, losses.dtype)
        if self.loss_reduction == "sum":
            return tf.reduce_sum(losses, axis=1)
        return tf.reduce_mean(losses, axis=1)

    def _augment(self, images: tf.Tensor, indices: tf.Tensor, step: tf.Tensor,
                 epoch: tf.Tensor, augment_seeds: tf.Tensor, phases: tf.Tensor | None
                 ) -> tf.Tensor:
        """Model k's batch ``images[k]`` augmented from its own seed and step."""
        kind = self.config.augment

        def one(k_images, k_indices, k_step, k_seed, k_phase=None):
            flips = None if k_phase is None else augment_lib.alternating_flips(
                tf.gather(k_phase, k_indices), epoch)
            return augment_lib.augment(k_images, augment_lib.fold_in(k_seed, k_step), kind,
                                       flips)

        parts = (images, indices, step, augment_seeds) + (() if phases is None else (phases,))
        if images.shape[0] <= _UNROLLED_AUGMENT_MODELS:
            return tf.stack([one(*(part[k] for part in parts))
                             for k in range(images.shape[0])])
        return tf.map_fn(lambda part: one(*part), parts, fn_output_signature=images.dtype)


@contextlib.contextmanager
def substituted_variables(variables: Sequence[tf.Variable], values: Sequence[tf.Tensor]
                          ) -> Iterator[None]:
    """While active, Sonnet modules read `values` in place of their `variables`
    (a `snt.custom_variable_getter`): a module applied as a pure function of tensors,
    as `Trainer.parameter_step` differentiates it."""
    by_variable = {v.ref(): value for v, value in zip(variables, values, strict=True)}

    def getter(variable: tf.Variable) -> tf.Tensor:
        return by_variable.get(variable.ref(), variable)

    with snt.custom_variable_getter(getter):
        yield


def run_batches(subset: np.ndarray, order_seed: np.random.SeedSequence, epochs: int,
                steps_per_epoch: int, batch_size: int) -> np.ndarray:
    """Training indices ``[epochs, steps_per_epoch, batch_size]`` of every step of one
    run: the batches `Trainer.train` draws for it (`_epoch_batches`), whatever group it
    trains in."""
    rng = np.random.default_rng(order_seed)
    return np.stack([_epoch_batches([subset], [rng], steps_per_epoch, batch_size)[:, 0]
                     for _ in range(epochs)])


def _repeat(count: tf.Tensor, body: Callable[[tf.Tensor], None]) -> None:
    """Calls ``body(i)`` for ``i = 0 .. count - 1``: one loop of the traced program
    (`tf.while_loop`; run eagerly, a Python loop). The body acts through variables."""
    def step(i: tf.Tensor) -> tuple[tf.Tensor]:
        body(i)
        return (i + 1,)

    tf.while_loop(lambda i: i < count, step, (tf.constant(0, tf.int32),))


def momentum_step(variable: tf.Variable, velocity: tf.Variable, grad: tf.Tensor,
                  rate: tf.Tensor, decay: float, momentum: float, nesterov: bool,
                  keep: tf.Tensor | None = None) -> None:
    """One SGD step with momentum on one variable: the update rule of every trainer.

    ``g = grad + decay * variable``; ``v <- momentum * v + g``; ``variable <- variable -
    rate * v`` (heavy-ball) or ``- rate * (g + momentum * v)`` (Nesterov). Where `keep`
    is false (models that take no step) variable and velocity stay as they are (None:
    every model steps).

    Args:
        rate, keep: learning rate and bool, broadcastable to the variable (``[K, 1, ...]``).
    """
    new_variable, new_velocity = momentum_update(variable, velocity, grad, rate, decay,
                                                 momentum, nesterov)
    if keep is None:
        velocity.assign(new_velocity)
        variable.assign(new_variable)
    else:
        velocity.assign(tf.where(keep, new_velocity, velocity))
        variable.assign(tf.where(keep, new_variable, variable))


def momentum_update(variable: tf.Tensor, velocity: tf.Tensor, grad: tf.Tensor,
                    rate: tf.Tensor, decay: float, momentum: float, nesterov: bool
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """The values `momentum_step` assigns: ``(new variable, new velocity)``, a pure
    function (what the metagradient engine differentiates, `heldout.attribution`)."""
    if decay:
        grad = grad + decay * variable
    new_velocity = momentum * velocity + grad
    update = grad + momentum * new_velocity if nesterov else new_velocity
    return variable - rate * update, new_velocity


def _per_model(values: tf.Tensor, variable: tf.Variable) -> tf.Tensor:
    """``values[K]`` shaped to broadcast over a variable ``[K, ...]`` (or a scalar)."""
    rank = len(variable.shape)
    return tf.reshape(values, [-1] + [1] * (rank - 1)) if rank else values[0]


def augment_seed(order_seed: np.random.SeedSequence) -> np.ndarray:
    """A run's augmentation seed ``int32 [2]``, derived from its order seed by spawn key."""
    derived = np.random.SeedSequence(order_seed.entropy,
                                     spawn_key=(*order_seed.spawn_key, AUGMENT_SPAWN_KEY))
    return np.random.default_rng(derived).integers(0, 2**31 - 1, size=2).astype(np.int32)


def _snapshot_due(config: TrainConfig, epoch: int) -> bool:
    """Whether a model is saved after 0-based `epoch` (the final model is saved anyway)."""
    done = epoch + 1
    return bool(config.checkpoint_every) and done % config.checkpoint_every == 0 \
        and done < config.epochs


def stretch_learning_rate(config: TrainConfig, first_step: int, end_step: int,
                          steps_per_epoch: int, warmup_steps: int) -> float:
    """Mean learning rate over optimizer steps ``first_step .. end_step - 1`` (0-based).

    TracIn weights a checkpoint by the mean rate of the whole stretch of steps since the
    previous checkpoint (or the start), not only of its last epoch.
    """
    rates = learning_rate_at(tf.range(first_step, end_step),
                             steps_per_epoch * config.epochs, warmup_steps,
                             config.learning_rate, config.lr_schedule)
    return float(tf.reduce_mean(tf.cast(rates, tf.float64)))


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
