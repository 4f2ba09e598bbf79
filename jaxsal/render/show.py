"""``-show``: figures on pyplot's interactive backend, the only place pyplot is used."""

from __future__ import annotations

import os
import sys

from jaxsal.render.figures import FIGURE_DPI, FIGURE_SIZE_IN, FigureJob, draw_figure

__all__ = ["can_show", "show_figure"]

_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def can_show() -> bool:
    """True if figures can be shown: a display exists and pyplot's backend is interactive.

    On Linux (and other non-macOS Unixes) a display means DISPLAY or WAYLAND_DISPLAY is set.
    Imports pyplot, so call it only when ``-show`` was given.
    """
    if sys.platform not in ("darwin", "win32") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        import matplotlib.pyplot as plt

        backend = plt.get_backend().lower()
    except Exception:  # noqa: BLE001 - no usable GUI toolkit
        return False
    return backend not in _NON_INTERACTIVE


def show_figure(job: FigureJob) -> bool:
    """Shows one figure on pyplot's interactive backend and blocks until its window is closed.

    The figure is drawn again from ``job`` (so it also works without ``-out``) and closed
    afterwards. Returns False, doing nothing, when :func:`can_show` is false (headless), so the
    caller can say once: "cannot show figures: no display; figures are saved with -out".
    """
    if not can_show():
        return False
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
    try:
        draw_figure(fig, job)
        plt.show()
    finally:
        plt.close(fig)
    return True
