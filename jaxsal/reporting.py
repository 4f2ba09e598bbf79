"""Where a run's messages go: a `Reporter` that the command and the Python API each supply.

The command's (`Reporter("dnn_saliency")`) prints as the original program does -- `Finish: i/n`
on stdout after each figure -- and its own lines (warnings, errors, progress, where the maps
went) on stderr as `dnn_saliency: ...`. From Python, jaxsal uses `Reporter("jaxsal")` unless
given another (a subclass may send the lines anywhere: a logger, a notebook widget, nowhere):
the command's prefix never appears there. Streams are looked up when a line is written, not
when the reporter is made: a notebook or a test may replace sys.stdout/sys.stderr in between.

On a terminal, a long run's progress is one line rewritten in place; the reporter erases it
before any other line and draws it again after, so lines never land in the middle of it.
"""
from __future__ import annotations

import sys
import time

_ERASE = "\r\x1b[K"  # back to the start of the line, clear to its end


class Reporter:
    """The lines of one run. `prefix` starts every stderr line (`dnn_saliency`, `jaxsal`);
    `stdout`/`stderr`: fixed streams, or None for the process's current ones."""

    def __init__(self, prefix: str = "jaxsal", stdout=None, stderr=None):
        self.prefix = prefix
        self._stdout, self._stderr = stdout, stderr
        self._live = ""  # the progress line now shown on the terminal, if any

    @property
    def stdout(self):
        return sys.stdout if self._stdout is None else self._stdout

    @property
    def stderr(self):
        return sys.stderr if self._stderr is None else self._stderr

    def finish(self, done: int, total: int) -> None:
        """The original's line after each figure: `Finish: <done>/<total>` (SPEC §11)."""
        self._line(self.stdout, f"Finish: {done}/{total}")

    def info(self, message: str) -> None:
        self._line(self.stderr, f"{self.prefix}: {message}")

    def warn(self, message: str) -> None:
        self._line(self.stderr, f"{self.prefix}: warning: {message}")

    def error(self, message: str) -> None:
        """The run's last line: the progress line, if any, stays as it was, above it."""
        self.end_live()
        self._line(self.stderr, f"{self.prefix}: error: {message}")

    def progress(self, total: int, **kwargs) -> "Progress":
        return Progress(total, reporter=self, **kwargs)

    def live(self, message: str) -> None:
        """Show `prefix: message` as the terminal's updating line (replacing the last one)."""
        self._live = f"{self.prefix}: {message}"
        self._write(self.stderr, _ERASE + self._live)

    def end_live(self) -> None:
        """Keep the updating line as it is and move on to a new line."""
        if self._live:
            self._live = ""
            self._write(self.stderr, "\n")

    def _line(self, stream, text: str) -> None:
        live = self._live
        if live:
            self._write(self.stderr, _ERASE)
        self._write(stream, text + "\n")
        if live:
            self._write(self.stderr, live)

    @staticmethod
    def _write(stream, text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass


class Progress:
    """Stimuli done / total, rate and time left, once a run has taken more than `delay` seconds:
    on a terminal one line updated in place (at most every `interval` seconds), otherwise a
    plain line each time another `step` percent is done; then one at the end. A run done before
    its first line (one batch) prints none."""

    def __init__(self, total: int, reporter: Reporter | None = None, delay: float = 3.0,
                 step: int = 10, interval: float = 0.5):
        self.reporter = Reporter() if reporter is None else reporter
        self.total, self.delay, self.step, self.interval = total, delay, step, interval
        stream = self.reporter.stderr  # the run's stderr, not import's
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update
        self._last_shown = None  # time of the last line
        self._last_step = 0  # percent steps already reported (off a terminal)
        self.shown = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)
        finished = done >= self.total
        if finished and not self.shown:  # a run that ended before saying anything stays quiet
            return
        if now - self.start < self.delay and not finished:
            return
        if self.tty:
            if not finished and self._last_shown is not None and now - self._last_shown < self.interval:
                return
        else:
            step = 100 * done // max(self.total, 1) // self.step
            if step <= self._last_step and not finished:
                return
            self._last_step = step
        text = self.describe(done, now)
        if self.tty:
            self.reporter.live(text)
            if finished:
                self.reporter.end_live()
        else:
            self.reporter.info(text)
        self._last_shown, self.shown = now, True

    def rate(self, done: int, now: float) -> float:
        """Stimuli per second: since the first update once there is a second one (the first
        batch includes compiling), else since the start."""
        t0, d0 = self._first if self._first is not None else (self.start, 0)
        if done > d0 and now > t0:
            return (done - d0) / (now - t0)
        elapsed = now - self.start
        return done / elapsed if elapsed > 0 else 0.0

    def describe(self, done: int, now: float) -> str:
        rate = self.rate(done, now)
        text = (f"{done}/{self.total} stimuli ({100 * done // max(self.total, 1)} %), "
                f"{rate:.1f} stimuli/s")
        if done < self.total:
            left = (self.total - done) / rate if rate > 0 else None
            text += f", {_duration(left)} left" if left is not None else ""
        else:
            text += f", {_duration(now - self.start)} in all"
        return text


def _duration(seconds: float) -> str:
    """7 s, 2 min 05 s, 1 h 02 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
