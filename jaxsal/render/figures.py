"""The figures (SPEC §11) in plain matplotlib: names, the job of one figure, and how it is drawn.

This is the reference: a new figure, one ``imshow`` per cell, tight layout, ``savefig``.
:mod:`jaxsal.render.fast_redraw` must give the same bytes, and falls back to this when switched
off.

Figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas, not pyplot figures, so no
GUI backend is needed and nothing accumulates in pyplot's figure manager. matplotlib is imported
where it is used: the CLI imports this package for names and display copies before it draws.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxsal.atomic import write_bytes_atomically
from jaxsal.errors import UsageError

__all__ = [
    "FIGURE_DPI",
    "FIGURE_SIZE_IN",
    "JPEG_QUALITY",
    "STIMULI_PER_FIGURE",
    "CHANNELS_PER_FIGURE",
    "FigureJob",
    "build_figure",
    "channel_label",
    "check_cmap",
    "draw_figure",
    "encode_figure",
    "figure_job",
    "figure_path",
    "figure_slices",
    "save_jpeg",
]

STIMULI_PER_FIGURE = 6
CHANNELS_PER_FIGURE = 5  # rows below the stimuli (the original's limit); more are saved, not drawn
FIGURE_SIZE_IN = (10.0, 6.0)  # width, height: 1000 x 600 px at FIGURE_DPI
FIGURE_DPI = 100
JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------
# Options and names


def check_cmap(name: str, option: str = "-cmap") -> str:
    """Returns ``name`` if matplotlib knows the colormap; else a UsageError with valid names,
    naming ``option`` (the flag, or the keyword of a Python call)."""
    import matplotlib

    if name in matplotlib.colormaps:
        return name
    names = sorted(matplotlib.colormaps)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = ", ".join(n for n in ("coolwarm", "gray", "viridis", "jet", "hot", "bwr")
                         if n in matplotlib.colormaps)
    raise UsageError(f"unknown colormap for {option}: {name!r}; {hint}valid names include "
                     f"{examples} (any matplotlib colormap; add _r to reverse one)")


def channel_label(channel: int) -> str:
    """The y-label of a channel row: ``chn<c>`` with c as typed (1-based), e.g. ``chn294``."""
    return f"chn{channel}"


def figure_path(out_dir: str | os.PathLike, net: str, layer: str, k: int) -> pathlib.Path:
    """``<out_dir>/<net>_<layer>_fig<k>.jpg``; net and layer as typed, k counts from 1."""
    if k < 1:
        raise ValueError(f"figure numbers start at 1, got {k}")
    return pathlib.Path(out_dir) / f"{net}_{layer}_fig{k}.jpg"


def figure_slices(n_stimuli: int, per_figure: int = STIMULI_PER_FIGURE) -> list[range]:
    """Consecutive stimulus index ranges, one per figure; the last may be shorter.

    ``figure_slices(14)`` -> ``[range(0, 6), range(6, 12), range(12, 14)]``; after figure k the
    CLI prints ``Finish: {slices[k-1].stop}/{n_stimuli}``.
    """
    if per_figure < 1:
        raise ValueError(f"per_figure must be >= 1, got {per_figure}")
    return [range(i, min(i + per_figure, n_stimuli)) for i in range(0, n_stimuli, per_figure)]


# --------------------------------------------------------------------------------------------
# One figure


@dataclasses.dataclass(frozen=True)
class FigureJob:
    """Everything needed to draw and save one figure; small and picklable.

    Attributes:
      out_path: the JPEG file to write (see :func:`figure_path`).
      stimuli: the stimuli of this figure, one column each (at most 6): uint8 RGB (H, W, 3) at
        native size, as :func:`jaxsal.stimuli.load_image` gives them (a 2-D gray array is
        drawn gray, never colour-mapped), or their :func:`~jaxsal.render.display.display_copy`.
      rows: one ``(label, maps)`` per requested channel, in the order given: label as
        :func:`channel_label` gives it, maps the uint8 outputs of
        :func:`~jaxsal.render.display.to_display`, one per stimulus ((H, W, 3) RGB or (H, W)
        gray).
      cmap, vmin, vmax: passed to every ``imshow``; matplotlib applies them to 2-D (gray) maps
        only. vmin/vmax are in the 0..255 units of the displayed map; None = each image's own
        range.
      underlays: optional, one uint8 RGB image per stimulus (the network input, see
        :func:`~jaxsal.render.display.network_image`); each map is then drawn over its
        stimulus's underlay with opacity ``alpha`` (``-overlay``).
      stimulus_sizes: optional, the native (H, W) of each stimulus where ``stimuli`` hold
        smaller display copies: each is then drawn over its native extent, so the figure is
        laid out exactly as with the native image.
    """

    out_path: str
    stimuli: Sequence[np.ndarray]
    rows: Sequence[tuple[str, Sequence[np.ndarray]]]
    cmap: str = "coolwarm"
    vmin: float | None = None
    vmax: float | None = None
    underlays: Sequence[np.ndarray] | None = None
    alpha: float = 0.5
    stimulus_sizes: Sequence[tuple[int, int]] | None = None


def figure_job(columns: Sequence[tuple[np.ndarray, tuple[int, int]]],
               maps: Sequence[Sequence[np.ndarray]], channels: Sequence[int], *,
               cmap: str = "coolwarm", vmin: float | None = None, vmax: float | None = None,
               underlays: Sequence[np.ndarray] | None = None, out_path: str = "") -> FigureJob:
    """The job of one figure, from its stimuli and their displayed maps -- how the command
    (:func:`jaxsal.cli.execute`) and :func:`jaxsal.plot` both make it.

    Args:
      columns: one ``(array to draw, native (H, W))`` per stimulus, as
        :func:`~jaxsal.render.display.display_copy` returns them for this figure's grid.
      maps: ``maps[c][j]``: the displayed (uint8) map of ``channels[c]`` for stimulus j, e.g.
        :func:`~jaxsal.render.display.display_maps`'s (K, N, ...) images.
      channels: the channel numbers as typed (1-based): one row each, labelled
        :func:`channel_label`.
      cmap, vmin, vmax, underlays, out_path: as in :class:`FigureJob`.
    """
    return FigureJob(
        out_path=out_path,
        stimuli=[array for array, _ in columns],
        stimulus_sizes=[size for _, size in columns],
        rows=[(channel_label(ch), list(maps[c])) for c, ch in enumerate(channels)],
        cmap=cmap, vmin=vmin, vmax=vmax,
        underlays=None if underlays is None else list(underlays),
    )


def check_job(job: FigureJob) -> None:
    """ValueError unless the job has at least one stimulus and one map per stimulus in each row."""
    n_cols = len(job.stimuli)
    if n_cols == 0:
        raise ValueError("a figure needs at least one stimulus")
    for label, maps in job.rows:
        if len(maps) != n_cols:
            raise ValueError(f"row {label!r} has {len(maps)} maps for {n_cols} stimuli")


def grid_images(job: FigureJob) -> list[tuple[str, list[list[np.ndarray]]]]:
    """[(row label, [images of each cell, in drawing order])]: the stimuli row, then one row
    per channel; a cell holds its map, or its underlay then its map with -overlay."""
    grid = [("stim", [[stimulus_rgb(s)] for s in job.stimuli])]
    for label, maps in job.rows:
        if job.underlays is None:
            grid.append((label, [[m] for m in maps]))
        else:
            grid.append((label, [[stimulus_rgb(u), m] for u, m in zip(job.underlays, maps)]))
    return grid


def stimulus_rgb(image: np.ndarray) -> np.ndarray:
    """A stimulus as the (H, W, 3) array drawn: gray repeated, alpha dropped, so that no
    stimulus is ever colour-mapped (SPEC §10.2 only concerns the maps)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a stimulus must be an RGB (H, W, 3) array, got shape {image.shape}")
    return image


def stimulus_extent(job: FigureJob, c: int) -> tuple[float, float, float, float] | None:
    """imshow's extent for stimulus ``c``: its native one when the job holds a smaller copy,
    else None (imshow's default, the same numbers for a native image)."""
    if job.stimulus_sizes is None:
        return None
    height, width = job.stimulus_sizes[c]
    if np.shape(job.stimuli[c])[:2] == (height, width):
        return None
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def draw_cell(ax, images: Sequence[np.ndarray], job: FigureJob, extent) -> None:
    """One cell on an empty axes: its image(s), default interpolation, equal aspect, the job's
    cmap/vmin/vmax, no ticks (the frame stays)."""
    overlay = len(images) == 2
    if overlay:
        ax.imshow(images[0], aspect="equal")
    ax.imshow(images[-1], cmap=job.cmap, vmin=job.vmin, vmax=job.vmax, aspect="equal",
              alpha=job.alpha if overlay else None,
              **({} if extent is None else {"extent": extent}))
    ax.set_xticks([])
    ax.set_yticks([])


def tight_layout(fig) -> None:
    """``fig.tight_layout()``, by running the layout engine directly: ``Figure.tight_layout``
    leaves a placeholder layout engine on the figure, and ``savefig`` then draws (and resamples
    every image of) the whole figure twice, for the same pixels."""
    from matplotlib.layout_engine import TightLayoutEngine

    TightLayoutEngine().execute(fig)


def draw_figure(fig, job: FigureJob) -> None:
    """Draws the grid of SPEC §11 on ``fig``, an empty figure (10 x 6 in at 100 dpi).

    Rows: the stimuli at native size, then one row per channel; columns: the stimuli; drawn
    row-major, as the original. No ticks (frames kept), y-labels on column 0 only (``stim``,
    then the row labels), default interpolation, equal aspect, cmap/vmin/vmax on every image,
    tight layout.
    """
    check_job(job)
    if fig.axes:
        raise ValueError("draw_figure draws on an empty figure")
    grid = grid_images(job)
    axes = fig.subplots(len(grid), len(job.stimuli), squeeze=False)
    for r, (label, cells) in enumerate(grid):
        for c, images in enumerate(cells):
            draw_cell(axes[r, c], images, job, stimulus_extent(job, c) if r == 0 else None)
        axes[r, 0].set_ylabel(label)
    tight_layout(fig)


def new_figure(figure_class=None):
    """An empty figure of the figures' size and dpi on an Agg canvas; ``figure_class``: a
    subclass of :class:`~matplotlib.figure.Figure` to make instead."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = (figure_class or Figure)(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    return fig


def empty_grid(n_rows: int, n_cols: int):
    """(figure, (n_rows, n_cols) axes) as the figures show them before any image -- no ticks,
    ``stim`` on the first row -- drawn once, which loads the fonts. A worker's warm-up."""
    fig = new_figure()
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        # The default ticks and tick labels, which no figure shows, cost most of a first draw.
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("stim")
    fig.canvas.draw()
    return fig, axes


def build_figure(job: FigureJob, figure_class=None):
    """A new Agg-backed :class:`~matplotlib.figure.Figure` (or ``figure_class``) with the job
    drawn on it."""
    fig = new_figure(figure_class)
    draw_figure(fig, job)
    return fig


def encode_figure(fig, format: str = "jpeg") -> bytes:
    """``fig`` as the bytes of an image file: the whole canvas at the figure's dpi (1000 x 600
    px); JPEG at quality 95."""
    import matplotlib

    buffer = io.BytesIO()
    # savefig.bbox 'standard' keeps the full 1000 x 600 canvas even if a user's matplotlibrc
    # asks for 'tight'.
    with matplotlib.rc_context({"savefig.bbox": "standard"}):
        fig.savefig(buffer, format=format, dpi=fig.dpi,
                    **({"pil_kwargs": {"quality": JPEG_QUALITY}} if format in ("jpeg", "jpg")
                       else {}))
    return buffer.getvalue()


def save_jpeg(fig, path: str | os.PathLike) -> pathlib.Path:
    """Saves ``fig`` as a JPEG (:func:`encode_figure`), written whole or not at all
    (:func:`jaxsal.atomic.write_bytes_atomically`)."""
    return write_bytes_atomically(path, encode_figure(fig, "jpeg"))
