"""Issue 24, items 1 and 2: no reader unpickles a user file, and every published format
(ImageNet index and C-scores with object arrays of file names, MNIST's bare C-score
array, pairs and C-score files on the digits default) is readable and comparable, with
files that do not fit the data set refused by name before anything is computed.
"""

import io
import os
import pathlib
import re
import zipfile

import numpy as np
import pytest
import scipy.stats

from heldout.data import build_imagenet, imagenet, safe_npz, sources
from heldout.estimate import compare, estimators
from heldout.estimate.pipeline import EstimateConfig, Estimates
from heldout.store import files, published

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_npz(path, marker, **other):
    """An .npz whose ``filenames``-like members are object arrays holding the payload."""
    evil = np.array([_Payload(marker), "x"], dtype=object)
    np.savez(path, **other, **{key: evil for key in ("filenames", "tr_filenames",
                                                      "tt_filenames")})
    return str(path)


def _refused_in_one_line(call, path, marker):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert not os.path.exists(marker), "the pickle ran"


def test_no_reader_runs_a_pickle(tmp_path):
    marker = tmp_path / "pwned"
    labels, scores = np.arange(2), np.array([0.5, 0.25])
    path = _malicious_npz(tmp_path / "evil.npz", marker, labels=labels, scores=scores,
                          tr_labels=labels, tt_labels=labels, x_train=np.zeros((2, 1)),
                          y_train=labels, x_test=np.zeros((2, 1)), y_test=labels)
    for call in (lambda: published.load_cscores(path),
                 lambda: published.load_imagenet_index(path),
                 lambda: published.detect_kind(path),
                 lambda: imagenet.read_npz_keys(path, ()),
                 lambda: compare.check_comparable(path, 2, 2),
                 lambda: files.read_npz(path),
                 lambda: sources.load_dataset(f"npz:{path}"),
                 lambda: build_imagenet.build_imagenet_tfrecords(
                     str(tmp_path), path, str(tmp_path / "out"), progress=False)):
        _refused_in_one_line(call, path, marker)
    # A bare .npy (the MNIST C-score format) with the payload.
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    (tmp_path / "evil.npy").write_bytes(buffer.getvalue())
    _refused_in_one_line(lambda: published.load_cscores(str(tmp_path / "evil.npy")),
                         tmp_path / "evil.npy", marker)


def test_restricted_reader_refuses_objects_other_than_strings(tmp_path):
    for value in ({"a": 1}, 3.5, ["nested"]):
        buffer = io.BytesIO()
        np.save(buffer, np.array([value, "b"], dtype=object), allow_pickle=True)
        with pytest.raises(safe_npz.UnsafeFileError):
            safe_npz.read_npz_bytes(buffer.getvalue())
    # Strings and bytes in object arrays, and numbers, read exactly as NumPy writes them.
    buffer = io.BytesIO()
    names = np.array(["n01440764_10026.JPEG", b"ILSVRC2012_val_00000293.JPEG"], dtype=object)
    np.savez_compressed(buffer, names=names, values=np.arange(5.0))
    arrays = safe_npz.read_npz_bytes(buffer.getvalue())
    assert list(arrays["names"]) == list(names) and arrays["names"].dtype == object
    np.testing.assert_array_equal(arrays["values"], np.arange(5.0))


def test_package_never_unpickles():
    """No ``allow_pickle=True`` and no plain pickle loading anywhere in the package."""
    offenders = []
    for path in (REPO_ROOT / "heldout").rglob("*.py"):
        text = path.read_text()
        for needle in ("allow_pickle=True", "pickle.load", "pickle.Unpickler"):
            if needle in text and path.name != "safe_npz.py":
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {needle}")
        for call in re.finditer(r"np\.load\(", text):
            arguments = text[call.end():].split("\n\n")[0][:200]
            if "allow_pickle=False" not in arguments and path.name != "safe_npz.py":
                offenders.append(f"{path.relative_to(REPO_ROOT)}: np.load({arguments}")
    assert not offenders, offenders


def _cscore_estimates(train: np.ndarray, num_test: int) -> Estimates:
    cscore = estimators.CScore(ratios=np.array([0.7]), train=train,
                               train_by_ratio=train[None], num_out_by_ratio=None,
                               test=np.zeros(num_test), test_by_ratio=np.zeros((1, num_test)))
    return _estimates(cscore=cscore)


def _estimates(memorization=None, cscore=None) -> Estimates:
    return Estimates(experiment_dir="x", subset="0.7", run_ids=np.arange(3), skipped_runs=(),
                     test_accuracy=np.zeros(3), memorization=memorization,
                     self_influence=None, influence=None, cscore=cscore, cscore_runs={},
                     significant={}, seconds={}, config=EstimateConfig())


def _memorization(score: np.ndarray):
    return estimators.SelfInfluence(*([score] * 9))


def test_published_imagenet_formats_are_comparable(tmp_path):
    """Object arrays of file names, as the published files hold them, read and compare;
    the ImageNet C-scores (ordered by file name) are placed in the index's order."""
    rng = np.random.default_rng(0)
    n = 40
    names = np.array([f"n{c:08d}_{i}.JPEG" for i, c in enumerate(rng.integers(0, 5, n))],
                     dtype=object)
    labels = rng.integers(0, 5, n)
    mem = rng.uniform(size=n)
    np.savez(tmp_path / "imagenet_index.npz", tr_filenames=names, tr_labels=labels,
             tt_filenames=names[:7], tt_labels=labels[:7], tr_mem=mem)
    order = rng.permutation(n)  # the C-score file lists the examples in another order
    cscores = rng.uniform(size=n)
    np.savez(tmp_path / "imagenet-cscores-with-filename.npz", labels=labels[order],
             scores=cscores[order], filenames=np.array(["train/x/" + f for f in names[order]],
                                                       dtype=object))
    index_path = str(tmp_path / "imagenet_index.npz")
    ours = mem + rng.normal(scale=0.1, size=n)
    [c] = compare.compare_to_published(_estimates(memorization=_memorization(ours)),
                                       index_path)
    assert c.spearman == pytest.approx(scipy.stats.spearmanr(ours, mem)[0])
    cscore_path = str(tmp_path / "imagenet-cscores-with-filename.npz")
    with pytest.raises(ValueError, match="imagenet_index"):
        compare.check_comparable(cscore_path, n, 7)
    assert compare.check_comparable(cscore_path, n, 7, imagenet_index=index_path) == "cscores"
    ours = cscores + rng.normal(scale=0.1, size=n)
    [c] = compare.compare_to_published(_cscore_estimates(ours, 7), cscore_path,
                                       imagenet_index=index_path)
    assert c.spearman == pytest.approx(scipy.stats.spearmanr(ours, cscores)[0])
    assert c.num_common == n


def test_mnist_cscores_bare_array_in_dataset_order(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=30)
    np.save(tmp_path / "mnist-cscores.npy", scores)
    path = str(tmp_path / "mnist-cscores.npy")
    loaded = published.load_cscores(path)
    np.testing.assert_array_equal(loaded.scores, scores)
    assert loaded.labels is None and loaded.dataset_order
    assert published.detect_kind(path) == "cscores"
    ours = scores + rng.normal(scale=0.2, size=30)
    [c] = compare.compare_to_published(_cscore_estimates(ours, 5), path)
    assert c.pearson == pytest.approx(scipy.stats.pearsonr(ours, scores)[0])
    with pytest.raises(ValueError, match="mnist-cscores.npy: scores has 30 entries, the "
                                         "data set has 31 training"):
        compare.check_comparable(path, 31, 5)
    longer = _cscore_estimates(np.append(ours, 0.5), 5)
    with pytest.raises(ValueError, match="data set has 31 training"):
        compare.check_estimates_comparable(path, longer)
    assert compare.check_estimates_comparable(path, _cscore_estimates(ours, 5)) == "cscores"


def test_compare_on_the_digits_default(tmp_path):
    """Pairs and C-score files on the embedded digits set: compared when they fit,
    refused by name (out-of-range index, other size, missing estimator) when not."""
    data = sources.load_dataset("digits")
    rng = np.random.default_rng(2)
    tr_idx = rng.integers(0, data.num_train, 50)
    tt_idx = rng.integers(0, data.num_test, 50)
    mem_published = rng.uniform(size=50)
    np.savez(tmp_path / "pairs.npz", tr_idx=tr_idx, tt_idx=tt_idx,
             infl=rng.uniform(size=50), mem=mem_published)
    pairs = str(tmp_path / "pairs.npz")
    ours = rng.uniform(size=data.num_train)
    assert compare.check_comparable(pairs, data.num_train, data.num_test, data=data,
                                    estimators=("memorization",)) == "pairs"
    [c] = compare.compare_to_published(_estimates(memorization=_memorization(ours)), pairs,
                                       data)
    unique, first = np.unique(tr_idx, return_index=True)
    assert c.num_common == len(unique)
    assert c.spearman == pytest.approx(scipy.stats.spearmanr(ours[unique],
                                                             mem_published[first])[0])
    # CIFAR-100's pairs reach past the digits' 450 test examples.
    np.savez(tmp_path / "cifar_pairs.npz", tr_idx=[3, 40000], tt_idx=[2, 9000],
             infl=[0.2, 0.3], mem=[0.3, 0.4])
    with pytest.raises(ValueError, match=r"cifar_pairs.npz: tr_idx holds index 40000, "
                                         "outside the 1352 training") as info:
        compare.check_comparable(str(tmp_path / "cifar_pairs.npz"), data.num_train,
                                 data.num_test, data=data)
    assert info.value.parameter == "compare_to"
    with pytest.raises(ValueError, match="compares memorization, which is not among"):
        compare.check_comparable(pairs, data.num_train, data.num_test, estimators=("cscore",))
    np.savez(tmp_path / "cscores.npz", labels=data.y_train, scores=rng.uniform(
        size=data.num_train))
    assert compare.check_comparable(str(tmp_path / "cscores.npz"), data.num_train,
                                    data.num_test, data=data) == "cscores"
    shifted = np.roll(data.y_train, 1)
    np.savez(tmp_path / "other_labels.npz", labels=shifted, scores=np.zeros(data.num_train))
    first = int(np.flatnonzero(shifted != data.y_train)[0])
    with pytest.raises(ValueError, match=f"labels disagree with digits at train index {first}"):
        compare.check_comparable(str(tmp_path / "other_labels.npz"), data.num_train,
                                 data.num_test, data=data)
    np.savez(tmp_path / "cifar10-cscores-orig-order.npz", labels=np.zeros(50000, int),
             scores=np.zeros(50000))
    with pytest.raises(ValueError, match="scores has 50000 entries, the data set has 1352"):
        compare.check_comparable(str(tmp_path / "cifar10-cscores-orig-order.npz"),
                                 data.num_train, data.num_test, data=data)


def test_object_array_member_in_zip_is_parsed_not_loaded(tmp_path):
    """The restricted reader looks only at the .npy members; a member whose pickle
    names a non-NumPy global is refused by name of the member."""
    marker = tmp_path / "pwned"
    path = _malicious_npz(tmp_path / "e.npz", marker)
    with zipfile.ZipFile(path) as archive:
        assert "filenames.npy" in archive.namelist()
    with pytest.raises(safe_npz.UnsafeFileError, match="filenames: refers to"):
        safe_npz.read_npz_bytes(pathlib.Path(path).read_bytes())
    assert not marker.exists()
