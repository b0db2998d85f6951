"""Exact metagradients: d f_j(theta_T(w)) / d w_i, stepping backwards through training.

A run of the deterministic trainer is a function of the per-example loss weights w
(``w_i = 1`` in, ``0`` dropped, the same batch slots, seed, initial weights,
batch order and augmentation draws). The metagradient ``g[i, j]`` is the derivative of
target j's log-odds margin after the last step with respect to ``w_i``; the predicted
effect of dropping a set S is ``-sum_{i in S} g[i, j]`` (MAGIC, Ilyas, Engstrom et al.
2025; REPLAY, Engstrom et al. 2025).

How, by reverse-mode differentiation of the training loop:

1. Replay the run forward with the trainer's own step program
   (`heldout.training.core.Trainer.step_program`, one step at a time on its variables:
   the recorded run bit for bit; in float64 its pure form below), keeping the state
   (parameters, velocities) of every step when they fit in ``memory_budget_bytes``,
   otherwise of every c-th step (c ~ sqrt(T)).
2. Start the adjoint at the gradient of each target's output at the final parameters
   (velocity adjoint 0), and step backwards: one vector-Jacobian product per optimizer
   step of the trainer's step as a pure function (`Trainer.parameter_step`: the model,
   the weighted and smoothed loss, the learning-rate schedule with warm-up, weight decay
   and heavy-ball or Nesterov momentum from the very pieces the trainer's step uses; the
   batches and augmentation draws of `Trainer.batch_inputs` and `core.run_batches`)
   carries the adjoints of (parameters, velocities) to the
   previous state and gives the cotangent of the batch's weights, scattered (summed)
   to the batch's example ids. A segment between kept states is first recomputed by
   deterministic replay from its first state: the same compiled program on the same
   inputs, so its states are the forward states bit for bit and the result does not
   depend on c (tested).
3. Many targets share one backward program the way K-at-once training shares one for K
   models: target j is model j of a K = J ensemble whose J models all hold the run's
   state, so one batched Hessian-vector product per step serves J adjoints. Targets come
   in batches of ``target_batch`` (all of a batch equal-sized, so one program is
   compiled).

Precision: float32 (the trainer's) or float64, for exactness checks against finite
differences (the same step in float64: initial weights and inputs are the float32
values, the arithmetic is float64). Mixed 16-bit training is refused, as are trainer
kinds other than the K-at-once small models (batch-norm statistics and airbench's
lookahead are not differentiated).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from heldout.attribution import gradients as gradients_lib
from heldout.attribution.config import MetagradientConfig
from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.progress import Progress
from heldout.store import designs, files, records
from heldout.store import experiment_info as info_lib
from heldout.store import runs as runs_lib
from heldout.training import core
from heldout.training.config import TrainConfig
from heldout.training.ensemble import EnsembleTrainer

PRECISIONS = {"float32": tf.float32, "float64": tf.float64}
OUTPUT = "logodds"  # the output f differentiated: the log-odds margin (LDS's output)
# The forward replay runs the trainer's smallest program (`ensemble._MIN_PROGRAM_MODELS`).
_FORWARD_MODELS = 4


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """What determines one run's training, hence its whole trajectory of states."""

    config: TrainConfig
    subset: np.ndarray  # sorted training indices the run's batches draw from
    init_seed: np.random.SeedSequence  # its initial weights
    order_seed: np.random.SeedSequence  # its batch order and augmentation
    steps_per_epoch: int
    example_weights: np.ndarray | None = None  # [num_train] loss weights (None: all 1)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def warmup_steps(self) -> int:
        """As `Trainer.train` rounds it."""
        return int(np.round(self.config.warmup_epochs * self.steps_per_epoch))


@dataclasses.dataclass(frozen=True)
class MetagradientResult:
    """Metagradients of a batch of targets."""

    scores: np.ndarray  # [num_train, num_targets]: g[i, j] = d f_j / d w_i
    outputs: np.ndarray  # [num_targets]: f_j of the replayed final model
    has_slot: np.ndarray  # bool [num_train]: the example had a batch slot in some step
    steps: int  # optimizer steps differentiated through
    checkpoint_interval: int  # states kept every this many steps (1: all)
    state_bytes: int  # peak bytes of the states kept (parameters and velocities)
    seconds: float


def check_trainable(config: TrainConfig) -> None:
    """Refuses a training config whose runs the engine cannot differentiate exactly.

    Raises:
        ParameterError: not a K-at-once small model (``model``), or 16-bit
            ``precision``.
    """
    if config.spec.trainer != EnsembleTrainer.kind:
        raise ParameterError("model", "metagradients differentiate the K-at-once small "
                             "models (mlp, cnn) only", config.model)
    if config.precision != "float32":
        raise ParameterError("precision", "metagradients need runs trained in float32",
                             config.precision)


class MetagradientEngine:
    """The forward replay and backward pass of one trajectory, compiled once."""

    def __init__(self, data: Dataset, trajectory: Trajectory,
                 config: MetagradientConfig | None = None):
        self.config = config or MetagradientConfig()
        check_trainable(trajectory.config)
        self.data = data
        self.trajectory = trajectory
        self.dtype = PRECISIONS[self.config.precision]
        # Read by the compiled programs when they run: `set_weights` moves the point w.
        self.weights = tf.Variable(tf.ones([data.num_train], self.dtype), trainable=False)
        self.set_weights(trajectory.example_weights)
        spe = trajectory.steps_per_epoch
        self.batches = core.run_batches(
            np.asarray(trajectory.subset), trajectory.order_seed, trajectory.config.epochs,
            spe, trajectory.config.batch_size).reshape(trajectory.total_steps, -1)
        self.has_slot = np.zeros(data.num_train, bool)
        self.has_slot[self.batches.ravel()] = True
        # The run's own XLA setting: the replay reproduces it bit for bit only so.
        self._forward_trainer = self._trainer(_FORWARD_MODELS, trajectory.config.xla)
        self.augment_seeds = tf.constant(core.augment_seed(trajectory.order_seed)[None])
        self.phases = self._forward_trainer.flip_phases(self.augment_seeds.numpy())
        self.initial = [tf.constant(v, self.dtype) for v in
                        self._forward_trainer.initial_parameters(trajectory.subset,
                                                                 trajectory.init_seed)]
        self.state_bytes_each = 2 * sum(v.shape.num_elements() for v in self.initial) * \
            self.dtype.size
        self._forward = tf.function(self._forward_step, jit_compile=self.config.xla,
                                    autograph=False, reduce_retracing=True)
        self._backward_programs: dict[int, tuple] = {}

    def set_weights(self, weights: np.ndarray | None) -> None:
        """The per-example loss weights w ``[num_train]`` the run is replayed and
        differentiated at (None: all 1)."""
        num_train = self.data.num_train
        weights = np.ones(num_train) if weights is None else np.asarray(weights)
        if weights.shape != (num_train,) or not np.isfinite(weights).all():
            raise ParameterError("example_weights", f"expected {num_train} finite "
                                 f"weights, got shape {weights.shape}")
        self.weights.assign(weights.astype(self.dtype.as_numpy_dtype))

    def _trainer(self, models: int, xla: bool) -> EnsembleTrainer:
        """The trainer's own program for `models` models (no chunks, one program)."""
        config = dataclasses.replace(self.trajectory.config, models_at_once=models,
                                     chunk_models=models, concurrent_programs=1, xla=xla)
        return EnsembleTrainer(self.data, config)

    # --- the step, forward and backward ----------------------------------------------

    def _inputs(self, trainer: EnsembleTrainer, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor,
                                                                       tf.Tensor]:
        """Images ``[1, B, ...]``, labels ``[1, B]`` and indices ``[B]`` of step `t`."""
        spe = self.trajectory.steps_per_epoch
        indices = tf.gather(tf.constant(self.batches), t)
        images, labels = trainer.batch_inputs(
            indices[None], t % spe, t // spe, tf.constant([spe], tf.int32),
            self.augment_seeds, self.phases)
        return images, labels, indices

    def _step(self, trainer: EnsembleTrainer, parameters, velocities, images, labels,
              indices, t, models: int):
        """`Trainer.parameter_step` of step `t` for `models` copies of the state."""
        weights = tf.gather(self.weights, indices)
        return trainer.parameter_step(
            parameters, velocities, images, tf.broadcast_to(labels, [models, labels.shape[1]]),
            tf.broadcast_to(weights[None], [models, weights.shape[0]]), t,
            tf.constant(self.trajectory.total_steps), tf.constant(self.trajectory.warmup_steps))

    def _forward_step(self, parameters, velocities, t):
        """State ``[1, ...]`` after step `t` from the state before it."""
        trainer, models = self._forward_trainer, _FORWARD_MODELS
        images, labels, indices = self._inputs(trainer, t)
        def tile(value: tf.Tensor) -> tf.Tensor:
            return tf.broadcast_to(value, [models, *value.shape[1:]])

        images = tile(images)
        new_parameters, new_velocities = self._step(
            trainer, [tile(v) for v in parameters], [tile(v) for v in velocities], images,
            labels, indices, t, models)
        return [v[:1] for v in new_parameters], [v[:1] for v in new_velocities]

    def _backward_program(self, models: int):
        """(trainer, output-gradient program, step VJP program) for J = `models` targets."""
        if models not in self._backward_programs:
            trainer = self._trainer(models, self.config.xla)
            compile_ = dict(jit_compile=self.config.xla, autograph=False,
                            reduce_retracing=True)

            def spread(values):
                return [tf.broadcast_to(v, [models, *v.shape[1:]]) for v in values]

            def outputs(parameters, x, y):
                spread_parameters = spread(parameters)
                with tf.GradientTape() as tape:
                    tape.watch(spread_parameters)
                    with core.substituted_variables(trainer.model.trainable_variables,
                                                    spread_parameters):
                        logits = trainer.model(tf.cast(x[:, None], self.dtype))[:, 0]
                    f = gradients_lib.measure(logits, y, OUTPUT)
                return f, tape.gradient(f, spread_parameters)

            def step_vjp(parameters, velocities, t, adjoint_parameters, adjoint_velocities):
                """Adjoints before step `t` and the cotangent ``[J, B]`` of its batch's
                weights, from the adjoints after it."""
                images, labels, indices = self._inputs(trainer, t)
                spread_parameters, spread_velocities = spread(parameters), spread(velocities)
                weights = tf.broadcast_to(tf.gather(self.weights, indices)[None],
                                          [models, indices.shape[0]])
                sources = spread_parameters + spread_velocities + [weights]
                with tf.GradientTape() as tape:
                    tape.watch(sources)
                    new_parameters, new_velocities = trainer.parameter_step(
                        spread_parameters, spread_velocities, images,
                        tf.broadcast_to(labels, [models, labels.shape[1]]), weights, t,
                        tf.constant(self.trajectory.total_steps),
                        tf.constant(self.trajectory.warmup_steps))
                grads = tape.gradient(
                    new_parameters + new_velocities, sources,
                    output_gradients=list(adjoint_parameters) + list(adjoint_velocities),
                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
                count = len(parameters)
                return grads[:count], grads[count:2 * count], grads[-1], indices

            def scored_step(parameters, velocities, t, adjoint_parameters,
                            adjoint_velocities, scores):
                """`step_vjp`, the weights' cotangents added to the scores ``[n, J]``."""
                adjoint_parameters, adjoint_velocities, weights, indices = step_vjp(
                    parameters, velocities, t, adjoint_parameters, adjoint_velocities)
                return adjoint_parameters, adjoint_velocities, tf.tensor_scatter_nd_add(
                    scores, indices[:, None], tf.transpose(weights))

            def segment_vjp(parameters, velocities, first, adjoint_parameters,
                            adjoint_velocities, scores):
                """Steps backwards through steps ``first .. first + c - 1`` whose states
                before each step are stacked ``[c, 1, ...]``: one program for the
                whole segment (no per-step dispatch)."""
                length = tf.shape(parameters[0])[0]  # unknown when retraced (relaxed)

                def body(k, adjoint_parameters, adjoint_velocities, scores):
                    at = length - 1 - k
                    return (k + 1, *scored_step(
                        [p[at] for p in parameters], [v[at] for v in velocities],
                        first + at, adjoint_parameters, adjoint_velocities, scores))

                _, adjoint_parameters, adjoint_velocities, scores = tf.while_loop(
                    lambda k, *_: k < length, body,
                    (tf.constant(0), list(adjoint_parameters), list(adjoint_velocities),
                     scores))
                return adjoint_parameters, adjoint_velocities, scores

            one_step = tf.function(scored_step, **compile_)

            def stepwise_vjp(parameters, velocities, first, adjoint_parameters,
                             adjoint_velocities, scores):
                """`segment_vjp` as one program per step: TensorFlow's own graph (without
                XLA) cannot run the second-order gradient inside a while loop (the AddN
                temporaries of its gradient accumulation)."""
                for at in reversed(range(parameters[0].shape[0])):
                    adjoint_parameters, adjoint_velocities, scores = one_step(
                        [p[at] for p in parameters], [v[at] for v in velocities],
                        first + at, adjoint_parameters, adjoint_velocities, scores)
                return adjoint_parameters, adjoint_velocities, scores

            self._backward_programs[models] = (
                trainer, tf.function(outputs, **compile_),
                tf.function(segment_vjp, **compile_) if self.config.xla else stepwise_vjp)
        return self._backward_programs[models]

    # --- the trajectory ----------------------------------------------------------------

    def interval(self) -> int:
        """States are kept every this many steps (1: all; `MetagradientConfig`)."""
        steps = self.trajectory.total_steps
        if self.config.checkpoint_interval:
            return min(self.config.checkpoint_interval, max(steps, 1))
        if (steps + 1) * self.state_bytes_each <= self.config.memory_budget_bytes:
            return 1
        return max(1, math.isqrt(steps - 1) + 1)

    def replay(self, first_state: tuple[list, list], first: int, end: int,
               keep_every: int = 1) -> dict[int, tuple[list, list]]:
        """States of steps ``first .. end`` (every `keep_every`-th, and `end`) from the
        state before step `first`.

        In float32 by the trainer's own step program on its variables
        (`Trainer.step_program`), which reproduces the recorded run bit for bit; in
        float64 by the same step as a pure function (`Trainer.parameter_step`).
        """
        kept = {first: first_state}
        if self.dtype == tf.float32:
            trainer, models = self._forward_trainer, _FORWARD_MODELS
            trainer.load_state(*first_state)
            program = trainer.step_program()
            spe = self.trajectory.steps_per_epoch
            repeat = [tf.constant(np.full(models, value, np.int32))
                      for value in (spe, self.trajectory.warmup_steps)]
            seeds = tf.tile(self.augment_seeds, [models, 1])
            phases = None if self.phases is None else tf.tile(self.phases, [models, 1])
            weights = tf.tile(tf.cast(self.weights[None], tf.float32), [models, 1])
            for t in range(first, end):
                program(tf.constant(np.repeat(self.batches[t][None], models, 0)),
                        tf.constant(t % spe), tf.constant(t // spe), *repeat, seeds, phases,
                        True, weights)
                if (t + 1 - first) % keep_every == 0 or t + 1 == end:
                    kept[t + 1] = trainer.model_state(0)
            return kept
        parameters, velocities = first_state
        for t in range(first, end):
            parameters, velocities = self._forward(parameters, velocities, tf.constant(t))
            if (t + 1 - first) % keep_every == 0 or t + 1 == end:
                kept[t + 1] = (parameters, velocities)
        return kept

    def initial_state(self) -> tuple[list, list]:
        return list(self.initial), [tf.zeros_like(v) for v in self.initial]

    def final_parameters(self) -> list[np.ndarray]:
        """The replayed parameters after the last step, per variable ``[1, ...]``."""
        steps = self.trajectory.total_steps
        return [v.numpy() for v in self.replay(self.initial_state(), 0, steps, steps)[steps][0]]

    def target_outputs(self, x_targets: np.ndarray, y_targets: np.ndarray) -> np.ndarray:
        """f_j ``[num_targets]`` of the replayed final model, in the engine's precision
        (what `metagradients` differentiates; e.g. for finite differences)."""
        steps = self.trajectory.total_steps
        final = self.replay(self.initial_state(), 0, steps, max(steps, 1))[steps][0]
        models = max(len(x_targets), _FORWARD_MODELS)
        rows = np.arange(models).clip(max=len(x_targets) - 1)
        f, _ = self._backward_program(models)[1](final, tf.constant(x_targets[rows]),
                                                 tf.constant(y_targets[rows], tf.int32))
        return f.numpy()[:len(x_targets)]

    def final_predictions(self, x: np.ndarray, y: np.ndarray):
        """Predictions (`heldout.models.predict.Predictions`) of the replayed final model,
        by the trainer's own prediction program (to compare with a recorded run)."""
        trainer = self._forward_trainer
        for variable, value in zip(trainer.model.trainable_variables, self.final_parameters(),
                                   strict=True):
            variable.assign(np.broadcast_to(value.astype(np.float32), variable.shape))
        return trainer.predict(x, y)[0]

    def metagradients(self, x_targets: np.ndarray, y_targets: np.ndarray) -> MetagradientResult:
        """g ``[num_train, num_targets]`` of the targets' log-odds margins.

        Args:
            x_targets, y_targets: the targets (test or training examples) and labels.
        """
        start = time.time()
        num_targets = len(x_targets)
        if num_targets == 0 or len(y_targets) != num_targets:
            raise ParameterError("targets", f"expected one or more targets with a label each, "
                                 f"got {num_targets} inputs and {len(y_targets)} labels")
        batches = -(-num_targets // self.config.target_batch)
        models = max(-(-num_targets // batches), _FORWARD_MODELS)
        steps, interval = self.trajectory.total_steps, self.interval()
        bar = Progress(steps * batches, "metagradients", "step", enabled=self.config.progress)
        kept = self.replay(self.initial_state(), 0, steps, interval)
        peak = len(kept) + (interval - 1 if interval > 1 else 0)
        scores, outputs = [], []
        for b in range(batches):
            rows = np.arange(b * models, (b + 1) * models).clip(max=num_targets - 1)
            batch_scores, batch_outputs = self._backward(
                kept, interval, models, x_targets[rows], y_targets[rows], bar)
            real = (b * models + np.arange(models)) < num_targets
            scores.append(batch_scores[:, real])
            outputs.append(batch_outputs[real])
        bar.close()
        return MetagradientResult(
            scores=np.concatenate(scores, axis=1), outputs=np.concatenate(outputs),
            has_slot=self.has_slot, steps=steps, checkpoint_interval=interval,
            state_bytes=peak * self.state_bytes_each, seconds=time.time() - start)

    def _backward(self, kept: dict[int, tuple[list, list]], interval: int, models: int,
                  x: np.ndarray, y: np.ndarray, bar) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[num_train, models]`` and outputs ``[models]`` of one target batch."""
        _, outputs, segment_vjp = self._backward_program(models)
        steps = self.trajectory.total_steps
        f, adjoint_parameters = outputs(kept[steps][0], tf.constant(x),
                                        tf.constant(y, tf.int32))
        adjoint_velocities = [tf.zeros_like(a) for a in adjoint_parameters]
        scores = tf.zeros([self.data.num_train, models], self.dtype)
        for first, end in self._segments(interval):
            states = kept if interval == 1 else self.replay(kept[first], first, end)
            stacked = _stack(states, first, end)
            adjoint_parameters, adjoint_velocities, scores = segment_vjp(
                *stacked, tf.constant(first), adjoint_parameters, adjoint_velocities, scores)
            bar.advance(end - first)
        return scores.numpy(), f.numpy()

    def _segments(self, interval: int) -> list[tuple[int, int]]:
        """(first, end) step ranges stepped back through in turn, the last first: the
        kept states' intervals, or with every state kept ~sqrt(T) steps (one program
        each, so the progress bar moves)."""
        steps = self.trajectory.total_steps
        if interval == 1:
            interval = math.isqrt(max(steps - 1, 0)) + 1
        return [(first, min(first + interval, steps))
                for first in reversed(range(0, steps, interval))]


def _stack(states: dict[int, tuple[list, list]], first: int, end: int
           ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """States before steps ``first .. end - 1`` stacked per variable: ``[c, 1, ...]``."""
    count = len(states[first][0])
    return ([tf.stack([states[t][0][i] for t in range(first, end)]) for i in range(count)],
            [tf.stack([states[t][1][i] for t in range(first, end)]) for i in range(count)])


def metagradients(data: Dataset, trajectory: Trajectory, x_targets: np.ndarray,
                  y_targets: np.ndarray, config: MetagradientConfig | None = None
                  ) -> MetagradientResult:
    """Exact metagradients ``g[i, j] = d f_j(theta_T(w)) / d w_i`` of one trajectory.

    Args:
        data: the run's data set (training examples, and the inputs of `x_targets`).
        trajectory: what determines the run (`Trajectory`).
        x_targets, y_targets: targets j (test or training examples) and their labels.
        config: precision, target batch, checkpoint interval, progress.

    Raises:
        ParameterError: an untrainable model kind or precision, bad weights or targets.
    """
    engine = MetagradientEngine(data, trajectory, config)
    return engine.metagradients(np.asarray(x_targets), np.asarray(y_targets))


# --- a recorded run -------------------------------------------------------------------

SPLITS = ("test", "train")  # where the targets of `score_metagradient` come from
# Keys of a scores file (`save_metagradient_scores` / `load_metagradient_scores`).
SCORES_KEY = "scores"  # float32 [num_train, num_eval]: g[i, j]; NaN: i had no batch slot
EVAL_INDICES_KEY = "eval_indices"  # int64 [num_eval]: the targets' indices in their split
SPLIT_KEY = "split"  # str scalar: "test" or "train"
OUTPUTS_KEY = "outputs"  # float32 [num_eval]: the targets' log-odds f_j after training
RUN_DIR_KEY = "run_dir"  # str scalar: the run differentiated


@dataclasses.dataclass(frozen=True)
class MetagradientScores:
    """Metagradient scores of one recorded run (`score_metagradient`)."""

    scores: np.ndarray  # [num_train, num_eval]; NaN rows: examples without a batch slot
    eval_indices: np.ndarray  # [num_eval] indices into `split`
    split: str  # "test" or "train" (self-influence and train x train)
    outputs: np.ndarray  # [num_eval] f_j of the replayed run
    run_dir: str
    seconds: float = float("nan")
    checkpoint_interval: int = 0
    state_bytes: int = 0

    @property
    def without_slot(self) -> np.ndarray:
        """bool ``[num_train]``: examples the run never had in a batch (NaN rows)."""
        return np.isnan(self.scores).all(axis=1) if self.scores.size else np.zeros(0, bool)


def trajectory_of_run(run_dir: str, data: Dataset) -> Trajectory:
    """The trajectory of a run `train.py` recorded: its settings and seeds from
    ``run.json``, its subset (and bank weights) from its aux arrays.

    Raises:
        ParameterError: ``run_dir`` lacks the record (released runs), or the data is
            not the data the run was trained on (its fingerprint differs).
    """
    try:
        record = records.read_run_record(run_dir)
    except (ValueError, OSError):
        record = records.RunRecord()
    stored = record.train_config
    if not stored or None in (record.seed, record.subset, record.run_id):
        raise ParameterError("run_dir", "no run.json with the run's settings and seed (runs "
                             "trained by train.py can be replayed; released ones cannot)",
                             run_dir)
    fingerprint = record.data
    if isinstance(fingerprint, dict) and "sha256" in fingerprint and \
            fingerprint != info_lib.data_fingerprint(data):
        raise ParameterError("run_dir", f"trained on other data than {data.name} (the data "
                             "fingerprint differs), so it cannot be replayed", run_dir)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in stored.items() if k in fields})
    check_trainable(config)
    arrays = runs_lib.load_run(run_dir)
    seeds = designs.run_seeds(record.seed, record.subset, record.run_id)
    steps = (record.optimizer_steps or 0) // config.epochs
    return Trajectory(config, np.sort(arrays[runs_lib.SUBSET_INDICES]), seeds.init,
                      seeds.order, steps, arrays.get(runs_lib.EXAMPLE_WEIGHTS))


def score_metagradient(run_dir: str, data: Dataset, eval_indices: np.ndarray | None = None,
                       split: str = "test", config: MetagradientConfig | None = None
                       ) -> MetagradientScores:
    """Metagradients of one recorded run: d f_j / d w_i for every training example i
    and the chosen targets j, after checking that the run replays bit for bit.

    Args:
        run_dir: a run directory written by ``train.py`` (mlp or cnn, float32).
        data: the run's data set.
        eval_indices: targets, indices into `split` (None: all of it).
        split: ``test``, or ``train`` (self-influence is the diagonal of train x train).
        config: precision, target batch, checkpoint interval, progress.

    Returns:
        `MetagradientScores`; the rows of examples that never had a batch slot (outside
        the run's subset) are NaN: the run says nothing about them.

    Raises:
        ParameterError: an unknown split or target index, a run that cannot be replayed
            (no record, other data, a model kind or precision the engine does not
            differentiate), or whose replay is not bit-identical to its recorded test
            log-odds (e.g. trained with ``xla`` off or by another version).
    """
    if split not in SPLITS:
        raise ParameterError("split", f"expected one of {', '.join(SPLITS)}", split)
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    indices = np.arange(len(x)) if eval_indices is None else np.asarray(eval_indices, np.int64)
    if indices.ndim != 1 or not len(indices) or indices.min() < 0 or indices.max() >= len(x):
        raise ParameterError("eval_indices", f"expected indices in [0, {len(x)}) of the "
                             f"{split} split")
    trajectory = trajectory_of_run(run_dir, data)
    engine = MetagradientEngine(data, trajectory, config)
    recorded = runs_lib.load_run(run_dir).get("logodds_test")
    replayed = engine.final_predictions(data.x_test, data.y_test).logodds
    if recorded is None or not np.array_equal(replayed, recorded):
        difference = "no logodds_test recorded" if recorded is None else \
            f"max |difference| {np.abs(replayed - recorded).max():.3g} in the test log-odds"
        raise ParameterError("run_dir", f"does not replay bit-identically ({difference}): "
                             "its settings, data or program differ from the run's", run_dir)
    result = engine.metagradients(x[indices], y[indices])
    scores = result.scores.astype(np.float32)
    scores[~result.has_slot] = np.nan
    return MetagradientScores(scores, indices, split, result.outputs.astype(np.float32),
                              run_dir, result.seconds, result.checkpoint_interval,
                              result.state_bytes)


def save_metagradient_scores(path: str, scores: MetagradientScores) -> None:
    """Writes scores to an ``.npz`` (local or gs://) atomically, under the keys above."""
    files.write_npz(path, {
        SCORES_KEY: scores.scores.astype(np.float32),
        EVAL_INDICES_KEY: scores.eval_indices.astype(np.int64),
        SPLIT_KEY: np.array(scores.split), OUTPUTS_KEY: scores.outputs.astype(np.float32),
        RUN_DIR_KEY: np.array(scores.run_dir)})


def load_metagradient_scores(path: str) -> MetagradientScores:
    """Reads scores written by `save_metagradient_scores` (no pickled objects).

    Raises:
        ParameterError: the file is missing or is not a metagradient scores file.
    """
    try:
        arrays = files.read_npz(path)
    except files.StoredFileMissing:
        raise ParameterError("path", "file not found", path) from None
    except files.StoredFileError as e:
        raise ParameterError("path", str(e), path) from None
    keys = (SCORES_KEY, EVAL_INDICES_KEY, SPLIT_KEY, OUTPUTS_KEY, RUN_DIR_KEY)
    if not set(keys) <= set(arrays) or arrays[SCORES_KEY].ndim != 2 or \
            arrays[SCORES_KEY].shape[1] != len(arrays[EVAL_INDICES_KEY]):
        raise ParameterError("path", f"not a metagradient scores file (expected keys "
                             f"{', '.join(keys)})", path)
    return MetagradientScores(arrays[SCORES_KEY], arrays[EVAL_INDICES_KEY],
                              str(arrays[SPLIT_KEY]), arrays[OUTPUTS_KEY],
                              str(arrays[RUN_DIR_KEY]))
