"""`jaxsal.plot`: the command's figure of saliency maps, from Python.

One figure of ``dnn_saliency`` (SPEC §10-11) for maps that :func:`jaxsal.saliency` returned: the
same display transform, grid, labels, cmap/vmin/vmax and ``-overlay`` drawing, by the same code
(:mod:`jaxsal.render`), so the pixels are those of the figure the command saves. No JAX: only
numpy, Pillow and matplotlib, and never pyplot.

Shown in Jupyter: the result is a :class:`SaliencyFigure`, a :class:`matplotlib.figure.Figure`
with a ``_repr_png_``, so a notebook cell that ends with it displays the figure without pyplot:
the whole 1000 x 600 px canvas. A plain ``Figure`` made without pyplot would show only as
``<Figure size 1000x600 with 9 Axes>``: IPython's printer for figures is registered by the inline
backend, which loads with pyplot or ``%matplotlib inline``. Once it is, that printer takes
precedence (for every Figure), and shows the same figure with its white margins cropped
(``bbox_inches='tight'``, the inline backend's default). Checked with IPython 9.18 and
matplotlib-inline 0.2.2.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxsal import arguments, render
from jaxsal.errors import UsageError

__all__ = ["SaliencyFigure", "plot"]


class SaliencyFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` (Agg canvas, no pyplot) that IPython and Jupyter
    display as a PNG of the whole canvas; everything else is matplotlib's: ``savefig``,
    ``axes``, ``canvas.buffer_rgba()``."""

    def _repr_png_(self) -> bytes:
        return render.encode_figure(self, "png")


def plot(maps, images, channels: int | Sequence[int], *, mode: str = "RGB",
         cmap: str = "coolwarm", vmin: float | None = None, vmax: float | None = None,
         overlay: bool = False, net=None, method=None) -> SaliencyFigure:
    """The command's figure of ``maps``: stimuli on top, one row per channel.

        maps = jaxsal.saliency(net, images, "conv5", [60, 125], method="guided")
        fig = jaxsal.plot(maps, images, [60, 125])        # shown inline in a notebook
        fig.savefig("conv5.png")

    Args:
      maps: what :func:`jaxsal.saliency` returned for ``images``: (K channels, N images, 3, S, S),
        or (K, N, S, S) for 2-D maps (Grad-CAM), which are drawn with ``cmap`` whatever
        ``mode``. Any array-like (numpy, JAX).
      images: the N images the maps are of, in order: paths, PIL images or uint8 arrays, as
        for :func:`jaxsal.saliency`. Each is shown at its native size and aspect ratio. At most
        6 (one figure of the command, SPEC §11): slice larger runs, e.g.
        ``plot(maps[:, 6:12], images[6:12], channels)``.
      channels: the K channel numbers the maps are of (1-based, as given to
        :func:`jaxsal.saliency`), which label the rows ``chn<c>``; a bare int for one channel.
        Required: the maps do not carry them.
      mode: ``"RGB"`` (the gradient's colours) or ``"gray"`` (max over colours, colour-mapped),
        as ``-mode``.
      cmap, vmin, vmax: as ``-cmap``/``-vmin``/``-vmax``: applied to gray and 2-D maps only;
        vmin/vmax in the 0..255 units of the displayed map (None: each map's own range).
      overlay: draw each map half-transparent over the S x S picture the network saw, as
        ``-overlay``; needs ``net``.
      net: the network the maps came from -- a :class:`jaxsal.net.Net`, its ``NetSpec`` or its
        name (e.g. ``"AlexNet"``): its preprocessing rebuilds that picture. Optional otherwise
        (if given, the map size is checked against its input size).
      method: optional, the method the maps came from (a name or a
        :class:`jaxsal.methods.Method`): checks that the maps have its shape.

    Returns:
      A :class:`SaliencyFigure` (a :class:`matplotlib.figure.Figure` on an Agg canvas, 10 x 6
      inches at 100 dpi, tight layout). Not registered with pyplot: nothing accumulates, and
      ``plt.show()`` does not show it.

    Raises:
      jaxsal.UsageError: any argument that does not fit, in one line.
    """
    maps = _check_maps(maps, method)
    n_channels, n_maps = maps.shape[:2]
    images = _check_images(images, n_maps)
    channels = _check_channels(channels, n_channels)
    if mode not in render.MODES:
        raise UsageError(f"mode must be {' or '.join(render.MODES)}, got {mode!r}")
    render.check_cmap(cmap, "cmap")
    bound = arguments.optional(arguments.finite_number)
    vmin, vmax = bound("vmin", vmin), bound("vmax", vmax)
    if vmin is not None and vmax is not None and vmin > vmax:
        raise UsageError(f"vmin ({vmin}) is larger than vmax ({vmax})")
    preprocessing = None
    if net is not None:
        preprocessing = _preprocessing(net)
        if maps.shape[-1] != preprocessing.size or maps.shape[-2] != preprocessing.size:
            raise UsageError(f"the maps are {maps.shape[-2]}x{maps.shape[-1]} but the network's "
                             f"input is {preprocessing.size}x{preprocessing.size}: pass the net "
                             f"the maps came from")
    elif overlay:
        raise UsageError("overlay=True draws each map over the picture the network saw: pass "
                         "net= (the Net the maps came from, or its name, e.g. net='AlexNet')")

    from jaxsal.stimuli import as_pil, preprocess

    pictures = [as_pil(image) for image in images]
    grid = (1 + n_channels, len(pictures))
    underlays = None
    if overlay:
        p = preprocessing
        underlays = [render.network_image(preprocess(pic, p), p.mean, p.std, p.scale)
                     for pic in pictures]
    shown, constant = render.display_maps(maps, mode, maps.ndim == 4)
    for c, j in zip(*np.nonzero(constant)):
        warnings.warn(f"the map of channel {channels[c]} for image {j} is constant (the channel "
                      f"does not respond to the image); drawn black", stacklevel=2)
    job = render.figure_job([render.display_copy(pic, *grid) for pic in pictures], shown,
                            channels, cmap=cmap, vmin=vmin, vmax=vmax, underlays=underlays)
    return render.build_figure(job, SaliencyFigure)


# --------------------------------------------------------------------------------------------
# Arguments


def _check_maps(maps, method) -> np.ndarray:
    """maps as a float array (K, N, 3, S, S) or (K, N, S, S), matching ``method`` if given."""
    try:
        array = np.asarray(maps)
    except Exception as e:  # noqa: BLE001 - whatever the object raised: one usage error
        raise UsageError(f"maps must be an array, as jaxsal.saliency returns: {e}") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UsageError(f"maps must be numbers, as jaxsal.saliency returns; got dtype "
                         f"{array.dtype}")
    if not (array.ndim == 4 or (array.ndim == 5 and array.shape[2] == 3)):
        raise UsageError(f"maps must be shaped (channels, images, 3, S, S), or (channels, "
                         f"images, S, S) for 2-D maps, as jaxsal.saliency returns; got shape "
                         f"{array.shape}")
    if 0 in array.shape:
        raise UsageError(f"maps are empty (shape {array.shape})")
    if method is not None:
        from jaxsal.methods import as_method

        m = as_method(method)
        if m.info.maps_2d != (array.ndim == 4):
            want = "(channels, images, S, S)" if m.info.maps_2d else "(channels, images, 3, S, S)"
            raise UsageError(f"method {m.name!r} gives maps shaped {want}; these are shaped "
                             f"{array.shape}")
    return array


def _check_images(images, n_maps: int) -> list:
    images = arguments.image_list("images", images)
    if len(images) != n_maps:
        raise UsageError(f"the maps are of {n_maps} image(s) but {len(images)} image(s) were "
                         f"given: pass the images the maps were computed for, in order")
    per_figure = render.STIMULI_PER_FIGURE
    if n_maps > per_figure:
        raise UsageError(f"one figure shows at most {per_figure} images, got {n_maps}: plot "
                         f"slices, e.g. jaxsal.plot(maps[:, {per_figure}:{2 * per_figure}], "
                         f"images[{per_figure}:{2 * per_figure}], channels)")
    return images


def _check_channels(channels, n_channels: int) -> tuple[int, ...]:
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool):
        channels = (channels,)
    try:
        channels = tuple(channels)
    except TypeError:
        raise UsageError(f"channels must be the list of channel numbers the maps are of, e.g. "
                         f"[60, 125]; got {channels!r}") from None
    for c in channels:
        if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 1:
            raise UsageError(f"channels are whole numbers from 1 (as given to jaxsal.saliency); "
                             f"got {c!r}")
    if len(channels) != n_channels:
        raise UsageError(f"the maps are of {n_channels} channel(s) but {len(channels)} channel "
                         f"number(s) were given: {list(channels)}")
    return tuple(int(c) for c in channels)


def _preprocessing(net):
    """The preprocessing of ``net``: a Net, a NetSpec or a network name."""
    if isinstance(net, str):
        from jaxsal.models import get_net_spec

        return get_net_spec(net).preprocessing
    spec = getattr(net, "spec", net)
    preprocessing = getattr(spec, "preprocessing", None)
    if preprocessing is None:
        raise UsageError(f"net must be a jaxsal Net (jaxsal.load_net), its spec or a network "
                         f"name; got {type(net).__name__}")
    return preprocessing
