"""What every CLI does around its one library call: flags checked before TensorFlow
loads, TensorFlow quiet, and every failure printed as one line naming the flag.

A CLI's ``main`` is ``cli.run(program, build, execute, flag_of)``: `build` turns the
flags into a job without importing TensorFlow (so a bad flag is reported within a
second), `execute` runs the job after TensorFlow is imported quietly
(`heldout.runtime`), and its report is printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from heldout.errors import ParameterError
from heldout.runtime import import_tensorflow


def flag_namer(known_flags: Mapping[str, object], renamed: Mapping[str, str] | None = None
               ) -> Callable[[str], str]:
    """Parameter name -> how a CLI user knows it: ``--<flag>`` when the CLI has that flag
    (or `renamed` maps the parameter to one), else the parameter name as it is."""
    renamed = dict(renamed or {})

    def flag_of(parameter: str) -> str:
        if parameter in renamed:
            return f"--{renamed[parameter]}"
        if parameter in known_flags:
            return f"--{parameter}"
        return parameter

    return flag_of


def given_values(holders: Iterable[Any], renamed: Mapping[str, str] | None = None
                 ) -> dict[str, object]:
    """The settings a user gave on the command line: parameter -> value, for every flag
    of `holders` (absl ``FlagHolder``s) that is present; list flags as tuples.

    Args:
        holders: the CLI's flag holders.
        renamed: parameter -> flag, for flags named otherwise than their parameter (the
            inverse is applied here; the same table goes to `flag_namer`).
    """
    parameter_of = {flag: parameter for parameter, flag in (renamed or {}).items()}
    return {parameter_of.get(h.name, h.name): tuple(h.value) if isinstance(h.value, list)
            else h.value for h in holders if h.present}


def one_line(error: BaseException, flag_of: Callable[[str], str]) -> str:
    """The one line a CLI prints for `error`: a `ParameterError` with its flag, an I/O
    error with its path, anything else reported by the first line of its message."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; complete runs and outputs are kept, so the command can be rerun"
    if isinstance(error, ParameterError):
        return _first_line(error.render(flag_of(error.parameter)))
    if isinstance(error, MemoryError):
        return "out of memory; ask for less at once (a smaller batch, fewer examples or runs)"
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
        return _first_line(text)
    message = getattr(error, "message", None)  # tf.errors.OpError
    return _first_line(message if isinstance(message, str) and message else str(error)
                       or type(error).__name__)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def _reported_errors() -> tuple[type[BaseException], ...]:
    """Errors printed in one line: the toolkit's, TensorFlow's, the system's, memory and
    an interrupt. Anything else is a bug and keeps its traceback."""
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError,
                                               KeyboardInterrupt)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:
        errors += (tensorflow.errors.OpError,)
    return errors


def run(program: str, build: Callable[[], Any], execute: Callable[[Any], Any],
        flag_of: Callable[[str], str]) -> NoReturn:
    """Builds the job, runs it, prints its report, exits with its status.

    Args:
        program: the CLI's file name, for messages (``estimate.py``).
        build: flags -> job; must not import TensorFlow.
        execute: job -> report (``str()`` printed; ``exit_status`` and, when non-empty,
            ``retry_message`` honoured if the report has them).
        flag_of: parameter -> flag (`flag_namer`).
    """
    try:
        job = build()
    except (ValueError, KeyboardInterrupt) as e:
        sys.exit(f"{program}: error: {one_line(e, flag_of)}")
    try:
        import_tensorflow()
        report = execute(job)
    except _reported_errors() as e:
        sys.exit(f"{program}: error: {one_line(e, flag_of)}")
    print(report)
    retry = getattr(report, "retry_message", "")
    if retry:
        print(f"{program}: {retry}", file=sys.stderr)
    sys.exit(getattr(report, "exit_status", 0))
