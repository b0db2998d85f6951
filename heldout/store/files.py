"""Atomic writers and readers of the toolkit's files (npz, json, csv, bytes).

Every file the toolkit writes goes through `write_bytes`: the content is written to a
temporary name beside the target (``<name>.tmp-<uuid>``) and renamed into place, so a
reader sees the old file or the new one, never half of one, and an interrupted writer
leaves only a temporary file that no reader looks at. All I/O goes through
``tf.io.gfile``, so ``gs://`` and ``ram://`` paths work like local ones.

``exclusive=True`` is create-if-absent: of several writers racing for one name exactly
one wins and the others learn that they lost (`write_bytes` returns False). On a local
file system this is Linux's ``renameat2(RENAME_NOREPLACE)``, which the kernel makes
atomic and which leaves no temporary behind once the file is in place (where the system
lacks it: ``os.link``, then removing the temporary); elsewhere (``gs://``,
``ram://``) it is TensorFlow's rename without overwrite, which checks and renames in two
steps, so callers that must be exact there read the file back and compare (as
`experiment_info.record_experiment_info` does).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import errno
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

TEMPORARY_INFIX = ".tmp-"  # marks a file being written; readers never take it as a file


class StoredFileError(ValueError):
    """A stored file exists but cannot be read as what it should be (named by path)."""


class StoredFileMissing(StoredFileError):
    """A stored file does not exist."""


def is_local(path: str) -> bool:
    """Whether `path` is on the local file system (no ``scheme://`` other than file://)."""
    return "://" not in path or path.startswith("file://")


def exists(path: str) -> bool:
    """Whether the file `path` exists, by a listing of its folder.

    Some TensorFlow file systems (``ram://``) answer ``exists`` by prefix, taking a
    temporary ``<name>.tmp-<uuid>`` for ``<name>``; a listing names files exactly.
    """
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        return tf.io.gfile.isdir(parent) and name in (
            e.rstrip("/") for e in tf.io.gfile.listdir(parent))
    except tf.errors.NotFoundError:
        return False


def makedirs_for(path: str) -> None:
    """Creates the folder that will hold `path`, if `path` has one."""
    parent = path.rpartition("/")[0]
    if parent and not parent.endswith(":/"):
        tf.io.gfile.makedirs(parent)


def write_bytes(path: str, content: bytes, exclusive: bool = False) -> bool:
    """Writes `content` to `path` through a temporary name and a rename.

    Args:
        path: the file to write (its folder is created).
        content: the whole content.
        exclusive: create only if absent; an existing file is left as it is.

    Returns:
        True when `path` now holds `content`; False when `exclusive` and another writer's
        file was there first.
    """
    with open_atomic(path, exclusive) as (f, outcome):
        f.write(content)
    return outcome["written"]


@contextlib.contextmanager
def open_atomic(path: str, exclusive: bool = False) -> Iterator[tuple[Any, dict]]:
    """A binary file to stream into; it appears at `path` when the block ends without error.

    Yields ``(file, outcome)``; after the block ``outcome["written"]`` says whether the
    file was put in place (False only when `exclusive` and `path` existed). On an error
    in the block nothing appears at `path` and the temporary file is removed.
    """
    makedirs_for(path)
    temporary = f"{path}{TEMPORARY_INFIX}{uuid.uuid4().hex}"
    outcome = {"written": False}
    try:
        with tf.io.gfile.GFile(temporary, "wb") as f:
            yield f, outcome
        outcome["written"] = _move_into_place(temporary, path, exclusive)
    finally:
        remove_quietly(temporary)


def _move_into_place(temporary: str, path: str, exclusive: bool) -> bool:
    if not exclusive:
        tf.io.gfile.rename(temporary, path, overwrite=True)
        return True
    if is_local(path):
        source, target = temporary.removeprefix("file://"), path.removeprefix("file://")
        moved = _rename_no_replace(source, target)
        if moved is not None:
            return moved
        try:
            os.link(source, target)
        except FileExistsError:
            return False
        return True
    if exists(path):  # TensorFlow's rename(overwrite=False) checks so too, but by prefix
        return False
    tf.io.gfile.rename(temporary, path, overwrite=True)
    return True


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2() -> Any:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    return function


_RENAMEAT2 = _load_renameat2()


def _rename_no_replace(source: str, target: str) -> bool | None:
    """Renames `source` to `target` only if `target` does not exist, in one atomic step
    (True: renamed; False: `target` existed). None where the C library or the file system
    has no such rename (the caller falls back to a hard link)."""
    if _RENAMEAT2 is None:
        return None
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                  _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return None
    raise OSError(code, os.strerror(code), target)


def read_bytes(path: str) -> bytes:
    """The content of `path`.

    Raises:
        StoredFileMissing: there is no such file.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise StoredFileMissing(f"{path}: file not found") from None


def write_json(path: str, content: Any, exclusive: bool = False, sort_keys: bool = True
               ) -> bool:
    """Writes `content` as indented JSON (see `write_bytes`); NumPy values as numbers."""
    text = json.dumps(content, indent=2, sort_keys=sort_keys, default=_json_default)
    return write_bytes(path, text.encode(), exclusive)


def read_json(path: str) -> Any:
    """The JSON content of `path`.

    Raises:
        StoredFileMissing: there is no such file.
        StoredFileError: the file is not valid JSON.
    """
    content = read_bytes(path)
    try:
        return json.loads(content)
    except ValueError as e:
        raise StoredFileError(f"{path}: not a valid JSON file ({e})") from None


def write_npz(path: str, arrays: Mapping[str, np.ndarray], exclusive: bool = False) -> bool:
    """Writes `arrays` as an uncompressed ``.npz`` (see `write_bytes`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(path, buffer.getvalue(), exclusive)


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at `path` (no pickled objects).

    Raises:
        StoredFileMissing: there is no such file.
        StoredFileError: the file is not a readable ``.npz``.
    """
    content = read_bytes(path)
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as e:  # zipfile/np.load raise many types for a damaged file.
        raise StoredFileError(
            f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Writes a CSV table (floats with 6 significant digits) atomically; returns `path`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float | np.floating) else v for v in row])
    write_bytes(path, buffer.getvalue().encode())
    return path


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file, every cell as text."""
    rows = list(csv.reader(io.StringIO(read_bytes(path).decode())))
    if not rows:
        raise StoredFileError(f"{path}: empty CSV file (expected a header row)")
    return rows[0], rows[1:]


def _json_default(value: Any) -> Any:
    """JSON for NumPy scalars and arrays (as Python numbers and lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def remove_quietly(path: str) -> None:
    """Removes a file if it is there; any file-system error is ignored (best effort)."""
    try:
        tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass
