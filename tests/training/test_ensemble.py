"""Tests of heldout/training/ensemble.py: small real K-at-once trainings on digits (each
model independent of its group, groups reused, subsets respected)."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from heldout.data import sources as data
from heldout.store import designs as subsets_lib
from heldout.training import core as training
from heldout.training.ensemble import EnsembleTrainer

SUBSET = "0.7"
SEED = 0


# --- training on digits -------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


CONFIG = training.TrainConfig(epochs=3, models_at_once=4, batch_size=64)


def _runs(digits, run_ids):
    seeds = [subsets_lib.run_seeds(SEED, SUBSET, r) for r in run_ids]
    subsets = [subsets_lib.subset_indices(digits.num_train, SUBSET, SEED, r) for r in run_ids]
    return subsets, [s.init for s in seeds], [s.order for s in seeds]


def _train(trainer, digits, run_ids, subsets=None, **kwargs):
    default_subsets, init, order = _runs(digits, run_ids)
    return trainer.train(default_subsets if subsets is None else subsets, init, order, **kwargs)


@pytest.fixture(scope="module")
def reused(digits):
    """One trainer, two groups: runs 0-3, then runs 4-5 (a short, padded group)."""
    trainer = EnsembleTrainer(digits, CONFIG)
    steps = []
    first = _train(trainer, digits, [0, 1, 2, 3], save_logits=True, export_models=True,
                   on_epoch=steps.append)
    second = _train(trainer, digits, [4, 5])
    return first, second, steps


def _assert_predictions_equal(a, b):
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, split).correctness,
                                      getattr(b, split).correctness)
        np.testing.assert_array_equal(getattr(a, split).margin, getattr(b, split).margin)


@pytest.mark.slow
def test_reused_trainer_equals_fresh_trainer(digits, reused):
    """Variables and momentum are re-initialized between groups: bit-identical results."""
    _, second, _ = reused
    assert len(second) == 2
    fresh = _train(EnsembleTrainer(digits, CONFIG), digits, [4, 5])
    for a, b in zip(second, fresh, strict=True):
        _assert_predictions_equal(a, b)
    assert not np.array_equal(second[0].test.margin, second[1].test.margin)


@pytest.mark.slow
def test_predictions_consistent_with_logits(digits, reused):
    first, _, steps = reused
    subsets, _, _ = _runs(digits, [0, 1, 2, 3])
    assert steps == [math.ceil(len(subsets[0]) / CONFIG.batch_size)] * CONFIG.epochs
    for run in first:
        for split, y in (("train", digits.y_train), ("test", digits.y_test)):
            pred = getattr(run, split)
            assert pred.correctness.shape == y.shape and pred.correctness.dtype == bool
            assert pred.margin.dtype == np.float32
            assert pred.logits.shape == (len(y), 10)
            np.testing.assert_array_equal(pred.correctness, pred.logits.argmax(axis=1) == y)
            correct = pred.logits[np.arange(len(y)), y]
            others = np.where(np.eye(10, dtype=bool)[y], -np.inf, pred.logits).max(axis=1)
            np.testing.assert_allclose(pred.margin, correct - others, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(pred.margin > 0, pred.correctness)
        # The exported single model predicts what the ensemble predicted.
        np.testing.assert_allclose(run.model(tf.constant(digits.x_test)).numpy(),
                                   run.test.logits, rtol=1e-5, atol=1e-4)
    # Models learned something after 3 epochs on their own subsets.
    for run, subset in zip(first, subsets, strict=True):
        assert run.train.correctness[subset].mean() > 0.8


@pytest.mark.slow
def test_run_result_does_not_depend_on_group(digits, reused):
    """Run 2 trained with runs 0, 1, 3 (K=4) vs alone in a program of 5 models.

    Under XLA (the default) the programs differ in shape but every model's arithmetic is
    the same, so the results are bit-identical.
    """
    first, _, _ = reused
    alone_trainer = EnsembleTrainer(digits, dataclasses.replace(CONFIG, models_at_once=5))
    (alone,) = _train(alone_trainer, digits, [2], save_logits=True)
    for split in ("train", "test"):
        grouped, single = getattr(first[2], split), getattr(alone, split)
        np.testing.assert_array_equal(single.margin, grouped.margin)
        np.testing.assert_array_equal(single.logits, grouped.logits)
        np.testing.assert_array_equal(single.correctness, grouped.correctness)
    # Another run of the group is clearly different, so the tolerance means something.
    assert np.abs(first[1].test.margin - alone.test.margin).max() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_run_result_does_not_depend_on_group_size(digits, reused, label_smoothing):
    """Runs 0-3 trained in a program of 4, of 64, and of 64 in chunks of 16: the same
    bits. (TensorFlow's cross-entropy op sums classes in another order from 52 digits
    MLPs on, which made 4 and 64 differ; `heldout.training.losses` fixes the order.)"""
    base = dataclasses.replace(CONFIG, label_smoothing=label_smoothing)
    small = reused[0] if not label_smoothing else _train(EnsembleTrainer(digits, base),
                                                         digits, [0, 1, 2, 3])
    for settings in ({"models_at_once": 64}, {"models_at_once": 64, "chunk_models": 16}):
        trainer = EnsembleTrainer(digits, dataclasses.replace(base, **settings))
        large = _train(trainer, digits, [0, 1, 2, 3])
        for r in range(4):
            for split in ("train", "test"):
                np.testing.assert_array_equal(getattr(large[r], split).margin,
                                              getattr(small[r], split).margin,
                                              err_msg=f"run {r}, {settings}")
    assert np.abs(large[0].test.margin - small[1].test.margin).max() > 0.5


@pytest.mark.slow
def test_each_model_trains_only_on_its_own_subset(digits):
    """Model 0 trains on the examples of labels 0 and 1 only.

    (1) It never predicts another class on the test set. (2) Replacing every training
    example outside its subset by noise with random labels leaves its predictions
    bit-identical, while the models that trained on those examples change.
    """
    only_01 = np.flatnonzero(digits.y_train <= 1)
    subsets, init, order = _runs(digits, [0, 1, 2, 3])
    group = [only_01] + subsets[1:]
    trainer = EnsembleTrainer(digits, CONFIG)
    runs = trainer.train(group, init, order, save_logits=True)
    predicted = runs[0].test.logits.argmax(axis=1)
    assert set(np.unique(predicted).tolist()) == {0, 1}
    assert runs[0].test.correctness[digits.y_test <= 1].all()
    assert runs[1].test.correctness.mean() > 0.8  # the others learned all classes

    rng = np.random.default_rng(0)
    outside = np.ones(digits.num_train, bool)
    outside[only_01] = False
    x_train, y_train = digits.x_train.copy(), digits.y_train.copy()
    x_train[outside] = rng.uniform(size=x_train[outside].shape).astype(np.float32)
    y_train[outside] = rng.integers(0, 10, outside.sum())
    noisy = dataclasses.replace(digits, x_train=x_train, y_train=y_train)
    noisy_runs = EnsembleTrainer(noisy, CONFIG).train(group, init, order,
                                                               save_logits=True)
    np.testing.assert_array_equal(noisy_runs[0].test.logits, runs[0].test.logits)
    for k in (1, 2, 3):
        assert np.abs(noisy_runs[k].test.logits - runs[k].test.logits).max() > 0.5


@pytest.mark.slow
def test_run_with_smaller_subset_does_not_depend_on_group(digits):
    small = np.arange(64, dtype=np.int64)
    big = subsets_lib.subset_indices(digits.num_train, SUBSET, SEED, 1)
    _, init, order = _runs(digits, [0, 1])
    config = dataclasses.replace(CONFIG, epochs=1, models_at_once=2, warmup_epochs=0.0)
    grouped = EnsembleTrainer(digits, config).train([small, big], init, order)
    alone = EnsembleTrainer(
        digits, dataclasses.replace(config, models_at_once=1)).train([small], init[:1],
                                                                     order[:1])
    np.testing.assert_array_equal(grouped[0].test.margin, alone[0].test.margin)
    assert (grouped[0].steps, grouped[1].steps, alone[0].steps) == (1, 15, 1)


@pytest.mark.slow
def test_steps_per_epoch_override_gives_equal_steps(digits):
    small = np.arange(64, dtype=np.int64)
    big = subsets_lib.subset_indices(digits.num_train, SUBSET, SEED, 1)
    _, init, order = _runs(digits, [0, 1])
    config = dataclasses.replace(CONFIG, epochs=2, models_at_once=2, warmup_epochs=0.0)
    trainer = EnsembleTrainer(digits, config)
    equal = trainer.train([small, big], init, order, steps_per_epoch=[15, 15])
    assert [run.steps for run in equal] == [30, 30]
    default = trainer.train([small, big], init, order)
    # 15 steps over 64 examples fit them much better than 1 step does.
    assert equal[0].train.margin[small].mean() > default[0].train.margin[small].mean() + 1.0


def test_group_size_limits(digits):
    trainer = EnsembleTrainer(digits, dataclasses.replace(CONFIG, models_at_once=4))
    subsets, init, order = _runs(digits, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="a group holds 1 to 4 runs, got 5"):
        trainer.train(subsets, init, order)
    with pytest.raises(ValueError, match="a group holds 1 to 4 runs, got 0"):
        trainer.train([], [], [])
    # A program holds at least 4 models (see training/ensemble.py).
    assert EnsembleTrainer(digits, dataclasses.replace(CONFIG, models_at_once=1)).num_models == 4


@pytest.mark.slow
def test_longer_training_is_accurate(digits):
    config = dataclasses.replace(CONFIG, epochs=15)
    runs = _train(EnsembleTrainer(digits, config), digits, [0, 1, 2, 3])
    accuracies = [run.test.correctness.mean() for run in runs]
    assert np.mean(accuracies) > 0.9, accuracies
    assert min(accuracies) > 0.85, accuracies


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_chunks_train_each_run_as_a_program_of_their_size(digits, model):
    """``chunk_models=4`` with K = 6 (rounded up to 8: two chunks in one XLA epoch
    program) gives every run the arrays a program of 4 models gives it, bit for bit,
    also with runs of unequal steps (the masked path) and augmented images (cnn, each
    chunk's seeds its own); the weights of every chunk are
    stored back (the exported models predict the recorded margins)."""
    augment = "crop_flip" if model == "cnn" else "none"  # each model's own augmentation
    base = dataclasses.replace(CONFIG, model=model, epochs=2, augment=augment)
    chunked = EnsembleTrainer(digits, dataclasses.replace(base, models_at_once=6,
                                                          chunk_models=4))
    assert (chunked.num_models, chunked.chunk_models) == (8, 4)
    alone = EnsembleTrainer(digits, base)
    run_ids = list(range(8))
    steps = [4 + r % 3 for r in run_ids]
    together = _train(chunked, digits, run_ids, steps_per_epoch=steps, export_models=True)
    for start in range(0, 8, 4):
        ids = run_ids[start:start + 4]
        for r, run in zip(ids, _train(alone, digits, ids, steps_per_epoch=steps[start:start + 4]),
                          strict=True):
            for split in ("train", "test"):
                np.testing.assert_array_equal(getattr(together[r], split).margin,
                                              getattr(run, split).margin, err_msg=f"run {r}")
            assert together[r].steps == run.steps
    logits = together[5].model(tf.constant(digits.x_test[:50])).numpy()
    labels = digits.y_test[:50]
    others = np.where(np.arange(logits.shape[1]) == labels[:, None], -np.inf, logits)
    margin = logits[np.arange(50), labels] - others.max(axis=1)  # the max-margin, by hand
    np.testing.assert_allclose(margin, together[5].test.margin[:50], rtol=1e-4, atol=1e-4)


def test_chunk_settings_refused_with_their_flag():
    for value in (-1, 1, 3):
        with pytest.raises(ValueError, match=f"^chunk_models={value}: expected 0"):
            training.TrainConfig(chunk_models=value)
    with pytest.raises(ValueError, match="^chunk_models=8: only the K-at-once"):
        training.TrainConfig(model="airbench", chunk_models=8)


def test_automatic_chunks_keep_weights_and_velocities_in_the_cache():
    """`auto_chunk_models`: floor(cache / (8 bytes x parameters)) models fit; a divisor
    of K not below half of that, else that many (K rounds up); K when under 4 or all fit."""
    from heldout.training.ensemble import auto_chunk_models
    mib = 1 << 20
    assert mib // (8 * 9610) == 13
    assert auto_chunk_models(250, 9610, mib) == 10  # divisors of 250 up to 13: 5, 10
    assert auto_chunk_models(251, 9610, mib) == 13  # 251 is prime: chunks of 13, K -> 260
    assert auto_chunk_models(100, 9610, mib) == 10
    assert auto_chunk_models(12, 9610, mib) == 12  # all 12 fit: no chunks
    assert auto_chunk_models(250, 71754, mib) == 250  # 1 fits: no chunks
    assert auto_chunk_models(250, 9610, 2 * mib) == 25  # 27 fit


def test_trainer_picks_automatic_chunks_by_model_size(digits, monkeypatch):
    from heldout.training import ensemble
    monkeypatch.setattr(ensemble, "l2_cache_bytes", lambda: 1 << 20)
    default = EnsembleTrainer(digits, training.TrainConfig())
    assert (default.num_models, default.chunk_models) == (250, 10)
    assert default._step_model is not default.model
    explicit = EnsembleTrainer(digits, training.TrainConfig(chunk_models=250))
    assert (explicit.num_models, explicit.chunk_models) == (250, 250)
    assert explicit._step_model is explicit.model
    without_xla = EnsembleTrainer(digits, training.TrainConfig(xla=False))
    assert without_xla.chunk_models == 250
    cnn = EnsembleTrainer(digits, training.TrainConfig(model="cnn", models_at_once=8))
    assert (cnn.num_models, cnn.chunk_models) == (8, 8)


def test_l2_cache_size_read_from_sysfs(tmp_path):
    from heldout.training.ensemble import _FALLBACK_L2_BYTES, l2_cache_bytes
    entries = {"index0": ("1", "Data", "48K"), "index1": ("1", "Instruction", "32K"),
               "index2": ("2", "Unified", "2048K"), "index3": ("3", "Unified", "32M")}
    for name, (level, kind, size) in entries.items():
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(value + "\n")
    assert l2_cache_bytes(str(tmp_path)) == 2048 * 1024
    (tmp_path / "index2" / "size").write_text("garbled\n")
    assert l2_cache_bytes(str(tmp_path)) == _FALLBACK_L2_BYTES
    assert l2_cache_bytes(str(tmp_path / "absent")) == _FALLBACK_L2_BYTES
