"""Tests of heldout/training.py: config validation, learning-rate schedules, batches,
and small real trainings on digits (each model independent of its group)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from heldout.training import core as training

SUBSET = "0.7"
SEED = 0

# --- TrainConfig --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"epochs": 0}, "--epochs=0"),
    ({"epochs": -3}, "--epochs=-3"),
    ({"batch_size": 0}, "--batch_size=0"),
    ({"learning_rate": 0.0}, "--learning_rate=0.0"),
    ({"learning_rate": -0.1}, "--learning_rate=-0.1"),
    ({"models_at_once": 0}, "--models_at_once=0"),
    ({"momentum": 1.0}, "--momentum=1.0"),
    ({"momentum": -0.1}, "--momentum=-0.1"),
    ({"weight_decay": -1e-4}, "--weight_decay=-0.0001"),
    ({"lr_schedule": "step"}, "--lr_schedule='step'"),
    ({"epochs": 3, "warmup_epochs": 4.0}, "--warmup_epochs=4.0"),
    ({"warmup_epochs": -1.0}, "--warmup_epochs=-1.0"),
    ({"model": "nope"}, "--model='nope'"),
])
def test_train_config_rejects(kwargs, flag):
    with pytest.raises(ValueError, match=flag.replace(".", r"\.").replace("+", r"\+")):
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


@pytest.mark.parametrize("schedule", training.LR_SCHEDULES)
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
