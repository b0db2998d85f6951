"""Streaming the aux arrays out of a release tarball: throughput against plain gunzip, memory.

Builds a synthetic release of --size_mb compressed MB in a temporary folder, shaped like
the published ones: runs of subset 0.7, each with an uncompressed ``aux_arrays.npz`` of
about 5 MB (int64 indices and bool correctness over --num_train examples) and a
--checkpoint_mb checkpoint ``.data`` file of random bytes (weights barely compress).
Then times `extract_release` of the aux arrays (MD5 verified, file in the page cache)
and prints the MB/s of the compressed stream and the process's peak resident memory,
which stays at a few MB of buffers above the interpreter's whatever the tarball's size.
For reference it times ``gzip -dc file > /dev/null``, Python's zlib inflating the file,
and its MD5, and prints the ratios.

Usage:
  python benchmarks/released_extract.py [--size_mb=1024 --checkpoint_mb=20]
"""

import hashlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_SIZE_MB = flags.DEFINE_integer("size_mb", 1024, "Compressed size of the synthetic tarball.")
_CHECKPOINT_MB = flags.DEFINE_integer("checkpoint_mb", 20, "Checkpoint .data size per run.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 320_000,
                                  "Training examples per run's aux arrays (~5 MB).")
_NUM_TEST = flags.DEFINE_integer("num_test", 10_000, "Test examples per run's aux arrays.")
_INCLUDE_CHECKPOINTS = flags.DEFINE_bool("include_checkpoints", False,
                                         "Also time extracting everything.")

_CHUNK_BYTES = 1 << 20


def aux_npz(rng: np.random.Generator, num_train: int, num_test: int) -> bytes:
    """One run's aux arrays under the released keys, as ``np.savez`` writes them."""
    in_subset = np.zeros(num_train, dtype=bool)
    in_subset[rng.choice(num_train, int(0.7 * num_train), replace=False)] = True
    train, removed = np.flatnonzero(in_subset), np.flatnonzero(~in_subset)
    buffer = io.BytesIO()
    np.savez(buffer, subsample_idx=train, index_train=train, index_removed=removed,
             index_test=np.arange(num_test), correctness_train=rng.random(len(train)) < 0.95,
             correctness_removed=rng.random(len(removed)) < 0.7,
             correctness_test=rng.random(num_test) < 0.7)
    return buffer.getvalue()


def build_tarball(path: str, size_mb: int, checkpoint_mb: int, num_train: int,
                  num_test: int) -> int:
    """Writes runs to a ``.tar.gz`` (gzip level 6, like ``tar czf``) until it reaches
    `size_mb`; returns the number of runs."""
    rng = np.random.default_rng(0)
    runs = 0
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz",
                                               compresslevel=6) as tar:
        while raw.tell() < size_mb * 2**20:
            folder = f"synthetic-release/0.7/{runs}"
            members = {f"{folder}/aux_arrays.npz": aux_npz(rng, num_train, num_test),
                       f"{folder}/checkpoints/ckpt-100.index": rng.bytes(20_000),
                       f"{folder}/checkpoints/ckpt-100.data-00000-of-00001":
                           rng.bytes(checkpoint_mb * 2**20)}
            for name, content in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(content), 1_600_000_000
                tar.addfile(info, io.BytesIO(content))
            runs += 1
    return runs


def timed(function) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def zlib_inflate(path: str) -> int:
    """Python's reference: inflate the file in 1 MiB reads and discard the output."""
    decompressor, total = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            total += len(decompressor.decompress(chunk))
    return total


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    folder = tempfile.mkdtemp(prefix="released-bench-")
    try:
        path = os.path.join(folder, "release.tar.gz")
        num_runs, seconds = timed(lambda: build_tarball(
            path, _SIZE_MB.value, _CHECKPOINT_MB.value, _NUM_TRAIN.value, _NUM_TEST.value))
        size = os.path.getsize(path)
        print(f"synthetic release: {num_runs} runs, {size / 1e6:.0f} MB compressed "
              f"(built in {seconds:.0f} s), {os.cpu_count()} CPUs")

        # Imported after building, so that the peak below is the extraction's.
        from heldout.store import released

        md5, md5_seconds = timed(lambda: md5_of(path))
        _, gzip_seconds = timed(lambda: subprocess.run(
            f"gzip -dc {path} > /dev/null", shell=True, check=True))
        inflated, zlib_seconds = timed(lambda: zlib_inflate(path))
        rss_before = rss_mib()
        summary, extract_seconds = timed(lambda: released.extract_release(
            path, os.path.join(folder, "aux"), md5=md5, progress=False))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        def row(name: str, seconds: float) -> None:
            print(f"  {name:<36} {seconds:7.2f} s  {size / 1e6 / seconds:7.0f} MB/s "
                  f"compressed  ({seconds / gzip_seconds:.2f}x gzip -dc)")

        print(f"uncompressed {inflated / 1e6:.0f} MB; times on the file in the page cache:")
        row("gzip -dc > /dev/null", gzip_seconds)
        row("Python zlib inflate loop", zlib_seconds)
        row("MD5", md5_seconds)
        row("inflate + MD5 one after the other", zlib_seconds + md5_seconds)
        row("extract_release (aux arrays, MD5)", extract_seconds)
        print(f"  {summary}")
        print(f"  resident memory: {rss_before:.0f} MiB before extracting, peak "
              f"{peak:.0f} MiB (tarball {size / 2**20:.0f} MiB, uncompressed "
              f"{inflated / 2**20:.0f} MiB)")
        if _INCLUDE_CHECKPOINTS.value:
            summary, seconds = timed(lambda: released.extract_release(
                path, os.path.join(folder, "all"), md5=md5, include_checkpoints=True,
                progress=False))
            row("extract_release (everything, MD5)", seconds)
            print(f"  {summary}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
