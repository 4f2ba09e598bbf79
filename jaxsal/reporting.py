"""Where a run's messages go: a `Reporter` that the command and the Python API each supply.

The command's (`Reporter("dnn_saliency")`) prints as the original program does -- `Finish: i/n`
on stdout after each figure -- and its own lines (warnings, progress, where the maps went) on
stderr as `dnn_saliency: ...`. From Python, `jaxsal.run` uses `Reporter("jaxsal")` unless given
another (a subclass may send the lines anywhere: a logger, a notebook widget, nowhere).
Streams are looked up when a line is written, not when the reporter is made: a notebook or a
test may replace sys.stdout/sys.stderr in between.
"""
from __future__ import annotations

import sys
import time


class Reporter:
    """The lines of one run. `prefix` starts every stderr line (`dnn_saliency`, `jaxsal`);
    `stdout`/`stderr`: fixed streams, or None for the process's current ones."""

    def __init__(self, prefix: str = "jaxsal", stdout=None, stderr=None):
        self.prefix = prefix
        self._stdout, self._stderr = stdout, stderr

    @property
    def stdout(self):
        return sys.stdout if self._stdout is None else self._stdout

    @property
    def stderr(self):
        return sys.stderr if self._stderr is None else self._stderr

    def finish(self, done: int, total: int) -> None:
        """The original's line after each figure: `Finish: <done>/<total>` (SPEC §11)."""
        print(f"Finish: {done}/{total}", file=self.stdout, flush=True)

    def info(self, message: str) -> None:
        print(f"{self.prefix}: {message}", file=self.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"{self.prefix}: warning: {message}", file=self.stderr, flush=True)

    def progress(self, total: int, **kwargs) -> "Progress":
        return Progress(total, reporter=self, **kwargs)


class Progress:
    """`done/total stimuli, rate` on stderr once a run has taken more than a few seconds."""

    def __init__(self, total: int, stream=None, delay: float = 3.0, every: float = 10.0,
                 reporter: Reporter | None = None):
        self.reporter = Reporter() if reporter is None else reporter
        stream = self.reporter.stderr if stream is None else stream  # the run's stderr, not import's
        self.total, self.stream, self.delay, self.every = total, stream, delay, every
        self.start = time.perf_counter()
        self.last = None
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.shown = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.delay and done < self.total:
            return
        if (not self.tty and self.last is not None and now - self.last < self.every
                and done < self.total):
            return
        if not self.shown and done >= self.total and elapsed < self.delay:
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        end = "\r" if self.tty and done < self.total else "\n"
        self.stream.write(f"{self.reporter.prefix}: {done}/{self.total} stimuli "
                          f"({rate:.1f} stimuli/s)    {end}")
        self.stream.flush()
        self.last, self.shown = now, True
