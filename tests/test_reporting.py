"""jaxsal.reporting: a run's lines and its progress (done / total, rate, time left), on a
terminal and off one. Pure: a fake clock, string streams."""
from __future__ import annotations

import io

import pytest

from jaxsal import reporting
from jaxsal.reporting import Progress, Reporter


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter as seen by jaxsal.reporting, moved by hand: clock.now = seconds."""

    class Clock:
        now = 0.0

    c = Clock()
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: c.now)
    return c


def run(progress: Progress, clock, steps):
    """update(done) at each (seconds, done)."""
    for now, done in steps:
        clock.now = now
        progress.update(done)


def test_off_a_terminal_one_plain_line_per_ten_percent_with_rate_and_time_left(clock):
    err = io.StringIO()
    progress = Reporter("jaxsal", stderr=err).progress(1000)
    # 64 stimuli per batch: the first batch (compiling) takes 5 s, then 2 s per batch
    run(progress, clock, [(5 + 2 * i, min(64 * (i + 1), 1000)) for i in range(16)])
    lines = err.getvalue().splitlines()
    assert all(line.startswith("jaxsal: ") for line in lines)
    percents = [int(line.split("(")[1].split(" %")[0]) for line in lines]
    assert percents == [12, 25, 32, 44, 51, 64, 70, 83, 96, 100]  # one line per 10 % step crossed
    assert lines[0] == "jaxsal: 128/1000 stimuli (12 %), 32.0 stimuli/s, 27 s left"
    assert lines[-1] == "jaxsal: 1000/1000 stimuli (100 %), 31.2 stimuli/s, 35 s in all"


def test_on_a_terminal_one_line_rewritten_in_place_then_a_newline(clock):
    err = Terminal()
    progress = Reporter("dnn_saliency", stderr=err).progress(300)
    run(progress, clock, [(4, 100), (4.1, 150), (5, 200), (6, 300)])
    text = err.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    shown = [part for part in text.split("\r\x1b[K") if part]
    assert shown == ["dnn_saliency: 100/300 stimuli (33 %), 25.0 stimuli/s, 8 s left",
                     # 4.1 s: within the refresh interval, not drawn
                     "dnn_saliency: 200/300 stimuli (66 %), 100.0 stimuli/s, 1 s left",
                     "dnn_saliency: 300/300 stimuli (100 %), 100.0 stimuli/s, 6 s in all\n"]


def test_other_lines_never_land_inside_the_progress_line(clock):
    out, err = Terminal(), Terminal()
    reporter = Reporter("dnn_saliency", stdout=out, stderr=err)
    progress = reporter.progress(100)
    run(progress, clock, [(4, 50)])
    reporter.warn("the map of channel 3 is constant")
    reporter.finish(6, 100)
    # erased before each line, drawn again after it
    live = "dnn_saliency: 50/100 stimuli (50 %), 12.5 stimuli/s, 4 s left"
    assert err.getvalue() == ("\r\x1b[K" + live + "\r\x1b[K"
                              + "dnn_saliency: warning: the map of channel 3 is constant\n" + live
                              + "\r\x1b[K" + live)
    assert out.getvalue() == "Finish: 6/100\n"
    # An error ends the run: the progress line stays as it was, the error under it.
    reporter.error("cannot write out/x.jpg: No space left on device")
    assert err.getvalue().endswith("\r\x1b[K" + live + "\ndnn_saliency: error: cannot write "
                                   "out/x.jpg: No space left on device\n")


@pytest.mark.parametrize("tty", [False, True])
def test_short_runs_say_nothing(clock, tty):
    err = Terminal() if tty else io.StringIO()
    progress = Reporter(stderr=err).progress(200)
    run(progress, clock, [(1, 64), (2, 128), (2.5, 200)])  # done within the delay
    run(Reporter(stderr=err).progress(64), clock, [(10, 64)])  # one batch, however slow
    assert err.getvalue() == ""


def test_durations():
    assert [reporting._duration(s) for s in (0.4, 59, 61, 3599, 3600, 7325)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 02 min"]
