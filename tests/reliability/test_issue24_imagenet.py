"""Issue 24, item 9: the ImageNet builder's temporaries never match the reader patterns
and are cleaned on resume, a resume with another index file is refused (its
fingerprint is recorded), two builders are kept apart by a lock, and every failure is
one line (also from the command line).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from heldout.data import build_imagenet, imagenet
from tests.data.test_build_imagenet import _build, write_imagenet_folder

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    write_imagenet_folder(root)
    return root


def _one_line(call, *fragments):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_resume_cleans_temporaries_that_readers_would_match(folder, tmp_path):
    out = tmp_path / "out"
    _build(folder, out, splits=("train",), num_train_shards=3)
    (out / "train-00001-of-00003").unlink()  # a shard the killed build had not finished
    (out / ("train-00001-of-00003.tmp-" + "ab" * 16)).write_bytes(b"trunc")  # old naming
    (out / ".tmp-0123.tfrecord").write_bytes(b"trunc")
    summary = _build(folder, out, splits=("train",), num_train_shards=3)
    assert summary.written == ("train-00001-of-00003",)
    assert sorted(p.name for p in out.iterdir()) == [
        build_imagenet.RECORD_FILENAME, "train-00000-of-00003", "train-00001-of-00003",
        "train-00002-of-00003"]
    indices = imagenet.load_imagenet_tfrecords(str(out / "train-*"), str(out / "train-*"),
                                               image_size=8).index_train
    np.testing.assert_array_equal(np.sort(indices), np.arange(9))


def test_resume_with_another_index_file_is_refused(folder, tmp_path):
    out = tmp_path / "out"
    _build(folder, out, splits=("train",), num_train_shards=3)
    (out / "train-00002-of-00003").unlink()
    arrays = imagenet.read_npz_keys(str(folder / "imagenet_index.npz"), ())
    order = np.roll(np.arange(9), 1)  # the same files in another order: another index
    arrays["tr_filenames"], arrays["tr_labels"] = (arrays["tr_filenames"][order],
                                                   arrays["tr_labels"][order])
    other = tmp_path / "other_index.npz"
    np.savez(other, **arrays)
    _one_line(lambda: build_imagenet.build_imagenet_tfrecords(
        str(folder), str(other), str(out), splits=("train",), num_train_shards=3,
        num_threads=1, progress=False),
              "built from another index file", "index_sha256", str(other))
    assert not (out / "train-00002-of-00003").exists()  # nothing mixed in
    _one_line(lambda: _build(folder, out, splits=("train",), num_train_shards=4),
              "other settings", "num_train_shards")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train-00000-of-00003").write_bytes(b"")
    _one_line(lambda: _build(folder, bare, splits=("train",), num_train_shards=3),
              "no build_imagenet.json")


def test_second_builder_is_refused_by_the_lock(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / build_imagenet.LOCK_FILENAME
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": {live.pid}, '
                        '"token": "x"}')
        _one_line(lambda: _build(folder, out, splits=("validation",)),
                  "another build is writing into it", str(lock))
    finally:
        live.kill()
        live.wait()
    summary = _build(folder, out, splits=("validation",))  # its builder is gone: taken over
    assert len(summary.written) == 2 and not lock.exists()


def test_unwritable_output_is_one_line(folder, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    _one_line(lambda: _build(folder, tmp_path / "file" / "out", splits=("validation",)),
              "output_dir=")


def test_command_line_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    process = subprocess.run(
        [sys.executable, "-m", "heldout.data.build_imagenet", f"--imagenet_dir={tmp_path}",
         f"--index_file={tmp_path / 'missing.npz'}", f"--output_dir={tmp_path / 'o'}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.npz" in lines[0], process.stderr
