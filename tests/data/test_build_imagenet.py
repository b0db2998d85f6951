"""Tests of heldout.data.build_imagenet on a tiny ImageNet-style folder the tests write."""

import io
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from heldout.data import build_imagenet, imagenet

SYNSETS = ("n01000001", "n01000002", "n01000003")
CMYK_NAME = "n01000002_4.JPEG"
PNG_NAME = "n01000003_8.JPEG"


def _pixels(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random image (JPEG-friendly), uint8 ``[height, width, 3]``."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (3, 4, 3))
    image = tf.image.resize(coarse[None], [height, width], method="bilinear")[0]
    return np.clip(image.numpy(), 0, 255).astype(np.uint8)


def write_imagenet_folder(root: pathlib.Path, seed: int = 0) -> dict:
    """Writes train/<synset>/*.JPEG, flat val/*.JPEG, a validation labels file and the index.

    Returns the index arrays and the pixels of every image by base name.
    """
    rng = np.random.default_rng(seed)
    pixels, train_names, train_labels = {}, [], []
    for c, synset in enumerate(SYNSETS):
        (root / "train" / synset).mkdir(parents=True)
        for j in range(3):
            name = f"{synset}_{3 * c + j}.JPEG"
            pixels[name] = _pixels(3 * c + j, 20 + 4 * j, 28 - 2 * c)
            path = root / "train" / synset / name
            if name == CMYK_NAME:
                Image.fromarray(pixels[name]).convert("CMYK").save(path, "JPEG", quality=95)
            elif name == PNG_NAME:
                path.write_bytes(tf.io.encode_png(pixels[name]).numpy())
            else:
                path.write_bytes(tf.io.encode_jpeg(pixels[name], quality=95).numpy())
            train_names.append(f"{synset}/{name}")
            train_labels.append(c)
    (root / "val").mkdir()
    val_names, val_labels = [], []
    for j in range(5):
        name = f"ILSVRC2012_val_{j + 1:08d}.JPEG"
        pixels[name] = _pixels(100 + j, 24, 24)
        (root / "val" / name).write_bytes(tf.io.encode_jpeg(pixels[name]).numpy())
        val_names.append(name)
        val_labels.append(j % 3)
    # Synsets of the sorted validation files, one per line (TF's labels file format).
    (root / "val_labels.txt").write_text("".join(f"{SYNSETS[c]}\n" for c in val_labels))
    train_order = rng.permutation(len(train_names))  # the index's order is not sorted
    val_order = rng.permutation(len(val_names))
    arrays = {
        # Base names as an object array of bytes, as published (read without unpickling).
        "tr_filenames": np.array([os.path.basename(n).encode() for n in train_names],
                                 dtype=object)[train_order],
        "tr_labels": np.array(train_labels, np.int64)[train_order],
        "tt_filenames": np.array(val_names)[val_order],
        "tt_labels": np.array(val_labels, np.int64)[val_order],
        "tr_mem": rng.uniform(0, 1, len(train_names)),
    }
    np.savez(root / "imagenet_index.npz", **arrays)
    return {"arrays": arrays, "pixels": pixels}


def _build(root: pathlib.Path, out: pathlib.Path, **kwargs):
    settings = dict(num_train_shards=4, num_validation_shards=2, num_threads=2,
                    validation_labels_file=str(root / "val_labels.txt"), progress=False)
    settings.update(kwargs)
    return build_imagenet.build_imagenet_tfrecords(
        str(root), str(root / "imagenet_index.npz"), str(out), **settings)


def _records(out: pathlib.Path, split: str) -> list[dict]:
    files = sorted(str(p) for p in out.glob(f"{split}-*"))
    result = []
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        result.append({key: (value.int64_list.value[0] if value.WhichOneof("kind")
                             == "int64_list" else value.bytes_list.value[0])
                       for key, value in feature.items()})
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    folder = write_imagenet_folder(root)
    summary = _build(root, root / "out")
    return root, folder, summary


def test_records_in_index_order_with_published_features(built):
    root, folder, summary = built
    arrays, pixels = folder["arrays"], folder["pixels"]
    assert len(summary.written) == 6 and summary.images == 14
    assert summary.converted == tuple(sorted((CMYK_NAME, PNG_NAME)))
    for split, (names_key, labels_key) in (("train", ("tr_filenames", "tr_labels")),
                                           ("validation", ("tt_filenames", "tt_labels"))):
        records = _records(root / "out", split)
        assert [r["index"] for r in records] == list(range(len(arrays[names_key])))
        for record, name, label in zip(records, arrays[names_key], arrays[labels_key],
                                       strict=True):
            base = os.path.basename(name.decode() if isinstance(name, bytes) else str(name))
            assert record["image/filename"].decode() == base
            assert record["image/class/label"] == label + 1  # 1-based
            assert record["image/class/synset"].decode() == SYNSETS[label]
            encoded = record["image/encoded"]
            assert build_imagenet.jpeg_components(encoded) == 3
            decoded = tf.io.decode_jpeg(encoded).numpy()
            assert decoded.shape == pixels[base].shape
            assert (record["image/height"], record["image/width"]) == decoded.shape[:2]
            if base in (CMYK_NAME, PNG_NAME):  # RGB re-encoded at quality 100
                # The original's RGB pixels by another decoder (PIL), encoded the same way.
                rgb = np.asarray(Image.open(io.BytesIO(_original_bytes(root, base))
                                            ).convert("RGB"))
                if base == PNG_NAME:
                    np.testing.assert_array_equal(rgb, pixels[base])
                expected = tf.io.decode_jpeg(tf.io.encode_jpeg(rgb, quality=100)).numpy()
                # JPEG decoders differ by a few levels; a wrong conversion is off by ~100.
                assert np.abs(decoded.astype(int) - expected).mean() < 4
            else:  # clean JPEGs are stored byte for byte
                assert encoded == _original_bytes(root, base)


def _original_bytes(root: pathlib.Path, base: str) -> bytes:
    return next(root.rglob(base)).read_bytes()


def test_cmyk_detection_from_the_frame_header(built):
    root, _, _ = built
    assert build_imagenet.jpeg_components(_original_bytes(root, CMYK_NAME)) == 4
    assert build_imagenet.jpeg_components(_original_bytes(root, PNG_NAME)) is None
    grey = tf.io.encode_jpeg(np.zeros((4, 4, 1), np.uint8)).numpy()
    assert build_imagenet.jpeg_components(grey) == 1


def test_reader_streams_the_built_shards_in_index_order(built):
    root, folder, _ = built
    data = imagenet.load_imagenet_tfrecords(str(root / "out" / "train-*"),
                                            str(root / "out" / "validation-*"), 16)
    np.testing.assert_array_equal(data.y_train, folder["arrays"]["tr_labels"])
    np.testing.assert_array_equal(data.y_test, folder["arrays"]["tt_labels"])


def test_missing_file_and_disagreeing_label_are_one_line_errors(tmp_path):
    folder = write_imagenet_folder(tmp_path)
    arrays = dict(folder["arrays"])
    victim = arrays["tr_filenames"][4].decode()
    os.remove(tmp_path / "train" / victim.split("_")[0] / victim)
    with pytest.raises(ValueError, match=r"index 4 of train\) is named in the index") as e:
        _build(tmp_path, tmp_path / "out")
    assert "\n" not in str(e.value) and victim in str(e.value)
    arrays = dict(folder["arrays"])
    arrays["tr_labels"] = arrays["tr_labels"].copy()
    arrays["tr_labels"][2] = (arrays["tr_labels"][2] + 1) % 3
    arrays["tr_filenames"] = np.delete(arrays["tr_filenames"], 4)  # the file removed above
    arrays["tr_labels"] = np.delete(arrays["tr_labels"], 4)
    arrays["tr_mem"] = np.delete(arrays["tr_mem"], 4)
    np.savez(tmp_path / "imagenet_index.npz", **arrays)
    with pytest.raises(ValueError, match=r"tr_labels\[2\]=") as e:
        _build(tmp_path, tmp_path / "out")
    assert "\n" not in str(e.value) and "its synset" in str(e.value)
    del arrays["tt_labels"]
    np.savez(tmp_path / "imagenet_index.npz", **arrays)
    with pytest.raises(ValueError, match="missing key 'tt_labels'"):
        _build(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


_KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    from heldout.data import build_imagenet
    written = []
    def die_after_two(path):
        written.append(path)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    root, out = sys.argv[1], sys.argv[2]
    build_imagenet.build_imagenet_tfrecords(
        root, root + "/imagenet_index.npz", out, num_train_shards=5,
        num_validation_shards=2, num_threads=1, splits=("train",), progress=False,
        on_shard_written=die_after_two)
""")


@pytest.mark.slow
def test_resumes_after_a_kill_without_touching_finished_shards(tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    write_imagenet_folder(root)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(build_imagenet.__file__).parents[2]))
    process = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(root), str(out)],
                             env=env, capture_output=True, timeout=300)
    assert process.returncode == -9, process.stderr.decode()[-2000:]
    finished = sorted(p.name for p in out.glob("train-*"))
    assert len(finished) == 2 and not list(out.glob("*.tmp-*"))  # hidden temporaries
    mtimes = {name: (out / name).stat().st_mtime_ns for name in finished}
    summary = _build(root, out, num_train_shards=5, splits=("train",))
    assert sorted(summary.skipped) == finished and len(summary.written) == 3
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == mtimes
    fresh = tmp_path / "fresh"
    _build(root, fresh, num_train_shards=5, splits=("train",))
    names = sorted(p.name for p in fresh.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # temporaries and lock gone
    for name in names:
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
