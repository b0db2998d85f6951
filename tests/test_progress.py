"""Tests of heldout/progress.py: the one progress bar, driven by a fake clock."""

import io
import re

import pytest

from heldout import progress


class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def _bar(total, clock, unit="run", **options):
    stream = io.StringIO()  # not a terminal: one line per drawing
    return progress.Progress(total, "training", unit, clock=clock, stream=stream,
                             **options), stream


@pytest.mark.parametrize("epochs", [3, 10, 20, 49])
def test_fractional_steps_never_overshoot_nor_give_a_negative_eta(epochs):
    """The training bar of one run advances 1/epochs per epoch; in floating point twenty
    steps of 1/20 add up to more than 1, which made the time left negative (issue 25)."""
    clock = FakeClock()
    bar, stream = _bar(1, clock, interval=0.0)
    steps = [1 / epochs] * epochs
    exact_sum = 0.0
    for step in steps:
        exact_sum += step
        clock.now += 0.7
        bar.advance(step)
        assert 0 <= bar.done <= 1
        assert bar.remaining is not None and bar.remaining >= 0
    bar.close()
    assert bar.done == 1 and bar.remaining == 0
    if epochs == 20:
        assert exact_sum > 1  # what the bar would have counted without the clamp
    lines = stream.getvalue().splitlines()
    assert len(lines) == epochs + 1  # every advance (interval 0) and the close
    assert all("<-" not in line and "-0" not in line for line in lines), lines
    assert lines[-1].startswith("training: 100%|") and " 1/1 runs [" in lines[-1]
    # A run still in progress is never shown as done.
    assert all(" 1/1 runs" not in line for line in lines[:-2])


def test_rate_and_time_left_follow_the_clock():
    clock = FakeClock()
    bar, stream = _bar(10, clock, interval=0.0)
    assert bar.rate is None and bar.remaining is None
    clock.now += 6.0
    bar.advance(3)
    assert bar.rate == pytest.approx(0.5) and bar.remaining == pytest.approx(14.0)
    assert stream.getvalue().splitlines()[-1] == (
        "training:  30%|███       | 3/10 runs [00:06<00:14, 2 s/run]")
    clock.now += 3594.0  # an hour in: H:MM:SS
    bar.advance(2)
    assert bar.rate == pytest.approx(5 / 3600) and bar.remaining == pytest.approx(3600.0)
    assert "[1:00:00<1:00:00, 720 s/run]" in stream.getvalue().splitlines()[-1]
    clock.now += 1.0
    bar.advance(100)  # more than is left: clamped to the total
    assert bar.done == 10 and bar.remaining == 0
    bar.advance(-120)  # and never below zero
    assert bar.done == 0


def test_unknown_total_counts_without_percent_or_time_left():
    clock = FakeClock()
    bar, stream = _bar(None, clock, unit="B", interval=0.0, byte_units=True)
    clock.now += 2.0
    bar.advance(3 * 1024 * 1024)
    bar.note(extracted=4, skipped=1)
    bar.close()
    assert bar.remaining is None
    last = stream.getvalue().splitlines()[-1]
    assert last == "training: 3.0 MiB [00:02, 1.5 MiB/s] extracted=4, skipped=1"


def test_drawings_are_throttled_and_close_draws_once():
    clock = FakeClock()
    bar, stream = _bar(100, clock, interval=5.0)
    for _ in range(10):  # one advance per second: drawn at 0 s... every 5 s
        bar.advance(1)
        clock.now += 1.0
    assert len(stream.getvalue().splitlines()) == 2
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and " 10/100 runs " in lines[-1]
    bar.advance(1)  # after close: counted, not drawn
    assert len(stream.getvalue().splitlines()) == 3


def test_terminal_redraws_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock, stream = FakeClock(), Terminal()
    bar = progress.Progress(4, "reading 0.7", clock=clock, stream=stream)
    for _ in range(4):
        clock.now += 1.0
        bar.advance(1)
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 5
    assert re.search(r"\rreading 0\.7: 100%\|█{10}\| 4/4 runs \[00:04<00:00, 1 run/s\]\n$",
                     text)


def test_track_yields_every_item_and_counts_them(capsys):
    items = list(progress.track(iter(range(7)), 7, "reading"))
    assert items == list(range(7))
    err = capsys.readouterr().err
    assert "reading: 100%" in err and "7/7 runs" in err
    assert list(progress.track(iter(range(3)), 3, "quiet", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
