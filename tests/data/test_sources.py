"""Tests of heldout/data/sources.py: digits, npz and (mocked) TFDS sources.

TFDS runs offline under `tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`: the
data set's info comes from the builder code (no metadata files, no download) and
`download_and_prepare` is a no-op. The mock yields the same examples for every split.
(In this environment `tfds.load(..., batch_size=-1)` aborts the process under the
mock, so every read here, like the loader's, iterates the dataset.)
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from heldout.data import sources as data

NUM_DIGITS = 1797


# --- digits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_digits_sizes_shapes_dtypes(digits):
    assert (digits.num_train, digits.num_test) == (1352, 445)
    assert digits.x_train.shape == (1352, 8, 8, 1)
    assert digits.x_test.shape == (445, 8, 8, 1)
    assert digits.input_shape == (8, 8, 1)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0.0 and x.max() == 1.0  # pixel values 0..16 divided by 16
    assert set(np.unique(digits.y_train)) == set(range(10))
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert digits.num_classes == 10
    np.testing.assert_array_equal(digits.index_train, np.arange(1352))
    np.testing.assert_array_equal(digits.index_test, np.arange(445))


def test_digits_match_sklearn_rows(digits):
    """Every example is the scikit-learn row its original index names, scaled by 1/16."""
    sk = sk_datasets.load_digits()
    for x, y, rows in ((digits.x_train, digits.y_train, digits.original_index_train),
                       (digits.x_test, digits.y_test, digits.original_index_test)):
        np.testing.assert_array_equal(x[..., 0], sk.images[rows].astype(np.float32) / 16)
        np.testing.assert_array_equal(y, sk.target[rows])


def test_digits_split_is_stratified(digits):
    for label in range(10):
        n_train = int((digits.y_train == label).sum())
        n_test = int((digits.y_test == label).sum())
        assert 0.2 <= n_test / (n_train + n_test) <= 0.3, label


def test_digits_split_partitions_original_rows(digits):
    train, test = digits.original_index_train, digits.original_index_test
    assert not set(train.tolist()) & set(test.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(NUM_DIGITS))
    # In load_digits order within each split.
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()


def test_digits_deterministic(digits):
    again = data.load_dataset("digits")
    assert again.name == "digits"
    for field in ("x_train", "y_train", "x_test", "y_test", "original_index_train",
                  "original_index_test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(digits, field))


# --- npz ----------------------------------------------------------------------------


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_uint8_images_scaled(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    x_train[0, 0, 0, 0], x_train[0, 0, 0, 1] = 0, 255
    x_test = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    y_train = np.array([0, 1, 2, 3, 0, 1, 2], np.int32)
    y_test = np.array([6, 0, 1], np.uint8)  # largest label only in the test split
    path = _write_npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train,
                      x_test=x_test, y_test=y_test)
    ds = data.load_dataset(f"npz:{path}")
    assert ds.name == f"npz:{path}"
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    np.testing.assert_allclose(ds.x_train, x_train / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, x_test / 255.0, rtol=1e-6)
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.num_classes == 7
    assert ds.input_shape == (5, 4, 3)
    np.testing.assert_array_equal(ds.index_test, [0, 1, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npz_float_inputs_unchanged(tmp_path, dtype):
    rng = np.random.default_rng(1)
    x_train = (rng.normal(size=(6, 10)) * 40).astype(dtype)  # flat vectors, beyond [0, 1]
    x_test = (rng.normal(size=(2, 10)) * 40).astype(dtype)
    path = _write_npz(tmp_path / "f.npz", x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]),
                      x_test=x_test, y_test=np.array([1, 2]))
    ds = data.load_dataset(f"npz:{path}")
    assert ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32))
    np.testing.assert_array_equal(ds.x_test, x_test.astype(np.float32))
    assert ds.num_classes == 3
    assert ds.input_shape == (10,)


def _valid_arrays():
    return dict(x_train=np.zeros((4, 2, 2, 1), np.uint8), y_train=np.array([0, 1, 0, 1]),
                x_test=np.zeros((2, 2, 2, 1), np.uint8), y_test=np.array([0, 1]))


@pytest.mark.parametrize("key", data.NPZ_KEYS)
def test_npz_missing_key(tmp_path, key):
    arrays = _valid_arrays()
    del arrays[key]
    path = _write_npz(tmp_path / "m.npz", **arrays)
    with pytest.raises(ValueError, match=rf"missing key\(s\) {key}\b"):
        data.load_dataset(f"npz:{path}")


@pytest.mark.parametrize("split", ["train", "test"])
def test_npz_length_mismatch(tmp_path, split):
    arrays = _valid_arrays()
    arrays[f"y_{split}"] = np.concatenate([arrays[f"y_{split}"], [0]])
    n_x = len(arrays[f"x_{split}"])
    path = _write_npz(tmp_path / "l.npz", **arrays)
    with pytest.raises(ValueError,
                       match=rf"^dataset=npz:.*x_{split} has {n_x} rows but y_{split} has "
                             rf"{n_x + 1}"):
        data.load_dataset(f"npz:{path}")


def test_npz_missing_file(tmp_path):
    path = str(tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match=rf"^dataset=npz:{re.escape(path)}: file not found"):
        data.load_dataset(f"npz:{path}")


def test_npz_unreadable_file(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=r"^dataset=npz:.*not a readable \.npz"):
        data.load_dataset(f"npz:{path}")


@pytest.mark.parametrize("bad_labels", [np.array([0.0, 1.0, 0.0, 1.0]),
                                        np.array([0, -1, 0, 1]),
                                        np.array([[0], [1], [0], [1]])])
def test_npz_bad_labels(tmp_path, bad_labels):
    arrays = _valid_arrays()
    arrays["y_train"] = bad_labels
    path = _write_npz(tmp_path / "b.npz", **arrays)
    with pytest.raises(ValueError, match=r"y_train must be a 1-D array of non-negative"):
        data.load_dataset(f"npz:{path}")


@pytest.mark.parametrize("spec", ["mnistt", "", "npz", "tfds", "Digits"])
def test_unknown_spec(spec):
    with pytest.raises(ValueError, match=rf"^dataset={re.escape(repr(spec))}: not a known"):
        data.load_dataset(spec)


# --- TFDS (mocked) ------------------------------------------------------------------


def _mock(**kwargs):
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, **kwargs)


def _read_raw(name, split):
    """The examples of a (mocked) TFDS split in file order, read independently."""
    dataset = tfds.load(name, split=split, shuffle_files=False)
    return list(dataset.as_numpy_iterator())


def _parsed_ids(examples):
    """Integers at the end of the `id`s, or None unless every id ends in `_<digits>`."""
    matches = [re.fullmatch(rb".*_(\d+)", ex["id"]) for ex in examples]
    if not all(matches):
        return None
    return np.array([int(m.group(1)) for m in matches])


def test_tfds_mnist_mocked():
    with _mock(num_examples=6):
        ds = data.load_dataset("tfds:mnist")
        raw = {split: _read_raw("mnist", split) for split in ("train", "test")}
    assert ds.name == "tfds:mnist"
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (6, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert raw["train"][0]["image"].dtype == np.uint8
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        images = np.stack([ex["image"] for ex in raw[split]])
        np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, [ex["label"] for ex in raw[split]])
    assert ds.y_train.dtype == np.int64
    assert ds.num_classes == 10
    assert ds.original_index_train is None and ds.original_index_test is None  # no `id`


@pytest.mark.parametrize("spec", ["cifar10", "cifar10:3.0.2"])
def test_tfds_cifar10_mocked_random_ids(spec):
    """The default mock makes random-text ids: no number to parse, so no original index."""
    with _mock(num_examples=5):
        ds = data.load_dataset(f"tfds:{spec}")
        raw = _read_raw(spec, "train")
    assert ds.name == f"tfds:{spec}"
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.x_test.shape == (5, 32, 32, 3)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train, np.stack([ex["image"] for ex in raw]) / 255.0,
                               rtol=1e-6)
    assert ds.num_classes == 10
    expected = _parsed_ids(raw)
    if expected is None:
        assert ds.original_index_train is None
    else:
        np.testing.assert_array_equal(ds.original_index_train, expected)


# Original positions of the mocked examples, in the order the mock's files hold them.
_MOCK_ORDER = {"train": [16399, 0, 7, 49999, 3, 12], "test": [9999, 5, 0, 42]}


def _cifar_like_as_dataset(self, split, **kwargs):
    """Mocked `_as_dataset` with realistic CIFAR ids (`train_16399`) in shuffled order."""
    del kwargs
    height, width, channels = self.info.features["image"].shape

    def examples():
        for n in _MOCK_ORDER[split]:
            yield {"id": f"{split}_{n}",
                   "image": np.full((height, width, channels), n % 251, np.uint8),
                   "label": n % 10}

    return tf.data.Dataset.from_generator(examples, output_signature={
        "id": tf.TensorSpec([], tf.string),
        "image": tf.TensorSpec([height, width, channels], tf.uint8),
        "label": tf.TensorSpec([], tf.int64)})


def test_tfds_cifar10_original_index_from_ids():
    with _mock(as_dataset_fn=_cifar_like_as_dataset):
        ds = data.load_dataset("tfds:cifar10:3.0.2")
        raw = {split: _read_raw("cifar10:3.0.2", split) for split in ("train", "test")}
    assert [ex["id"] for ex in raw["train"]][:2] == [b"train_16399", b"train_0"]
    for split, x, y, original in (
            ("train", ds.x_train, ds.y_train, ds.original_index_train),
            ("test", ds.x_test, ds.y_test, ds.original_index_test)):
        expected = _parsed_ids(raw[split])
        np.testing.assert_array_equal(expected, _MOCK_ORDER[split])
        assert original is not None and original.dtype == np.int64
        np.testing.assert_array_equal(original, expected)
        # Images and labels stay aligned with their ids, in file order.
        np.testing.assert_array_equal(y, [ex["label"] for ex in raw[split]])
        np.testing.assert_allclose(x[:, 0, 0, 0], (expected % 251) / 255.0, rtol=1e-6)
        assert x.shape == (len(expected), 32, 32, 3) and x.dtype == np.float32
    assert ds.num_classes == 10
    np.testing.assert_array_equal(ds.index_train, np.arange(6))


def test_tfds_unknown_version_is_value_error():
    with _mock(num_examples=2):
        with pytest.raises(ValueError, match=r"^dataset=tfds:mnist:9\.9\.9: cannot load"):
            data.load_dataset("tfds:mnist:9.9.9")


def test_tfds_unknown_name_is_one_line():
    """TFDS lists every data set it knows in this error: only its first line is kept."""
    with pytest.raises(ValueError) as raised:
        data.load_dataset("tfds:nosuchds")
    message = str(raised.value)
    assert message.startswith("dataset=tfds:nosuchds: cannot load from TFDS (")
    assert "\n" not in message and len(message) < 300


# --- validation of every source's arrays ------------------------------------------------


@pytest.mark.parametrize("bad, fragment", [
    (np.nan, "x_train holds NaN or infinity (example 2)"),
    (np.inf, "x_train holds NaN or infinity (example 2)"),
    (-np.inf, "x_train holds NaN or infinity (example 2)"),
])
def test_non_finite_inputs_are_refused_naming_the_array_and_example(tmp_path, bad, fragment):
    arrays = _valid_arrays()
    arrays["x_train"] = np.zeros((4, 2, 2, 1), np.float32)
    arrays["x_train"][2, 1, 0, 0] = bad
    path = _write_npz(tmp_path / "n.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        data.load_dataset(f"npz:{path}")


def test_complex_inputs_are_refused_not_truncated(tmp_path):
    arrays = _valid_arrays()
    arrays["x_test"] = np.zeros((2, 2, 2, 1), np.complex64) + 1j
    path = _write_npz(tmp_path / "c.npz", **arrays)
    with pytest.raises(ValueError, match="x_test has dtype complex64; expected real numbers"):
        data.load_dataset(f"npz:{path}")


def test_mismatched_shapes_and_empty_test_split_are_refused(tmp_path):
    arrays = _valid_arrays()
    arrays["x_test"] = np.zeros((2, 3, 3, 1), np.uint8)
    path = _write_npz(tmp_path / "s.npz", **arrays)
    with pytest.raises(ValueError, match=r"x_test holds examples of shape \(3, 3, 1\) but "
                                         r"x_train of shape \(2, 2, 1\)"):
        data.load_dataset(f"npz:{path}")
    arrays = _valid_arrays()
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    path = _write_npz(tmp_path / "e.npz", **arrays)
    with pytest.raises(ValueError, match="x_test is empty; expected at least one test example"):
        data.load_dataset(f"npz:{path}")


def test_dataset_checks_its_own_labels():
    """A Dataset made directly (not by a source) is checked too."""
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"dataset=d: y_test holds label 5; expected labels "
                                         r"in \[0, num_classes=3\)"):
        data.Dataset("d", x, np.array([0, 1, 2]), x, np.array([0, 5, 1]), num_classes=3)
    with pytest.raises(ValueError, match="dataset=d: y_train has dtype float64"):
        data.Dataset("d", x, np.array([0.0, 1.0, 2.0]), x, np.array([0, 1, 1]), num_classes=3)


@pytest.mark.parametrize("largest, limit, refused", [
    (9, 10, False), (10, 10, True), (1_000_000, 10_000, True), (1_000_000, 1_000_001, False)])
def test_class_count_is_bounded_by_max_classes(tmp_path, largest, limit, refused):
    arrays = _valid_arrays()
    arrays["y_train"] = np.array([0, 1, largest, 1])
    path = _write_npz(tmp_path / "k.npz", **arrays)
    if refused:
        with pytest.raises(ValueError, match=f"labels give {largest + 1:,} classes, above the "
                                             f"limit of {limit:,}.*max_classes"):
            data.load_dataset(f"npz:{path}", max_classes=limit)
    else:
        assert data.load_dataset(f"npz:{path}", max_classes=limit).num_classes == largest + 1


# --- imagenet: specs, in memory up to a size limit ------------------------------------


def test_imagenet_spec_is_loaded_in_memory_up_to_the_byte_limit(tmp_path):
    from heldout.data import imagenet
    from tests.data.test_imagenet import _random_split, _write_shards

    rng = np.random.default_rng(3)
    train = _write_shards(tmp_path, "train", _random_split(rng, 6)[0], 2)
    test = _write_shards(tmp_path, "validation", _random_split(rng, 3)[0], 1)
    spec = f"imagenet:{train},{test}"
    total = sum(p.stat().st_size for p in tmp_path.iterdir())  # the records, counted here
    loaded = data.load_dataset(spec, max_record_bytes=total)
    direct = imagenet.load_imagenet_spec(spec)
    assert loaded.name == spec and (loaded.num_train, loaded.num_test) == (6, 3)
    np.testing.assert_array_equal(loaded.x_train, direct.x_train)
    np.testing.assert_array_equal(loaded.y_test, direct.y_test)
    with pytest.raises(ValueError, match=r"above the in-memory limit .*max_record_bytes"):
        data.load_dataset(spec, max_record_bytes=total - 1)
    with pytest.raises(ValueError, match="imagenet:<train file pattern>,<test file pattern>"):
        data.load_dataset(f"imagenet:{train}")


# --- TFDS preparation: what the install must bring, offline failures --------------------

# Modules TFDS imports only for data sets that need them (Beam, Hugging Face, Croissant,
# pandas-based builders, the Riegeli file format, TF-Agents): not on an image data
# set's download path.
_TFDS_OPTIONAL = {"apache_beam", "datasets", "huggingface_hub", "mlcroissant", "pandas",
                  "riegeli", "tf_agents"}


def _requirement_closure(distribution, extras=()):
    """Names of the distributions `distribution[extras]` installs (markers evaluated)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, stack = set(), [(distribution, tuple(extras))]
    while stack:
        name, wanted = stack.pop()
        key = (canonicalize_name(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env)
                                                 for env in environments):
                stack.append((requirement.name, tuple(sorted(requirement.extras))))
    return {name for name, _ in seen}


def _setup_requirements():
    """The distribution names in setup.py's install_requires list, read without running it."""
    import ast
    import pathlib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tree = ast.parse((pathlib.Path(__file__).parents[2] / "setup.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            for item in ast.walk(node.value):
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    names.add(canonicalize_name(Requirement(item.value).name))
    return names


def test_install_brings_every_module_tfds_imports_to_prepare():
    """Every third-party module TFDS's core imports (its download and prepare path) comes
    with the install: from TFDS's own requirements, or from setup.py (importlib_resources:
    TFDS 4.9.10 imports it but requires it for Python < 3.9 only)."""
    import ast
    import pathlib
    import sys
    from importlib import metadata

    from packaging.utils import canonicalize_name

    root = pathlib.Path(tfds.__file__).parent / "core"
    modules = set()
    for path in root.rglob("*.py"):
        if path.name.endswith("_test.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level \
                and node.module else []
            modules.update(n.split(".")[0] for n in names)
    modules -= set(sys.stdlib_module_names) | {"tensorflow_datasets", "__main__"}
    modules -= _TFDS_OPTIONAL
    modules -= {"tensorflow"}  # setup.py asks for a build unless one is installed
    assert "importlib_resources" in modules and "etils" in modules
    provided = _requirement_closure("tensorflow-datasets") | _requirement_closure("heldout")
    provided |= _setup_requirements()
    by_module = metadata.packages_distributions()
    missing = sorted(m for m in modules
                     if not {canonicalize_name(d) for d in by_module.get(m, [m])} & provided)
    assert not missing, f"modules TFDS imports that the install does not bring: {missing}"


def _stand_in_importlib_resources(monkeypatch):
    """The standard library's importlib.resources in place of the backport setup.py now
    installs (this environment predates it)."""
    import importlib.resources
    import sys

    monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)


def _offline(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_tfds_without_importlib_resources_is_one_line_at_once(monkeypatch, tmp_path):
    import sys
    import time

    monkeypatch.setitem(sys.modules, "importlib_resources", None)  # import fails
    start = time.time()
    with pytest.raises(ValueError) as raised:
        data.load_dataset("tfds:mnist", data_dir=str(tmp_path))
    assert time.time() - start < 5
    assert raised.value.parameter == "dataset"
    assert str(raised.value).startswith("dataset=tfds:mnist: preparing a TFDS data set "
                                        "needs the module importlib_resources")
    assert "\n" not in str(raised.value)


def test_tfds_offline_fails_at_once_saying_what_to_do(monkeypatch, tmp_path):
    """Offline, TFDS retries each download for minutes (204 s for mnist here): the
    loader sees the hosts are unreachable and stops in one line naming data_dir and
    `tfds build`."""
    import time

    _stand_in_importlib_resources(monkeypatch)
    _offline(monkeypatch)
    start = time.time()
    with pytest.raises(ValueError) as raised:
        data.load_dataset("tfds:mnist:3.0.1", data_dir=str(tmp_path))
    assert time.time() - start < 5
    message = str(raised.value)
    assert message.startswith(f"dataset=tfds:mnist:3.0.1: not prepared in {tmp_path} and "
                              "the network is unreachable (storage.googleapis.com: ")
    assert "data_dir=" in message and "tfds build mnist:3.0.1 --data_dir=DIR" in message
    assert "\n" not in message
    assert not list(tmp_path.rglob("*.tfrecord*")), "nothing half-written"


class HeldoutTinyImages(tfds.core.GeneratorBasedBuilder):
    """A five-example image data set generated from code (no download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(num_classes=3),
            "id": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", 5),
                "test": self._generate_examples("test", 3)}

    def _generate_examples(self, split, count):
        for n in range(count):
            yield n, {"image": np.full((4, 4, 1), 40 * n + (split == "test"), np.uint8),
                      "label": n % 3, "id": f"{split}_{10 + n}"}


def test_tfds_prepared_data_dir_loads_offline(monkeypatch, tmp_path):
    """A data set prepared into data_dir (here generated from code, as `tfds build`
    would on another machine) loads with the network unreachable."""
    _stand_in_importlib_resources(monkeypatch)
    tfds.builder("heldout_tiny_images", data_dir=str(tmp_path)).download_and_prepare()
    _offline(monkeypatch)
    ds = data.load_dataset("tfds:heldout_tiny_images", data_dir=str(tmp_path))
    order = np.argsort(ds.original_index_train)
    np.testing.assert_array_equal(ds.original_index_train[order], 10 + np.arange(5))
    np.testing.assert_allclose(ds.x_train[order, 0, 0, 0], 40 * np.arange(5) / 255.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train[order], np.arange(5) % 3)
    assert ds.x_test.shape == (3, 4, 4, 1) and ds.num_classes == 3
