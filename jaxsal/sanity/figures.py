"""The figures of a check (matplotlib on an Agg canvas, never pyplot; no JAX).

* `grid_figure`: the cascading-randomisation grid of Adebayo et al. (2018, Fig. 2): one row per
  method, the picture the network saw, then |map| of the trained network, then after each
  cascading stage (that layer and all above it randomised), for one stimulus and channel. Each
  map is shown as they did: divided by its 99th percentile and clipped to [0, 1], grey.
* `similarity_figure`: each similarity against the randomised layer, median over stimuli and
  channels with the interquartile band, one line per method (a row per randomisation test).
* `curves_figure`: deletion and insertion, the median normalised curve per method with its
  interquartile band, the random order dashed; the legend gives the median area.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxsal.render import network_image
from jaxsal.sanity.similarity import SIMILARITIES

CELL_IN = 1.6
DPI = 100
RANDOM_STYLE = {"color": "0.4", "linestyle": "--"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def shown_map(a: np.ndarray) -> np.ndarray:
    """|map| (S, S) -> [0, 1]: divided by its 99th percentile (its maximum if that is 0),
    clipped."""
    a = np.asarray(a, np.float64)
    scale = np.percentile(a, 99)
    if scale <= 0:
        scale = a.max()
    return np.clip(a / scale, 0, 1) if scale > 0 else np.zeros_like(a)


def grid_figure(grid: dict[str, np.ndarray], picture: np.ndarray, preprocessing,
                stages, title: str) -> Figure:
    """grid: {method: (1 + L, S, S) |map|, trained then each cascading stage}; picture: the
    normalised (S, S, 3) input; stages: the L randomised layers, top-down."""
    methods = list(grid)
    n_cols = 2 + len(stages)
    fig = _figure(CELL_IN * n_cols, CELL_IN * len(methods) + 0.6)
    axes = fig.subplots(len(methods), n_cols, squeeze=False)
    shown = network_image(picture, preprocessing.mean, preprocessing.std, preprocessing.scale)
    headers = ["input", "trained"] + [f"{s}" for s in stages]
    for r, method in enumerate(methods):
        axes[r, 0].imshow(shown)
        for c, a in enumerate(grid[method]):
            axes[r, c + 1].imshow(shown_map(a), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(method)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, header in enumerate(headers):
        axes[0, c].set_title(header, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _band(ax, x, rows: pd.DataFrame, label: str, **style):
    g = rows.groupby("step", sort=False)["value"]
    median, q25, q75 = g.median(), g.quantile(0.25), g.quantile(0.75)
    line, = ax.plot(x, median.to_numpy(), marker="o" if len(x) < 12 else None, label=label,
                    **style)
    ax.fill_between(x, q25.to_numpy(), q75.to_numpy(), alpha=0.2, color=line.get_color())


def similarity_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Similarity to the trained maps against the randomised layer (see the module docstring)."""
    tests = [t for t in frame["test"].unique() if t.startswith("mprt")]
    fig = _figure(3.2 * len(SIMILARITIES), 2.8 * len(tests) + 0.5)
    axes = fig.subplots(len(tests), len(SIMILARITIES), squeeze=False)
    for r, test in enumerate(tests):
        rows = frame[frame["test"] == test]
        stages = list(dict.fromkeys(rows["step"]))
        x = np.arange(len(stages))
        for c, metric in enumerate(SIMILARITIES):
            ax = axes[r, c]
            for method, m in rows[rows["metric"] == metric].groupby("method", sort=False):
                _band(ax, x, m, method)
            ax.set_xticks(x, stages, rotation=45, fontsize=8)
            ax.set_ylim(-0.2 if metric.startswith("spearman") else 0, 1.02)
            ax.axhline(0, color="0.8", linewidth=0.8)
            ax.set_title(f"{test.removeprefix('mprt_')}: {metric}", fontsize=9)
        axes[r, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(frame: pd.DataFrame, title: str, random: str = "random") -> Figure:
    """The normalised deletion and insertion curves (see the module docstring)."""
    tests = [t for t in ("deletion", "insertion") if t in set(frame["test"])]
    fig = _figure(4.2 * len(tests), 3.4)
    axes = fig.subplots(1, len(tests), squeeze=False)[0]
    for ax, test in zip(axes, tests):
        rows = frame[frame["test"] == test]
        for method, m in rows.groupby("method", sort=False):
            curve = m[m["metric"] == "normalised"]
            auc = m[m["metric"] == "auc"]["value"].median()
            x = np.asarray(list(dict.fromkeys(curve["step"])), float)
            style = RANDOM_STYLE if method == random else {}
            _band(ax, x, curve, f"{method} (area {auc:.3f})", **style)
        ax.set_xlabel(f"fraction of pixels {'removed' if test == 'deletion' else 'inserted'}")
        ax.set_ylabel("unit, normalised")
        ax.set_title(test, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
