"""Reads ``.npy``/``.npz`` files from untrusted sources without running their pickles.

NumPy stores an object array (the published ImageNet index's ``tr_filenames``, the
ImageNet C-scores' ``filenames``) as a pickle, and ``np.load(allow_pickle=True)`` runs
whatever that pickle asks for: a crafted file can call ``os.system`` before any check.
Here the pickle of an object array is read by an unpickler that knows only the few
NumPy names an array of strings needs (``_reconstruct``, ``ndarray``, ``dtype``,
``scalar``); any other name (``os.system``, ``builtins.eval``, ...) is refused before it
is looked up, and the result must be an array whose every element is a ``str`` or
``bytes``. Numeric arrays are read by NumPy with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np

# The only globals a pickled NumPy object array of strings refers to (NumPy 1 and 2
# module names, and Python 2's pickles of the same).
_ALLOWED_GLOBALS = frozenset({
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")})


class UnsafeFileError(ValueError):
    """A file asks for something other than plain arrays (a pickle of code or objects)."""


class _StringArrayUnpickler(pickle.Unpickler):
    """Unpickles a NumPy array of strings and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeFileError(f"refers to {module}.{name}, which an array of strings "
                                  "never does (a pickle that would run code)")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafeFileError("holds a persistent reference (not an array of strings)")


def _strings_from_pickle(data: bytes) -> np.ndarray:
    """The object array of strings pickled in `data`, refusing anything else."""
    try:
        value = _StringArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 (a damaged pickle raises many types)
        raise UnsafeFileError(f"a damaged object array ({type(e).__name__}: {e})") from None
    if type(value) is not np.ndarray or value.dtype != object:
        raise UnsafeFileError(f"pickles a {type(value).__name__}, not an array of strings")
    for element in value.flat:
        if not isinstance(element, (str, bytes)):
            raise UnsafeFileError(f"holds a {type(element).__name__} in an object array "
                                  "(only strings are read)")
    return value


def read_npy(stream: io.BufferedIOBase) -> np.ndarray:
    """One array from an open ``.npy`` stream; object arrays only if all strings.

    Raises:
        UnsafeFileError: an object array that is not a plain array of strings.
        ValueError: a damaged file.
    """
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unknown .npy format version {version}")
    shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)(stream)
    if not dtype.hasobject:
        stream.seek(0)
        return np.lib.format.read_array(stream, allow_pickle=False)
    if dtype != np.dtype(object):
        raise UnsafeFileError(f"a structured dtype with objects ({dtype}) is not read")
    array = _strings_from_pickle(stream.read())
    if array.shape != tuple(shape):
        raise UnsafeFileError(f"object array of shape {list(array.shape)}, its header says "
                              f"{list(shape)}")
    return array


def read_npz_bytes(content: bytes) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` given as bytes (see `read_npy`), or of a bare ``.npy``.

    Raises:
        UnsafeFileError: some member is an object array that is not all strings.
        ValueError: the bytes are not an ``.npz`` or ``.npy``.
    """
    if content.startswith(b"\x93NUMPY"):
        return {"arr_0": read_npy(io.BytesIO(content))}
    if not content.startswith(b"PK"):
        raise ValueError("not a .npz or .npy file")
    arrays = {}
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for member in archive.namelist():
            key = member[:-4] if member.endswith(".npy") else member
            with archive.open(member) as f:
                try:
                    arrays[key] = read_npy(io.BytesIO(f.read()))
                except UnsafeFileError as e:
                    raise UnsafeFileError(f"{key}: {e}") from None
    return arrays
