"""Tests for jaxsal.plot: the command's figure, from Python.

The same-pixels tests run the command's own figure path -- `jaxsal.pipeline.Pipeline` with a real
Plan (stimulus list, decode threads, display transform, FigureJob, the figure
writer) -- on given maps: only the network is replaced, by a stand-in `iter_blocks` that
consumes the decoded inputs and yields the maps, and the figure workers by an in-process pool.
Each figure the command writes is then compared with `jaxsal.plot` of the same maps and images:
canvas RGBA against the plain figure of the command's FigureJob (exact, before any JPEG loss),
and the JPEG file the command wrote against the plot figure's JPEG bytes. No JAX is imported.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import jaxsal
from jaxsal import pipeline, render
from jaxsal.errors import UsageError
from jaxsal.methods import resolve
from jaxsal.models import get_net_spec
from jaxsal.request import Plan, Request
from jaxsal.stimuli import read_stim_csv

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = get_net_spec("AlexNet")
S = SPEC.input_size


# --------------------------------------------------------------------------------------------
# Inputs


def write_stimuli(folder: pathlib.Path, n: int) -> list[pathlib.Path]:
    """n small images of different sizes and kinds: RGB JPEG, gray PNG, RGBA PNG, a non-square
    one, and one large enough for its figure to draw a reduced copy (display_copy)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        kind = i % 4
        if i == 1:  # large and tall: its cell shows it reduced, by a factor its row count sets
            image = Image.fromarray(rng.integers(0, 256, (1900, 600, 3), np.uint8))
            path = folder / f"s{i}.jpg"
        elif kind == 0:
            image = Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), np.uint8))
            path = folder / f"s{i}.jpg"
        elif kind == 2:
            image = Image.fromarray(rng.integers(0, 256, (50, 30), np.uint8), mode="L")
            path = folder / f"s{i}.png"
        else:
            image = Image.fromarray(rng.integers(0, 256, (33, 47, 4), np.uint8), mode="RGBA")
            path = folder / f"s{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def random_maps(n_channels: int, n_images: int, maps_2d: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if maps_2d:  # Grad-CAM maps are non-negative
        return np.maximum(rng.standard_normal((n_channels, n_images, S, S), np.float32), 0)
    return rng.standard_normal((n_channels, n_images, 3, S, S), np.float32)


# --------------------------------------------------------------------------------------------
# The command's figures for given maps


class InlinePool:
    """The figure workers, in this process: each job runs when submitted."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, *args):
        if fn is render.render_job:
            self.jobs.append(args[0])
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def command_figures(tmp_path, monkeypatch, paths, maps, channels, meth="guided", mode="RGB",
                    cmap="coolwarm", vmin=None, vmax=None, overlay=False):
    """[(FigureJob, bytes of the JPEG file written)] of a dnn_saliency run whose network
    returns `maps`, in figure order."""
    stim = tmp_path / "run.stim.csv"
    stim.write_text("type=image\npath=" + os.fspath(paths[0].parent) + "\ndata=stimID\n"
                    + "".join(p.name + "\n" for p in paths))
    request = Request(net=SPEC.name, layer="conv5", channels=channels, stim=stim, method=meth,
                      mode=mode, cmap=cmap, vmin=vmin, vmax=vmax, out=tmp_path / "out",
                      overlay=overlay)
    plan = Plan(request=request, spec=SPEC, channels0=tuple(c - 1 for c in channels),
                method=resolve(meth, SPEC, "conv5"), stimuli=read_stim_csv(stim), weights=None,
                out=tmp_path / "out")

    def iter_blocks(net, inputs, layer, chans, method, *, size, block, precision, values,
                    batches, reporter=None):
        assert tuple(chans) == tuple(channels) and batches is None and not values
        done, batch = 0, []
        for x in inputs:  # batches of `size` = 4: figures complete across batch boundaries
            batch.append(x)
            if len(batch) == size or done + len(batch) == maps.shape[1]:
                yield types.SimpleNamespace(start=done, channels=range(len(chans)), values=None,
                                            maps=maps[:, done:done + len(batch)], last=True)
                done, batch = done + len(batch), []

    pool = InlinePool()
    monkeypatch.setattr(render, "render_pool", lambda workers: pool)
    monkeypatch.setattr(render, "default_render_workers", lambda: 1)
    # The network stands in for jaxsal.batching (which would import JAX for nothing).
    monkeypatch.setattr(pipeline, "_device", lambda: (types.SimpleNamespace(
        iter_blocks=iter_blocks, call_shape=lambda net, layer, k, n, batch_size: (4, k)), None))
    net = types.SimpleNamespace(spec=SPEC, weights=None)
    with pipeline.Pipeline(plan) as stages:
        stages.execute(net)
    return [(job, pathlib.Path(job.out_path).read_bytes()) for job in pool.jobs]


def rgba(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())


def assert_same_figures(command, maps, paths, channels, **kwargs):
    """Each command figure k is jaxsal.plot of stimulus slice k, pixel for pixel."""
    slices = render.figure_slices(len(paths))
    assert len(command) == len(slices)
    for (job, jpeg), cols in zip(command, slices):
        part = slice(cols.start, cols.stop)
        fig = jaxsal.plot(maps[:, part], paths[part], channels, **kwargs)
        np.testing.assert_array_equal(rgba(fig), rgba(render.build_figure(job)))
        assert render.encode_figure(fig, "jpeg") == jpeg


# --------------------------------------------------------------------------------------------
# Same pixels as the command


def test_rgb_two_figures_same_pixels_as_the_command(tmp_path, monkeypatch):
    paths = write_stimuli(tmp_path / "stim", 7)
    maps = random_maps(2, 7, maps_2d=False)
    command = command_figures(tmp_path, monkeypatch, paths, maps, [60, 125])
    assert_same_figures(command, maps, paths, [60, 125])


def test_gray_with_cmap_and_limits_same_pixels_as_the_command(tmp_path, monkeypatch):
    paths = write_stimuli(tmp_path / "stim", 3)
    maps = random_maps(2, 3, maps_2d=False, seed=2)
    opts = dict(mode="gray", cmap="viridis", vmin=20.0, vmax=200.0)
    command = command_figures(tmp_path, monkeypatch, paths, maps, [294, 23], **opts)
    assert_same_figures(command, maps, paths, [294, 23], **opts)


def test_2d_maps_drawn_with_cmap_whatever_mode_same_pixels_as_the_command(tmp_path, monkeypatch):
    paths = write_stimuli(tmp_path / "stim", 3)
    maps = random_maps(1, 3, maps_2d=True, seed=3)
    command = command_figures(tmp_path, monkeypatch, paths, maps, [60], meth="gradcam",
                              mode="RGB", cmap="jet")
    assert_same_figures(command, maps, paths, [60], mode="RGB", cmap="jet", method="gradcam")


@pytest.mark.parametrize("maps_2d,net", [(False, "AlexNet"), (True, SPEC),
                                         (False, types.SimpleNamespace(spec=SPEC))],
                         ids=["rgb-name", "2d-spec", "rgb-net"])
def test_overlay_same_pixels_as_the_command(tmp_path, monkeypatch, maps_2d, net):
    paths = write_stimuli(tmp_path / "stim", 2)
    maps = random_maps(2, 2, maps_2d=maps_2d, seed=4)
    meth = "gradcam" if maps_2d else "guided"
    command = command_figures(tmp_path, monkeypatch, paths, maps, [7, 8], meth=meth,
                              cmap="jet", overlay=True)
    assert command[0][0].underlays is not None
    assert_same_figures(command, maps, paths, [7, 8], cmap="jet", overlay=True, net=net)


def test_images_as_pil_or_arrays_draw_as_their_files(tmp_path):
    paths = write_stimuli(tmp_path / "stim", 3)[1:]  # a JPEG and a gray PNG
    maps = random_maps(1, 2, maps_2d=False)
    pictures = [Image.open(paths[0]), np.asarray(Image.open(paths[1]))]  # PIL RGB, uint8 (H, W)
    expected = rgba(jaxsal.plot(maps, paths, [1]))
    np.testing.assert_array_equal(rgba(jaxsal.plot(maps, pictures, [1])), expected)
    # A single channel may be given as a bare number.
    np.testing.assert_array_equal(rgba(jaxsal.plot(maps, paths, 1)), expected)


# --------------------------------------------------------------------------------------------
# The figure object


def test_a_figure_of_the_commands_layout_shown_by_jupyter_as_png(tmp_path):
    paths = write_stimuli(tmp_path / "stim", 2)
    fig = jaxsal.plot(random_maps(2, 2, maps_2d=False), paths, [60, 125])
    assert isinstance(fig, Figure)
    assert tuple(fig.get_size_inches()) == render.FIGURE_SIZE_IN and fig.dpi == render.FIGURE_DPI
    assert len(fig.axes) == 3 * 2
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["stim", "chn60", "chn125"]
    png = fig._repr_png_()  # what IPython's PNG formatter asks a non-pyplot figure for
    with Image.open(io.BytesIO(png)) as shown:
        assert shown.format == "PNG" and shown.size == (1000, 600)
        np.testing.assert_array_equal(np.asarray(shown.convert("RGBA")), rgba(fig))


def test_jupyter_formatter_shows_the_figure(tmp_path):
    formatters = pytest.importorskip("IPython.core.formatters")
    paths = write_stimuli(tmp_path / "stim", 1)
    fig = jaxsal.plot(random_maps(1, 1, maps_2d=False), paths, [3])
    png = formatters.PNGFormatter()(fig)
    assert png is not None and png.startswith(b"\x89PNG")


def test_constant_maps_are_drawn_black_with_a_warning(tmp_path):
    paths = write_stimuli(tmp_path / "stim", 2)
    maps = random_maps(2, 2, maps_2d=False)
    maps[1, 0] = 0
    with pytest.warns(UserWarning, match="channel 125 for image 0 is constant"):
        jaxsal.plot(maps, paths, [60, 125])


def test_importing_and_plotting_needs_neither_jax_nor_pyplot(tmp_path):
    paths = write_stimuli(tmp_path / "stim", 1)
    code = (
        "import sys, numpy as np, jaxsal\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"maps = np.ones((1, 1, 3, {S}, {S}), np.float32); maps[..., 0, 0] = 2\n"
        f"fig = jaxsal.plot(maps, [{os.fspath(paths[0])!r}], [5], overlay=True, net='AlexNet')\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.fspath(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    return write_stimuli(tmp_path_factory.mktemp("stim"), 3)[2:] * 2  # 2 small PNGs


RGB = random_maps(2, 2, maps_2d=False)


@pytest.mark.parametrize("call,message", [
    (lambda im: jaxsal.plot(RGB[:, :, 0, 0], im, [1, 2]), "maps must be shaped"),
    (lambda im: jaxsal.plot(np.zeros((2, 2, 4, S, S)), im, [1, 2]), "maps must be shaped"),
    (lambda im: jaxsal.plot(np.full((2, 2, 3, 4, 4), "a"), im, [1, 2]), "maps must be numbers"),
    (lambda im: jaxsal.plot(RGB[:, :0], [], [1, 2]), "maps are empty"),
    (lambda im: jaxsal.plot(RGB, im[:1], [1, 2]), "maps are of 2 image(s) but 1 image(s)"),
    (lambda im: jaxsal.plot(np.zeros((1, 7, 3, 8, 8)), im * 3 + im[:1], [1]),
     "at most 6 images, got 7: plot slices, e.g. jaxsal.plot(maps[:, 6:12], images[6:12]"),
    (lambda im: jaxsal.plot(RGB[:, :1], im[0], [1, 2]), "images must be a list of images"),
    (lambda im: jaxsal.plot(RGB, 42, [1, 2]), "images must be a list of paths"),
    (lambda im: jaxsal.plot(RGB, im, [1]), "maps are of 2 channel(s) but 1 channel number(s)"),
    (lambda im: jaxsal.plot(RGB, im, None), "channels must be the list"),
    (lambda im: jaxsal.plot(RGB, im, [0, 2]), "whole numbers from 1"),
    (lambda im: jaxsal.plot(RGB, im, [1.5, 2]), "whole numbers from 1"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], mode="grey"), "mode must be RGB or gray"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], cmap="coolwram"),
     "unknown colormap for cmap: 'coolwram'; did you mean coolwarm"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], vmin=200, vmax=100), "vmin (200.0) is larger"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], vmin="a"), "vmin must be a number"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], vmax=float("nan")), "vmax must be a finite number"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], overlay=True), "pass net="),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], net="AlexNett"), "unknown network 'AlexNett'"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], net=42), "net must be a jaxsal Net"),
    (lambda im: jaxsal.plot(np.zeros((1, 2, 3, 32, 32)), im, [1], net="AlexNet"),
     "the maps are 32x32 but the network's input is 224x224"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], method="gradcam"), "method 'gradcam' gives maps "
     "shaped (channels, images, S, S)"),
    (lambda im: jaxsal.plot(RGB[:, :, 0], im, [1, 2], method="guided"), "method 'guided' gives"),
    (lambda im: jaxsal.plot(RGB, im, [1, 2], method="nope"), "nope"),
])
def test_bad_arguments_are_one_line_usage_errors(two_images, call, message):
    with pytest.raises(UsageError) as info:
        call(two_images)
    text = str(info.value)
    assert message in text and "\n" not in text
