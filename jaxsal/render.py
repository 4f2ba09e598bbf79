"""Saliency maps to pictures: the display transform (SPEC §10) and the figures (SPEC §11).

numpy + matplotlib only; this module never imports JAX, so figures can be drawn in worker
processes (see :func:`render_pool`) while the main process computes gradients.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, not with pyplot, so
no GUI backend is needed and nothing accumulates in pyplot's figure manager. Only
:func:`show_figure` (for ``-show``) uses pyplot.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import difflib
import io
import multiprocessing
import os
import pathlib
import secrets
import sys
from typing import Sequence

import numpy as np

from jaxsal.errors import UsageError

__all__ = [
    "FIGURE_DPI",
    "FIGURE_SIZE_IN",
    "JPEG_QUALITY",
    "MODES",
    "STIMULI_PER_FIGURE",
    "FigureJob",
    "build_figure",
    "can_show",
    "channel_label",
    "check_cmap",
    "default_render_workers",
    "display_copy",
    "display_reduction",
    "draw_figure",
    "figure_path",
    "figure_slices",
    "render_figure",
    "render_pool",
    "save_jpeg",
    "show_figure",
    "to_display",
    "to_display_2d",
    "warm_up",
    "network_image",
]

MODES = ("RGB", "gray")
STIMULI_PER_FIGURE = 6
FIGURE_SIZE_IN = (10.0, 6.0)  # width, height: 1000 x 600 px at FIGURE_DPI
FIGURE_DPI = 100
JPEG_QUALITY = 95


# --------------------------------------------------------------------------------------------
# Gradient -> uint8 (SPEC §10.1)


def to_display(grad: np.ndarray, mode: str) -> tuple[np.ndarray, bool | np.ndarray]:
    """Turns signed gradients into the uint8 images that are drawn (SPEC §10.1).

    Per map: ``a = |g|``; gray mode: ``a = max over the 3 colour channels``; then one *global*
    min-max over the whole map (all three channels together in RGB mode)
    ``a = (a - min) / (max - min) * 255`` in the input's float precision (float32 for a float32
    gradient, as the original), and uint8 by truncation (floor).

    A constant map (max == min, e.g. the all-zero gradient of a dead unit) becomes all zeros,
    with no NaN and no numpy warning; it is flagged so the caller can warn once.

    Args:
      grad: signed gradient(s), shape (3, H, W), or (..., 3, H, W) for many maps at once;
        every map is scaled on its own, and the bytes equal the one-map result.
      mode: ``"RGB"`` or ``"gray"``.

    Returns:
      (image, is_constant). image: uint8 (..., H, W, 3) in RGB mode (a channels-last view, not
      C-contiguous), (..., H, W) in gray mode.
      is_constant: a bool for one map, else a bool array of the leading shape.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    grad = np.asarray(grad)
    if grad.ndim < 3 or grad.shape[-3] != 3:
        raise ValueError(f"grad must be shaped (..., 3, H, W), got {grad.shape}")
    if not np.issubdtype(grad.dtype, np.floating):
        grad = grad.astype(np.float32)
    a = np.abs(grad)  # a new array: the in-place steps below never touch the caller's
    if mode == "gray":
        a = a.max(axis=-3)
        axes: tuple[int, ...] = (-2, -1)
    else:
        axes = (-3, -2, -1)
    lo = a.min(axis=axes, keepdims=True)
    span = a.max(axis=axes, keepdims=True) - lo
    constant = span == 0
    a -= lo
    # The same float ops, in the same order, as (a - min) / (max - min) * 255; constant maps
    # are skipped (left at 0) instead of dividing 0 by 0.
    np.divide(a, span, out=a, where=~constant)
    a *= a.dtype.type(255)
    image = a.astype(np.uint8)
    if mode == "RGB":
        image = np.moveaxis(image, -3, -1)  # a view: copying here would only slow the hot path
    constant = constant.reshape(constant.shape[: constant.ndim - len(axes)])
    return image, (bool(constant) if constant.ndim == 0 else constant)


def to_display_2d(maps: np.ndarray) -> tuple[np.ndarray, bool | np.ndarray]:
    """2-D maps (Grad-CAM, ``(..., H, W)``) to the uint8 images that are drawn colour-mapped.

    Per map, min-max to 0..255 and truncation, as :func:`to_display` -- but on the values
    themselves, with no ``|.|`` and no colour axis: Grad-CAM maps are already non-negative
    (ReLU'd), so the scale runs from the map's minimum (usually 0) to its maximum. Constant maps
    become zeros and are flagged. Returns ``(image (..., H, W) uint8, is_constant)``.
    """
    a = np.asarray(maps)
    a = a.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32, copy=True)
    if a.ndim < 2:
        raise ValueError(f"maps must be shaped (..., H, W), got {a.shape}")
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    constant = span == 0
    a -= lo
    np.divide(a, span, out=a, where=~constant)
    a *= a.dtype.type(255)
    constant = constant.reshape(constant.shape[:-2])
    return a.astype(np.uint8), (bool(constant) if constant.ndim == 0 else constant)


def network_image(x: np.ndarray, mean: Sequence[float], std: Sequence[float],
                  scale: float = 1.0) -> np.ndarray:
    """The uint8 RGB (S, S, 3) picture the network saw (the resized stimulus) from its normalized
    input (S, S, 3): the inverse of :func:`jaxsal.stimuli.to_network_input`, rounded (exact:
    the float32 error is far below half a grey level). Used as the ``-overlay`` underlay."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(x * np.float32(255 / scale)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Options


def check_cmap(name: str) -> str:
    """Returns ``name`` if matplotlib knows the colormap; else a UsageError with valid names."""
    import matplotlib

    if name in matplotlib.colormaps:
        return name
    names = sorted(matplotlib.colormaps)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = ", ".join(n for n in ("coolwarm", "gray", "viridis", "jet", "hot", "bwr")
                         if n in matplotlib.colormaps)
    raise UsageError(f"unknown colormap for -cmap: {name!r}; {hint}valid names include "
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
# Figures (SPEC §11)


@dataclasses.dataclass(frozen=True)
class FigureJob:
    """Everything needed to draw and save one figure; small and picklable.

    Attributes:
      out_path: the JPEG file to write (see :func:`figure_path`).
      stimuli: the stimuli of this figure, one column each (at most 6): uint8 RGB (H, W, 3) at
        native size, as :func:`jaxsal.stimuli.load_image` gives them (a 2-D gray array is
        drawn gray, never colour-mapped), or their :func:`display_copy`.
      rows: one ``(label, maps)`` per requested channel, in the order given: label as
        :func:`channel_label` gives it, maps the uint8 outputs of :func:`to_display`, one per
        stimulus ((H, W, 3) RGB or (H, W) gray).
      cmap, vmin, vmax: passed to every ``imshow``; matplotlib applies them to 2-D (gray) maps
        only. vmin/vmax are in the 0..255 units of the displayed map; None = each image's own
        range.
      underlays: optional, one uint8 RGB image per stimulus (the network input, see
        :func:`network_image`); each map is then drawn over its stimulus's underlay with
        opacity ``alpha`` (``-overlay``).
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


DISPLAY_OVERSAMPLING = 3


def display_reduction(size: tuple[int, int], n_rows: int, n_cols: int) -> int:
    """The whole factor by which a stimulus of native (H, W) ``size`` can be shrunk before it is
    drawn in an (n_rows, n_cols) grid and still keep at least DISPLAY_OVERSAMPLING source
    pixels per figure pixel it covers (its cell is at most 1/n_cols of the figure's width and
    1/n_rows of its height). 1 for stimuli of ordinary size."""
    height, width = size
    cell_w = FIGURE_SIZE_IN[0] * FIGURE_DPI / n_cols
    cell_h = FIGURE_SIZE_IN[1] * FIGURE_DPI / n_rows
    shown_per_source = min(cell_w / width, cell_h / height)
    return max(1, int(1.0 / (DISPLAY_OVERSAMPLING * shown_per_source)))


def display_copy(image, n_rows: int, n_cols: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 array to draw, native (H, W)) for a stimulus (a PIL image) in an (n_rows, n_cols)
    figure: the image itself, or -- when it is several times larger than anything its cell
    can show -- a box-filtered reduction by :func:`display_reduction`'s factor.

    A camera photo (say 4000 x 3000) is shown about 160 px wide. matplotlib would convert all
    its pixels to float64 RGBA and resample them for each figure (about 0.3 s and 400 MB per
    image), and the run would keep every decoded photo in memory until its figure is drawn.
    The copy is drawn over the native extent (``FigureJob.stimulus_sizes``), so the layout is
    the same; its pixels differ from a direct draw only by the pre-filtering, which matplotlib's
    resampling of the full image lacks (it aliases fine detail at such reductions)."""
    width, height = image.size
    factor = display_reduction((height, width), n_rows, n_cols)
    shown = image.reduce(factor) if factor > 1 else image
    return np.asarray(shown), (height, width)


def _stimulus_extent(job: FigureJob, c: int) -> tuple[float, float, float, float] | None:
    """imshow's extent for stimulus ``c``: its native one when the job holds a smaller copy,
    else None (imshow's default, the same numbers for a native image)."""
    if job.stimulus_sizes is None:
        return None
    height, width = job.stimulus_sizes[c]
    if np.shape(job.stimuli[c])[:2] == (height, width):
        return None
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def _stimulus_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a stimulus must be an RGB (H, W, 3) array, got shape {image.shape}")
    return image


def draw_figure(fig, job: FigureJob) -> None:
    """Draws the grid of SPEC §11 on ``fig`` (10 x 6 in at 100 dpi).

    Rows: the stimuli at native size, then one row per channel; columns: the stimuli. No ticks
    (frames kept), y-labels on column 0 only (``stim``, then the row labels), default
    interpolation, equal aspect, cmap/vmin/vmax on every image, ``tight_layout``.

    ``fig`` may be empty, or hold the grid a previous call drew with the same number of rows
    and columns: its axes are then reused (creating 18 axes costs more than drawing them) and
    the result is the same picture, pixel for pixel, as on a new figure.
    """
    n_cols = len(job.stimuli)
    if n_cols == 0:
        raise ValueError("a figure needs at least one stimulus")
    for label, maps in job.rows:
        if len(maps) != n_cols:
            raise ValueError(f"row {label!r} has {len(maps)} maps for {n_cols} stimuli")
    grid = _grid_images(job)
    axes = _grid_axes(fig, len(grid), n_cols)
    for r, (label, cells) in enumerate(grid):  # row-major, as the original draws
        for c, images in enumerate(cells):
            ax = axes[r, c]
            overlay = len(images) == 2
            extent = _stimulus_extent(job, c) if r == 0 else None
            cell = (tuple(np.shape(image) for image in images), extent, job.cmap, job.vmin,
                    job.vmax, job.alpha if overlay else None)
            if getattr(ax, "_jaxsal_cell", None) == cell:
                # Drawn before with images of these shapes and this style: its limits and
                # artists are those a new imshow would make; only the pixels change.
                _set_cell_data(ax.images, images, job)
                continue
            _clear_axes(ax)
            if overlay:
                ax.imshow(images[0], aspect="equal")
            ax.imshow(images[-1], cmap=job.cmap, vmin=job.vmin, vmax=job.vmax, aspect="equal",
                      alpha=job.alpha if overlay else None,
                      **({} if extent is None else {"extent": extent}))
            ax.set_xticks([])
            ax.set_yticks([])
            ax._jaxsal_cell = cell
        axes[r, 0].set_ylabel(label)
    _tight_layout(fig, layout_key(job))


def _grid_images(job: FigureJob) -> list[tuple[str, list[list[np.ndarray]]]]:
    """[(row label, [images of each cell, in drawing order])]: the stimuli row, then one row
    per channel; a cell holds its map, or its underlay then its map with -overlay."""
    grid = [("stim", [[_stimulus_rgb(s)] for s in job.stimuli])]
    for label, maps in job.rows:
        if job.underlays is None:
            grid.append((label, [[m] for m in maps]))
        else:
            grid.append((label, [[_stimulus_rgb(u), m] for u, m in zip(job.underlays, maps)]))
    return grid


def layout_key(job: FigureJob) -> tuple:
    """Everything that places the figure's axes and frames, or styles its images, but not the
    pixels: figures with equal keys differ only in their images' data."""
    shapes = [np.shape(image) for _, cells in _grid_images(job) for images in cells
              for image in images]
    if job.stimulus_sizes is not None:  # the stimuli come first; a copy is laid out as native
        shapes[: len(job.stimuli)] = [tuple(size) + shape[2:] for size, shape
                                      in zip(job.stimulus_sizes, shapes)]
    shapes = tuple(shapes)
    return (len(job.rows) + 1, len(job.stimuli), ("stim",) + tuple(l for l, _ in job.rows),
            shapes, job.cmap, job.vmin, job.vmax, job.alpha if job.underlays is not None else None)


def _tight_layout(fig, key) -> None:
    """``fig.tight_layout()``, with two savings that leave every pixel the same.

    * Its result (the subplot parameters) is remembered per ``key``: it depends only on the
      figure's size, dpi and fonts (fixed in a process), the grid shape, the y-labels and the
      shape of each image (an axes with aspect 'equal' shrinks to its image), never on the
      pixels -- and computing it measures every axes, about a third of the cost of a figure.
    * It runs the layout engine directly. ``Figure.tight_layout`` leaves a placeholder layout
      engine on the figure, and ``savefig`` then draws (and resamples every image of) the
      whole figure twice.
    """
    from matplotlib.layout_engine import TightLayoutEngine

    params = _TIGHT_LAYOUTS.get(key)
    if params is None:
        with _remembered_tight_bboxes(fig):
            TightLayoutEngine().execute(fig)
        sp = fig.subplotpars
        params = dict(left=sp.left, right=sp.right, bottom=sp.bottom, top=sp.top,
                      wspace=sp.wspace, hspace=sp.hspace)
        if len(_TIGHT_LAYOUTS) >= 4096:  # many distinct stimulus shapes: stay small
            _TIGHT_LAYOUTS.clear()
        _TIGHT_LAYOUTS[key] = params
    else:
        fig.subplots_adjust(**params)


_TIGHT_LAYOUTS: dict = {}  # layout_key -> subplot parameters, per process


@contextlib.contextmanager
def _remembered_tight_bboxes(fig):
    """While tight_layout runs, each axes of ``fig`` measures its tight box once per (grid
    cell, y-label, image shapes) and remembers it on the figure.

    tight_layout measures every axes at the grid's default positions (``_grid_axes`` resets
    them), where an axes' box depends only on its cell, its label and its images' shapes
    (equal aspect). A new stimulus shape then costs one measure (of its own axes), not 18.
    """
    memo = fig.__dict__.setdefault("_jaxsal_tight_bboxes", {})
    patched = []
    for (r, c), ax in np.ndenumerate(fig._jaxsal_grid):
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


def _grid_axes(fig, n_rows: int, n_cols: int):
    """The figure's (n_rows, n_cols) axes: new ones, or the previous grid with the layout of
    new axes (each cell is then kept or cleared by :func:`draw_figure`)."""
    import matplotlib

    axes = getattr(fig, "_jaxsal_grid", None)
    if axes is None or axes.shape != (n_rows, n_cols):
        fig.clear()
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        fig._jaxsal_grid = axes
        return axes
    defaults = {k: matplotlib.rcParams[f"figure.subplot.{k}"]
                for k in ("left", "right", "bottom", "top", "wspace", "hspace")}
    fig.subplots_adjust(**defaults)
    return axes


def _clear_axes(ax) -> None:
    """Empty a reused axes of its images, with the limits of a new one."""
    import matplotlib

    for image in list(ax.images):
        image.remove()
    ax.dataLim.set_points(matplotlib.transforms.Bbox.null().get_points())
    ax.ignore_existing_data_limits = True
    ax.set_xlim(0, 1, auto=True)
    ax.set_ylim(0, 1, auto=True)
    ax._jaxsal_cell = None


def build_figure(job: FigureJob):
    """A new Agg-backed :class:`~matplotlib.figure.Figure` with the job drawn on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    draw_figure(fig, job)
    return fig


def save_jpeg(fig, path: str | os.PathLike) -> pathlib.Path:
    """Saves ``fig`` as a JPEG (quality 95, figure dpi), written whole or not at all (see
    :func:`write_atomically`)."""
    import matplotlib

    buffer = io.BytesIO()
    # savefig.bbox 'standard' keeps the full 1000 x 600 canvas even if a user's matplotlibrc
    # asks for 'tight'.
    with matplotlib.rc_context({"savefig.bbox": "standard"}):
        fig.savefig(buffer, format="jpeg", dpi=fig.dpi,
                    pil_kwargs={"quality": JPEG_QUALITY})
    return write_atomically(path, buffer.getbuffer())


def write_atomically(path: str | os.PathLike, data) -> pathlib.Path:
    """Writes ``data`` to a hidden temporary file in the same folder and renames it over
    ``path`` (``os.replace``), so a reader never sees a partial file; on any failure the
    temporary file is removed and the error re-raised. An existing file is overwritten."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def render_figure(job: FigureJob) -> str:
    """Draws and saves one figure as JPEG (written atomically); returns the path written.

    Top-level and picklable, for a process pool (see :func:`render_pool`). The bytes are those
    ``save_jpeg(build_figure(job), path)`` writes (tested), for about a quarter of the cost:

    * each process keeps one figure per grid shape (:func:`warm_up` may have made it), none
      registered with pyplot;
    * what does not depend on the pixels -- the layout (``tight_layout``), the backgrounds and
      the y-labels -- is drawn once per :func:`layout_key` and kept as a bitmap; a figure with
      the same key restores it and draws only its images and the frames over them, with the
      same Agg artists, in the same order, as a full draw.
    """
    shape = (len(job.rows) + 1, len(job.stimuli))
    key = layout_key(job)
    canvas = _CANVASES.get(shape)
    if canvas is None:
        canvas = _CANVASES[shape] = _Canvas(build_figure(job))
    elif canvas.key != key:
        draw_figure(canvas.fig, job)
    else:
        _set_image_data(canvas.fig, job)
    fig = canvas.fig
    if canvas.key != key:
        canvas.key, canvas.background = key, _draw_background(fig)
    fig.canvas.restore_region(canvas.background)
    for ax in fig.axes:
        for image in ax.images:
            ax.draw_artist(image)
        for spine in ax.spines.values():
            ax.draw_artist(spine)
    return os.fspath(write_atomically(job.out_path, _canvas_jpeg(fig)))


@dataclasses.dataclass
class _Canvas:
    fig: object  # a Figure of one grid shape, laid out for `key` (None: not laid out yet)
    key: tuple | None = None
    background: object = None  # its bitmap without images and frames (copy_from_bbox)


_CANVASES: dict[tuple[int, int], _Canvas] = {}  # per process


def _draw_background(fig):
    """Draw the figure without its images and frames, and keep that bitmap.

    With no ticks, no titles and the default style, what shows of that is the figure's and
    the axes' backgrounds and the y-labels; :func:`_lean_background` draws just those (and
    places the axes, as a draw does), in 40 % of the time of a full draw. Each process checks
    it once against the full draw, pixel for pixel, and keeps to the full draw if they differ
    (a matplotlibrc that adds minor ticks or a grid, another matplotlib)."""
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


def _set_image_data(fig, job: FigureJob) -> None:
    """Swap the job's images into a figure laid out for its key."""
    axes = fig._jaxsal_grid
    for r, (_, cells) in enumerate(_grid_images(job)):
        for c, images in enumerate(cells):
            _set_cell_data(axes[r, c].images, images, job)


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


def _worker_init() -> None:
    # Workers never show anything; make sure a stray pyplot import could not pick a GUI.
    os.environ.setdefault("MPLBACKEND", "Agg")
    # A worker's figures are written (atomically) before their results are sent back, so at
    # exit nothing is left to do; tearing down matplotlib and numpy would make the run wait
    # ~0.3 s for the pool to shut down.
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


def default_render_workers() -> int:
    """One figure worker per core, at most 8 (~100 MB each). Workers run at low priority: on a
    CPU they draw with what the device's threads leave over, and after the last batch every
    core is free for the figures still to draw; next to a GPU, drawing is the bottleneck."""
    return max(1, min(8, os.cpu_count() or 1))


def warm_up(n_rows: int, n_cols: int) -> None:
    """Pay a worker's start-up costs before its first figure: the imports, and the figure of
    the grid shape it will draw (creating 18 axes and loading fonts cost more than drawing a
    figure), kept for :func:`render_figure` to reuse.

    The axes are drawn as :func:`draw_figure` leaves them, without ticks, with a y-label so
    that the font is loaded: drawing the default ticks and tick labels, which no figure shows,
    made the warm-up cost 1.5 s of CPU instead of 0.3 s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if (n_rows, n_cols) not in _CANVASES:
        fig = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
        FigureCanvasAgg(fig)
        axes = _grid_axes(fig, n_rows, n_cols)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, 0].set_ylabel("stim")
        fig.canvas.draw()
        _CANVASES[(n_rows, n_cols)] = _Canvas(fig)


def render_pool(max_workers: int | None = None) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool for :func:`render_figure`, with the ``spawn`` start method.

    ``fork`` is unsafe once JAX (multithreaded) is imported, so workers are spawned: each
    starts a fresh interpreter that imports only numpy, matplotlib and this module. Caveat:
    ``spawn`` re-imports the parent's ``__main__`` module in every worker (not its
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


# --------------------------------------------------------------------------------------------
# -show


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
