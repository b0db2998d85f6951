"""One progress bar for every long job: count, rate and time left, never past the end.

Training, reading runs, TRAK, TracIn, influence functions, evaluating a run, extracting
a release and building ImageNet records all report through `Progress` (or `track` over
an iterable), so they look alike and share one fix: the count is clamped to the total.
Before, a bar advanced by fractions (a run in ``1/epochs`` steps per epoch) summed to
slightly more than its total in floating point (twenty steps of 1/20 make
1.0000000000000002), and the time left, ``(total - done) / rate``, turned negative;
ten steps of 0.1 stopped short of it (0.9999999999999999). The count is kept to
`DECIMALS` decimals and clamped to the total.

The rate is the count over the time since the bar started, and the time left is what
remains at that rate; both come from one clock (`time.monotonic` unless given), so
tests drive them with a fake one. The bar is drawn on standard error, redrawn in place
on a terminal at most every `TERMINAL_INTERVAL` seconds and written as a new line
elsewhere (logs, captured output) at most every `LOG_INTERVAL` seconds, and once more
when it closes. This module is below every layer (it imports nothing of heldout), so
the data layer's jobs use it too.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

TERMINAL_INTERVAL = 0.5  # seconds between redraws on a terminal
LOG_INTERVAL = 10.0  # seconds between lines when standard error is not a terminal
DECIMALS = 9  # of the count: far finer than any bar shows, far coarser than rounding errors
_BAR_WIDTH = 10
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


class Progress:
    """A progress bar on standard error: ``done/total unit``, percent, rate, time left.

    Args:
        total: the count at the end; None when unknown (no percent, no time left).
        description: what is being done (``"training"``, ``"reading 0.7"``).
        unit: what is counted (``"run"``, ``"example"``, ``"B"``).
        enabled: False: a silent bar (every method does nothing visible).
        byte_units: show counts as B/KiB/MiB/GiB.
        clock: seconds, monotonic (tests pass a fake one).
        stream: where to draw (default: standard error at drawing time).
        interval: minimum seconds between two drawings (default by stream kind).

    Use as a context manager, or call `close` at the end.
    """

    def __init__(self, total: float | None, description: str, unit: str = "run", *,
                 enabled: bool = True, byte_units: bool = False,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None,
                 interval: float | None = None):
        self.total = None if total is None else max(float(total), 0.0)
        self.description = description
        self.unit = unit
        self.enabled = enabled
        self.byte_units = byte_units
        self._clock = clock
        self._stream = stream
        self._interval = interval
        self._start = clock()
        self._drawn_at: float | None = None
        self._width = 0
        self._notes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._sum = 0.0  # everything advanced, unrounded
        self.done = 0.0  # what the bar shows: the sum rounded, within [0, total]

    def advance(self, amount: float = 1) -> None:
        """Counts `amount` more, never past `total` (nor below zero). The count shown is
        the sum rounded to `DECIMALS` decimals, so fractions that make a whole (ten steps
        of 0.1) reach it exactly instead of stopping a rounding error short of it."""
        with self._lock:
            self._sum += amount
            done = max(round(self._sum, DECIMALS), 0.0)
            self.done = done if self.total is None else min(done, self.total)
            self._draw_if_due()

    def note(self, **values: Any) -> None:
        """Values shown after the counts (``extracted=12``), from the next drawing on."""
        with self._lock:
            self._notes.update(values)

    @property
    def elapsed(self) -> float:
        return max(self._clock() - self._start, 0.0)

    @property
    def rate(self) -> float | None:
        """Units per second since the start; None before any time or count has passed."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 and self.done > 0 else None

    @property
    def remaining(self) -> float | None:
        """Seconds left at the current rate (0 when done); None when unknown. Never
        negative, since the count never passes the total."""
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        rate = self.rate
        return None if rate is None else (self.total - self.done) / rate

    def line(self) -> str:
        """The text of the bar now, e.g.
        ``training  35%|███▌      | 7/20 runs [00:07<00:13, 1.00 run/s]``."""
        parts = [f"{self.description}:"]
        count = self._count(self.done)
        if self.total is not None:
            fraction = self.done / self.total if self.total else 1.0
            filled = fraction * _BAR_WIDTH
            bar = "█" * int(filled)
            if int(filled) < _BAR_WIDTH:
                eighths = int((filled - int(filled)) * 8)
                bar += (" ▏▎▍▌▋▊▉"[eighths] if eighths else " ")
            parts.append(f"{math.floor(fraction * 100):3d}%|{bar:<{_BAR_WIDTH}}|")
            count = f"{count}/{self._count(self.total)}"
        unit = "" if self.byte_units else f" {self.unit}s"
        remaining = self.remaining
        times = _clock_text(self.elapsed)
        if self.total is not None:
            times += "<" + ("?" if remaining is None else _clock_text(remaining))
        parts.append(f"{count}{unit} [{times}, {self._rate_text()}]")
        if self._notes:
            parts.append(", ".join(f"{key}={value}" for key, value in self._notes.items()))
        return " ".join(parts)

    def close(self) -> None:
        """Draws the bar a last time and ends its line (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled:
                self._draw(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _draw_if_due(self) -> None:
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= self._interval_for(self._out()):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        stream = self._out()
        self._drawn_at = self._clock()
        text = self.line()
        try:
            if _is_terminal(stream):
                stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
                self._width = len(text)
            else:
                stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is optional
            self.enabled = False

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _interval_for(self, stream: TextIO) -> float:
        if self._interval is not None:
            return self._interval
        return TERMINAL_INTERVAL if _is_terminal(stream) else LOG_INTERVAL

    def _count(self, value: float) -> str:
        if self.byte_units:
            return _bytes_text(value)
        if value == int(value):
            return str(int(value))
        return f"{math.floor(value * 10) / 10:.1f}"  # floored: 1.0 only when done

    def _rate_text(self) -> str:
        rate = self.rate
        if rate is None:
            return f"? {self.unit}/s"
        if self.byte_units:
            return f"{_bytes_text(rate)}/s"
        if rate >= 1:
            return f"{rate:.3g} {self.unit}/s"
        return f"{1 / rate:.3g} s/{self.unit}"


def track(items: Iterable, total: float | None, description: str, unit: str = "run",
          enabled: bool = True, **options: Any) -> Iterator:
    """Yields `items`, counting each one on a `Progress` bar (closed at the end)."""
    with Progress(total, description, unit, enabled=enabled, **options) as bar:
        for item in items:
            yield item
            bar.advance(1)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock_text(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on."""
    seconds = int(max(seconds, 0.0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _bytes_text(count: float) -> str:
    value = float(count)
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
