"""ImageNet-style TFRecords with a per-example index: streamed as tf.data, or loaded as arrays.

The released ImageNet runs were trained on TFRecords built by the published
``imagenet-tfrecords-builder`` (the standard Inception/ResNet build script plus an
``index`` feature that numbers the examples; the filename-to-index mapping is published
so anyone can rebuild them). Each record is a ``tf.train.Example`` with:

* ``image/encoded``: the JPEG bytes (RGB; the builder re-encodes PNG/CMYK files).
* ``image/class/label``: int64 class, **1-based** (1..1000, 0 unused) in these files, so
  the default ``label_offset=1`` gives labels 0..999. Use ``label_offset=0`` for records
  with 0-based labels.
* ``index``: int64, the example's index (0..N-1), which run files store.

Preprocessing follows the published pipeline:

* Evaluation: a centered square crop of side ``crop_fraction * min(height, width)``
  (0.875 = 224 / (224 + 32), as published), decoded with ``decode_and_crop_jpeg`` (for
  chroma-subsampled JPEGs this differs slightly from decoding all and then cropping; the
  published pipeline's choice is kept so predictions match).
* Training: a random crop of 8%..100% of the area with aspect ratio 3/4..4/3 (the center
  crop when sampling fails), then a random horizontal flip.
* Then, for both: pixels scaled to [0, 1] (uint8 / 255, as every source), a bilinear resize to
  ``image_size``, and by default the ImageNet channel mean/std normalization that the
  ResNet-50 recipe of the released checkpoints asks for (``mean_std=None``: plain [0, 1]).

Full ImageNet does not fit in memory as arrays (1.28M training images at 224x224x3
float32 are about 770 GB), so evaluation and training at that scale stream batches with
`imagenet_dataset`; `load_imagenet_tfrecords` gives the in-memory `Dataset` of the rest
of the package, for subsets or small image sizes (at 32x32, the training set is 16 GB).
All file access goes through TensorFlow's file systems, so patterns may be gs:// paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.data import safe_npz
from heldout.data.dataset import Dataset
from heldout.errors import ParameterError

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
INDEX_KEY = "index"

# Channel statistics of ImageNet in [0, 1] pixels, used by the published ResNet-50 recipe.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_STD = (IMAGENET_MEAN, IMAGENET_STD)

# Evaluation crops this fraction of the shorter side: the published 224 / (224 + 32). (The
# published code wrote it as image_size / (image_size + 32), the same at 224 pixels but a
# much smaller crop at small sizes: 32 / 64 at 32 pixels.)
CENTER_CROP_FRACTION = 0.875

SPEC_PREFIX = "imagenet:"

# Random training crops: fraction of the image area and aspect ratio (width / height).
_TRAIN_AREA_RANGE = (0.08, 1.0)
_TRAIN_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_TRAIN_CROP_ATTEMPTS = 10

MeanStd = tuple[Sequence[float], Sequence[float]]


INDEX_FILE_KEYS = ("tr_filenames", "tr_labels", "tt_filenames", "tt_labels")


@dataclasses.dataclass(frozen=True)
class ImagenetIndex:
    """The published ``imagenet_index.npz``: the data order of the released ImageNet runs.

    Position ``i`` of a split is the example whose ``index`` is ``i`` in the TFRecords
    and in the runs' aux arrays.

    Attributes:
        tr_filenames: ``[num_train]`` training file names (str), in index order.
        tr_labels: int64 ``[num_train]`` their classes, as stored in the file.
        tt_filenames: ``[num_test]`` validation file names (str).
        tt_labels: int64 ``[num_test]``.
        tr_mem: float64 ``[num_train]`` memorization estimates, or None if absent.
    """

    tr_filenames: list[str]
    tr_labels: np.ndarray
    tt_filenames: list[str]
    tt_labels: np.ndarray
    tr_mem: np.ndarray | None = None


def read_npz_keys(path: str, required: Sequence[str], what: str = "file"
                  ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (local or gs://), after checking `required` keys are there.

    Nothing in the file is unpickled: object arrays are read only when they hold plain
    strings (the published ImageNet index's file names), by `safe_npz`. A bare ``.npy``
    reads as the one key ``arr_0``.

    Args:
        path: the file.
        required: keys that must be present.
        what: what the file should be, for messages ("C-score file").

    Raises:
        ValueError: one line naming the file and the first missing key, or saying that
            the file cannot be read or asks for more than arrays of numbers and strings.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            content = f.read()
        arrays = safe_npz.read_npz_bytes(content)
    except safe_npz.UnsafeFileError as e:
        raise ValueError(f"{path}: refused as a {what}: {e}") from None
    except Exception as e:  # noqa: BLE001 (GFile, zipfile and numpy raise many types)
        raise ValueError(f"{path}: cannot read as a {what} .npz "
                         f"({type(e).__name__}: {e})") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a {what}: missing key {missing[0]!r} "
                         f"(has {', '.join(sorted(arrays)) or 'no keys'})")
    return arrays


def load_imagenet_index(path: str) -> ImagenetIndex:
    """Reads the published ``imagenet_index.npz``, checked.

    Its file names are base names (``n01440764_10026.JPEG``, ``ILSVRC2012_val_00000293.JPEG``)
    and its labels 0-based (the published builder asserts ``record label == index label + 1``).

    Raises:
        ValueError: a key is missing (named), or filenames and labels differ in length.
    """
    arrays = read_npz_keys(path, INDEX_FILE_KEYS, "ImageNet index file")
    for prefix in ("tr", "tt"):
        if len(arrays[f"{prefix}_filenames"]) != len(arrays[f"{prefix}_labels"]):
            raise ValueError(f"{path}: {prefix}_filenames has {len(arrays[f'{prefix}_filenames'])} "
                             f"entries but {prefix}_labels has {len(arrays[f'{prefix}_labels'])}")
    tr_mem = arrays.get("tr_mem")
    if tr_mem is not None and len(tr_mem) != len(arrays["tr_labels"]):
        raise ValueError(f"{path}: tr_mem has {len(tr_mem)} entries but tr_labels has "
                         f"{len(arrays['tr_labels'])}")
    return ImagenetIndex(
        tr_filenames=as_strings(arrays["tr_filenames"]),
        tr_labels=arrays["tr_labels"].astype(np.int64),
        tt_filenames=as_strings(arrays["tt_filenames"]),
        tt_labels=arrays["tt_labels"].astype(np.int64), tr_mem=tr_mem)


def as_strings(values: np.ndarray) -> list[str]:
    """A vector of file names (str, bytes or an object array of them) as str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]


def list_files(file_pattern: str) -> list[str]:
    """The files matching a glob pattern (local or gs://), sorted.

    Raises:
        ValueError: no file matches `file_pattern`.
    """
    try:
        files = sorted(tf.io.gfile.glob(file_pattern))
    except tf.errors.OpError as e:
        raise ValueError(f"cannot list TFRecord files {file_pattern!r}: {e.message}") from e
    if not files:
        raise ValueError(f"no TFRecord files match {file_pattern!r}")
    return files


def imagenet_dataset(file_pattern: str, batch_size: int = 256, image_size: int = 224, *,
                     training: bool = False, seed: int = 0,
                     crop_fraction: float = CENTER_CROP_FRACTION,
                     mean_std: MeanStd | None = IMAGENET_MEAN_STD, label_offset: int = 1,
                     image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY,
                     index_key: str = INDEX_KEY, shuffle_buffer: int = 10_000,
                     drop_remainder: bool = False, member_mask: np.ndarray | None = None,
                     repeat: bool = False) -> tf.data.Dataset:
    """Batches ``(images, labels, indices)`` of the TFRecords matching `file_pattern`.

    Args:
        file_pattern: glob of TFRecord files (``.../validation-*``), local or gs://.
        batch_size: examples per batch.
        image_size: side of the square output images, in pixels.
        training: random crops and flips, files and examples shuffled; otherwise center
            crops in file order (files sorted by name, records as stored).
        seed: with `training`, the shuffle order and the augmentation of example ``i``
            depend on ``(seed, i)`` only; pass a different seed each epoch.
        crop_fraction: side of the evaluation center crop, as a fraction of the shorter
            side of the image.
        mean_std: per-channel ``(mean, std)`` subtracted from and divided into the [0, 1]
            pixels; None for no normalization.
        label_offset: the stored label of class 0 (1 for the published 1-based files).
        image_key, label_key, index_key: feature names in the records.
        shuffle_buffer: with `training`, examples in the shuffle buffer.
        drop_remainder: drop a last, smaller batch.
        member_mask: bool ``[num_examples]``: keep only the records whose index is true
            here (a run's training subset), looked up before the JPEG is decoded. An
            index outside the mask stops iteration with an InvalidArgumentError.
        repeat: start over when the records are exhausted (reshuffled with `training`),
            so every batch is full; take a number of batches.

    Returns:
        A dataset of ``(images, labels, indices)``: float32 ``[B, image_size, image_size, 3]``,
        int64 ``[B]`` and int64 ``[B]``. A label below 0 after subtracting `label_offset`
        stops iteration with an InvalidArgumentError naming `label_offset`.

    Raises:
        ValueError: no file matches, a record lacks one of the features, or an argument is
            out of range.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    files = list_files(file_pattern)
    _check_features(file_pattern, files, image_key, label_key, index_key)
    features = {
        image_key: tf.io.FixedLenFeature([], tf.string),
        label_key: tf.io.FixedLenFeature([], tf.int64),
        index_key: tf.io.FixedLenFeature([], tf.int64),
    }
    mean, std = _mean_std_constants(mean_std)

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(record, features)
        return example[image_key], example[label_key], example[index_key]

    def transform(jpeg: tf.Tensor, label: tf.Tensor, index: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if training:
            image = _random_crop_and_flip(jpeg, image_size, crop_fraction, seed, index)
        else:
            image = _center_crop(jpeg, image_size, crop_fraction)
        if mean is not None:
            image = (image - mean) / std
        label = label - label_offset
        check = tf.debugging.assert_non_negative(
            label, message=f"{file_pattern}: negative label after label_offset={label_offset} "
                           f"(are the labels in {label_key!r} 0-based? then label_offset=0)")
        with tf.control_dependencies([check]):
            label = tf.identity(label)
        return image, label, index

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    # Interleaving reads files in parallel; with `deterministic` the order stays fixed.
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(16, len(files)),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if member_mask is not None:
        mask = tf.constant(np.asarray(member_mask, bool))
        dataset = dataset.filter(lambda jpeg, label, index: tf.gather(mask, index))
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load_imagenet_tfrecords(file_pattern_train: str, file_pattern_test: str,
                            image_size: int = 224, index_key: str = INDEX_KEY, *,
                            crop_fraction: float = CENTER_CROP_FRACTION,
                            mean_std: MeanStd | None = IMAGENET_MEAN_STD,
                            label_offset: int = 1, num_classes: int | None = None,
                            image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY,
                            batch_size: int = 256) -> Dataset:
    """Train and test splits as in-memory arrays, each ordered by its index feature.

    Images are center-cropped as for evaluation (see `imagenet_dataset`); row ``i`` of a
    split is the example whose index is ``i``, so the `Dataset`'s positions are the
    indices run files store. Only for data that fits in memory (see the module docstring).

    Args:
        file_pattern_train: glob of the training TFRecords, local or gs://.
        file_pattern_test: glob of the test (validation) TFRecords.
        image_size: side of the square images, in pixels.
        index_key: name of the int64 index feature.
        crop_fraction: side of the center crop, as a fraction of the shorter image side.
        mean_std: per-channel ``(mean, std)`` normalization of the [0, 1] pixels; None for
            none.
        label_offset: the stored label of class 0 (1 for the published 1-based files).
        num_classes: number of classes; None takes the largest label + 1.
        image_key, label_key: feature names of the JPEG bytes and the label.
        batch_size: records decoded at once while loading.

    Returns:
        A `Dataset` named ``imagenet:<train pattern>,<test pattern>``.

    Raises:
        ValueError: no file matches a pattern, records lack a feature, the indices of a
            split are not 0..N-1 each once, a label is negative after `label_offset`, or a
            label is not below `num_classes`.
    """
    splits = {}
    for split, pattern in (("train", file_pattern_train), ("test", file_pattern_test)):
        dataset = imagenet_dataset(
            pattern, batch_size, image_size, crop_fraction=crop_fraction,
            mean_std=mean_std, label_offset=0,
            image_key=image_key, label_key=label_key, index_key=index_key)
        images, labels, indices = [], [], []
        for image, label, index in dataset.as_numpy_iterator():
            images.append(image)
            labels.append(label)
            indices.append(index)
        labels = np.concatenate(labels) - label_offset
        indices = np.concatenate(indices)
        _check_not_below_offset(pattern, labels, label_offset, label_key)
        order = _order_by_index(pattern, index_key, indices)
        splits[split] = (np.concatenate(images)[order], labels[order])
    largest = max(int(splits["train"][1].max()), int(splits["test"][1].max()))
    num_classes = _num_classes(largest, num_classes)
    return Dataset(
        name=f"{SPEC_PREFIX}{file_pattern_train},{file_pattern_test}",
        x_train=splits["train"][0], y_train=splits["train"][1],
        x_test=splits["test"][0], y_test=splits["test"][1],
        num_classes=num_classes)


def load_imagenet_spec(spec: str, image_size: int = 224, **kwargs) -> Dataset:
    """Loads ``imagenet:<train pattern>,<test pattern>`` with `load_imagenet_tfrecords`.

    Raises:
        ValueError: the spec is not of that form, or loading fails.
    """
    patterns = parse_spec(spec)
    return load_imagenet_tfrecords(patterns[0], patterns[1], image_size, **kwargs)


@dataclasses.dataclass(frozen=True)
class StreamingData:
    """ImageNet-style TFRecords described for streamed training, never loaded as arrays.

    What `heldout.training.streaming` needs in place of an in-memory `Dataset`: the
    file patterns, the split sizes (indices are ``0..num - 1``), the classes and the
    preprocessing of `imagenet_dataset`.

    Attributes:
        train_pattern, test_pattern: globs of the two splits' TFRecords (local or gs://).
        num_train, num_test: examples per split.
        num_classes: labels are in ``[0, num_classes)`` after `label_offset`.
        image_size: side of the square model inputs, in pixels.
        label_offset: the stored label of class 0 (1 for the published 1-based files).
        mean_std: per-channel ``(mean, std)`` of the [0, 1] pixels; None: no normalization.
        crop_fraction: side of the evaluation center crop, as a fraction of the shorter side.
    """

    train_pattern: str
    test_pattern: str
    num_train: int
    num_test: int
    num_classes: int
    image_size: int = 224
    label_offset: int = 1
    mean_std: MeanStd | None = IMAGENET_MEAN_STD
    crop_fraction: float = CENTER_CROP_FRACTION

    def __post_init__(self):
        for name in ("num_train", "num_test", "num_classes", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        _mean_std_constants(self.mean_std)  # validates

    @property
    def name(self) -> str:
        """The data spec, ``imagenet:<train pattern>,<test pattern>``."""
        return f"{SPEC_PREFIX}{self.train_pattern},{self.test_pattern}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def pattern(self, split: str) -> str:
        """The file pattern of ``train`` or ``test``."""
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}: expected 'train' or 'test'")
        return self.train_pattern if split == "train" else self.test_pattern

    def dataset(self, split: str, batch_size: int, **kwargs) -> tf.data.Dataset:
        """`imagenet_dataset` of one split with this data's preprocessing; `kwargs` as there
        (``training``, ``seed``, ``member_mask``, ``repeat``, ...)."""
        return imagenet_dataset(self.pattern(split), batch_size, self.image_size,
                                crop_fraction=self.crop_fraction, mean_std=self.mean_std,
                                label_offset=self.label_offset, **kwargs)

    def fingerprint(self) -> dict:
        """What identifies the data in ``experiment.json`` without reading every record:
        the sizes, the preprocessing, and each file's name and length in bytes."""
        return {
            "streamed": True, "num_train": self.num_train, "num_test": self.num_test,
            "num_classes": self.num_classes, "image_size": self.image_size,
            "label_offset": self.label_offset, "crop_fraction": self.crop_fraction,
            "mean_std": None if self.mean_std is None else [list(map(float, v))
                                                            for v in self.mean_std],
            "files": {split: [[path.rsplit("/", 1)[-1], int(tf.io.gfile.stat(path).length)]
                              for path in list_files(self.pattern(split))]
                      for split in ("train", "test")}}


def streaming_data(spec: str, image_size: int = 224, *, num_classes: int | None = None,
                   label_offset: int = 1, mean_std: MeanStd | None = IMAGENET_MEAN_STD,
                   crop_fraction: float = CENTER_CROP_FRACTION,
                   index_key: str = INDEX_KEY, label_key: str = LABEL_KEY) -> StreamingData:
    """`StreamingData` of ``imagenet:<train pattern>,<test pattern>``, sizes counted.

    Reads every record once (the index and label features only, no JPEG decoding) to
    count the examples and check that each split's indices are ``0..N-1`` once each;
    on full ImageNet that is one pass over the files. To skip it, build `StreamingData`
    with known sizes.

    Raises:
        ValueError: the spec is not of that form, no file matches, the indices of a
            split are not ``0..N-1`` each once, a label is below `label_offset`, or a
            label is not below `num_classes`.
    """
    patterns = parse_spec(spec)
    features = {label_key: tf.io.FixedLenFeature([], tf.int64),
                index_key: tf.io.FixedLenFeature([], tf.int64)}
    sizes, largest = [], -1
    for pattern in patterns:
        records = tf.data.TFRecordDataset(list_files(pattern)).batch(4096).map(
            lambda batch: tf.io.parse_example(batch, features))
        labels, indices = [], []
        for parsed in records.as_numpy_iterator():
            labels.append(parsed[label_key])
            indices.append(parsed[index_key])
        if not indices:
            raise ValueError(f"{pattern}: the files hold no records")
        labels = np.concatenate(labels) - label_offset
        _order_by_index(pattern, index_key, np.concatenate(indices))
        _check_not_below_offset(pattern, labels, label_offset, label_key)
        sizes.append(len(labels))
        largest = max(largest, int(labels.max()))
    num_classes = _num_classes(largest, num_classes)
    return StreamingData(patterns[0], patterns[1], sizes[0], sizes[1], num_classes,
                         image_size, label_offset, mean_std, crop_fraction)


def parse_spec(spec: str) -> tuple[str, str]:
    """The train and test patterns of ``imagenet:<train pattern>,<test pattern>``.

    Raises:
        ValueError: the spec is not of that form.
    """
    patterns = spec[len(SPEC_PREFIX):].split(",") if spec.startswith(SPEC_PREFIX) else []
    if len(patterns) != 2 or not all(patterns):
        raise ParameterError("dataset", f"expected '{SPEC_PREFIX}<train file pattern>,"
                             "<test file pattern>'", repr(spec))
    return patterns[0], patterns[1]


def _num_classes(largest: int, num_classes: int | None) -> int:
    """`num_classes`, or the `largest` label + 1 when None; checks the largest is below."""
    if num_classes is None:
        return largest + 1
    if largest >= num_classes:
        raise ValueError(f"label {largest} is not below num_classes={num_classes}")
    return num_classes


def _check_not_below_offset(pattern: str, labels: np.ndarray, label_offset: int,
                            label_key: str) -> None:
    """Raises a ValueError naming `label_offset` if a label (offset removed) is negative."""
    if (labels < 0).any():
        raise ValueError(
            f"{pattern}: label {int(labels.min() + label_offset)} in {label_key!r} is below "
            f"label_offset={label_offset} (0-based labels need label_offset=0)")


def _check_features(file_pattern: str, files: Sequence[str], image_key: str, label_key: str,
                    index_key: str) -> None:
    """Raises a ValueError naming a missing feature, judged from the first record."""
    records = tf.data.TFRecordDataset(list(files)).take(1)
    try:
        first = next(iter(records.as_numpy_iterator()), None)
    except tf.errors.OpError as e:
        raise ValueError(f"{file_pattern}: not readable as TFRecords ({e.message})") from e
    if first is None:
        raise ValueError(f"{file_pattern}: the files hold no records")
    feature = tf.train.Example.FromString(first).features.feature
    expected = {image_key: "bytes_list", label_key: "int64_list", index_key: "int64_list"}
    for key, kind in expected.items():
        if key not in feature or feature[key].WhichOneof("kind") != kind:
            raise ValueError(
                f"{file_pattern}: records need the {kind.split('_')[0]} feature {key!r}; the "
                f"first record has {', '.join(sorted(feature)) or 'no features'}")


def _order_by_index(file_pattern: str, index_key: str, indices: np.ndarray) -> np.ndarray:
    """The permutation that sorts `indices`, which must be 0..N-1 each once."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    if not np.array_equal(ordered, np.arange(len(indices))):
        values, counts = np.unique(indices, return_counts=True)
        duplicates = values[counts > 1]
        missing = np.setdiff1d(np.arange(len(indices)), values)
        problem = (f"index {duplicates[0]} occurs {counts[counts > 1][0]} times"
                   if len(duplicates) else f"index {missing[0]} is missing")
        raise ValueError(f"{file_pattern}: feature {index_key!r} must number the "
                         f"{len(indices)} examples 0..{len(indices) - 1} once each, but "
                         f"{problem}")
    return order


def _mean_std_constants(mean_std: MeanStd | None) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    if mean_std is None:
        return None, None
    mean, std = mean_std
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean_std must be (3 means, 3 positive stds), got {mean_std}")
    return tf.constant(mean, tf.float32), tf.constant(std, tf.float32)


def _to_unit_range(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 ``[h, w, 3]`` -> float32 ``[image_size, image_size, 3]`` in [0, 1].

    Pixels are scaled before the bilinear resize, as in the published pipeline.
    """
    image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 / 255
    image = tf.image.resize(image[tf.newaxis], [image_size, image_size])[0]
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _center_crop_window(shape: tf.Tensor, crop_fraction: float) -> tf.Tensor:
    """``[y, x, side, side]`` of the centered square crop used for evaluation."""
    height, width = shape[0], shape[1]
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _center_crop(jpeg: tf.Tensor, image_size: int, crop_fraction: float) -> tf.Tensor:
    window = _center_crop_window(tf.image.extract_jpeg_shape(jpeg), crop_fraction)
    return _to_unit_range(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), image_size)


def _random_crop_and_flip(jpeg: tf.Tensor, image_size: int, crop_fraction: float, seed: int,
                          index: tf.Tensor) -> tf.Tensor:
    """A random crop (center crop when sampling fails) and flip, seeded by (seed, index)."""
    shape = tf.image.extract_jpeg_shape(jpeg)
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=example_seed,
        min_object_covered=0.1, aspect_ratio_range=_TRAIN_ASPECT_RATIO_RANGE,
        area_range=_TRAIN_AREA_RANGE, max_attempts=_TRAIN_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    # After max_attempts failures the sampler returns the whole image: center-crop instead.
    whole = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    window = tf.where(whole, _center_crop_window(shape, crop_fraction),
                      tf.stack([begin[0], begin[1], size[0], size[1]]))
    image = _to_unit_range(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), image_size)
    return tf.image.stateless_random_flip_left_right(image, seed=example_seed + [0, 1])
