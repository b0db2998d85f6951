"""Data sets for heldout experiments: arrays in memory with a stable per-example index.

Every source gives the same `Dataset`: images (or flat vectors) as float32, integer
labels, and for each example an `index` that identifies it across runs, machines and
releases. Run files store these indices, so estimates from different runs line up.

Sources:
    * ``digits``: scikit-learn's ``load_digits`` (shipped with scikit-learn, no download).
    * ``npz:<path>``: arrays ``x_train, y_train, x_test, y_test`` (and optionally a scalar
      ``num_classes``; otherwise the largest label + 1).
    * ``tfds:<name>[:<version>]``: TensorFlow Datasets in unshuffled file order.
    * ``imagenet:<train pattern>,<test pattern>``: ImageNet-style TFRecords with an index
      feature (`heldout.data.imagenet`), loaded into memory, so only for sets up to
      `max_record_bytes` of records; full ImageNet is streamed instead
      (`imagenet.streaming_data` for training, demo.py ``--records`` for evaluation).

Every source's arrays are checked (`Dataset`), and the number of classes is bounded by
`max_classes` before any model is built.
"""

from __future__ import annotations

import io

import numpy as np

from heldout.data import imagenet
from heldout.data.dataset import (
    DEFAULT_MAX_CLASSES,
    Dataset,
    check_class_count,
    check_not_empty,
)
from heldout.errors import ParameterError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Most bytes of TFRecords an ``imagenet:`` spec may load into memory unless raised.
DEFAULT_MAX_RECORD_BYTES = 512 * 2**20

# One test example in every `_DIGITS_TEST_EVERY` of each class, in load_digits order.
_DIGITS_TEST_EVERY = 4


def load_dataset(spec: str, data_dir: str | None = None,
                 max_classes: int = DEFAULT_MAX_CLASSES,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Dataset:
    """Loads the data set named by `spec`, checked (`Dataset`) and with a bounded class count.

    Args:
        spec: ``digits``, ``npz:<path>``, ``tfds:<name>[:<version>]`` or
            ``imagenet:<train pattern>,<test pattern>``.
        data_dir: TFDS data directory.
        max_classes: most classes accepted (a label of 1,000,000 is refused, not built).
        max_record_bytes: most bytes of TFRecords an ``imagenet:`` spec loads into memory.

    Raises:
        ValueError: the spec names no known source, the source's arrays are malformed or
            non-finite, or there are more than `max_classes` classes.
    """
    if spec == "digits":
        data = load_digits()
    elif spec.startswith("npz:"):
        data = load_npz(spec[len("npz:"):], max_classes)
    elif spec.startswith("tfds:"):
        name, _, version = spec[len("tfds:"):].partition(":")
        data = load_tfds(name, version=version or None, data_dir=data_dir)
    elif spec.startswith(imagenet.SPEC_PREFIX):
        data = load_imagenet(spec, max_record_bytes)
    else:
        raise ParameterError(
                "dataset", "not a known data set: expected 'digits', 'npz:<path>', "
                "'tfds:<name>[:<version>]' or 'imagenet:<train pattern>,<test pattern>'",
                repr(spec))
    check_class_count(f"dataset {spec}", data.num_classes, max_classes)
    check_not_empty(data)
    return data


def _npz_error(path: str, message: str) -> ParameterError:
    """A refusal of the npz file at `path`, named as the ``dataset`` setting."""
    return ParameterError("dataset", message, f"npz:{path}")


def load_imagenet(spec: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Dataset:
    """``imagenet:<train pattern>,<test pattern>`` in memory, if its records are small enough.

    Raises:
        ValueError: a malformed spec, no matching files, or more than `max_record_bytes`
            of records (decoded images take several times their JPEG size).
    """
    import tensorflow as tf

    patterns = spec[len(imagenet.SPEC_PREFIX):].split(",")
    if len(patterns) != 2 or not all(patterns):
        raise ParameterError("dataset", f"expected '{imagenet.SPEC_PREFIX}<train file "
                             "pattern>,<test file pattern>'", repr(spec))
    total = sum(tf.io.gfile.stat(path).length
                for pattern in patterns for path in imagenet.list_files(pattern))
    if total > max_record_bytes:
        raise ParameterError(
            "dataset", f"{total / 2**30:.2f} GiB of records, above the in-memory limit "
            f"of {max_record_bytes / 2**30:.2f} GiB (max_record_bytes); stream the records "
            "instead (stream_records) or use a subset of them", spec)
    return imagenet.load_imagenet_spec(spec)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits with a fixed, stratified train/test split.

    Of each class, every fourth example (in ``load_digits`` order) is a test example:
    1352 train and 445 test examples, the same on every machine and scikit-learn
    version. Pixel values 0..16 are scaled to [0, 1].
    """
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    labels = digits.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        is_test[rows[_DIGITS_TEST_EVERY - 1::_DIGITS_TEST_EVERY]] = True
    rows_train, rows_test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return Dataset(
            name="digits",
            x_train=images[rows_train], y_train=labels[rows_train],
            x_test=images[rows_test], y_test=labels[rows_test],
            num_classes=10,
            original_index_train=rows_train, original_index_test=rows_test)


def load_npz(path: str, max_classes: int = DEFAULT_MAX_CLASSES) -> Dataset:
    """Arrays ``x_train, y_train, x_test, y_test`` from an ``.npz`` file (local or gs://).

    Raises:
        ValueError: the file is missing or unreadable, a key is missing, inputs are not
            real numbers, labels are not non-negative integers, inputs and labels differ
            in length, or the labels give more than `max_classes` classes.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise _npz_error(path, "file not found")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            arrays = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
    except Exception as e:  # np.load raises several types for a bad file.
        raise _npz_error(path, f"not a readable .npz file ({e})") from e
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise _npz_error(path, f"missing key(s) {', '.join(missing)}; expected keys "
                f"{', '.join(NPZ_KEYS)}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2:
            raise _npz_error(path, f"x_{split} has shape {list(x.shape)}; "
                             "expected [examples, features...] (images NHWC or flat vectors)")
        if y.ndim != 1:  # before len(y): a scalar has none
            raise _npz_error(path, f"y_{split} must be a 1-D array of non-negative "
                    f"integer labels, got dtype {y.dtype} and shape {y.shape}")
        if len(x) != len(y):
            raise _npz_error(path, f"x_{split} has {len(x)} rows but y_{split} has "
                    f"{len(y)}")
        if np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number)
                                      or x.dtype == np.bool_):
            raise _npz_error(path, f"x_{split} has dtype {x.dtype}; expected "
                             "real numbers")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise _npz_error(path, f"y_{split} must be a 1-D array of non-negative "
                    f"integer labels, got dtype {y.dtype} and shape {y.shape}")
    if len(arrays["y_train"]) == 0:
        raise _npz_error(path, "x_train is empty")
    num_classes = int(max(arrays["y_train"].max(initial=0),
                          arrays["y_test"].max(initial=0))) + 1
    if "num_classes" in arrays:  # optional: when some classes have no examples
        declared = arrays["num_classes"]
        if declared.ndim != 0 or not np.issubdtype(declared.dtype, np.integer):
            raise _npz_error(path, f"num_classes is {declared.tolist()!r} "
                             f"(dtype {declared.dtype}); expected one integer")
        declared = int(declared)
        if declared < num_classes:
            raise _npz_error(path, f"num_classes={declared} but labels go up "
                             f"to {num_classes - 1}")
        num_classes = declared
    check_class_count(f"dataset npz:{path}", num_classes, max_classes)
    return Dataset(
            name=f"npz:{path}",
            x_train=scale_inputs(arrays["x_train"]), y_train=arrays["y_train"].astype(np.int64),
            x_test=scale_inputs(arrays["x_test"]), y_test=arrays["y_test"].astype(np.int64),
            num_classes=num_classes)


def load_tfds(name: str, version: str | None = None,
                            data_dir: str | None = None) -> Dataset:
    """A TFDS image classification data set, in TFDS's unshuffled file order.

    The ``index`` of an example is its position in that order, which is what the
    released Feldman-Zhang arrays use. Where the data set has an ``id`` feature
    ending in ``_<number>`` (CIFAR's ``train_16399``), that number is exposed as the
    original index.
    """
    import tensorflow_datasets as tfds

    full_name = f"{name}:{version}" if version else name
    try:
        builder = tfds.builder(full_name, data_dir=data_dir)
        if not builder.is_prepared() and _downloads(builder):
            _check_can_prepare(builder, full_name, data_dir)
        builder.download_and_prepare()
    except ParameterError:
        raise
    except Exception as e:  # TFDS raises many types; the user needs one line.
        # Some messages list every data set TFDS knows (hundreds of lines): keep the first.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ParameterError("dataset", f"cannot load from TFDS ({first})",
                             f"tfds:{full_name}") from e
    label_feature = builder.info.features["label"]
    splits = {}
    for split in ("train", "test"):
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        images, labels, original = [], [], []
        for example in dataset.as_numpy_iterator():
            images.append(example["image"])
            labels.append(example["label"])
            original.append(_original_index(example.get("id")))
        has_original = all(i is not None for i in original)
        splits[split] = (
                scale_inputs(np.stack(images)), np.asarray(labels, dtype=np.int64),
                np.asarray(original, dtype=np.int64) if has_original and original else None)
    return Dataset(
            name=f"tfds:{full_name}",
            x_train=splits["train"][0], y_train=splits["train"][1],
            x_test=splits["test"][0], y_test=splits["test"][1],
            num_classes=label_feature.num_classes,
            original_index_train=splits["train"][2], original_index_test=splits["test"][2])


# Where most TFDS downloads come from, probed when a builder lists no download URLs.
_TFDS_HOST = "storage.googleapis.com"
# Seconds to wait for one host before calling the network unreachable.
_PROBE_SECONDS = 5.0


def _downloads(builder) -> bool:
    """Whether `builder.download_and_prepare` is TFDS's own, which downloads.

    Under a test double (``tfds.testing.mock_data``) it prepares nothing, so there is
    nothing to check before it.
    """
    method = getattr(type(builder), "download_and_prepare", None)
    return getattr(method, "__module__", "").startswith("tensorflow_datasets.core")


def _check_can_prepare(builder, full_name: str, data_dir: str | None) -> None:
    """Refuses at once, in one line saying what to do, a data set TFDS could not prepare.

    TFDS 4.9.10 imports ``importlib_resources`` while preparing (declared for Python
    < 3.9 only, so a fresh install may lack it), and offline it retries every download
    for minutes before failing. Both are checked here in well under a second.

    Raises:
        ParameterError: (``dataset``) the module is missing or the download hosts are
            unreachable.
    """
    try:
        import importlib_resources  # noqa: F401  (TFDS's dataset_builder imports it)
    except ImportError:
        raise ParameterError(
            "dataset", "preparing a TFDS data set needs the module importlib_resources "
            "(TFDS imports it without requiring it): pip install importlib_resources, or "
            "reinstall heldout (bash scripts/install.sh)", f"tfds:{full_name}") from None
    problem = _unreachable(_download_hosts(builder))
    if problem:
        where = data_dir or "~/tensorflow_datasets"
        raise ParameterError(
            "dataset", f"not prepared in {where} and the network is unreachable "
            f"({problem}); give data_dir=<a directory holding the prepared data set>, or "
            f"run `tfds build {full_name} --data_dir=DIR` on a "
            "machine with internet and copy DIR here", f"tfds:{full_name}")


def _download_hosts(builder) -> list[tuple[str, int]]:
    """(host, port) of the builder's download URLs (TFDS's bucket if it lists none)."""
    import urllib.parse
    import urllib.request

    proxy = urllib.request.getproxies().get("https")
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # a builder without a checksums file: TFDS's bucket
        urls = []
    urls = [proxy] if proxy else urls or [f"https://{_TFDS_HOST}/"]
    hosts = set()
    for url in urls:
        parsed = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
        if parsed.hostname:
            default = 80 if parsed.scheme == "http" else 443
            hosts.add((parsed.hostname, parsed.port or default))
    return sorted(hosts)


def _unreachable(hosts: list[tuple[str, int]]) -> str | None:
    """The first host that cannot be connected to, with why; None if all can."""
    import socket

    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
        except OSError as e:
            return f"{host}: {e.strerror or type(e).__name__}"
    return None


def _original_index(example_id: bytes | str | None) -> int | None:
    """The number at the end of a TFDS ``id`` such as ``train_16399``, else None."""
    if example_id is None:
        return None
    if isinstance(example_id, bytes):
        example_id = example_id.decode()
    tail = str(example_id).rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def scale_inputs(x: np.ndarray) -> np.ndarray:
    """float32 inputs: uint8 images divided by 255, float inputs as they are."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)
