"""evaluate_run_streaming on a ResNet-50-shaped run over tiny TFRecords built by the builder."""

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from heldout.data import build_imagenet, imagenet
from heldout.models import checkpoints, evaluate
from heldout.store import runs
from tests.data.test_build_imagenet import SYNSETS, write_imagenet_folder

IMAGE_SIZE = 32


def _independent_correctness(model, pattern: str, labels_in_index_order) -> np.ndarray:
    """Correctness of every example in index order, from an in-memory load of the records
    (no streaming, no index matching) and one forward pass."""
    data = imagenet.load_imagenet_tfrecords(pattern, pattern, IMAGE_SIZE)
    np.testing.assert_array_equal(data.y_test, labels_in_index_order)
    logits = model(tf.constant(data.x_test), is_training=False).numpy()
    return np.argmax(logits, axis=1) == data.y_test


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    folder = write_imagenet_folder(root)
    build_imagenet.build_imagenet_tfrecords(
        str(root), str(root / "imagenet_index.npz"), str(root / "records"),
        num_train_shards=3, num_validation_shards=2, num_threads=2,
        validation_labels_file=str(root / "val_labels.txt"), progress=False)
    tf.random.set_seed(0)
    model = snt.nets.ResNet50(num_classes=len(SYNSETS))
    model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), is_training=False)
    # Spread the classifier's weights so that the tiny model predicts several classes.
    # (Sonnet initializes the logits layer to zeros: every example would be class 0.)
    model._logits.w.assign(tf.random.normal(model._logits.w.shape, stddev=1.0, seed=1))
    correct = {
        "train": _independent_correctness(model, str(root / "records" / "train-*"),
                                          folder["arrays"]["tr_labels"]),
        "test": _independent_correctness(model, str(root / "records" / "validation-*"),
                                         folder["arrays"]["tt_labels"])}
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(len(correct["train"]), 6, replace=False))
    arrays = runs.aux_arrays(subset, correct["train"], correct["test"])
    # Released files list each split in their own order: shuffle, so matching must be by index.
    for split in runs.SPLITS:
        order = rng.permutation(len(arrays[f"index_{split}"]))
        for key in (f"index_{split}", f"correctness_{split}"):
            arrays[key] = arrays[key][order]
    checkpoint = tf.train.Checkpoint(model=model, epoch=tf.Variable(90, dtype=tf.int64),
                                     global_step=tf.Variable(1000, dtype=tf.int64))
    run_dir = str(root / "run")
    runs.save_run(run_dir, arrays, checkpoint=checkpoint, epoch=90)
    restored = checkpoints.restore_run_model(run_dir, "resnet50", len(SYNSETS),
                                             (IMAGE_SIZE, IMAGE_SIZE, 3))
    return root, run_dir, correct, restored


def _check(root, run_dir, split="test", **kwargs):
    pattern = "validation-*" if split == "test" else "train-*"
    return evaluate.evaluate_run_streaming(
        run_dir, "resnet50", str(root / "records" / pattern), split=split,
        num_classes=len(SYNSETS), image_size=IMAGE_SIZE, batch_size=2, progress=False,
        **kwargs)


@pytest.mark.slow
def test_every_prediction_matches_by_index(resnet_run):
    root, run_dir, correct, restored = resnet_run
    assert 0 < correct["test"].sum() + correct["train"].sum() < 14  # not all one answer
    for split in ("test", "train"):  # test: restored here; train: the restored model reused
        check = _check(root, run_dir, split, restored=restored if split == "train" else None)
        assert check.total == check.num_examples == len(correct[split])
        assert check.matches == check.total
        assert check.correct == correct[split].sum()
        assert str(check).endswith(f"{check.total} out of {check.total} predictions match")
    assert check.restored.epoch == 90
    partial = _check(root, run_dir, max_examples=3, restored=restored)
    assert partial.total == 3 and partial.matches == 3


@pytest.mark.slow
def test_a_wrong_stored_prediction_is_counted(resnet_run):
    root, run_dir, _, restored = resnet_run
    arrays = runs.load_run(run_dir)
    position = int(np.flatnonzero(arrays["index_test"] == 2)[0])
    arrays["correctness_test"][position] ^= True  # test example 2 stored wrongly
    np.savez(f"{run_dir}/aux_arrays.npz", **arrays)
    try:
        check = _check(root, run_dir, restored=restored)
        assert check.matches == check.total - 1
    finally:
        arrays["correctness_test"][position] ^= True
        np.savez(f"{run_dir}/aux_arrays.npz", **arrays)


def test_stored_correctness_by_index():
    arrays = {"index_train": np.array([3, 0]), "correctness_train": np.array([True, False]),
              "index_removed": np.array([1, 2]), "correctness_removed": np.array([True, True]),
              "index_test": np.array([1, 0]), "correctness_test": np.array([False, True])}
    np.testing.assert_array_equal(evaluate.stored_correctness(arrays, "train"),
                                  [False, True, True, True])
    np.testing.assert_array_equal(evaluate.stored_correctness(arrays, "test"), [True, False])
    arrays["index_test"] = np.array([1, 1])
    with pytest.raises(ValueError, match="not 0..1 once each"):
        evaluate.stored_correctness(arrays, "test")
    with pytest.raises(ValueError, match="split='dev'"):
        evaluate.stored_correctness(arrays, "dev")
