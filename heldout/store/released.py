"""Extracting the released Feldman-Zhang runs from their tarballs, read as a stream.

The heldout runs of Feldman & Zhang (2020) are published as gzip-compressed tarballs of
239-367 GB (`KNOWN_RELEASES`), almost all of it checkpoints; the ``aux_arrays.npz`` that
the estimators need are a few MB per run. `extract_release` reads a tarball once, as a
stream from a local path, ``gs://`` (any ``tf.io.gfile`` path) or HTTP(S), and writes only
the wanted members into an experiment directory (local or ``gs://``): every
``<subset>/<run_id>/aux_arrays.npz``, and checkpoints only on request. The tarball is
never stored and memory stays constant (a few MB of buffers), whatever its size.

Pipeline: a background thread reads the compressed bytes and computes their MD5 (network
and hashing overlap inflating and writing); the main thread inflates them (checking the
gzip CRC at the end), walks the tar headers and copies the selected members out.
An HTTP download that breaks off is resumed with a ``Range`` request where it stopped.

Trust:
  * Each member is written under ``<name>.tmp-<uuid>`` and renamed into place when
    complete, so a file with its final name is always whole.
  * A corrupt stream (MD5 different from the expected one, bad gzip data or CRC,
    malformed tar) raises `CorruptReleaseError` after deleting every member this call
    wrote: nothing read from it is kept.
  * A stream that ends early or breaks (`TruncatedReleaseError`) delivered a correct
    prefix of the file, so the members completed before the break are kept; running
    the extraction again skips them (it reads the stream again but writes nothing
    twice) and verifies the MD5 of the whole stream at its end.
  * Members with absolute names, ``..`` components, links or device files are never
    written; their names are listed in `ExtractSummary.rejected`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import posixpath
import queue
import re
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO, NamedTuple

import tensorflow as tf

from heldout.errors import ParameterError
from heldout.progress import Progress
from heldout.store import files, layout, runs

_HTTPS_BASE = "https://storage.googleapis.com/gresearch/heldout-training-checkpoints/"
_GS_BASE = "gs://gresearch/heldout-training-checkpoints/"
_TARBALL_SUFFIXES = (".tar.gz", ".tgz")

_CHUNK_BYTES = 1 << 20  # Compressed bytes per read, and tar/copy buffer size.
_READAHEAD_CHUNKS = 16  # Chunks the reader thread may run ahead (memory: 16 MiB).
_INFLATE_BYTES = _CHUNK_BYTES  # Most uncompressed bytes per inflate step (= tar's reads).
_HTTP_TIMEOUT_S = 60.0  # Per socket operation.
_HTTP_RETRIES = 6  # Reconnections per break, with delays 1, 2, 4, ... seconds.
_HTTP_RETRY_DELAY_S = 1.0


class Release(NamedTuple):
    """One published tarball: its HTTPS URL and the MD5 of its compressed bytes."""

    url: str
    md5: str

    @property
    def gs_url(self) -> str:
        """The same object as a ``gs://`` path (needs TensorFlow's GCS file system)."""
        return _GS_BASE + self.url.removeprefix(_HTTPS_BASE)


# name -> Release; each is also at gs://gresearch/heldout-training-checkpoints/<name>.tar.gz.
KNOWN_RELEASES: dict[str, Release] = {
    "cifar10-inception": Release(  # 239 GB
        _HTTPS_BASE + "cifar10-inception.tar.gz", "bc3b75203381709f8224810946be14b1"),
    "cifar100-inception": Release(  # 244 GB
        _HTTPS_BASE + "cifar100-inception.tar.gz", "f87218368528afa6e2407c8410f1ffa1"),
    "imagenet-resnet50": Release(  # 367 GB
        _HTTPS_BASE + "imagenet-resnet50.tar.gz", "64c39ef7702462b83959af9de622b4b8"),
}


class ReleaseError(ValueError):
    """A release tarball could not be read to its end or did not verify."""


class TruncatedReleaseError(ReleaseError):
    """The stream ended or broke before its end; members completed before are kept."""


class CorruptReleaseError(ReleaseError):
    """The stream is damaged (MD5, gzip or tar); members written by this call were deleted."""


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """What one `extract_release` call did.

    Attributes:
        source: the URL or path that was read.
        destination: the folder the members were written under.
        extracted: members written by this call.
        skipped: selected members already present at the destination (same size).
        rejected: names of unsafe members that were not written (links, absolute or
            ``..`` paths, device files).
        bytes_read: compressed bytes read, the whole tarball.
        bytes_written: uncompressed bytes written.
        seconds: wall time of the call.
        md5: hex MD5 of the compressed bytes read.
        md5_verified: whether `md5` was compared with an expected value (and matched).
    """

    source: str
    destination: str
    extracted: int
    skipped: int
    rejected: tuple[str, ...]
    bytes_read: int
    bytes_written: int
    seconds: float
    md5: str
    md5_verified: bool

    @property
    def megabytes_per_second(self) -> float:
        """Compressed stream throughput in MB/s (10^6 bytes)."""
        return self.bytes_read / 1e6 / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        check = "verified" if self.md5_verified else "not checked"
        rejected = f", rejected {len(self.rejected)} unsafe" if self.rejected else ""
        return (f"{self.source} -> {self.destination}: extracted {self.extracted}, skipped "
                f"{self.skipped} present{rejected}; read {self.bytes_read / 1e9:.2f} GB in "
                f"{self.seconds:.0f} s ({self.megabytes_per_second:.0f} MB/s), "
                f"MD5 {self.md5} ({check})")


def is_release_source(path: str) -> bool:
    """Whether `path` names a release tarball: a ``.tar.gz``/``.tgz`` path or URL, or a
    `KNOWN_RELEASES` name (rather than an experiment directory)."""
    if path in KNOWN_RELEASES:
        return True
    if path.startswith(("http://", "https://")):
        path = urllib.parse.urlsplit(path).path
    return path.rstrip("/").lower().endswith(_TARBALL_SUFFIXES)


def open_stream(source: str) -> BinaryIO:
    """Opens a tarball for sequential reading, without loading it.

    Args:
        source: an ``http(s)://`` URL (read with urllib, resumed with ``Range`` requests
            if the connection breaks), or a local, ``gs://`` or other ``tf.io.gfile``
            path.

    Raises:
        ValueError: the source does not exist or cannot be opened (named in the message).
    """
    return _open(source)[0]


def extract_release(source: str, destination: str, md5: str | None = None,
                    include_checkpoints: bool = False,
                    subsets: Iterable[str | float] | None = None,
                    run_ids: Iterable[int] | None = None,
                    progress: bool = True) -> ExtractSummary:
    """Streams a release tarball and writes its aux arrays (and chosen checkpoints).

    Members are matched by the end of their path, so a leading folder in the tarball
    (``cifar10-inception/0.7/12/aux_arrays.npz``) is kept as it is under `destination`;
    `experiment_root` finds the experiment directory afterwards.

    Args:
        source: a `KNOWN_RELEASES` name, an ``http(s)://`` URL, or a local, ``gs://`` or
            other ``tf.io.gfile`` path of a ``.tar.gz``.
        destination: folder to write into (local or any ``tf.io.gfile`` path).
        md5: expected hex MD5 of the compressed file. None: the published MD5 when
            `source` is a known release (by name or URL), else not checked.
        include_checkpoints: also extract ``<subset>/<run_id>/checkpoints/*``.
        subsets: with `include_checkpoints`, only the checkpoints of these subset
            folders (``"0.7"``); None: all. Aux arrays are always extracted.
        run_ids: with `include_checkpoints`, only the checkpoints of these run ids;
            None: all.
        progress: show a progress bar (bytes, rate and, when the size is known, ETA).

    Returns:
        An `ExtractSummary`.

    Raises:
        ValueError: `source` cannot be opened, or `md5` is not 32 hex digits.
        CorruptReleaseError: the MD5 differs from `md5`, or the gzip or tar data is
            damaged; every member written by this call has been deleted.
        TruncatedReleaseError: the stream ended or broke early; members completed before
            were kept, and running again resumes after them.
    """
    source, md5 = _resolve(source, md5)
    subset_names = None if subsets is None else {str(s) for s in subsets}
    run_id_set = None if run_ids is None else {int(r) for r in run_ids}
    start = time.monotonic()
    stream, size = _open(source)
    reader = _ReadAhead(stream, source)
    bar = Progress(size, posixpath.basename(source.rstrip("/")), "B",
                                enabled=progress, byte_units=True)
    consumed = 0

    def next_chunk() -> bytes:
        nonlocal consumed
        chunk = reader.next_chunk()
        consumed += len(chunk)
        bar.advance(len(chunk))
        return chunk

    target = _Destination(destination)
    counts = {"extracted": 0, "skipped": 0}
    rejected: list[str] = []
    try:
        gunzip = _GunzipReader(next_chunk, source, lambda: consumed)
        with tarfile.open(fileobj=gunzip, mode="r|", bufsize=_CHUNK_BYTES) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # Stream mode would otherwise keep every header.
                parts = _safe_parts(member)
                if parts is None:
                    rejected.append(member.name)
                    continue
                if not (member.isfile() and _selected(parts, include_checkpoints,
                                                      subset_names, run_id_set)):
                    continue
                if target.has(parts, member.size):
                    counts["skipped"] += 1
                else:
                    target.write(parts, tar.extractfile(member), member.size)
                    counts["extracted"] += 1
                bar.note(**counts)
        gunzip.drain()  # The tar's end padding, the gzip CRC, and the MD5's last bytes.
        digest = reader.md5.hexdigest()
        if md5 is not None and digest != md5:
            raise CorruptReleaseError(f"{source}: MD5 {digest} of the {consumed:,} bytes read "
                                      f"differs from the expected {md5}")
    except (CorruptReleaseError, tarfile.TarError) as error:
        problem = (f"{source}: not a valid tar stream ({error})"
                   if isinstance(error, tarfile.TarError) else str(error))
        removed = target.remove_written()
        raise CorruptReleaseError(f"{problem}; deleted the {removed} member(s) this call "
                                  "wrote") from error
    except TruncatedReleaseError as error:
        raise TruncatedReleaseError(
            f"{error}; kept the {target.num_written} whole member(s) this call wrote: "
            "run again to resume after them") from error
    finally:
        reader.close()
        bar.close()
    return ExtractSummary(
        source=source, destination=destination, extracted=counts["extracted"],
        skipped=counts["skipped"], rejected=tuple(rejected), bytes_read=consumed,
        bytes_written=target.bytes_written, seconds=time.monotonic() - start, md5=digest,
        md5_verified=md5 is not None)


def verify_md5(source: str, md5: str | None, parameter: str = "md5") -> str | None:
    """Honours an expected MD5 for a source that `extract_release` does not read: a
    single file (a published ``.npz``, a data file) is hashed and compared, and a
    directory, which has no MD5, is refused rather than the setting ignored.

    Release tarballs are verified while they are extracted (`extract_release`); calling
    this on one hashes it a second time, so front doors call it for the other sources.

    Args:
        source: a local, ``gs://`` or ``http(s)://`` file, or a directory.
        md5: the expected hex MD5; None: nothing to check (returns None).
        parameter: the setting `md5` came from, for messages.

    Returns:
        The file's MD5 (equal to `md5`), or None when `md5` is None.

    Raises:
        ParameterError: `md5` is not 32 hex digits, `source` is a directory or cannot be
            read, or its MD5 differs (one line naming the file and both digests).
    """
    if md5 is None:
        return None
    expected = md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise ParameterError(parameter, "expected 32 hexadecimal digits", md5)
    if "://" not in source or source.startswith("gs://"):
        try:
            is_directory = tf.io.gfile.isdir(source)
        except tf.errors.OpError:
            is_directory = False
        if is_directory:
            raise ParameterError(parameter, f"{source} is a directory, which has no MD5; "
                                            "an MD5 checks a tarball or a single file", md5)
    try:
        stream, _ = _open(source)
        digest = hashlib.md5()
        with stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
    except (ValueError, OSError) as e:
        raise ParameterError(parameter, f"cannot read {source} to check its MD5 ({e})",
                             md5) from None
    if digest.hexdigest() != expected:
        raise ParameterError(parameter, f"{source} has MD5 {digest.hexdigest()}, not the "
                                        "expected one", md5)
    return expected


def experiment_root(destination: str, max_depth: int = 2) -> str:
    """The folder under `destination` that holds the subset folders of an extracted release.

    Looks at `destination` itself, then its subfolders, down to `max_depth` levels, for a
    folder whose children are subset folders (``0.7``) holding numeric run folders.

    Raises:
        ValueError: no such folder, or several at the same depth (named).
    """
    level = [destination]
    for _ in range(max_depth + 1):
        found = [folder for folder in level if runs.list_subsets(folder)]
        if len(found) > 1:
            raise ValueError(f"{destination}: holds several experiments ({', '.join(found)}); "
                             "pass one of them as the experiment directory")
        if found:
            return found[0]
        level = [tf.io.gfile.join(folder, entry.rstrip("/")) for folder in level
                 if tf.io.gfile.isdir(folder) for entry in sorted(tf.io.gfile.listdir(folder))]
        level = [folder for folder in level if tf.io.gfile.isdir(folder)]
    raise ValueError(f"{destination}: no extracted experiment (<subset>/<run_id>/"
                     f"{layout.AUX_FILENAME}) within {max_depth} folder levels")


def _resolve(source: str, md5: str | None) -> tuple[str, str | None]:
    """The URL or path to read and the MD5 to expect (lower case), known releases filled in."""
    release = KNOWN_RELEASES.get(source)
    if release is not None:
        source = release.url
    else:
        release = next((r for r in KNOWN_RELEASES.values() if source in (r.url, r.gs_url)),
                       None)
    if md5 is None and release is not None:
        md5 = release.md5
    if md5 is not None:
        md5 = md5.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise ValueError(f"md5={md5!r}: expected 32 hexadecimal digits")
    return source, md5


def _open(source: str) -> tuple[BinaryIO, int | None]:
    """The stream of `source` and its size in bytes (None when the server does not say)."""
    if source.startswith(("http://", "https://")):
        stream = _HttpStream(source)
        return stream, stream.size
    try:
        stat = tf.io.gfile.stat(source)
    except tf.errors.OpError as e:
        raise ValueError(f"{source}: cannot open the release tarball "
                         f"({type(e).__name__}{': ' + e.message if e.message else ''})") from None
    if stat.is_directory:
        raise ValueError(f"{source}: is a directory, not a release tarball")
    if "://" not in source:  # Local: the builtin reader is cheaper per byte than GFile.
        return open(source, "rb"), stat.length
    return tf.io.gfile.GFile(source, "rb"), stat.length


class _HttpStream:
    """An HTTP(S) download read sequentially; a broken connection is resumed where it stopped.

    On an error or an early end (fewer bytes than Content-Length) it reconnects with
    ``Range: bytes=<position>-`` (and ``If-Range`` with the ETag, so a changed object is
    not spliced in), up to `_HTTP_RETRIES` times in a row with doubling delays.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._position = 0
        self._etag: str | None = None
        try:
            self._response: http.client.HTTPResponse | None = self._connect()
        except urllib.error.HTTPError as e:
            raise ValueError(f"{url}: cannot open the release tarball (HTTP {e.code} "
                             f"{e.reason})") from None
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise ValueError(f"{url}: cannot open the release tarball ({reason})") from None
        length = self._response.headers.get("Content-Length")
        self.size = int(length) if length is not None and length.isdigit() else None
        self._etag = self._response.headers.get("ETag")

    def _connect(self) -> http.client.HTTPResponse:
        headers = {}
        if self._position:
            headers["Range"] = f"bytes={self._position}-"
            if self._etag:
                headers["If-Range"] = self._etag
        request = urllib.request.Request(self._url, headers=headers)
        response = urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S)
        if self._position and response.status != 206:
            response.close()
            raise OSError(f"the server did not resume at byte {self._position:,} "
                          f"(HTTP {response.status})")
        return response

    def read(self, size: int = -1) -> bytes:
        failures = 0
        while True:
            try:
                if self._response is None:
                    self._response = self._connect()
                data = self._response.read(size)
                if data or self.size is None or self._position >= self.size:
                    self._position += len(data)
                    return data
                raise http.client.IncompleteRead(b"", self.size - self._position)
            except (OSError, http.client.HTTPException) as error:
                self._disconnect()
                failures += 1
                if failures > _HTTP_RETRIES:
                    raise OSError(f"{self._url}: reading failed at byte {self._position:,} "
                                  f"after {_HTTP_RETRIES} retries ({error!r})") from error
                time.sleep(_HTTP_RETRY_DELAY_S * 2 ** (failures - 1))

    def _disconnect(self) -> None:
        if self._response is not None:
            try:
                self._response.close()
            except (OSError, http.client.HTTPException):
                pass
            self._response = None

    def close(self) -> None:
        self._disconnect()

    def __enter__(self) -> _HttpStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _ReadAhead:
    """Reads a stream in a background thread, computing its MD5, a few chunks ahead.

    Reading (network, disk) and hashing run while the consumer inflates and writes; the
    bounded queue keeps memory at `_READAHEAD_CHUNKS` chunks. A read error reaches the
    consumer as `TruncatedReleaseError`: the bytes before it were good.
    """

    def __init__(self, stream: BinaryIO, source: str) -> None:
        self.md5 = hashlib.md5()
        self._stream = stream
        self._source = source
        self._queue: queue.Queue = queue.Queue(_READAHEAD_CHUNKS)
        self._stop = threading.Event()
        self._last: bytes | BaseException | None = None  # Final item, once consumed.
        self._thread = threading.Thread(target=self._run, name="release-readahead",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        position = 0
        try:
            while not self._stop.is_set():
                chunk = self._stream.read(_CHUNK_BYTES)
                if not chunk:
                    self._put(b"")
                    return
                self.md5.update(chunk)
                position += len(chunk)
                self._put(chunk)
        except Exception as e:  # Handed to the consumer, which raises it.
            error = TruncatedReleaseError(
                f"{self._source}: reading stopped after {position:,} bytes "
                f"({type(e).__name__}: {e})")
            error.__cause__ = e
            self._put(error)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """The next chunk of the stream; ``b""`` at its end (and after)."""
        if self._last is None:
            item = self._queue.get()
            if isinstance(item, BaseException) or not item:
                self._last = item
            else:
                return item
        if isinstance(self._last, BaseException):
            raise self._last
        return b""

    def close(self) -> None:
        """Stops the thread after its current read and closes the stream.

        A thread stuck in a stalled network read is left to its socket timeout (it is a
        daemon), rather than holding up an interrupted extraction.
        """
        self._stop.set()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._stream.close()


class _GunzipReader:
    """The uncompressed bytes of a gzip stream (one or more members), checked to the end.

    `read` gives the file object that `tarfile` reads in ``r|`` mode. The gzip CRC and
    length of each member are checked by zlib when the member ends; input that stops
    inside a member raises `TruncatedReleaseError`, bad data `CorruptReleaseError`.
    """

    def __init__(self, next_chunk: Callable[[], bytes], source: str,
                 position: Callable[[], int]) -> None:
        self._next_chunk = next_chunk
        self._source = source
        self._position = position  # Compressed bytes consumed so far, for messages.
        self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._member_started = False
        self._any_member = False
        self._input = b""
        self._pending = b""
        self._eof = False

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer when a piece ends; ``b""`` only at the end).

        Short reads let the consumer take every byte inflated before a truncation is
        raised, so members completed before the break are still written.
        """
        if not self._pending and not self._eof:
            self._pending = self._inflate()
        if size >= len(self._pending):  # The usual case: a whole piece, not copied.
            part, self._pending = self._pending, b""
        else:
            part, self._pending = self._pending[:size], self._pending[size:]
        return part

    def drain(self) -> None:
        """Inflates and discards the rest of the stream, so that its end is checked."""
        while not self._eof:
            self._inflate()
        self._pending = b""

    def _inflate(self) -> bytes:
        """The next piece of uncompressed bytes; ``b""`` only at the end of the stream."""
        while True:
            if not self._input:
                self._input = self._next_chunk()
                if not self._input:
                    self._eof = True
                    if self._member_started:
                        raise TruncatedReleaseError(
                            f"{self._source}: the gzip stream ends early, after "
                            f"{self._position():,} bytes")
                    if not self._any_member:
                        raise CorruptReleaseError(f"{self._source}: empty file")
                    return b""
            try:
                output = self._decompressor.decompress(self._input, _INFLATE_BYTES)
            except zlib.error as e:
                raise CorruptReleaseError(f"{self._source}: bad gzip data near byte "
                                          f"{self._position():,} ({e})") from e
            self._member_started = self._any_member = True
            if self._decompressor.eof:  # Member done, CRC checked; another may follow.
                self._input = self._decompressor.unused_data
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._member_started = False
            else:
                self._input = self._decompressor.unconsumed_tail
            if output:
                return output


def _safe_parts(member: tarfile.TarInfo) -> tuple[str, ...] | None:
    """The path components of a member, or None for one that must not be written.

    Unsafe: absolute names, ``..`` components, a first component with a colon (a drive
    or URL scheme), and anything but files and folders (symbolic and hard links,
    devices, FIFOs), which could point outside the destination.
    """
    name = member.name.replace("\\", "/")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if name.startswith("/") or ".." in parts or not parts or ":" in parts[0]:
        return None
    if not (member.isfile() or member.isdir()):
        return None
    return parts


def _selected(parts: tuple[str, ...], include_checkpoints: bool, subsets: set[str] | None,
              run_ids: set[int] | None) -> bool:
    """Whether a member path ends like ``<subset>/<run_id>/aux_arrays.npz``, or like
    ``<subset>/<run_id>/checkpoints/<file>`` of a chosen subset and run."""
    if len(parts) >= 3 and parts[-1] == layout.AUX_FILENAME and _is_run_id(parts[-2]):
        return True
    if not (include_checkpoints and len(parts) >= 4 and parts[-2] == layout.CHECKPOINT_DIRNAME
            and _is_run_id(parts[-3])):
        return False
    return ((subsets is None or parts[-4] in subsets)
            and (run_ids is None or int(parts[-3]) in run_ids))


def _is_run_id(name: str) -> bool:
    return name.isascii() and name.isdigit()


class _Destination:
    """The folder members are written under: which files exist, atomic writes, undo.

    Existence is answered from one listing per folder (not `exists`, which some file
    systems answer by prefix and which costs a request per file on GCS).
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._listings: dict[str, set[str]] = {}
        self._written: list[str] = []
        self.bytes_written = 0

    def _listing(self, folder: str) -> set[str]:
        if folder not in self._listings:
            self._listings[folder] = (
                {e.rstrip("/") for e in tf.io.gfile.listdir(folder)}
                if tf.io.gfile.isdir(folder) else set())
        return self._listings[folder]

    def has(self, parts: tuple[str, ...], size: int) -> bool:
        """Whether the member is already there, with its size."""
        folder = tf.io.gfile.join(self._root, *parts[:-1])
        return (parts[-1] in self._listing(folder)
                and tf.io.gfile.stat(tf.io.gfile.join(folder, parts[-1])).length == size)

    def write(self, parts: tuple[str, ...], content: BinaryIO, size: int) -> None:
        """Copies `size` bytes of `content` to a temporary name, then renames it in place."""
        folder = tf.io.gfile.join(self._root, *parts[:-1])
        listing = self._listing(folder)
        if not listing:
            tf.io.gfile.makedirs(folder)
        path = tf.io.gfile.join(folder, parts[-1])
        with files.open_atomic(path) as (f, _):
            copied = 0
            while chunk := content.read(_CHUNK_BYTES):
                f.write(chunk)
                copied += len(chunk)
            if copied != size:
                raise CorruptReleaseError(f"{path}: the tar member has {copied:,} bytes, its "
                                          f"header says {size:,}")
        listing.add(parts[-1])
        self._written.append(path)
        self.bytes_written += size

    @property
    def num_written(self) -> int:
        return len(self._written)

    def remove_written(self) -> int:
        """Deletes every file this object wrote; returns how many."""
        for path in self._written:
            files.remove_quietly(path)
        removed = len(self._written)
        self._written.clear()
        return removed

