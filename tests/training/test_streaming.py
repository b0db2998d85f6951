"""Streamed training (heldout/training/streaming.py) on tiny ImageNet-style TFRecords.

Checks against independent computations: the subset is the in-memory design's
(`designs.subset_indices`), the membership filter yields exactly the subset, the stored
train/test correctness and margins equal a plain in-memory forward pass of the saved
checkpoint on the center-cropped images (`imagenet.load_imagenet_tfrecords`), and
`evaluate_run_streaming` matches every prediction by index.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from heldout.data import imagenet
from heldout.models import checkpoints, evaluate
from heldout.models.predict import prediction_arrays
from heldout.store import designs, runs
from heldout.training import experiment, streaming
from heldout.training.config import TrainConfig
from tests.data.test_imagenet import _jpeg, _write_shards

NUM_TRAIN, NUM_TEST, NUM_CLASSES, IMAGE_SIZE = 40, 12, 3, 32
SUBSET, SEED, RUN_IDS = "0.5", 3, (0, 1)
# Two epochs: enough for the model to tell the classes apart on most (not all) examples.
CONFIG = TrainConfig(model="small_inception", model_width=0.25, epochs=2, batch_size=8,
                     learning_rate=0.02, warmup_epochs=0.0, xla=False)


def _split(rng, num_examples):
    """JPEGs whose mean colour depends on the class (1-based labels), shuffled order."""
    examples = []
    for index in rng.permutation(num_examples):
        label = int(index % NUM_CLASSES) + 1
        size = rng.integers(32, 48, 2)
        image = rng.integers(0, 80, (*size, 3)) + 80 * np.eye(3, dtype=int)[label - 1]
        examples.append((_jpeg(image.astype(np.uint8)), label, int(index)))
    return examples


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    train = _write_shards(directory, "train", _split(rng, NUM_TRAIN), 3)
    test = _write_shards(directory, "validation", _split(rng, NUM_TEST), 2)
    return directory, f"{imagenet.SPEC_PREFIX}{train},{test}"


def test_streaming_data_counts_records(records):
    _, spec = records
    data = imagenet.streaming_data(spec, IMAGE_SIZE)
    assert (data.num_train, data.num_test, data.num_classes) == (NUM_TRAIN, NUM_TEST,
                                                                  NUM_CLASSES)
    assert data.input_shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    with pytest.raises(ValueError, match="num_classes=2"):
        imagenet.streaming_data(spec, IMAGE_SIZE, num_classes=2)


def test_member_mask_streams_exactly_the_subset(records):
    _, spec = records
    data = imagenet.streaming_data(spec, IMAGE_SIZE)
    subset = designs.subset_indices(NUM_TRAIN, "0.7", SEED, 5)
    mask = np.zeros(NUM_TRAIN, bool)
    mask[subset] = True
    batch = 8
    steps = math.ceil(len(subset) / batch)

    def stream(seed):
        batches = data.dataset("train", batch, training=True, seed=seed, member_mask=mask,
                               repeat=True, drop_remainder=True).take(steps)
        images, _, indices = zip(*batches.as_numpy_iterator(), strict=True)
        return np.concatenate(images), np.concatenate(indices)

    images, seen = stream(seed=1)
    assert len(seen) == steps * batch  # every batch full
    np.testing.assert_array_equal(np.sort(seen[:len(subset)]), subset)  # each once first
    assert set(seen) == set(subset)
    again, seen_again = stream(seed=1)  # a run's stream is reproducible from its seed
    np.testing.assert_array_equal(seen_again, seen)
    np.testing.assert_array_equal(again, images)
    assert not np.array_equal(stream(seed=2)[1], seen)  # another seed, another order


def test_refuses_settings_that_cannot_stream(records):
    _, spec = records
    data = imagenet.streaming_data(spec, IMAGE_SIZE)
    with pytest.raises(ValueError, match="^augment=flip"):
        streaming.StreamingTrainer(data, TrainConfig(model="small_inception", augment="flip"))
    with pytest.raises(ValueError, match="^model=mlp"):
        streaming.StreamingTrainer(data, TrainConfig(model="mlp"))


@pytest.mark.slow
def test_streamed_runs_store_what_in_memory_runs_store(records):
    directory, spec = records
    data = imagenet.streaming_data(spec, IMAGE_SIZE)
    experiment_dir = str(directory / "experiment")
    summary = experiment.train_experiment(
        experiment_dir, spec, CONFIG, SUBSET, RUN_IDS, seed=SEED, save_checkpoints=True,
        progress=False, data=data, claim_runs=False, settle_seconds=0)
    assert summary.trained == RUN_IDS
    everything = []  # every stored correctness: must not be all one answer
    memory = imagenet.load_imagenet_tfrecords(data.train_pattern, data.test_pattern,
                                              IMAGE_SIZE)
    for run_id in RUN_IDS:
        run_dir = runs.run_dir(experiment_dir, SUBSET, run_id)
        arrays = runs.load_run(run_dir)
        subset = designs.subset_indices(NUM_TRAIN, SUBSET, SEED, run_id)
        np.testing.assert_array_equal(arrays[runs.SUBSET_INDICES], subset)
        assert arrays[runs.SUBSET_INDICES].dtype == np.int64
        removed = np.setdiff1d(np.arange(NUM_TRAIN), subset)
        np.testing.assert_array_equal(arrays["index_train"], subset)
        np.testing.assert_array_equal(arrays["index_removed"], removed)
        np.testing.assert_array_equal(arrays["index_test"], np.arange(NUM_TEST))
        for key in ("correctness_train", "correctness_removed", "correctness_test"):
            assert arrays[key].dtype == bool
        for key in ("margin_train", "logodds_test"):
            assert arrays[key].dtype == np.float32

        # Independent: the saved checkpoint, one plain forward pass over arrays in memory.
        model = checkpoints.restore_run_model(run_dir, CONFIG.model, NUM_CLASSES,
                                              data.input_shape, CONFIG.model_width).model
        for split, x, y, parts in (("train", memory.x_train, memory.y_train,
                                    ("train", "removed")),
                                   ("test", memory.x_test, memory.y_test, ("test",))):
            logits = model(tf.constant(x), is_training=False).numpy()[None]
            correct, margin, _ = prediction_arrays(logits, y)
            index = np.concatenate([arrays[f"index_{p}"] for p in parts])
            stored = np.concatenate([arrays[f"correctness_{p}"] for p in parts])
            np.testing.assert_array_equal(stored, correct[0][index])
            everything.append(stored)
            stored_margin = np.concatenate([arrays[f"margin_{p}"] for p in parts])
            np.testing.assert_allclose(stored_margin, margin[0][index], rtol=1e-3, atol=1e-3)

            check = evaluate.evaluate_run_streaming(
                run_dir, CONFIG.model, data.pattern(split), split=split,
                num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, width=CONFIG.model_width,
                batch_size=5, progress=False)
            assert check.matches == check.total == len(y)
    assert 0.3 < np.concatenate(everything).mean() < 1.0
    first, second = (runs.load_run(runs.run_dir(experiment_dir, SUBSET, r)) for r in RUN_IDS)
    assert not np.array_equal(first[runs.SUBSET_INDICES], second[runs.SUBSET_INDICES])
