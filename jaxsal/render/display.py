"""What is drawn: maps to uint8 images (SPEC §10.1), and stimuli at the size a figure shows.

numpy only (display copies take a PIL image), so the transform is tested on its own, with golden
values, and runs wherever the maps are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxsal.render.figures import FIGURE_DPI, FIGURE_SIZE_IN

__all__ = [
    "DISPLAY_OVERSAMPLING",
    "MODES",
    "display_copy",
    "display_maps",
    "display_reduction",
    "network_image",
    "to_display",
    "to_display_2d",
]

MODES = ("RGB", "gray")


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


def display_maps(maps: np.ndarray, mode: str,
                 maps_2d: bool) -> tuple[np.ndarray, bool | np.ndarray]:
    """The images drawn for a method's maps: :func:`to_display_2d` for 2-D maps (Grad-CAM,
    ``(..., H, W)``; drawn with the cmap whatever the mode), else :func:`to_display` in
    ``mode`` (``(..., 3, H, W)``). Returns ``(images, is_constant)``, as those do."""
    if maps_2d:
        return to_display_2d(maps)
    return to_display(maps, mode)


def network_image(x: np.ndarray, mean: Sequence[float], std: Sequence[float],
                  scale: float = 1.0) -> np.ndarray:
    """The uint8 RGB (S, S, 3) picture the network saw (the resized stimulus) from its normalized
    input (S, S, 3): the inverse of :func:`jaxsal.stimuli.to_network_input`, rounded (exact:
    the float32 error is far below half a grey level). Used as the ``-overlay`` underlay."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(x * np.float32(255 / scale)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Stimuli at the size their figure shows

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

    Why: matplotlib converts every pixel of an image to float64 RGBA and resamples it for each
    figure, and the run would keep every decoded camera photo in memory until its figure is
    drawn (costs in BENCHMARKS.md). The copy is drawn over the native extent
    (``FigureJob.stimulus_sizes``), so the layout is the same; its pixels differ from a direct
    draw only by the pre-filtering, which matplotlib's resampling of the full image lacks (it
    aliases fine detail at such reductions)."""
    width, height = image.size
    factor = display_reduction((height, width), n_rows, n_cols)
    shown = image.reduce(factor) if factor > 1 else image
    return np.asarray(shown), (height, width)
