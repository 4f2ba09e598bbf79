"""Drawing many figures in one process fast, with the same bytes as the plain figures.

Most of a figure does not depend on its pixels: the axes, the tight layout, the backgrounds and
the y-labels. Per process this module keeps one figure per grid shape, remembers the layout of
each :func:`layout_key`, keeps the drawn background as a bitmap, and then draws only the images
and the frames over it (blitting), with the same Agg artists, in the same order, as a full draw.
What it saves is in BENCHMARKS.md.

To get there it uses matplotlib beyond its stable API: it replaces ``Axes.get_tightbbox`` on its
own axes while the layout engine runs, and calls private Axes methods for the lean background.
That is why it is kept apart from :mod:`jaxsal.render.figures`, the plain reference, why every
figure it writes is tested byte for byte against that reference, and why it can be switched off:
``JAXSAL_FAST_REDRAW=0`` in the environment (inherited by the figure workers), or
``render_figure(job, fast=False)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import numpy as np

from jaxsal.atomic import write_bytes_atomically
from jaxsal.render import figures
from jaxsal.render.figures import JPEG_QUALITY, FigureJob

__all__ = ["ENV_VAR", "enabled", "keep_canvas", "layout_key", "render_figure"]

ENV_VAR = "JAXSAL_FAST_REDRAW"
_OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    """False when ``JAXSAL_FAST_REDRAW`` is 0 (or false/no/off); read at every call, so a test
    or a worker's environment decides."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


def render_figure(job: FigureJob, fast: bool | None = None) -> str:
    """Draws and saves one figure as JPEG (written atomically); returns the path written.

    Top-level and picklable, for the figure workers (:func:`jaxsal.render.pool.render_pool`).
    With ``fast`` (default: :func:`enabled`), the kept figure of the job's grid shape is redrawn;
    else the figure is built anew, the plain way (:func:`figures.build_figure` and
    :func:`figures.save_jpeg`). Both write the same bytes (tested).
    """
    if not (enabled() if fast is None else fast):
        return os.fspath(figures.save_jpeg(figures.build_figure(job), job.out_path))
    shape = (len(job.rows) + 1, len(job.stimuli))
    key = layout_key(job)
    canvas = _CANVASES.get(shape)
    if canvas is None:
        canvas = _CANVASES[shape] = _Canvas(*_new_grid(*shape))
    if canvas.key != key:
        canvas.key = None  # until redrawn: a failed redraw must not look laid out for the old key
        _redraw(canvas, job, key)
        canvas.background = _draw_background(canvas.fig)
        canvas.key = key
    else:
        _set_image_data(canvas, job)
    fig = canvas.fig
    fig.canvas.restore_region(canvas.background)
    for ax in fig.axes:
        for image in ax.images:
            ax.draw_artist(image)
        for spine in ax.spines.values():
            ax.draw_artist(spine)
    return os.fspath(write_bytes_atomically(job.out_path, _canvas_jpeg(fig)))


def keep_canvas(n_rows: int, n_cols: int) -> None:
    """Make (and draw once) the figure of this grid shape now, for :func:`render_figure` to
    reuse: a worker's warm-up, before its first figure."""
    if (n_rows, n_cols) not in _CANVASES:
        _CANVASES[(n_rows, n_cols)] = _Canvas(*figures.empty_grid(n_rows, n_cols))


def layout_key(job: FigureJob) -> tuple:
    """Everything that places the figure's axes and frames, or styles its images, but not the
    pixels: figures with equal keys differ only in their images' data."""
    shapes = [np.shape(image) for _, cells in figures.grid_images(job) for images in cells
              for image in images]
    if job.stimulus_sizes is not None:  # the stimuli come first; a copy is laid out as native
        shapes[: len(job.stimuli)] = [tuple(size) + shape[2:] for size, shape
                                      in zip(job.stimulus_sizes, shapes)]
    shapes = tuple(shapes)
    return (len(job.rows) + 1, len(job.stimuli), ("stim",) + tuple(l for l, _ in job.rows),
            shapes, job.cmap, job.vmin, job.vmax, job.alpha if job.underlays is not None else None)


@dataclasses.dataclass
class _Canvas:
    """One figure of one grid shape, kept for the life of the process."""

    fig: object
    axes: np.ndarray  # (n_rows, n_cols)
    cells: dict = dataclasses.field(default_factory=dict)  # (r, c) -> what it was drawn with
    tight_bboxes: dict = dataclasses.field(default_factory=dict)  # see _remembered_tight_bboxes
    key: tuple | None = None  # the layout_key it is laid out and has a background for
    background: object = None  # its bitmap without images and frames (copy_from_bbox)


_CANVASES: dict[tuple[int, int], _Canvas] = {}  # grid shape -> its figure, per process


def _new_grid(n_rows: int, n_cols: int):
    fig = figures.new_figure()
    return fig, fig.subplots(n_rows, n_cols, squeeze=False)


def _redraw(canvas: _Canvas, job: FigureJob, key: tuple) -> None:
    """:func:`figures.draw_figure` on the kept figure: the picture a new figure would get.

    A cell whose images keep their shapes and style keeps its artists (its limits are those a
    new ``imshow`` would make): only its pixels change. Any other cell is cleared and drawn
    anew.
    """
    import matplotlib

    figures.check_job(job)
    # tight_layout measures every axes at the grid's default positions.
    canvas.fig.subplots_adjust(**{k: matplotlib.rcParams[f"figure.subplot.{k}"]
                                  for k in ("left", "right", "bottom", "top", "wspace", "hspace")})
    for r, (label, cells) in enumerate(figures.grid_images(job)):
        for c, images in enumerate(cells):
            ax = canvas.axes[r, c]
            extent = figures.stimulus_extent(job, c) if r == 0 else None
            cell = (tuple(np.shape(image) for image in images), extent, job.cmap, job.vmin,
                    job.vmax, job.alpha if len(images) == 2 else None)
            if canvas.cells.get((r, c)) == cell:
                _set_cell_data(ax.images, images, job)
                continue
            canvas.cells.pop((r, c), None)
            _clear_axes(ax)
            figures.draw_cell(ax, images, job, extent)
            canvas.cells[(r, c)] = cell
        canvas.axes[r, 0].set_ylabel(label)
    _tight_layout(canvas, key)


def _clear_axes(ax) -> None:
    """Empty a reused axes of its images, with the limits of a new one."""
    import matplotlib

    for image in list(ax.images):
        image.remove()
    ax.dataLim.set_points(matplotlib.transforms.Bbox.null().get_points())
    ax.ignore_existing_data_limits = True
    ax.set_xlim(0, 1, auto=True)
    ax.set_ylim(0, 1, auto=True)


def _tight_layout(canvas: _Canvas, key: tuple) -> None:
    """:func:`figures.tight_layout`, computed once per ``key`` in a process.

    Its result (the subplot parameters) depends only on the figure's size, dpi and fonts (fixed
    in a process), the grid shape, the y-labels and the shape of each image (an axes with
    aspect 'equal' shrinks to its image), never on the pixels.
    """
    params = _TIGHT_LAYOUTS.get(key)
    if params is None:
        with _remembered_tight_bboxes(canvas):
            figures.tight_layout(canvas.fig)
        sp = canvas.fig.subplotpars
        params = dict(left=sp.left, right=sp.right, bottom=sp.bottom, top=sp.top,
                      wspace=sp.wspace, hspace=sp.hspace)
        if len(_TIGHT_LAYOUTS) >= 4096:  # many distinct stimulus shapes: stay small
            _TIGHT_LAYOUTS.clear()
        _TIGHT_LAYOUTS[key] = params
    else:
        canvas.fig.subplots_adjust(**params)


_TIGHT_LAYOUTS: dict = {}  # layout_key -> subplot parameters, per process


@contextlib.contextmanager
def _remembered_tight_bboxes(canvas: _Canvas):
    """While the layout engine runs, each axes measures its tight box once per (grid cell,
    y-label, image shapes and extents) and the canvas remembers it.

    The engine measures every axes at the grid's default positions (:func:`_redraw` resets
    them), where an axes' box depends only on its cell, its label and its images' shapes (equal
    aspect). A new stimulus shape then costs one measure (of its own axes), not one per axes.
    """
    memo = canvas.tight_bboxes
    patched = []
    for (r, c), ax in np.ndenumerate(canvas.axes):
        key = (r, c, ax.get_ylabel(),
               tuple((np.shape(im.get_array()), tuple(im.get_extent())) for im in ax.images))

        def measured(*args, _ax=ax, _key=key, **kwargs):
            full_key = (_key, len(args), tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
            if full_key not in memo:
                bbox = type(_ax).get_tightbbox(_ax, *args, **kwargs)
                memo[full_key] = None if bbox is None else bbox.frozen()
            return memo[full_key]

        ax.get_tightbbox = measured
        patched.append(ax)
    try:
        yield
    finally:
        for ax in patched:
            del ax.get_tightbbox
        if len(memo) > 4096:
            memo.clear()


def _draw_background(fig):
    """Draw the figure without its images and frames, and keep that bitmap.

    With no ticks, no titles and the default style, what shows of that is the figure's and
    the axes' backgrounds and the y-labels; :func:`_lean_background` draws just those (and
    places the axes, as a draw does), faster than a full draw. Each process checks it once
    against the full draw, pixel for pixel, and keeps to the full draw if they differ (a
    matplotlibrc that adds minor ticks or a grid, another matplotlib)."""
    global _LEAN_BACKGROUND
    if _LEAN_BACKGROUND:
        _lean_background(fig)
        return fig.canvas.copy_from_bbox(fig.bbox)
    hidden = [a for ax in fig.axes for a in (*ax.images, *ax.spines.values()) if a.get_visible()]
    for artist in hidden:
        artist.set_visible(False)
    try:
        fig.canvas.draw()
    finally:
        for artist in hidden:
            artist.set_visible(True)
    background = fig.canvas.copy_from_bbox(fig.bbox)
    if _LEAN_BACKGROUND is None:
        full = np.array(fig.canvas.buffer_rgba())
        try:
            _lean_background(fig)
            _LEAN_BACKGROUND = np.array_equal(full, np.asarray(fig.canvas.buffer_rgba()))
        except Exception:  # noqa: BLE001 - matplotlib internals moved: keep the full draw
            _LEAN_BACKGROUND = False
        fig.canvas.restore_region(background)
    return background


_LEAN_BACKGROUND: bool | None = None  # per process: None until checked against a full draw


def _lean_background(fig) -> None:
    """The parts of a full draw that show when images and frames are hidden, in its order."""
    renderer = fig.canvas.get_renderer()
    renderer.clear()
    fig.patch.draw(renderer)
    for ax in fig.axes:
        ax._unstale_viewLim()
        ax.apply_aspect()
        ax.patch.draw(renderer)
        if ax.yaxis.label.get_text():
            ax.yaxis._update_label_position(renderer)
            ax.yaxis.label.draw(renderer)


def _set_image_data(canvas: _Canvas, job: FigureJob) -> None:
    """Swap the job's images into a figure laid out for its key."""
    for r, (_, cells) in enumerate(figures.grid_images(job)):
        for c, images in enumerate(cells):
            _set_cell_data(canvas.axes[r, c].images, images, job)


def _set_cell_data(artists, images, job: FigureJob) -> None:
    """Put ``images`` into a cell's image artists as a new ``imshow`` would set them (the norm
    is scaled to the new data unless vmin/vmax fix it)."""
    from matplotlib.colors import Normalize

    for artist, image in zip(artists, images):
        artist.set_data(image)
        if np.ndim(image) == 2:
            artist.set_norm(Normalize(job.vmin, job.vmax))
            artist.autoscale_None()


def _canvas_jpeg(fig) -> bytes:
    """The canvas as ``savefig(format='jpeg', pil_kwargs={'quality': 95})`` encodes it."""
    import matplotlib
    import matplotlib.image

    buffer = io.BytesIO()
    with matplotlib.rc_context({"savefig.facecolor": "white"}):
        matplotlib.image.imsave(buffer, fig.canvas.buffer_rgba(), format="jpeg", origin="upper",
                                dpi=fig.dpi, pil_kwargs={"quality": JPEG_QUALITY})
    return buffer.getvalue()
