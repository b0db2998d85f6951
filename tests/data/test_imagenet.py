"""Tests of heldout/imagenet.py on small TFRecord shards written here: order by the index
feature, labels, center crops against a plain decode-crop-resize, scaling and
normalization, streamed batches, training crops, and errors that name what is wrong."""

import re

import numpy as np
import pytest
import tensorflow as tf

from heldout.data import imagenet

NUM_TRAIN, NUM_TEST = 11, 5


def _jpeg(image):
    # Without chroma subsampling, decoding a window of the JPEG (as the loader does) gives
    # exactly the pixels of decoding all of it and cropping (as the reference does).
    return tf.io.encode_jpeg(tf.constant(image, tf.uint8), quality=95,
                             chroma_downsampling=False).numpy()


def _example(jpeg, label, index, label_key=imagenet.LABEL_KEY):
    def int64(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        imagenet.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        label_key: int64(label),
        imagenet.INDEX_KEY: int64(index),
    })).SerializeToString()


def _write_shards(directory, split, examples, num_shards):
    """Writes (jpeg, label, index) examples round-robin into ``<split>-0000k-of-0000n``."""
    for shard in range(num_shards):
        path = str(directory / f"{split}-{shard:05d}-of-{num_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for jpeg, label, index in examples[shard::num_shards]:
                writer.write(_example(jpeg, label, index))
    return str(directory / f"{split}-*")


def _random_split(rng, num_examples):
    """Random JPEGs of random sizes with 1-based labels, in a shuffled index order."""
    indices = rng.permutation(num_examples)
    images = {int(i): rng.integers(0, 256, (rng.integers(24, 48), rng.integers(24, 48), 3),
                                   dtype=np.uint8) for i in indices}
    labels = {int(i): int(rng.integers(1, 5)) for i in indices}  # stored 1..4
    examples = [(_jpeg(images[i]), labels[i], i) for i in map(int, indices)]
    return examples, labels


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    train, train_labels = _random_split(rng, NUM_TRAIN)
    test, test_labels = _random_split(rng, NUM_TEST)
    return {
        "train": _write_shards(directory, "train", train, 2),
        "test": _write_shards(directory, "validation", test, 2),
        "train_examples": train, "train_labels": train_labels, "test_labels": test_labels,
        "directory": directory,
    }


def _reference_center_crop(jpeg, image_size):
    """Decode everything, crop the central square of 7/8 of the shorter side, resize."""
    image = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    height, width = image.shape[:2]
    side = int(0.875 * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = image[top:top + side, left:left + side].astype(np.float32) / 255
    return tf.image.resize(crop[np.newaxis], [image_size, image_size])[0].numpy()


def test_arrays_ordered_by_index_with_zero_based_labels(shards):
    data = imagenet.load_imagenet_tfrecords(shards["train"], shards["test"], image_size=16,
                                            mean_std=None, batch_size=4)
    assert data.x_train.shape == (NUM_TRAIN, 16, 16, 3)
    assert data.x_test.shape == (NUM_TEST, 16, 16, 3)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(
        data.y_train, [shards["train_labels"][i] - 1 for i in range(NUM_TRAIN)])
    np.testing.assert_array_equal(
        data.y_test, [shards["test_labels"][i] - 1 for i in range(NUM_TEST)])
    assert data.num_classes == 4
    assert data.name == f"imagenet:{shards['train']},{shards['test']}"
    # Row i holds the image whose index feature is i.
    for jpeg, _, index in shards["train_examples"]:
        np.testing.assert_allclose(data.x_train[index], _reference_center_crop(jpeg, 16),
                                   atol=1e-5)
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1


def test_scaling_and_published_normalization(tmp_path):
    white, gray = np.full((40, 30, 3), 255, np.uint8), np.full((30, 40, 3), 51, np.uint8)
    pattern = _write_shards(tmp_path, "train", [(_jpeg(gray), 1, 1), (_jpeg(white), 2, 0)], 1)
    plain = imagenet.load_imagenet_tfrecords(pattern, pattern, image_size=8, mean_std=None)
    np.testing.assert_array_equal(plain.x_train[0], 1.0)  # uint8 255 -> 1
    np.testing.assert_allclose(plain.x_train[1], 51 / 255, atol=1.5 / 255)  # JPEG rounding
    normalized = imagenet.load_imagenet_tfrecords(pattern, pattern, image_size=8)
    np.testing.assert_allclose(
        normalized.x_train,
        (plain.x_train - np.float32(imagenet.IMAGENET_MEAN)) / np.float32(imagenet.IMAGENET_STD),
        rtol=1e-5, atol=1e-5)


def test_label_offset(tmp_path):
    image = _jpeg(np.zeros((8, 8, 3), np.uint8))
    pattern = _write_shards(tmp_path, "train", [(image, 0, 0), (image, 2, 1)], 1)
    data = imagenet.load_imagenet_tfrecords(pattern, pattern, image_size=4, label_offset=0,
                                            num_classes=10)
    np.testing.assert_array_equal(data.y_train, [0, 2])
    assert data.num_classes == 10
    with pytest.raises(ValueError, match="label_offset=1"):
        imagenet.load_imagenet_tfrecords(pattern, pattern, image_size=4)
    with pytest.raises(ValueError, match="num_classes=2"):
        imagenet.load_imagenet_tfrecords(pattern, pattern, image_size=4, label_offset=0,
                                         num_classes=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset=1"):
        list(imagenet.imagenet_dataset(pattern, image_size=4))


def test_streamed_batches_for_evaluation(shards):
    batches = list(imagenet.imagenet_dataset(shards["train"], batch_size=4, image_size=12,
                                             mean_std=None).as_numpy_iterator())
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 3]
    images, labels, indices = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    assert images.shape == (NUM_TRAIN, 12, 12, 3) and images.dtype == np.float32
    assert labels.dtype == np.int64 and indices.dtype == np.int64
    assert sorted(indices) == list(range(NUM_TRAIN))
    np.testing.assert_array_equal(labels, [shards["train_labels"][i] - 1 for i in indices])
    examples = {index: jpeg for jpeg, _, index in shards["train_examples"]}
    for image, index in zip(images, indices, strict=True):
        np.testing.assert_allclose(image, _reference_center_crop(examples[index], 12), atol=1e-5)
    # The same order every time.
    again = np.concatenate([i for _, _, i in imagenet.imagenet_dataset(
        shards["train"], batch_size=5, image_size=12).as_numpy_iterator()])
    np.testing.assert_array_equal(again, indices)


def test_training_batches_are_shuffled_augmented_and_seeded(shards):
    def epoch(seed):
        dataset = imagenet.imagenet_dataset(shards["train"], batch_size=NUM_TRAIN,
                                            image_size=10, training=True, seed=seed,
                                            mean_std=None)
        return next(dataset.as_numpy_iterator())

    images, labels, indices = epoch(1)
    assert images.shape == (NUM_TRAIN, 10, 10, 3)
    assert 0 <= images.min() and images.max() <= 1
    assert sorted(indices) == list(range(NUM_TRAIN))
    np.testing.assert_array_equal(labels, [shards["train_labels"][i] - 1 for i in indices])
    again = epoch(1)
    np.testing.assert_array_equal(again[2], indices)
    np.testing.assert_array_equal(again[0], images)
    other = epoch(2)
    by_index = dict(zip(indices, images, strict=True))
    assert any(not np.array_equal(by_index[i], image)
               for i, image in zip(other[2], other[0], strict=True))


def test_bad_pattern_names_the_pattern(shards, tmp_path):
    missing = str(tmp_path / "nothing-*")
    with pytest.raises(ValueError, match=re.escape(f"no TFRecord files match '{missing}'")):
        imagenet.load_imagenet_tfrecords(missing, shards["test"], image_size=8)
    with pytest.raises(ValueError, match="nothing-"):
        imagenet.imagenet_dataset(missing)


def test_missing_feature_and_bad_indices_are_named(tmp_path):
    image = _jpeg(np.zeros((8, 8, 3), np.uint8))
    path = str(tmp_path / "no-index")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(_example(image, 1, 0, label_key="label"))
    with pytest.raises(ValueError, match="'image/class/label'"):
        imagenet.imagenet_dataset(path)
    with pytest.raises(ValueError, match="feature 'idx'"):
        imagenet.imagenet_dataset(path, label_key="label", index_key="idx")

    duplicate = _write_shards(tmp_path, "dup", [(image, 1, 0), (image, 1, 0)], 1)
    with pytest.raises(ValueError, match="index 0 occurs 2 times"):
        imagenet.load_imagenet_tfrecords(duplicate, duplicate, image_size=4)
    gap = _write_shards(tmp_path, "gap", [(image, 1, 0), (image, 1, 2)], 1)
    with pytest.raises(ValueError, match="index 1 is missing"):
        imagenet.load_imagenet_tfrecords(gap, gap, image_size=4)


def test_spec():
    with pytest.raises(ValueError, match="imagenet:<train file pattern>,<test file pattern>"):
        imagenet.load_imagenet_spec("imagenet:only-one-pattern")
    with pytest.raises(ValueError, match="no TFRecord files match"):
        imagenet.load_imagenet_spec("imagenet:/nonexistent/a-*,/nonexistent/b-*")
