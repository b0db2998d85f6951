"""Tests of heldout.store.published on files written in the published key layouts."""

import numpy as np
import pytest

from heldout.data.dataset import Dataset
from heldout.store import published


def _classwise_arrays(rng, num_classes=3, num_train=30, num_test=12) -> dict:
    tr_labels = rng.integers(0, num_classes, num_train)
    tt_labels = rng.integers(0, num_classes, num_test)
    tr_labels[:num_classes] = tt_labels[:num_classes] = np.arange(num_classes)
    arrays = {"tr_mem": rng.uniform(0, 1, num_train), "tr_labels": tr_labels,
              "tt_labels": tt_labels}
    for k in range(num_classes):
        rows, columns = np.flatnonzero(tr_labels == k), np.flatnonzero(tt_labels == k)
        arrays[f"infl_matrix_class{k}"] = rng.normal(size=(len(rows), len(columns)))
        arrays[f"tr_classidx_{k}"] = rows
        arrays[f"tt_classidx_{k}"] = columns
    return arrays


def test_classwise_influence_and_dense_assembly(tmp_path):
    arrays = _classwise_arrays(np.random.default_rng(0))
    np.savez(tmp_path / "cifar100_infl_matrix.npz", **arrays)
    loaded = published.load_classwise_influence(str(tmp_path / "cifar100_infl_matrix.npz"))
    assert loaded.num_classes == 3
    dense = published.dense_influence(loaded, dtype=np.float64)
    for i in range(30):  # plain loop: every cell is its class block's entry, or NaN
        for j in range(12):
            k = arrays["tr_labels"][i]
            if arrays["tt_labels"][j] != k:
                assert np.isnan(dense[i, j])
            else:
                row = list(arrays[f"tr_classidx_{k}"]).index(i)
                column = list(arrays[f"tt_classidx_{k}"]).index(j)
                assert dense[i, j] == arrays[f"infl_matrix_class{k}"][row, column]
    with pytest.raises(ValueError, match="max_bytes=100"):
        published.dense_influence(loaded, max_bytes=100)
    assert published.detect_kind(str(tmp_path / "cifar100_infl_matrix.npz")) == "classwise"


@pytest.mark.parametrize("drop", ["tr_mem", "tt_classidx_1", "infl_matrix_class2"])
def test_classwise_missing_key_is_named(tmp_path, drop):
    arrays = _classwise_arrays(np.random.default_rng(1))
    del arrays[drop]
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"{path}: .*missing key '{drop}'") as e:
        published.load_classwise_influence(str(path))
    assert "\n" not in str(e.value)


def test_classwise_block_of_wrong_shape(tmp_path):
    arrays = _classwise_arrays(np.random.default_rng(2))
    arrays["infl_matrix_class1"] = arrays["infl_matrix_class1"][:, :-1]
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(ValueError, match="infl_matrix_class1 has shape"):
        published.load_classwise_influence(str(tmp_path / "m.npz"))


def test_high_influence_pairs(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"tr_idx": rng.integers(0, 100, 7), "tt_idx": rng.integers(0, 50, 7),
              "infl": rng.uniform(0.15, 1, 7), "mem": rng.uniform(0.25, 1, 7)}
    np.savez(tmp_path / "p.npz", **arrays)
    pairs = published.load_high_influence_pairs(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(pairs.tr_idx, arrays["tr_idx"])
    np.testing.assert_array_equal(pairs.infl, arrays["infl"])
    assert published.detect_kind(str(tmp_path / "p.npz")) == "pairs"
    np.savez(tmp_path / "short.npz", **{**arrays, "mem": arrays["mem"][:-1]})
    with pytest.raises(ValueError, match="differ in length"):
        published.load_high_influence_pairs(str(tmp_path / "short.npz"))
    del arrays["infl"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="missing key 'infl'"):
        published.load_high_influence_pairs(str(tmp_path / "bad.npz"))


def test_cscores_and_imagenet_index(tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "imagenet-cscores-with-filename.npz", labels=np.arange(4),
             scores=rng.uniform(size=4), filenames=np.array([b"a.JPEG", b"b", b"c", b"d"]))
    scores = published.load_cscores(str(tmp_path / "imagenet-cscores-with-filename.npz"),
                                    require_filenames=True)
    assert scores.filenames == ["a.JPEG", "b", "c", "d"]
    np.savez(tmp_path / "c.npz", labels=np.arange(4), scores=rng.uniform(size=4))
    with pytest.raises(ValueError, match="missing key 'filenames'"):
        published.load_cscores(str(tmp_path / "c.npz"), require_filenames=True)
    assert published.load_cscores(str(tmp_path / "c.npz")).filenames is None
    assert published.detect_kind(str(tmp_path / "c.npz")) == "cscores"
    np.savez(tmp_path / "i.npz", tr_filenames=np.array(["x", "y"]), tr_labels=[1, 2],
             tt_filenames=np.array(["z"]), tt_labels=[0], tr_mem=[0.5, 0.1])
    index = published.load_imagenet_index(str(tmp_path / "i.npz"))
    assert index.tr_filenames == ["x", "y"] and list(index.tt_labels) == [0]
    np.savez(tmp_path / "j.npz", tr_filenames=np.array(["x"]), tr_labels=[1],
             tt_filenames=np.array(["z"]))
    with pytest.raises(ValueError, match="missing key 'tt_labels'"):
        published.load_imagenet_index(str(tmp_path / "j.npz"))
    with pytest.raises(ValueError, match="not a published estimates file"):
        published.detect_kind(str(tmp_path / "j.npz"))


def _tfds_like(rng, num=20) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """A data set in a shuffled ("TFDS") order with its original index, and the labels
    and values in the original order."""
    labels_original = rng.integers(0, 5, num)
    values_original = rng.normal(size=num)
    original_index = rng.permutation(num)  # TFDS position i holds original example o[i]
    data = Dataset(name="tfds:fake", x_train=np.zeros((num, 2), np.float32),
                   y_train=labels_original[original_index], x_test=np.zeros((1, 2)),
                   y_test=np.zeros(1, np.int64), num_classes=5,
                   original_index_train=original_index)
    return data, labels_original, values_original


def test_to_dataset_order_matches_a_plain_loop():
    data, labels_original, values_original = _tfds_like(np.random.default_rng(5))
    mapped = published.to_dataset_order(values_original, labels_original, data)
    for i in range(data.num_train):
        ids = f"train_{data.original_index_train[i]}"  # the TFDS id of position i
        assert mapped[i] == values_original[int(ids.split("_")[1])]


def test_to_dataset_order_names_the_first_label_mismatch():
    data, labels_original, values_original = _tfds_like(np.random.default_rng(6))
    wrong = labels_original.copy()
    first = int(np.argmin(data.original_index_train != 7))  # TFDS position of original 7
    wrong[7] = (wrong[7] + 1) % 5
    with pytest.raises(ValueError, match=f"train index {first} \\(original index 7\\)"):
        published.to_dataset_order(values_original, wrong, data)
    no_original = Dataset(name="npz:x", x_train=data.x_train, y_train=data.y_train,
                          x_test=data.x_test, y_test=data.y_test, num_classes=5)
    with pytest.raises(ValueError, match="no original index"):
        published.to_dataset_order(values_original, labels_original, no_original)


def test_unreadable_or_absent_file_is_one_line(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    for path in (tmp_path / "bad.npz", tmp_path / "absent.npz"):
        with pytest.raises(ValueError, match=f"{path}: cannot read as a C-score file") as e:
            published.load_cscores(str(path))
        assert "\n" not in str(e.value)
