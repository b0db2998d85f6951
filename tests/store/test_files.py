"""Tests of heldout.store.files: atomic writers and readers, exclusive create, progress."""

import concurrent.futures
import csv
import json
import threading
import uuid

import numpy as np
import pytest
import tensorflow as tf

from heldout.store import files


@pytest.fixture(params=["local", "ram"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return f"ram://heldout-tests/{uuid.uuid4().hex}"


def _listing(folder):
    return sorted(e.rstrip("/") for e in tf.io.gfile.listdir(folder))


def test_npz_round_trip_keeps_dtypes_and_values(folder):
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.array([[0.5, np.nan]], np.float32),
              "c": np.array([True, False]), "s": np.array(["x", "yz"])}
    path = f"{folder}/sub/dir/arrays.npz"
    assert files.write_npz(path, arrays)
    got = files.read_npz(path)
    assert sorted(got) == sorted(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value)
    assert _listing(f"{folder}/sub/dir") == ["arrays.npz"]  # no temporary file left


def test_json_round_trip_with_numpy_values(folder):
    content = {"b": [1, 2], "a": {"x": np.float32(0.5), "n": np.int64(3)},
               "v": np.arange(2)}
    path = f"{folder}/info.json"
    files.write_json(path, content)
    assert files.read_json(path) == {"a": {"n": 3, "x": 0.5}, "b": [1, 2], "v": [0, 1]}
    with tf.io.gfile.GFile(path) as f:
        assert json.loads(f.read()) == files.read_json(path)


def test_csv_written_like_the_csv_module_reads_it(tmp_path):
    path = str(tmp_path / "t" / "table.csv")
    rows = [[1, "a,b", 0.123456789, np.float32(2.5)], [2, "-", float("nan"), 7]]
    assert files.write_csv(path, ["i", "name", "x", "y"], rows) == path
    with open(path, newline="") as f:
        expected = list(csv.reader(f))
    header, got = files.read_csv(path)
    assert [header, *got] == expected
    assert expected == [["i", "name", "x", "y"], ["1", "a,b", "0.123457", "2.5"],
                        ["2", "-", "nan", "7"]]


def test_missing_and_damaged_files_raise_naming_the_path(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(files.StoredFileMissing, match="missing.json: file not found"):
        files.read_json(missing)
    with pytest.raises(files.StoredFileMissing, match="missing.json"):
        files.read_npz(missing)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(files.StoredFileError, match="bad.json: not a valid JSON file"):
        files.read_json(str(tmp_path / "bad.json"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(files.StoredFileError, match="bad.npz: not a readable .npz file"):
        files.read_npz(str(tmp_path / "bad.npz"))
    assert issubclass(files.StoredFileError, ValueError)


def test_overwrite_replaces_and_exclusive_keeps_the_first(folder):
    path = f"{folder}/x.bin"
    assert files.write_bytes(path, b"one")
    assert files.write_bytes(path, b"two")
    assert files.read_bytes(path) == b"two"
    assert not files.write_bytes(path, b"three", exclusive=True)
    assert files.read_bytes(path) == b"two"
    assert files.write_bytes(f"{folder}/y.bin", b"first", exclusive=True)
    assert _listing(folder) == ["x.bin", "y.bin"]


def test_exclusive_create_has_exactly_one_winner_among_racing_threads(tmp_path):
    writers = 16
    for attempt in range(20):
        path = str(tmp_path / f"race-{attempt}.json")
        start = threading.Barrier(writers)

        def write(w, path=path, start=start):
            start.wait()
            return files.write_json(path, {"writer": w}, exclusive=True)

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            won = list(pool.map(write, range(writers)))
        assert sum(won) == 1
        assert files.read_json(path) == {"writer": won.index(True)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"race-{a}.json" for a in range(20))


@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_local_exclusive_create_in_one_step_or_by_link(tmp_path, monkeypatch, rename):
    """Locally the winner's file appears by one atomic no-replace rename, so a writer
    killed once the file is in place leaves no temporary; without renameat2 (older C
    libraries, some file systems), a hard link gives the same answers."""
    if rename == "link":
        monkeypatch.setattr(files, "_RENAMEAT2", None)
    elif files._RENAMEAT2 is None:
        pytest.skip("this C library has no renameat2")
    source, target = tmp_path / "a.tmp-1", tmp_path / "a"
    source.write_bytes(b"first")
    if rename == "renameat2":
        assert files._rename_no_replace(str(source), str(target)) is True
        assert not source.exists() and target.read_bytes() == b"first"
        source.write_bytes(b"second")
        assert files._rename_no_replace(str(source), str(target)) is False
        assert source.exists() and target.read_bytes() == b"first"
        source.unlink()
        target.unlink()
    else:
        assert files._rename_no_replace(str(source), str(target)) is None
        source.unlink()
    assert files.write_bytes(str(tmp_path / "b"), b"one", exclusive=True)
    assert not files.write_bytes(str(tmp_path / "b"), b"two", exclusive=True)
    assert (tmp_path / "b").read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_stream_leaves_nothing_behind(tmp_path):
    path = str(tmp_path / "stream.bin")
    with pytest.raises(RuntimeError):
        with files.open_atomic(path) as (f, _):
            f.write(b"part")
            raise RuntimeError("the source broke")
    assert list(tmp_path.iterdir()) == []
    with files.open_atomic(path) as (f, outcome):
        f.write(b"whole")
    assert outcome["written"] and files.read_bytes(path) == b"whole"


def test_exists_by_listing_on_ram_file_system():
    folder = f"ram://heldout-tests/{uuid.uuid4().hex}"
    files.write_bytes(f"{folder}/name.tmp-0", b"a temporary file")
    assert not files.exists(f"{folder}/name")
    files.write_bytes(f"{folder}/name", b"x")
    assert files.exists(f"{folder}/name")
    assert not files.exists(f"{folder}/nowhere/name")
