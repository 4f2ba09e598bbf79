"""The figure workers: processes that draw and save figures while the main process computes maps.

Drawing is numpy and matplotlib only, so the workers never import JAX; they are spawned, not
forked, because ``fork`` is unsafe once JAX (multithreaded) is imported.

The workers die with their parent: the main process decides when a run stops (SIGINT and SIGTERM
are its to handle: it lets the figures being drawn finish, then shuts the pool down), and if it
dies without doing so (SIGKILL, a crash), each worker notices within a fraction of a second,
finishes the figure it is writing, if any, and exits -- nothing is left running or half-written.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import os
import signal
import sys
import threading
import time

from jaxsal.render import fast_redraw, figures

__all__ = ["default_render_workers", "render_job", "render_pool", "warm_up"]

# How often a worker checks that its parent is alive.
PARENT_POLL_SECONDS = 0.2
# Held while a worker draws and writes a figure: a worker whose parent died exits only between
# figures.
_BUSY = threading.Lock()


def default_render_workers() -> int:
    """One figure worker per core, at most 8 (each holds its own matplotlib and figures).
    Workers run at low priority: on a CPU they draw with what the device's threads leave over,
    and after the last batch every core is free for the figures still to draw; next to a GPU,
    drawing is the bottleneck."""
    return max(1, min(8, os.cpu_count() or 1))


def render_pool(max_workers: int | None = None) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool for :func:`jaxsal.render.render_figure`, with the ``spawn`` start method.

    Each worker starts a fresh interpreter that imports only numpy, matplotlib and this package.
    Caveat: ``spawn`` re-imports the parent's ``__main__`` module in every worker (not its
    ``if __name__ == "__main__"`` block); a CLI entry module that imports JAX at top level
    makes every worker import JAX too (slow start-up, more memory, not unsafe).

    Args:
      max_workers: default :func:`default_render_workers`.
    """
    if max_workers is None:
        max_workers = default_render_workers()
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(os.getpid(),))


def render_job(job) -> tuple[str, float]:
    """:func:`jaxsal.render.render_figure` in a worker: the path written and the seconds it
    took (for -profile). Never interrupted half-way by the parent's death (see `_BUSY`)."""
    with _BUSY:
        t = time.perf_counter()
        path = fast_redraw.render_figure(job)
        return path, time.perf_counter() - t


def warm_up(n_rows: int, n_cols: int) -> None:
    """Pay a worker's start-up costs before its first figure: the imports, the fonts, and (with
    the fast redraw on) the figure of the grid shape it will draw, kept for reuse -- creating
    a grid's axes costs more than drawing a figure on them."""
    if fast_redraw.enabled():
        fast_redraw.keep_canvas(n_rows, n_cols)
    else:
        figures.empty_grid(n_rows, n_cols)


def _worker_init(parent: int) -> None:
    # Workers never show anything; make sure a stray pyplot import could not pick a GUI.
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The parent handles interruptions (Ctrl-C reaches the whole process group) and shuts the
    # pool down; a worker that died of them instead could leave a figure half-written.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="jaxsal-parent-watch",
                     daemon=True).start()
    # A worker's figures are written (atomically) before their results are sent back, so at
    # exit nothing is left to do; tearing down matplotlib and numpy would only make the run
    # wait for the pool to shut down.
    atexit.register(_exit_now)
    # Figures wait for maps, never the other way round: on a CPU the device's threads are the
    # run's critical path, so figure workers take only the CPU time they leave over.
    try:
        os.nice(10)
    except (AttributeError, OSError):  # not on this platform, or not allowed
        pass


def _exit_with_parent(parent: int) -> None:
    """Exit once the parent process is gone (the worker is then adopted by another process),
    after the figure being written, if any. Polling works for any way the parent may die and
    any thread that spawned the worker (unlike PR_SET_PDEATHSIG, which follows that thread)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    _BUSY.acquire()
    _exit_now()


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
