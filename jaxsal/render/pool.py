"""The figure workers: processes that draw and save figures while the main process computes maps.

Drawing is numpy and matplotlib only, so the workers never import JAX; they are spawned, not
forked, because ``fork`` is unsafe once JAX (multithreaded) is imported.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import os
import sys

from jaxsal.render import fast_redraw, figures

__all__ = ["default_render_workers", "render_pool", "warm_up"]


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
        initializer=_worker_init)


def warm_up(n_rows: int, n_cols: int) -> None:
    """Pay a worker's start-up costs before its first figure: the imports, the fonts, and (with
    the fast redraw on) the figure of the grid shape it will draw, kept for reuse -- creating
    a grid's axes costs more than drawing a figure on them."""
    if fast_redraw.enabled():
        fast_redraw.keep_canvas(n_rows, n_cols)
    else:
        figures.empty_grid(n_rows, n_cols)


def _worker_init() -> None:
    # Workers never show anything; make sure a stray pyplot import could not pick a GUI.
    os.environ.setdefault("MPLBACKEND", "Agg")
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


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
