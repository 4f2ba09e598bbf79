"""Saliency maps to pictures: the display transform (SPEC §10) and the figures (SPEC §11).

* :mod:`~jaxsal.render.display` -- maps to uint8 images, stimuli at the size shown (numpy);
* :mod:`~jaxsal.render.figures` -- names, :class:`FigureJob`, the figure in plain matplotlib
  (the reference);
* :mod:`~jaxsal.render.fast_redraw` -- :func:`render_figure`: the same bytes, faster, by
  keeping figures between jobs (off with ``JAXSAL_FAST_REDRAW=0``);
* :mod:`~jaxsal.render.pool` -- the worker processes that draw while maps are computed;
* :mod:`~jaxsal.render.show` -- ``-show``.

None of it imports JAX, so figures are drawn in worker processes.
"""

from jaxsal.render.display import (
    MODES,
    display_copy,
    display_maps,
    display_reduction,
    network_image,
    to_display,
    to_display_2d,
)
from jaxsal.render.figures import (
    CHANNELS_PER_FIGURE,
    FIGURE_DPI,
    FIGURE_SIZE_IN,
    JPEG_QUALITY,
    STIMULI_PER_FIGURE,
    FigureJob,
    build_figure,
    channel_label,
    check_cmap,
    draw_figure,
    encode_figure,
    figure_job,
    figure_path,
    figure_slices,
    save_jpeg,
)
from jaxsal.render.fast_redraw import layout_key, render_figure
from jaxsal.render.pool import default_render_workers, render_job, render_pool, warm_up
from jaxsal.render.show import can_show, show_figure

__all__ = [
    "CHANNELS_PER_FIGURE",
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
    "display_maps",
    "display_reduction",
    "draw_figure",
    "encode_figure",
    "figure_job",
    "figure_path",
    "figure_slices",
    "layout_key",
    "network_image",
    "render_figure",
    "render_job",
    "render_pool",
    "save_jpeg",
    "show_figure",
    "to_display",
    "to_display_2d",
    "warm_up",
]
