"""Checks made before work starts: every output location writable.

A command that computes for minutes and then cannot write its output loses the work,
so the front doors (`heldout.app`) check every output location with `check_writable`
first. Errors name the parameter (`ParameterError`); the front doors show it as the
flag a user typed (`heldout.app.cli`).
"""

from __future__ import annotations

import os

import tensorflow as tf

from heldout.errors import ParameterError


def check_writable(path: str, parameter: str, is_file: bool = False) -> None:
    """Makes sure something can be written at `path` (a directory, or a file's folder).

    Creates the directory if needed and writes and removes a small probe file there, so
    a read-only file system, a path under a regular file, or an unknown scheme fails now,
    in one line naming `parameter`, instead of after the work.

    Args:
        path: a directory (local, gs://, ram://), or a file when `is_file`.
        parameter: the parameter the path came from, for the message.
        is_file: `path` is a file to be written; its folder is checked.

    Raises:
        ParameterError: (naming `parameter`) the location is not writable, with the reason.
    """
    if not path:
        raise ParameterError(parameter, "empty; expected a path")
    directory = os.path.dirname(path) if is_file else path
    directory = directory or "."
    probe = tf.io.gfile.join(directory, f".heldout-write-probe-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(probe, "wb") as f:
            f.write(b"probe")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise ParameterError(parameter, f"not writable ({_first_line(_reason(e))})",
                             path) from e


def _reason(error: BaseException) -> str:
    """What an error says, with the path an `OSError` or `tf.errors.OpError` names."""
    if isinstance(error, tf.errors.OpError):
        return error.message or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error) or type(error).__name__


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text
