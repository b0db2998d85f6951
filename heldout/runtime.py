"""TensorFlow imported quietly, and only when work needs it.

Every entry point (the CLIs, ``import heldout`` in a notebook) shows the toolkit's own
output only: TensorFlow's C++ start-up lines (oneDNN, CPU features, XLA service, and a
``cuInit`` error on machines without GPUs) are switched off before the first import.
Setting ``TF_CPP_MIN_LOG_LEVEL`` yourself keeps your value. The two lines TensorFlow's
shared libraries print while they load, before any setting is read, are hidden by
pointing file descriptor 2 elsewhere for the length of the import only.

This module imports nothing heavy, so the CLIs can check their flags before TensorFlow
is loaded (errors within a second).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types


def quiet_tensorflow_logging() -> None:
    """Sets TensorFlow's C++ log threshold to errors-off unless the user chose one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def import_tensorflow() -> types.ModuleType:
    """``import tensorflow`` without its start-up lines; returns the module.

    An import error is raised as usual (standard error is restored first), so a missing
    or broken installation still explains itself.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow_logging()
    with _stderr_hidden():
        import tensorflow
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint info lines
    return tensorflow


@contextlib.contextmanager
def _stderr_hidden():
    """File descriptor 2 goes to /dev/null inside the block (C++ writes included)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (some notebook kernels)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def process_alive(pid: object) -> bool:
    """Whether a process with this id runs on this host (a claim's or a lock's owner).

    A missing, zero or non-integer id is no process. A process of another user, which
    may not be signalled, counts as alive.
    """
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
