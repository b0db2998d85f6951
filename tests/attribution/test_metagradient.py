"""Tests of heldout/attribution/metagradient.py: exact metagradients through training.

Tiny runs (a narrow digits MLP or CNN on 48 examples, a few steps) against independent
computations: float64 central finite differences of the run's output as a function of
one example's weight, a naive nested GradientTape over the whole unrolled loop, and the
trainer's own runs (the replay reproduces them bit for bit; the float64 step follows
them to float32 round-off, so the differentiated function is the trainer's, with each
of momentum, Nesterov, weight decay, the schedule's warm-up, label smoothing and
augmentation switched on).
"""

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from heldout.attribution import metagradient as mg
from heldout.data import sources
from heldout.errors import ParameterError
from heldout.store import designs
from heldout.training import core
from heldout.training.ensemble import EnsembleTrainer

SUBSET = np.arange(48)  # 3 steps per epoch at batch 16
TARGETS = np.array([0, 5])  # test examples
EXAMPLES = np.array([1, 17, 40])  # training examples differentiated by finite differences

# Each recipe switches on what the backward pass must include.
RECIPES = {
    "heavy_ball_decay_cosine": dict(model="mlp", momentum=0.9, weight_decay=5e-3,
                                    lr_schedule="cosine", warmup_epochs=1.0),
    "nesterov_smoothing_linear": dict(model="mlp", momentum=0.8, nesterov=True,
                                      label_smoothing=0.2, lr_schedule="linear",
                                      weight_decay=1e-3, warmup_epochs=2.0),
    # Without XLA (compiling the CNN's programs took most of this file's time).
    "cnn_crop_flip": dict(model="cnn", augment="crop_flip", momentum=0.9,
                          weight_decay=5e-4, model_width=0.25, xla=False),
}


@pytest.fixture(scope="module")
def digits():
    return sources.load_digits()


def _trajectory(recipe: str, epochs: int = 3, weights=None) -> mg.Trajectory:
    options = dict(model_width=0.1, epochs=epochs, batch_size=16, learning_rate=0.1,
                   models_at_once=4)
    options.update(RECIPES[recipe])
    seeds = designs.run_seeds(0, "full", 0)
    return mg.Trajectory(core.TrainConfig(**options), SUBSET, seeds.init, seeds.order,
                         steps_per_epoch=3, example_weights=weights)


def _float64(**kwargs) -> mg.MetagradientConfig:
    return mg.MetagradientConfig(precision="float64", progress=False, xla=False, **kwargs)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_float64_metagradients_match_central_finite_differences(digits, recipe):
    """Exact for the float64 step; and that step is the trainer's: it follows the
    trainer's own step program (the float32 replay) to float32 round-off, which
    leaving momentum, decay, the schedule, smoothing or augmentation out would not."""
    trajectory = _trajectory(recipe)
    engine = mg.MetagradientEngine(digits, trajectory, _float64())
    x, y = digits.x_test[TARGETS], digits.y_test[TARGETS]
    replayed = mg.MetagradientEngine(digits, trajectory, mg.MetagradientConfig(
        progress=False)).final_predictions(x, y).logodds
    np.testing.assert_allclose(engine.target_outputs(x, y), replayed, rtol=1e-4, atol=1e-4)
    result = engine.metagradients(x, y)
    # Small steps: ReLU training is piecewise smooth (a unit switching off for a batch
    # example makes the step jump), and a step of 1e-4 already crossed such a seam.
    h = 1e-6
    for i in EXAMPLES[:1] if recipe.startswith("cnn") else EXAMPLES[1:]:
        outputs = []
        for sign in (1, -1):
            weights = np.ones(digits.num_train)
            weights[i] += sign * h
            engine.set_weights(weights)
            outputs.append(engine.target_outputs(x, y))
        numeric = (outputs[0] - outputs[1]) / (2 * h)
        np.testing.assert_allclose(result.scores[i], numeric, rtol=1e-6,
                                   atol=1e-6 * np.abs(numeric).max())
    # Examples without a batch slot have no effect at all.
    assert result.has_slot.sum() == len(SUBSET)
    assert not result.scores[~result.has_slot].any()


def test_a_missing_feature_would_be_caught(digits):
    """The agreement with the trainer above has teeth: the same run without momentum,
    label smoothing, weight decay, or its schedule's warm-up and decay is far from it."""
    trajectory = _trajectory("nesterov_smoothing_linear", epochs=2)
    x, y = digits.x_test[:50], digits.y_test[:50]
    run = mg.MetagradientEngine(digits, trajectory, mg.MetagradientConfig(
        progress=False)).final_predictions(x, y)
    for change in (dict(momentum=0.0), dict(label_smoothing=0.0), dict(weight_decay=0.0),
                   dict(lr_schedule="constant", warmup_epochs=0.0)):
        other = dataclasses.replace(trajectory, config=dataclasses.replace(
            trajectory.config, **change))
        outputs = mg.MetagradientEngine(digits, other, _float64()).target_outputs(x, y)
        assert np.abs(outputs - run.logodds).max() > 1e-4, change


def _nested_tape_metagradients(digits, trajectory: mg.Trajectory) -> np.ndarray:
    """d f / d w by one GradientTape over the whole unrolled float64 loop (the step's own
    gradient taken by the inner tapes of `parameter_step`)."""
    engine = mg.MetagradientEngine(digits, trajectory, _float64())
    trainer = EnsembleTrainer(digits, dataclasses.replace(
        trajectory.config, models_at_once=len(TARGETS) * 2, chunk_models=4, xla=False))
    models = len(TARGETS) * 2
    weights = tf.Variable(tf.ones([digits.num_train], tf.float64))
    spe = trajectory.steps_per_epoch
    with tf.GradientTape(persistent=True) as tape:
        parameters = [tf.tile(tf.constant(v, tf.float64), [models] + [1] * (v.ndim - 1))
                      for v in trainer.initial_parameters(SUBSET, trajectory.init_seed)]
        velocities = [tf.zeros_like(v) for v in parameters]
        for t in range(trajectory.total_steps):
            indices = tf.constant(engine.batches[t])
            images, labels = trainer.batch_inputs(
                indices[None], tf.constant(t % spe), tf.constant(t // spe),
                tf.constant([spe]), engine.augment_seeds, engine.phases)
            parameters, velocities = trainer.parameter_step(
                parameters, velocities, images, tf.tile(labels, [models, 1]),
                tf.tile(tf.gather(weights, indices)[None], [models, 1]), tf.constant(t),
                tf.constant(trajectory.total_steps), tf.constant(trajectory.warmup_steps))
        x = np.concatenate([digits.x_test[TARGETS]] * 2)[:, None]
        with core.substituted_variables(trainer.model.trainable_variables, parameters):
            logits = trainer.model(tf.constant(x, tf.float64))[:, 0]
        f = mg.gradients_lib.measure(logits, tf.constant(np.tile(digits.y_test[TARGETS], 2)),
                                     "logodds")
        outputs = [f[j] for j in range(len(TARGETS))]
    return np.stack([tf.convert_to_tensor(tape.gradient(f_j, weights)).numpy()
                     for f_j in outputs], 1)


def test_matches_a_nested_gradient_tape_over_the_unrolled_loop(digits):
    trajectory = _trajectory("nesterov_smoothing_linear", epochs=2)
    result = mg.metagradients(digits, trajectory, digits.x_test[TARGETS],
                              digits.y_test[TARGETS], _float64())
    expected = _nested_tape_metagradients(digits, trajectory)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


def test_checkpointed_replay_is_bit_identical_to_stored_states(digits):
    trajectory = _trajectory("heavy_ball_decay_cosine")
    trajectory = dataclasses.replace(trajectory, config=dataclasses.replace(
        trajectory.config, xla=False))
    engine = mg.MetagradientEngine(digits, trajectory, mg.MetagradientConfig(progress=False))
    stored = engine.replay(engine.initial_state(), 0, 9)
    replayed = engine.replay(stored[4], 4, 9)
    for t in range(4, 10):
        for a, b in zip(stored[t][0] + stored[t][1], replayed[t][0] + replayed[t][1],
                        strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, y = digits.x_test[:6], digits.y_test[:6]
    # The backward programs under XLA: one per segment length (retraced, relaxed shapes).
    runs = {c: mg.metagradients(digits, trajectory, x, y, mg.MetagradientConfig(
        progress=False, checkpoint_interval=c)) for c in (1, 4)}
    assert runs[1].checkpoint_interval == 1 and runs[4].checkpoint_interval == 4
    np.testing.assert_array_equal(runs[1].scores, runs[4].scores)
    assert runs[4].state_bytes < runs[1].state_bytes
    # A budget too small for every state checkpoints every ceil(sqrt(T)) = 3 steps.
    small = mg.MetagradientEngine(digits, trajectory, mg.MetagradientConfig(
        progress=False, memory_budget_bytes=1))
    assert small.interval() == 3
    # Targets in batches of 4 (two programs' worth) give the same numbers.
    batched = mg.metagradients(digits, trajectory, x, y, mg.MetagradientConfig(
        progress=False, target_batch=4, xla=False))
    np.testing.assert_allclose(batched.scores, runs[1].scores, rtol=1e-5,
                               atol=1e-6 * np.abs(runs[1].scores).max())


def test_refusals(digits):
    with pytest.raises(ParameterError, match="^precision=bfloat16"):
        mg.MetagradientConfig(precision="bfloat16")
    with pytest.raises(ParameterError, match="^checkpoint_interval"):
        mg.MetagradientConfig(checkpoint_interval=-1)
    seeds = designs.run_seeds(0, "full", 0)
    airbench = mg.Trajectory(core.TrainConfig(model="airbench", models_at_once=1), SUBSET,
                             seeds.init, seeds.order, 3)
    with pytest.raises(ParameterError, match="^model=airbench"):
        mg.MetagradientEngine(digits, airbench)
    with pytest.raises(ParameterError, match="^example_weights"):
        mg.MetagradientEngine(digits, _trajectory("heavy_ball_decay_cosine",
                                                  weights=np.ones(3)))


def test_score_metagradient_of_a_recorded_run(tmp_path, digits):
    """A run written by train_experiment (K-at-once, XLA): replayed bit for bit by the
    trainer's own step program, scored like the engine
    on its trajectory, NaN for examples outside its subset, saved and loaded; refused
    when its recorded outputs no longer match or the data differs."""
    from heldout.store import runs as runs_lib
    from heldout.training import experiment

    data_file = tmp_path / "data.npz"
    np.savez(data_file, x_train=digits.x_train[:64], y_train=digits.y_train[:64],
             x_test=digits.x_test[:20], y_test=digits.y_test[:20])
    data = sources.load_dataset(f"npz:{data_file}")
    config = core.TrainConfig(model_width=0.1, epochs=2, batch_size=16, models_at_once=4)
    directory = str(tmp_path / "exp")
    experiment.train_experiment(directory, f"npz:{data_file}", config, "0.7", [0],
                                progress=False)
    run_dir = runs_lib.run_dir(directory, "0.7", 0)
    quiet = mg.MetagradientConfig(progress=False, xla=False)  # (the backward pass)
    scored = mg.score_metagradient(run_dir, data, [3, 7], config=quiet)
    subset = runs_lib.load_run(run_dir)[runs_lib.SUBSET_INDICES]
    outside = np.setdiff1d(np.arange(64), subset)
    assert np.isnan(scored.scores[outside]).all() and not np.isnan(scored.scores[subset]).any()
    np.testing.assert_array_equal(scored.without_slot, np.isin(np.arange(64), outside))
    seeds = designs.run_seeds(0, "0.7", 0)
    direct = mg.metagradients(data, mg.Trajectory(config, subset, seeds.init, seeds.order, 3),
                              data.x_test[[3, 7]], data.y_test[[3, 7]], quiet)
    np.testing.assert_array_equal(scored.scores[subset], direct.scores[subset].astype(np.float32))
    path = str(tmp_path / "scores.npz")
    mg.save_metagradient_scores(path, scored)
    loaded = mg.load_metagradient_scores(path)
    np.testing.assert_array_equal(loaded.scores, scored.scores)
    assert (loaded.split, list(loaded.eval_indices), loaded.run_dir) == ("test", [3, 7], run_dir)
    with pytest.raises(ParameterError, match="^path="):
        mg.load_metagradient_scores(str(data_file))
    with pytest.raises(ParameterError, match="^eval_indices"):
        mg.score_metagradient(run_dir, data, [20], config=quiet)
    with pytest.raises(ParameterError, match="^run_dir=.*other data"):
        mg.score_metagradient(run_dir, digits, [0], config=quiet)
    arrays = runs_lib.load_run(run_dir)
    arrays["logodds_test"] = arrays["logodds_test"] + np.float32(1e-3)
    np.savez(pathlib.Path(run_dir, "aux_arrays.npz"), **arrays)
    with pytest.raises(ParameterError, match="^run_dir=.*does not replay bit-identically"):
        mg.score_metagradient(run_dir, data, [0], config=quiet)
