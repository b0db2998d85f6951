"""Tests of heldout.store.released: streaming the aux arrays out of release tarballs."""

import gzip
import hashlib
import http.server
import io
import os
import pathlib
import tarfile
import threading
import uuid

import numpy as np
import pytest
import tensorflow as tf

from heldout.store import released, runs

SUBSETS = {"0.7": (0, 1, 2), "0.5": (0, 1)}
WRONG_MD5 = "0" * 32


def _release_files() -> dict[str, bytes]:
    """Relative path -> content of a tiny release: aux arrays and two checkpoint files per run."""
    rng = np.random.default_rng(0)
    files = {}
    for subset, run_ids in SUBSETS.items():
        for run_id in run_ids:
            buffer = io.BytesIO()
            np.savez(buffer, subsample_idx=rng.permutation(50)[:35],
                     correctness_test=rng.random(20) < 0.5)
            folder = f"{subset}/{run_id}"
            files[f"{folder}/aux_arrays.npz"] = buffer.getvalue()
            files[f"{folder}/checkpoints/ckpt-10.index"] = rng.bytes(300)
            files[f"{folder}/checkpoints/ckpt-10.data-00000-of-00001"] = rng.bytes(70_000)
    return files


FILES = _release_files()
AUX = {name for name in FILES if name.endswith("aux_arrays.npz")}


def _tar_bytes(files: dict[str, bytes], leading: str = "", extra=()) -> bytes:
    """Uncompressed tar of `files` under `leading`, with folder entries, plus `extra` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({leading + name.rsplit("/", 1)[0] for name in files})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(leading + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info, content in extra:
            tar.addfile(info, None if content is None else io.BytesIO(content))
    return buffer.getvalue()


def _write_tarball(path: pathlib.Path, files=FILES, leading: str = "", extra=()) -> str:
    path.write_bytes(gzip.compress(_tar_bytes(files, leading, extra), mtime=0))
    return str(path)


def _md5(path) -> str:
    return hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


def _extract(source, destination, **kwargs) -> released.ExtractSummary:
    return released.extract_release(str(source), str(destination), progress=False, **kwargs)


@pytest.mark.parametrize("leading", ["", "cifar10-inception/", "./"])
def test_extracts_only_aux_arrays_byte_identical(tmp_path, leading):
    tarball = _write_tarball(tmp_path / "release.tar.gz", leading=leading)
    summary = _extract(tarball, tmp_path / "out")

    root = tmp_path / "out" / leading.strip("./")
    assert _tree(tmp_path / "out") == {
        (root / name).relative_to(tmp_path / "out").as_posix(): FILES[name] for name in AUX}
    assert released.experiment_root(str(tmp_path / "out")) == str(root).rstrip("/")
    assert runs.list_subsets(released.experiment_root(str(tmp_path / "out"))) == ["0.5", "0.7"]
    assert (summary.extracted, summary.skipped, summary.rejected) == (len(AUX), 0, ())
    assert summary.bytes_read == os.path.getsize(tarball)
    assert summary.bytes_written == sum(len(FILES[name]) for name in AUX)
    assert summary.md5 == _md5(tarball) and not summary.md5_verified
    assert summary.megabytes_per_second > 0 and "extracted 5" in str(summary)


@pytest.mark.parametrize("subsets, run_ids, chosen", [
    (None, None, {(s, r) for s, ids in SUBSETS.items() for r in ids}),
    (["0.7"], None, {("0.7", 0), ("0.7", 1), ("0.7", 2)}),
    ([0.5], [1, 2], {("0.5", 1)}),
    (None, [0], {("0.7", 0), ("0.5", 0)}),
])
def test_checkpoints_only_of_the_chosen_subsets_and_runs(tmp_path, subsets, run_ids, chosen):
    tarball = _write_tarball(tmp_path / "release.tgz", leading="lead/")
    summary = _extract(tarball, tmp_path / "out", include_checkpoints=True, subsets=subsets,
                       run_ids=run_ids)

    expected = AUX | {name for name in FILES if "/checkpoints/" in name
                      and tuple(name.split("/")[:2]) in {(s, str(r)) for s, r in chosen}}
    assert _tree(tmp_path / "out" / "lead") == {name: FILES[name] for name in expected}
    assert summary.extracted == len(expected)


def test_md5_checked_and_mismatch_deletes_what_the_call_wrote(tmp_path):
    tarball = _write_tarball(tmp_path / "release.tar.gz")
    summary = _extract(tarball, tmp_path / "good", md5=_md5(tarball).upper())
    assert summary.md5_verified and summary.extracted == len(AUX)

    with pytest.raises(released.CorruptReleaseError) as caught:
        _extract(tarball, tmp_path / "bad", md5=WRONG_MD5, include_checkpoints=True)
    message = str(caught.value)
    assert tarball in message and WRONG_MD5 in message and _md5(tarball) in message
    assert _tree(tmp_path / "bad") == {}

    # Members present before the call were not written by it, so they stay.
    (tmp_path / "good" / "0.7" / "1" / "aux_arrays.npz").unlink()
    with pytest.raises(released.CorruptReleaseError, match="deleted the 1 member"):
        _extract(tarball, tmp_path / "good", md5=WRONG_MD5)
    assert set(_tree(tmp_path / "good")) == AUX - {"0.7/1/aux_arrays.npz"}


def test_invalid_md5_argument(tmp_path):
    with pytest.raises(ValueError, match="md5="):
        _extract(_write_tarball(tmp_path / "r.tar.gz"), tmp_path / "out", md5="abc")


def test_truncated_stream_keeps_only_whole_members_and_rerun_resumes(tmp_path):
    tarball = tmp_path / "release.tar.gz"
    _write_tarball(tarball)
    content = tarball.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(content[:len(content) * 2 // 3])

    with pytest.raises(released.TruncatedReleaseError, match="ends early") as caught:
        _extract(truncated, tmp_path / "out", include_checkpoints=True)
    assert str(truncated) in str(caught.value)
    kept = _tree(tmp_path / "out")
    assert kept and all(FILES[name] == data for name, data in kept.items())
    assert not any(".tmp-" in name for name in kept)

    summary = _extract(tarball, tmp_path / "out", include_checkpoints=True, md5=_md5(tarball))
    assert (summary.skipped, summary.extracted) == (len(kept), len(FILES) - len(kept))
    assert _tree(tmp_path / "out") == FILES


def test_corrupt_gzip_data_leaves_nothing(tmp_path):
    tarball = tmp_path / "release.tar.gz"
    _write_tarball(tarball)
    content = bytearray(tarball.read_bytes())
    content[len(content) // 2] ^= 0xFF
    tarball.write_bytes(bytes(content))

    with pytest.raises(released.CorruptReleaseError, match="deleted"):
        _extract(tarball, tmp_path / "out", include_checkpoints=True)
    assert _tree(tmp_path / "out") == {}


def test_not_a_gzip_file(tmp_path):
    path = tmp_path / "plain.tar.gz"
    path.write_bytes(_tar_bytes(FILES))
    with pytest.raises(released.CorruptReleaseError, match="bad gzip data"):
        _extract(path, tmp_path / "out")


def test_gzip_of_something_else_than_a_tar(tmp_path):
    path = tmp_path / "release.tar.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(1).bytes(5000)))
    with pytest.raises(released.CorruptReleaseError, match="not a valid tar stream"):
        _extract(path, tmp_path / "out")


def test_concatenated_gzip_members(tmp_path):
    raw = _tar_bytes(FILES)
    path = tmp_path / "release.tar.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    assert _extract(path, tmp_path / "out").extracted == len(AUX)
    assert _tree(tmp_path / "out") == {name: FILES[name] for name in AUX}


def test_rerun_skips_existing_members_without_touching_them(tmp_path):
    tarball = _write_tarball(tmp_path / "release.tar.gz")
    _extract(tarball, tmp_path / "out")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*")
              if p.is_file()}

    summary = _extract(tarball, tmp_path / "out")
    assert (summary.extracted, summary.skipped, summary.bytes_written) == (0, len(AUX), 0)
    assert before == {p: (p.stat().st_ino, p.stat().st_mtime_ns)
                      for p in (tmp_path / "out").rglob("*") if p.is_file()}


def test_member_present_with_another_size_is_replaced(tmp_path):
    tarball = _write_tarball(tmp_path / "release.tar.gz")
    stale = tmp_path / "out" / "0.5" / "1" / "aux_arrays.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    summary = _extract(tarball, tmp_path / "out")
    assert summary.extracted == len(AUX) and stale.read_bytes() == FILES["0.5/1/aux_arrays.npz"]


def test_unsafe_members_are_rejected(tmp_path):
    def member(name, kind=tarfile.REGTYPE, content=b"evil", link=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(content) if kind == tarfile.REGTYPE else 0
        return info, content if kind == tarfile.REGTYPE else None

    outside = tmp_path / "outside"
    extra = [member("../outside/0.7/5/aux_arrays.npz"),
             member(f"{outside}/0.7/6/aux_arrays.npz"),
             member("0.7/7/aux_arrays.npz", tarfile.SYMTYPE, link="/etc/passwd"),
             member("0.7/8/aux_arrays.npz", tarfile.LNKTYPE, link="0.7/0/aux_arrays.npz"),
             member("0.7/9/aux_arrays.npz", tarfile.FIFOTYPE)]
    tarball = _write_tarball(tmp_path / "release.tar.gz", extra=extra)
    summary = _extract(tarball, tmp_path / "out" / "nested")

    assert summary.rejected == tuple(info.name for info, _ in extra)
    assert _tree(tmp_path / "out") == {f"nested/{name}": FILES[name] for name in AUX}
    assert not outside.exists()


@pytest.fixture
def ram_folder():
    folder = f"ram://heldout-released-tests/{uuid.uuid4().hex}"
    yield folder
    try:  # Best effort: the RAM file system's rmtree fails on some trees (TF quirk).
        tf.io.gfile.rmtree(folder)
    except tf.errors.OpError:
        pass


def test_gfile_source_and_ram_destination(tmp_path, ram_folder):
    source = f"{ram_folder}/release.tar.gz"
    content = pathlib.Path(_write_tarball(tmp_path / "r.tar.gz", leading="x/")).read_bytes()
    with tf.io.gfile.GFile(source, "wb") as f:
        f.write(content)
    destination = f"{ram_folder}/out"

    summary = released.extract_release(source, destination, include_checkpoints=True,
                                       run_ids=[2], md5=hashlib.md5(content).hexdigest(),
                                       progress=False)
    found = {path[len(destination) + 1:] for path in tf.io.gfile.glob(f"{destination}/*/*/*/*")
             + tf.io.gfile.glob(f"{destination}/*/*/*/*/*") if not tf.io.gfile.isdir(path)}
    expected = AUX | {name for name in FILES if name.startswith("0.7/2/checkpoints/")}
    assert found == {f"x/{name}" for name in expected} and summary.extracted == len(expected)
    for name in expected:
        with tf.io.gfile.GFile(f"{destination}/x/{name}", "rb") as f:
            assert f.read() == FILES[name]
    assert released.experiment_root(destination) == f"{destination}/x"
    assert released.extract_release(source, destination, progress=False).skipped == len(AUX)


class _TarballHandler(http.server.BaseHTTPRequestHandler):
    """Serves `content` with Range support; the first `breaks` responses stop halfway.

    With `refuse_ranges`, Range requests are answered 503.
    """

    content = b""
    breaks = 0
    refuse_ranges = False
    requests: list = []

    def do_GET(self):  # noqa: N802 - the name http.server calls.
        if self.path != "/release.tar.gz":
            self.send_error(404)
            return
        type(self).requests.append(self.headers.get("Range"))
        if self.refuse_ranges and self.headers["Range"]:
            self.send_error(503)
            return
        start = int(self.headers["Range"][len("bytes="):-1]) if self.headers["Range"] else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range",
                             f"bytes {start}-{len(self.content) - 1}/{len(self.content)}")
        self.send_header("Content-Length", str(len(self.content) - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        body = self.content[start:]
        if type(self).breaks:
            type(self).breaks -= 1
            body = body[:len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_url():
    """URL of a tarball served over HTTP by a local server thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TarballHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/release.tar.gz"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("breaks", [0, 2])
def test_http_source_streams_and_resumes_broken_connections(tmp_path, http_url, breaks,
                                                            monkeypatch):
    monkeypatch.setattr(released, "_HTTP_RETRY_DELAY_S", 0.0)
    tarball = _write_tarball(tmp_path / "release.tar.gz", leading="cifar100-inception/")
    monkeypatch.setattr(_TarballHandler, "content", pathlib.Path(tarball).read_bytes())
    monkeypatch.setattr(_TarballHandler, "breaks", breaks)
    monkeypatch.setattr(_TarballHandler, "requests", [])

    summary = _extract(http_url, tmp_path / "out", md5=_md5(tarball))
    assert summary.md5_verified and summary.extracted == len(AUX)
    assert _tree(tmp_path / "out" / "cifar100-inception") == {name: FILES[name] for name in AUX}
    assert len(_TarballHandler.requests) == 1 + breaks
    assert all(r.startswith("bytes=") for r in _TarballHandler.requests[1:])


def test_http_that_cannot_resume_is_a_truncation(tmp_path, http_url, monkeypatch):
    monkeypatch.setattr(released, "_HTTP_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(released, "_HTTP_RETRIES", 2)
    tarball = _write_tarball(tmp_path / "release.tar.gz")
    monkeypatch.setattr(_TarballHandler, "content", pathlib.Path(tarball).read_bytes())
    monkeypatch.setattr(_TarballHandler, "breaks", 1)
    monkeypatch.setattr(_TarballHandler, "refuse_ranges", True)
    monkeypatch.setattr(_TarballHandler, "requests", [])

    with pytest.raises(released.TruncatedReleaseError, match="after 2 retries"):
        _extract(http_url, tmp_path / "out", include_checkpoints=True)
    assert len(_TarballHandler.requests) == 3
    kept = _tree(tmp_path / "out")
    assert all(FILES[name] == data for name, data in kept.items())


def test_unreadable_sources_are_named(tmp_path, http_url):
    missing = http_url.replace("release", "missing")
    with pytest.raises(ValueError, match=f"{missing}.*404"):
        released.open_stream(missing)
    with pytest.raises(ValueError, match="nothing.tar.gz"):
        _extract(tmp_path / "nothing.tar.gz", tmp_path / "out")
    with pytest.raises(ValueError, match="is a directory"):
        released.open_stream(str(tmp_path))


def test_open_stream_reads_local_file(tmp_path):
    path = tmp_path / "data.tgz"
    path.write_bytes(b"0123456789")
    stream = released.open_stream(str(path))
    assert stream.read(4) + stream.read(100) == b"0123456789"
    stream.close()


def test_is_release_source():
    assert released.is_release_source("cifar10-inception")
    assert released.is_release_source("gs://bucket/x/imagenet-resnet50.tar.gz")
    assert released.is_release_source("https://host/a.TGZ?alt=media")
    assert released.is_release_source("/data/release.tar.gz/")
    assert not released.is_release_source("gs://bucket/experiments/cifar10")
    assert not released.is_release_source("/data/runs.tar")


def test_known_releases():
    assert set(released.KNOWN_RELEASES) == {"cifar10-inception", "cifar100-inception",
                                            "imagenet-resnet50"}
    for name, (url, md5) in released.KNOWN_RELEASES.items():
        assert url.startswith("https://storage.googleapis.com/") and url.endswith(
            f"/{name}.tar.gz") and len(md5) == 32
        assert released.KNOWN_RELEASES[name].gs_url == (
            f"gs://gresearch/heldout-training-checkpoints/{name}.tar.gz")


def test_known_release_url_implies_its_md5(tmp_path, monkeypatch):
    tarball = _write_tarball(tmp_path / "release.tar.gz")
    monkeypatch.setitem(released.KNOWN_RELEASES, "test-release",
                        released.Release(tarball, WRONG_MD5))
    with pytest.raises(released.CorruptReleaseError, match=WRONG_MD5):
        _extract("test-release", tmp_path / "out")
    assert _extract("test-release", tmp_path / "out", md5=_md5(tarball)).md5_verified


def test_experiment_root_errors(tmp_path):
    for experiment in ("a", "b"):
        (tmp_path / experiment / "0.7" / "3").mkdir(parents=True)
    with pytest.raises(ValueError, match="several experiments"):
        released.experiment_root(str(tmp_path))
    assert released.experiment_root(str(tmp_path / "a")) == str(tmp_path / "a")
    with pytest.raises(ValueError, match="no extracted experiment"):
        released.experiment_root(str(tmp_path / "a" / "0.7" / "3"))
