"""Checks made before work starts, and the one-line form of every error a CLI reports.

A command that computes for minutes and then cannot write its output loses the work,
so the front doors (`heldout.app.train`, `heldout.estimate.api`) check every output
location with `check_writable` first. The CLIs turn whatever still goes wrong (the
toolkit's `ValueError`s, TensorFlow's file errors, the operating system's) into one line
with `one_line_error`, mapping the library's parameter names to their flags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import tensorflow as tf

# A message that starts with a parameter name: "damping=-1: ..." or "damping: ...".
_LEADING_PARAMETER = re.compile(r"^([a-z][a-z0-9_]*)(?=[=:])")
# A parameter name anywhere in a message, not inside a path or a flag: of several words
# ("add retrain_complete"), or of one word with a value ("estimators=tracin").
_INNER_PARAMETER = re.compile(
    r"(?<![\w/.<\-])(?:[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w/.>])|[a-z][a-z0-9]*(?==))")


def check_writable(path: str, parameter: str, is_file: bool = False) -> None:
    """Makes sure something can be written at `path` (a directory, or a file's folder).

    Creates the directory if needed and writes and removes a small probe file there, so
    a read-only file system, a path under a regular file, or an unknown scheme fails now,
    in one line naming `parameter`, instead of after the work.

    Args:
        path: a directory (local, gs://, ram://), or a file when `is_file`.
        parameter: the parameter (or flag) the path came from, for the message.
        is_file: `path` is a file to be written; its folder is checked.

    Raises:
        ValueError: the location is not writable, with the reason.
    """
    if not path:
        raise ValueError(f"{parameter}: empty; expected a path")
    directory = os.path.dirname(path) if is_file else path
    directory = directory or "."
    probe = tf.io.gfile.join(directory, f".heldout-write-probe-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(probe, "wb") as f:
            f.write(b"probe")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise ValueError(f"{parameter}={path}: not writable ({_first_line(_reason(e))})") from e


def one_line_error(error: BaseException, flag_of: Mapping[str, str] | None = None) -> str:
    """The first line of an error's message, with a leading parameter name made a flag.

    Args:
        error: a toolkit `ValueError`, a `tf.errors.OpError`, an `OSError`, or a
            `KeyboardInterrupt`.
        flag_of: parameter name -> flag (``{"damping": "--damping"}``); a message such as
            ``"damping=-1: expected >= 0"`` becomes ``"--damping=-1: expected >= 0"``.
            Names of several words (``retrain_complete``) and names with a value
            (``estimators=tracin``) are mapped anywhere in the message; other single
            words only at its start, where they cannot be prose.

    Returns:
        One line naming the flag or path and what was expected.
    """
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; complete runs and outputs are kept, so the command can be rerun"
    message = _first_line(_reason(error))
    match = _LEADING_PARAMETER.match(message)
    if match and flag_of and match.group(1) in flag_of:
        message = flag_of[match.group(1)] + message[match.end():]
    if flag_of:
        message = _INNER_PARAMETER.sub(lambda m: flag_of.get(m.group(0), m.group(0)),
                                          message)
    return message


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


def cli_errors() -> tuple[type[BaseException], ...]:
    """The errors a CLI reports in one line: the toolkit's (`ValueError` and its
    subclasses), TensorFlow's file and runtime errors, the operating system's, and an
    interrupt. Anything else is a bug and keeps its traceback."""
    return (ValueError, tf.errors.OpError, OSError, KeyboardInterrupt)
