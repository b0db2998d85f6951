"""Tests of heldout/training/core.py (and config.py): config validation, learning-rate
schedules, batches, and the learning rate a snapshot records."""

import math

import numpy as np
import pytest
import tensorflow as tf

from heldout.data import sources as data
from heldout.store import designs as subsets_lib
from heldout.training import config as config_lib
from heldout.training import core as training

SUBSET = "0.7"
SEED = 0

# --- TrainConfig --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"epochs": 0}, "epochs=0"),
    ({"epochs": -3}, "epochs=-3"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ({"learning_rate": -0.1}, "learning_rate=-0.1"),
    ({"models_at_once": 0}, "models_at_once=0"),
    ({"momentum": 1.0}, "momentum=1.0"),
    ({"momentum": -0.1}, "momentum=-0.1"),
    ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
    ({"lr_schedule": "step"}, "lr_schedule='step'"),
    ({"epochs": 3, "warmup_epochs": 4.0}, "warmup_epochs=4.0"),
    ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0"),
    ({"model": "nope"}, "model='nope'"),
])
def test_train_config_rejects(kwargs, parameter):
    """A one-line error naming the parameter and its value (`ParameterError`)."""
    with pytest.raises(ValueError, match="^" + parameter.replace(".", r"\.").replace(
            "+", r"\+")):
        training.TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"momentum": 0.0}, {"weight_decay": 0.0}, {"warmup_epochs": 0.0},
    {"epochs": 3, "warmup_epochs": 3.0}, {"lr_schedule": "linear", "model": "cnn"},
])
def test_train_config_accepts_boundaries(kwargs):
    config = training.TrainConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


# --- learning rate ------------------------------------------------------------------


def _expected_lr(step, total, warmup, peak, schedule):
    """Linear warm-up reaching `peak` at step warmup-1, then the schedule's decay over
    the remaining total-warmup steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return {"cosine": peak * 0.5 * (1 + math.cos(math.pi * progress)),
            "linear": peak * (1 - progress),
            "constant": peak}[schedule]


@pytest.mark.parametrize("schedule", config_lib.LR_SCHEDULES)
@pytest.mark.parametrize(("total", "warmup"), [(100, 10), (37, 0), (50, 1)])
def test_learning_rate_at(schedule, total, warmup):
    peak = 0.4
    for step in sorted({0, 1, warmup // 2, max(warmup - 1, 0), warmup, warmup + 1,
                        (total + warmup) // 2, total - 1}):
        got = float(training.learning_rate_at(step, total, warmup, peak, schedule))
        assert got == pytest.approx(_expected_lr(step, total, warmup, peak, schedule),
                                    abs=1e-6), step


def test_learning_rate_known_values():
    assert float(training.learning_rate_at(0, 100, 10, 0.1, "cosine")) == pytest.approx(0.01)
    assert float(training.learning_rate_at(9, 100, 10, 0.1, "cosine")) == pytest.approx(0.1)
    assert float(training.learning_rate_at(10, 100, 10, 0.1, "cosine")) == pytest.approx(0.1)
    assert float(training.learning_rate_at(55, 100, 10, 0.1, "cosine")) == pytest.approx(0.05)
    assert float(training.learning_rate_at(55, 100, 10, 0.1, "linear")) == pytest.approx(0.05)
    assert float(training.learning_rate_at(70, 100, 10, 0.1, "linear")) == pytest.approx(
        0.1 / 3)
    assert float(training.learning_rate_at(99, 100, 10, 0.1, "constant")) == pytest.approx(0.1)


def test_learning_rate_in_graph():
    lr = tf.function(lambda s: training.learning_rate_at(s, tf.constant(100), tf.constant(10),
                                                         0.1, "cosine"))
    assert float(lr(tf.constant(55))) == pytest.approx(0.05, abs=1e-6)


# --- batches ------------------------------------------------------------------------


def test_epoch_batches_stay_in_subsets_and_cover_them():
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(500, size, replace=False)) for size in (10, 37, 64, 5)]
    batch_size = 8
    steps = math.ceil(64 / batch_size)
    seeds = [np.random.SeedSequence(s) for s in (1, 2, 3, 4)]
    rngs = [np.random.default_rng(s) for s in seeds]
    epochs = [training._epoch_batches(subsets, rngs, steps, batch_size) for _ in range(2)]
    for batches in epochs:
        assert batches.shape == (steps, 4, batch_size)
        for k, subset in enumerate(subsets):
            seen = batches[:, k, :].ravel()
            assert set(seen.tolist()) == set(subset.tolist())  # only own, and all of them
            counts = np.bincount(seen, minlength=500)[subset]
            # Wrapping around the subset's order: every example once or twice as often.
            assert counts.max() - counts.min() <= 1
            assert counts.sum() == steps * batch_size
    # A fresh order every epoch (model 2 has 64 examples: one pass per epoch).
    assert not np.array_equal(epochs[0][:, 2], epochs[1][:, 2])
    # Model 1's batches depend on its own subset and rng only.
    alone = training._epoch_batches([subsets[1]], [np.random.default_rng(seeds[1])], steps,
                                    batch_size)
    np.testing.assert_array_equal(alone[:, 0], epochs[0][:, 1])


# --- snapshots: the learning rate of a stretch of steps -----------------------------


@pytest.mark.parametrize("schedule", config_lib.LR_SCHEDULES)
@pytest.mark.parametrize(("first", "end"), [(0, 7), (7, 21), (21, 30), (3, 4)])
def test_stretch_learning_rate_is_the_mean_over_its_steps(schedule, first, end):
    config = training.TrainConfig(epochs=10, learning_rate=0.3, lr_schedule=schedule)
    steps_per_epoch, warmup = 3, 4
    expected = np.mean([_expected_lr(step, 30, warmup, 0.3, schedule)
                        for step in range(first, end)])
    got = training.stretch_learning_rate(config, first, end, steps_per_epoch, warmup)
    assert got == pytest.approx(expected, rel=1e-6)


def test_snapshot_learning_rate_covers_every_step_since_the_previous_snapshot():
    """Snapshots after epochs 2 and 4 of 5; each carries the mean rate of all its steps
    (not only of its last epoch), and the final model the rate of the rest."""
    from heldout.training.ensemble import EnsembleTrainer

    digits = data.load_digits()
    config = training.TrainConfig(epochs=5, batch_size=16, checkpoint_every=2,
                                  warmup_epochs=1.0, models_at_once=1, xla=False)
    subset = np.arange(48)  # 3 steps per epoch
    seeds = subsets_lib.run_seeds(SEED, SUBSET, 0)
    tf.config.run_functions_eagerly(True)
    try:
        (run,) = EnsembleTrainer(digits, config).train([subset], [seeds.init], [seeds.order],
                                                       export_models=True)
    finally:
        tf.config.run_functions_eagerly(False)
    rates = [_expected_lr(step, 15, 3, config.learning_rate, config.lr_schedule)
             for step in range(15)]
    assert [(s.epoch, s.steps) for s in run.snapshots] == [(2, 6), (4, 12)]
    assert run.snapshots[0].learning_rate == pytest.approx(np.mean(rates[0:6]), rel=1e-6)
    assert run.snapshots[1].learning_rate == pytest.approx(np.mean(rates[6:12]), rel=1e-6)
    assert run.final_learning_rate == pytest.approx(np.mean(rates[12:15]), rel=1e-6)
    # Not the last epoch's mean alone (what run.json recorded before).
    assert abs(run.snapshots[1].learning_rate - np.mean(rates[9:12])) > 1e-3


# --- per-example loss weights -------------------------------------------------------


def _train_weighted(config, weights, num_runs=2):
    """`num_runs` runs of one group on the first 96 digits, all with run 0's seeds."""
    from heldout.training.ensemble import EnsembleTrainer

    digits = data.load_digits()
    seeds = subsets_lib.run_seeds(SEED, SUBSET, 0)
    subset = np.arange(96)
    return EnsembleTrainer(digits, config).train(
        [subset] * num_runs, [seeds.init] * num_runs, [seeds.order] * num_runs,
        example_weights=weights)


def test_example_weights_scale_the_gradient_like_the_learning_rate():
    """Weights of 2 on every example double each gradient: without weight decay, the
    same run as weights of 1 at twice the learning rate, bit for bit (scaling by 2 is
    exact); and weights of 1 are the unweighted run."""
    config = training.TrainConfig(epochs=2, batch_size=16, weight_decay=0.0, models_at_once=4)
    num_train = data.load_digits().num_train
    doubled = _train_weighted(config, [np.full(num_train, 2.0)] * 2)
    faster = _train_weighted(training.TrainConfig(
        epochs=2, batch_size=16, weight_decay=0.0, models_at_once=4, learning_rate=0.2), None)
    ones = _train_weighted(config, [np.ones(num_train)] * 2)
    plain = _train_weighted(config, None)
    np.testing.assert_array_equal(doubled[0].test.logodds, faster[0].test.logodds)
    np.testing.assert_array_equal(ones[1].train.logodds, plain[1].train.logodds)
    assert not np.array_equal(doubled[0].test.logodds, plain[0].test.logodds)


def test_zero_weights_change_only_their_run():
    """A run with dropped examples (weights 0) differs from the base run; its group
    neighbour with all weights 1 is the unweighted run bit for bit."""
    config = training.TrainConfig(epochs=2, batch_size=16, models_at_once=4)
    weights = np.ones((2, data.load_digits().num_train))
    weights[1, :10] = 0.0
    base, dropped = _train_weighted(config, weights)
    plain = _train_weighted(config, None, num_runs=1)[0]
    np.testing.assert_array_equal(base.test.logodds, plain.test.logodds)
    assert np.abs(dropped.test.logodds - base.test.logodds).max() > 1e-4


def test_example_weights_of_the_wrong_shape_are_refused():
    from heldout.errors import ParameterError

    config = training.TrainConfig(epochs=1, batch_size=16, models_at_once=4)
    with pytest.raises(ParameterError, match="example_weights"):
        _train_weighted(config, [np.ones(5)] * 2)
