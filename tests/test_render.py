"""Tests for jaxsal.render: the display transform (SPEC §10) and the figures (SPEC §11)."""

import dataclasses
import io
import os
import pathlib
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxsal import atomic, render
from jaxsal.errors import OutputError, UsageError
from jaxsal.render import FigureJob, build_figure, render_figure, save_jpeg, to_display
from jaxsal.render import fast_redraw, show

# --------------------------------------------------------------------------------------------
# Gradient -> uint8 (SPEC §10.1)

# A (3, 2, 2) signed map whose scaled values are exact in float32, so truncation and rounding
# give different bytes: |g| / 4 * 255 = 0, 31.875, 63.75, 127.5, 191.25, 255.
GRAD = np.array([
    [[0.0, -1.0], [2.0, -4.0]],   # R
    [[0.5, 0.0], [0.0, 0.0]],     # G
    [[0.0, 0.0], [-3.0, 1.0]],    # B
], dtype=np.float32)


def test_rgb_golden_truncation_and_global_minmax():
    image, constant = to_display(GRAD, "RGB")
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert constant is False
    expected = np.array([
        [[0, 31, 0], [63, 0, 0]],
        [[127, 0, 191], [255, 0, 63]],
    ], dtype=np.uint8)
    np.testing.assert_array_equal(image, expected)
    # Global, not per channel: G's maximum (0.5) maps to 31, not 255.
    assert image[..., 1].max() == 31


def test_rgb_golden_with_nonzero_minimum():
    grad = np.stack([np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)] * 3)
    grad[1] *= -1  # sign is dropped
    image, _ = to_display(grad, "RGB")
    # (|g| - 1) / 4 * 255 = 0, 63.75, 127.5, 255
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], [[0, 63], [127, 255]])


def test_gray_golden():
    image, constant = to_display(GRAD, "gray")
    assert image.dtype == np.uint8 and image.shape == (2, 2)
    assert constant is False
    # max over colour channels of |g|: [[0.5, 1], [3, 4]]; min 0.5, span 3.5
    # -> 0, 0.5/3.5*255 = 36.43, 2.5/3.5*255 = 182.14, 255
    np.testing.assert_array_equal(image, [[0, 36], [182, 255]])


def _one_map_formula(grad, mode):
    """The original's per-map code, written out independently."""
    a = np.abs(grad)
    if mode == "gray":
        a = np.max(a, 0)
    a = (a - a.min()) / (a.max() - a.min()) * 255
    a = a.astype(np.uint8)
    return a.transpose(1, 2, 0) if mode == "RGB" else a


@pytest.mark.parametrize("mode", ["RGB", "gray"])
def test_batched_equals_per_map(mode):
    rng = np.random.default_rng(0)
    grads = (rng.standard_normal((2, 4, 3, 17, 13)) * 1e-3).astype(np.float32)
    images, constant = to_display(grads, mode)
    assert constant.shape == (2, 4) and not constant.any()
    for i in range(2):
        for j in range(4):
            expected = _one_map_formula(grads[i, j], mode)
            np.testing.assert_array_equal(images[i, j], expected)
            single, single_constant = to_display(grads[i, j], mode)
            np.testing.assert_array_equal(single, expected)
            assert single_constant is False


@pytest.mark.parametrize("mode, shape", [("RGB", (5, 6, 3)), ("gray", (5, 6))])
@pytest.mark.parametrize("value", [0.0, 0.7, -2.5])
def test_constant_map_is_zeros_without_warnings(mode, shape, value):
    grad = np.full((3, 5, 6), value, np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        image, constant = to_display(grad, mode)
    assert constant is True
    assert image.dtype == np.uint8 and image.shape == shape
    assert not image.any()


def test_constant_maps_in_a_batch_are_flagged_individually():
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    grads[1] = 0.0
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        images, constant = to_display(grads, "gray")
    np.testing.assert_array_equal(constant, [False, True, False])
    assert not images[1].any()
    assert images[0].max() == 255 and images[2].max() == 255


def test_gray_constant_only_after_channel_max():
    # Not constant in RGB, constant in gray: max over channels is 2 everywhere.
    grad = np.zeros((3, 2, 2), np.float32)
    grad[0] = 2.0
    grad[1] = [[0.0, 1.0], [2.0, 0.5]]
    assert to_display(grad, "RGB")[1] is False
    assert to_display(grad, "gray")[1] is True


def test_to_display_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        to_display(GRAD, "grey")
    with pytest.raises(ValueError, match="3, H, W"):
        to_display(np.zeros((4, 2, 2), np.float32), "RGB")


# --------------------------------------------------------------------------------------------
# Options and names


def test_check_cmap():
    assert render.check_cmap("coolwarm") == "coolwarm"
    assert render.check_cmap("gray_r") == "gray_r"
    with pytest.raises(UsageError) as excinfo:
        render.check_cmap("coolwram")
    message = str(excinfo.value)
    assert "'coolwram'" in message and "did you mean coolwarm" in message
    assert "viridis" in message and "\n" not in message


def test_figure_path_and_slices(tmp_path):
    assert render.figure_path(tmp_path, "AlexNet", "fc3", 1) == tmp_path / "AlexNet_fc3_fig1.jpg"
    assert render.figure_path("out", "Vgg19_bn", "conv1_relu", 12).as_posix() == \
        "out/Vgg19_bn_conv1_relu_fig12.jpg"
    with pytest.raises(ValueError):
        render.figure_path(tmp_path, "AlexNet", "fc3", 0)
    assert render.figure_slices(14) == [range(0, 6), range(6, 12), range(12, 14)]
    assert [s.stop for s in render.figure_slices(14)] == [6, 12, 14]  # the Finish: numbers
    assert render.figure_slices(6) == [range(0, 6)]
    assert render.figure_slices(7) == [range(0, 6), range(6, 7)]
    assert render.figure_slices(1) == [range(0, 1)]
    assert render.figure_slices(0) == []
    assert render.figure_slices(5, per_figure=2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert render.channel_label(294) == "chn294"


# --------------------------------------------------------------------------------------------
# Figures (SPEC §11)


def _stimuli(n, rng):
    shapes = [(30, 45), (40, 40), (50, 20), (24, 36), (33, 33), (20, 60)]
    return [rng.integers(0, 256, shapes[i % len(shapes)] + (3,), dtype=np.uint8)
            for i in range(n)]


def _job(tmp_path, n_stimuli=6, channels=(294, 23), mode="RGB", seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((len(channels), n_stimuli, 3, 32, 32)).astype(np.float32)
    maps, _ = to_display(grads, mode)
    rows = [(render.channel_label(c), list(maps[r])) for r, c in enumerate(channels)]
    return FigureJob(out_path=str(tmp_path / "fig.jpg"), stimuli=_stimuli(n_stimuli, rng),
                     rows=rows, **kwargs)


def _grid(fig):
    """axes in row-major drawing order, with their (row, col) from the subplot spec."""
    cells = []
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        cells.append((spec.rowspan.start, spec.colspan.start, ax))
    return cells


@pytest.mark.parametrize("n_stimuli, channels", [
    (6, (294, 23)), (1, (7,)), (1, (1, 2, 3)), (6, (5,)), (4, (9, 9, 1, 2, 3)),
])
def test_layout(tmp_path, n_stimuli, channels):
    job = _job(tmp_path, n_stimuli, channels)
    fig = build_figure(job)
    assert fig.canvas.get_width_height() == (1000, 600)
    n_rows = 1 + len(channels)
    cells = _grid(fig)
    assert len(cells) == n_rows * n_stimuli  # no colour bars or extra axes
    assert {(r, c) for r, c, _ in cells} == {(r, c) for r in range(n_rows)
                                             for c in range(n_stimuli)}
    expected_labels = ["stim"] + [f"chn{c}" for c in channels]
    for r, c, ax in cells:
        assert ax.get_ylabel() == (expected_labels[r] if c == 0 else "")
        assert ax.get_xlabel() == "" and ax.get_title() == ""
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
        assert ax.axison and all(spine.get_visible() for spine in ax.spines.values())
        assert ax.get_aspect() == 1.0  # 'equal'
        images = ax.get_images()
        assert len(images) == 1
        data = images[0].get_array()
        if r == 0:
            np.testing.assert_array_equal(data, job.stimuli[c])  # native size, not 224
        else:
            np.testing.assert_array_equal(data, job.rows[r - 1][1][c])
    if n_stimuli == 6 and len(channels) == 2:
        fig.canvas.draw()
        assert np.asarray(fig.canvas.buffer_rgba()).shape == (600, 1000, 4)


def test_gray_stimulus_is_drawn_gray_not_colour_mapped(tmp_path):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    pixels = []
    for stimulus, cmap in ((gray, "coolwarm"), (gray, "viridis"), (as_rgb, "coolwarm")):
        job = FigureJob(out_path="unused.jpg", stimuli=[stimulus],
                        rows=[("chn1", [np.zeros((8, 8, 3), np.uint8)])], cmap=cmap)
        fig = build_figure(job)
        fig.canvas.draw()
        pixels.append(np.asarray(fig.canvas.buffer_rgba()).copy())
    np.testing.assert_array_equal(pixels[0], pixels[1])
    np.testing.assert_array_equal(pixels[0], pixels[2])


def _pixels(job):
    fig = build_figure(job)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def test_cmap_vmin_vmax_change_gray_maps_only(tmp_path):
    gray = dict(n_stimuli=3, channels=(1, 2), mode="gray", seed=3)
    base = _pixels(_job(tmp_path, **gray))
    assert not np.array_equal(base, _pixels(_job(tmp_path, **gray, cmap="gray")))
    assert not np.array_equal(base, _pixels(_job(tmp_path, **gray, vmin=100.0, vmax=120.0)))

    rgb = dict(n_stimuli=3, channels=(1, 2), mode="RGB", seed=3)
    base = _pixels(_job(tmp_path, **rgb))
    np.testing.assert_array_equal(
        base, _pixels(_job(tmp_path, **rgb, cmap="gray", vmin=100.0, vmax=120.0)))


def test_default_gray_colormap_is_coolwarm(tmp_path):
    fig = build_figure(_job(tmp_path, 2, (3,), mode="gray"))
    map_images = [ax.get_images()[0] for r, c, ax in _grid(fig) if r == 1]
    assert all(im.get_cmap().name == "coolwarm" for im in map_images)
    fig = build_figure(_job(tmp_path, 2, (3,), mode="gray", vmin=10.0, vmax=200.0))
    for r, c, ax in _grid(fig):
        norm = ax.get_images()[0].norm
        assert (norm.vmin, norm.vmax) == (10.0, 200.0)


def test_mismatched_rows_are_rejected(tmp_path):
    job = _job(tmp_path, 3, (1,))
    bad = FigureJob(out_path=job.out_path, stimuli=job.stimuli,
                    rows=[("chn1", job.rows[0][1][:2])])
    with pytest.raises(ValueError, match="2 maps for 3 stimuli"):
        build_figure(bad)


# --------------------------------------------------------------------------------------------
# Saving


def _quantization_at(quality):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer).quantization


def test_saved_jpeg_size_and_quality(tmp_path):
    job = _job(tmp_path)
    path = render_figure(job)
    assert path == job.out_path
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.size == (1000, 600)
        assert image.mode == "RGB"
        assert image.quantization == _quantization_at(95)
        assert image.quantization != _quantization_at(75)
    assert sorted(os.listdir(tmp_path)) == ["fig.jpg"]


def test_save_overwrites_existing_file(tmp_path):
    job = _job(tmp_path, 1, (1,))
    (tmp_path / "fig.jpg").write_bytes(b"old")
    render_figure(job)
    assert (tmp_path / "fig.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_save_is_atomic_when_rename_fails(tmp_path, monkeypatch):
    fig = build_figure(_job(tmp_path, 1, (1,)))
    (tmp_path / "fig.jpg").write_bytes(b"previous figure")

    def broken_replace(src, dst):
        assert os.path.exists(src)  # the temp file was fully written first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OutputError, match=r"cannot write .*fig\.jpg: No space left on device$"):
        save_jpeg(fig, tmp_path / "fig.jpg")
    assert sorted(os.listdir(tmp_path)) == ["fig.jpg"]  # no temp file left behind
    assert (tmp_path / "fig.jpg").read_bytes() == b"previous figure"


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    fig = build_figure(_job(tmp_path, 1, (1,)))

    class FailingFile(io.BytesIO):
        def write(self, data):
            super().write(bytes(data)[:100])
            raise OSError(5, "I/O error")

    real_open = open
    opened = []

    def failing_open(path, mode="r", *args, **kwargs):
        if "x" in mode:
            real_open(path, mode).close()  # the temp file exists, as a partial write would
            opened.append(path)
            return FailingFile()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OutputError, match="I/O error"):
        save_jpeg(fig, tmp_path / "fig.jpg")
    monkeypatch.undo()
    assert opened and os.path.dirname(opened[0]) == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_save_leaves_nothing_when_drawing_fails(tmp_path, monkeypatch):
    fig = build_figure(_job(tmp_path, 1, (1,)))
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        save_jpeg(fig, tmp_path / "fig.jpg")
    assert os.listdir(tmp_path) == []


def test_save_onto_a_directory_fails_cleanly(tmp_path):
    (tmp_path / "fig.jpg").mkdir()
    with pytest.raises(OutputError, match=r"cannot write .*fig\.jpg: Is a directory"):
        render_figure(_job(tmp_path, 1, (1,)))
    assert os.listdir(tmp_path) == ["fig.jpg"] and (tmp_path / "fig.jpg").is_dir()


# --------------------------------------------------------------------------------------------
# Parallel rendering and -show


_PROBE = ("sorted(m for m in __import__('sys').modules "
          "if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch') "
          "or m in ('matplotlib.pyplot', 'jaxsal.render'))")


def test_process_pool_matches_in_process_and_does_not_import_jax(tmp_path):
    jobs = [_job(tmp_path / "local", 6, (294, 23), seed=1),
            _job(tmp_path / "local", 1, (5,), mode="gray", seed=2, cmap="gray")]
    jobs = [dataclasses.replace(job, out_path=str(tmp_path / f"local{i}.jpg"))
            for i, job in enumerate(jobs)]
    remote = [dataclasses.replace(job, out_path=str(tmp_path / f"pool{i}.jpg"))
              for i, job in enumerate(jobs)]
    assert pickle.loads(pickle.dumps(remote[0])).rows[0][0] == "chn294"
    local_paths = [render_figure(job) for job in jobs]
    with render.render_pool(max_workers=2) as pool:
        pool_paths = list(pool.map(render_figure, remote))
        loaded = pool.submit(eval, _PROBE).result()
    assert pool_paths == [job.out_path for job in remote]
    for local, remote_path in zip(local_paths, pool_paths):
        with open(local, "rb") as a, open(remote_path, "rb") as b:
            assert a.read() == b.read()
    assert loaded == ["jaxsal.render"], loaded  # no JAX, no pyplot in the workers


def test_pool_workers_exit_cleanly_after_their_figures_are_written(tmp_path):
    """Workers skip the interpreter's teardown at exit (render.pool._exit_now); every figure must be
    complete on disk when its result arrives, and the workers must still exit with status 0."""
    jobs = [dataclasses.replace(_job(tmp_path, 6, (294, 23), seed=s),
                                out_path=str(tmp_path / f"exit{s}.jpg")) for s in range(3)]
    pool = render.render_pool(max_workers=2)
    paths = list(pool.map(render_figure, jobs))
    processes = list(pool._processes.values())
    pool.shutdown(wait=True)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # a whole JPEG
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_show_figure_headless_returns_false(tmp_path, monkeypatch):
    monkeypatch.setattr(show.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert render.can_show() is False
    assert render.show_figure(_job(tmp_path, 1, (1,))) is False
    assert not os.path.exists(tmp_path / "fig.jpg")


def test_can_show_needs_an_interactive_backend(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(show.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(plt, "get_backend", lambda: "agg")
    assert render.can_show() is False
    monkeypatch.setattr(plt, "get_backend", lambda: "TkAgg")
    assert render.can_show() is True


def _reference_jpeg(job):
    """The figure drawn the plain way, as the original does: a new figure, one imshow per cell,
    ``fig.tight_layout()``, savefig. Independent of jaxsal.render's reuse and layout cache."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    grid = [("stim", list(job.stimuli))] + [(label, list(maps)) for label, maps in job.rows]
    axes = fig.subplots(len(grid), len(job.stimuli), squeeze=False)
    for r, (label, images) in enumerate(grid):
        for c, image in enumerate(images):
            ax = axes[r, c]
            if r > 0 and job.underlays is not None:
                ax.imshow(job.underlays[c], aspect="equal")
                ax.imshow(image, cmap=job.cmap, vmin=job.vmin, vmax=job.vmax, aspect="equal",
                          alpha=job.alpha)
            else:
                ax.imshow(image, cmap=job.cmap, vmin=job.vmin, vmax=job.vmax, aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=100, pil_kwargs={"quality": 95})
    return buffer.getvalue()


@pytest.mark.slow
def test_reused_figures_and_cached_layouts_draw_exactly_the_plain_figure(tmp_path, monkeypatch):
    """render_figure reuses one figure per grid shape and the cells whose images keep their
    shapes, remembers tight_layout's result and the drawn background per layout key (a lean
    background once checked against a full draw), and then draws only images and frames; the
    bytes must equal a plain matplotlib figure's, for hits and misses of every kind."""
    fast_redraw._CANVASES.clear()
    fast_redraw._TIGHT_LAYOUTS.clear()
    monkeypatch.setattr(fast_redraw, "_LEAN_BACKGROUND", None)
    rng = np.random.default_rng(9)
    other_shapes = dataclasses.replace(
        _job(tmp_path, 6, (294, 23), "RGB", seed=6),
        stimuli=[rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(6)])
    underlays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    gray = _job(tmp_path, 6, (294, 23), "gray", seed=14)
    jobs = [
        _job(tmp_path, 6, (294, 23), "RGB", seed=1),
        _job(tmp_path, 6, (294, 23), "RGB", seed=8),               # hit: other pixels
        _job(tmp_path, 6, (294, 23), "gray", seed=2),              # 2-D maps: a new key
        _job(tmp_path, 6, (294, 23), "gray", seed=10),             # hit
        dataclasses.replace(                                       # hit: norms follow the data
            gray, rows=[(gray.rows[0][0], [m // 3 for m in gray.rows[0][1]]),
                        (gray.rows[1][0], [np.zeros_like(gray.rows[1][1][0])] * 6)]),
        _job(tmp_path, 1, (5,), "RGB", seed=3),                    # another grid shape
        _job(tmp_path, 6, (1, 2), "gray", seed=4, cmap="gray", vmin=10, vmax=200),  # labels
        _job(tmp_path, 6, (1, 2), "gray", seed=11, cmap="gray", vmin=10, vmax=200),  # hit
        _job(tmp_path, 6, (1, 2), "gray", seed=12, cmap="gray", vmin=10),            # vmax free
        other_shapes,                                              # same grid, other aspects
        _job(tmp_path, 6, (294, 23), "gray", seed=7, cmap="jet", alpha=0.4, underlays=underlays),
        _job(tmp_path, 6, (294, 23), "gray", seed=13, cmap="jet", alpha=0.4,
             underlays=underlays[::-1]),                           # hit with -overlay
        _job(tmp_path, 6, (294, 23), "RGB", seed=5),               # first key again
    ]
    for i, job in enumerate(jobs):
        job = dataclasses.replace(job, out_path=str(tmp_path / f"reused{i}.jpg"))
        render_figure(job)
        assert (tmp_path / f"reused{i}.jpg").read_bytes() == _reference_jpeg(job), f"figure {i}"
    assert set(fast_redraw._CANVASES) == {(3, 6), (2, 1)}
    # the checked lean background drew all but the first
    assert fast_redraw._LEAN_BACKGROUND is True


@pytest.mark.slow
def test_a_lean_background_that_differs_from_a_full_draw_is_not_used(tmp_path, monkeypatch):
    """If the lean background misses something a full draw shows (here a stray line, as a
    matplotlibrc or another matplotlib could add), the process keeps to the full draw."""
    fast_redraw._CANVASES.clear()
    fast_redraw._TIGHT_LAYOUTS.clear()
    monkeypatch.setattr(fast_redraw, "_LEAN_BACKGROUND", None)
    lean = fast_redraw._lean_background

    def missing_a_line(fig):
        lean(fig)
        gc = fig.canvas.get_renderer().new_gc()
        from matplotlib.path import Path
        from matplotlib.transforms import IdentityTransform
        fig.canvas.get_renderer().draw_path(gc, Path([(10, 10), (200, 10)]), IdentityTransform())

    monkeypatch.setattr(fast_redraw, "_lean_background", missing_a_line)
    for seed, shapes in [(1, None), (2, (40, 30, 3))]:
        job = _job(tmp_path, 6, (294, 23), "RGB", seed=seed)
        if shapes is not None:  # a new layout: another background
            job = dataclasses.replace(job, stimuli=[np.zeros(shapes, np.uint8)] * 6)
        job = dataclasses.replace(job, out_path=str(tmp_path / f"full{seed}.jpg"))
        render_figure(job)
        assert (tmp_path / f"full{seed}.jpg").read_bytes() == _reference_jpeg(job)
    assert fast_redraw._LEAN_BACKGROUND is False


def test_warmed_up_worker_draws_the_plain_figure(tmp_path):
    fast_redraw._CANVASES.clear()
    render.warm_up(3, 6)
    job = dataclasses.replace(_job(tmp_path, 6, (294, 23), "RGB", seed=1),
                              out_path=str(tmp_path / "warm.jpg"))
    render_figure(job)
    assert (tmp_path / "warm.jpg").read_bytes() == _reference_jpeg(job)


def _fast_and_plain(tmp_path, job, name):
    """(bytes of the fast redraw, bytes of the plain reference path) of one job."""
    fast = dataclasses.replace(job, out_path=str(tmp_path / f"{name}_fast.jpg"))
    plain = dataclasses.replace(job, out_path=str(tmp_path / f"{name}_plain.jpg"))
    assert render_figure(fast, fast=True) == fast.out_path
    assert render_figure(plain, fast=False) == plain.out_path
    return pathlib.Path(fast.out_path).read_bytes(), pathlib.Path(plain.out_path).read_bytes()


def _redraw_sequence(tmp_path):
    """Jobs that hit and miss the fast redraw's caches: a new grid, the same layout with other
    pixels, other image shapes, other labels and styles, an overlay, and back."""
    rng = np.random.default_rng(21)
    underlays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    return [
        _job(tmp_path, 6, (294, 23), "RGB", seed=1),
        _job(tmp_path, 6, (294, 23), "RGB", seed=2),               # hit: other pixels
        _job(tmp_path, 6, (294, 23), "gray", seed=3),
        _job(tmp_path, 6, (294, 23), "gray", seed=4),              # hit
        dataclasses.replace(_job(tmp_path, 6, (294, 23), "RGB", seed=5),
                            stimuli=[rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)] * 6),
        _job(tmp_path, 6, (7, 8), "gray", seed=6, cmap="gray", vmin=20, vmax=220),
        _job(tmp_path, 6, (294, 23), "gray", seed=7, cmap="jet", alpha=0.4, underlays=underlays),
        _job(tmp_path, 6, (294, 23), "gray", seed=8, cmap="jet", alpha=0.4,
             underlays=underlays[::-1]),                           # hit with -overlay
        _job(tmp_path, 2, (5,), "RGB", seed=9),                    # another grid shape
        _job(tmp_path, 6, (294, 23), "RGB", seed=10),              # the first layout again
    ]


def test_fast_redraw_writes_the_bytes_of_the_plain_path(tmp_path, monkeypatch):
    """The switch's two paths agree, figure by figure, on hits and misses of every cache; the
    plain path is also the independent plain figure of this test module."""
    fast_redraw._CANVASES.clear()
    fast_redraw._TIGHT_LAYOUTS.clear()
    monkeypatch.setattr(fast_redraw, "_LEAN_BACKGROUND", None)
    for i, job in enumerate(_redraw_sequence(tmp_path)):
        fast, plain = _fast_and_plain(tmp_path, job, f"fig{i}")
        assert fast == plain, f"figure {i}"
    assert plain == _reference_jpeg(job)
    assert fast_redraw._LEAN_BACKGROUND is True


@pytest.mark.parametrize("value, fast", [("0", False), ("off", False), ("1", True), (None, True)])
def test_the_environment_switch(tmp_path, monkeypatch, value, fast):
    fast_redraw._CANVASES.clear()
    if value is None:
        monkeypatch.delenv(fast_redraw.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(fast_redraw.ENV_VAR, value)
    assert fast_redraw.enabled() is fast
    job = dataclasses.replace(_job(tmp_path, 1, (5,), seed=3), out_path=str(tmp_path / "e.jpg"))
    render.warm_up(2, 1)
    render_figure(job)
    assert bool(fast_redraw._CANVASES) is fast  # the plain path keeps no figure
    assert (tmp_path / "e.jpg").read_bytes() == _reference_jpeg(job)


def _stale_pixels(monkeypatch):
    monkeypatch.setattr(fast_redraw, "_set_cell_data", lambda artists, images, job: None)


def _background_without_labels(monkeypatch):
    def lean(fig):
        for ax in fig.axes:
            ax.yaxis.label.set_visible(False)
        fig.canvas.get_renderer().clear()
        fig.patch.draw(fig.canvas.get_renderer())

    monkeypatch.setattr(fast_redraw, "_LEAN_BACKGROUND", True)  # trusted without the check
    monkeypatch.setattr(fast_redraw, "_lean_background", lean)


class _AnyKey(dict):
    def get(self, key, default=None):
        return next(iter(self.values()), default)


def _layout_of_another_key(monkeypatch):
    monkeypatch.setattr(fast_redraw, "_TIGHT_LAYOUTS", _AnyKey())


@pytest.mark.parametrize("breakage", [  # one in the fast tier, the others in the slow one
    _stale_pixels, pytest.param(_background_without_labels, marks=pytest.mark.slow),
    pytest.param(_layout_of_another_key, marks=pytest.mark.slow)])
def test_the_identity_check_catches_a_broken_fast_path(tmp_path, monkeypatch, breakage):
    """A fast path that keeps stale pixels, draws a wrong background or reuses the wrong layout
    fails the comparison above; the switch turned off does not use it."""
    fast_redraw._CANVASES.clear()
    fast_redraw._TIGHT_LAYOUTS.clear()
    jobs = [_redraw_sequence(tmp_path)[i] for i in (0, 1, 4)]  # miss, hit, new layout
    breakage(monkeypatch)
    results = [_fast_and_plain(tmp_path, job, f"broken{i}") for i, job in enumerate(jobs)]
    assert any(fast != plain for fast, plain in results)
    assert all(plain == _reference_jpeg(job) for (_, plain), job in zip(results, jobs))
    monkeypatch.undo()
    fast_redraw._CANVASES.clear()
    fast_redraw._TIGHT_LAYOUTS.clear()

# --------------------------------------------------------------------------------------------
# Display copies of large stimuli


def test_display_reduction_leaves_ordinary_stimuli_alone():
    # ImageNet-like and bundled-example sizes in the usual 3 x 6 grid, and a 1-stimulus figure.
    for size in [(375, 500), (500, 375), (512, 512), (600, 800), (224, 224), (32, 32)]:
        assert render.display_reduction(size, 3, 6) == 1, size
    assert render.display_reduction((600, 800), 2, 1) == 1
    # A camera photo in a 166 x 200 px cell: keep >= 3 source pixels per shown pixel.
    assert render.display_reduction((1800, 2400), 3, 6) == 4
    assert render.display_reduction((3000, 4000), 3, 6) == 8
    assert render.display_reduction((3000, 4000), 6, 6) == 10  # cells 100 px high
    assert render.display_reduction((1800, 2400), 2, 1) == 2   # one stimulus: a 300 px row


def _photo(size):
    with Image.open(os.path.join(os.path.dirname(__file__), "..", "examples",
                                 "chelsea_cat.jpg")) as im:
        return im.convert("RGB").resize(size, Image.BILINEAR)


def _canvas_pixels(job):
    fig = build_figure(job)
    fig.canvas.draw()
    return fig, np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.int16)


def test_display_copy_is_laid_out_as_the_native_stimulus_and_looks_the_same(tmp_path):
    photos = [_photo((2400, 1800)), _photo((1800, 2400)), _photo((2000, 1000))]
    base = _job(tmp_path, 3, (294, 23), seed=3)
    native = dataclasses.replace(base, stimuli=[np.asarray(p) for p in photos])
    copies = [render.display_copy(p, 3, 3) for p in photos]
    assert [size for _, size in copies] == [(1800, 2400), (2400, 1800), (1000, 2000)]
    assert all(a.shape[0] <= s[0] // 2 for a, s in copies)  # really reduced
    shown = dataclasses.replace(base, stimuli=[a for a, _ in copies],
                                stimulus_sizes=[s for _, s in copies])
    assert render.layout_key(shown) == render.layout_key(native)

    fig_native, a = _canvas_pixels(native)
    fig_shown, b = _canvas_pixels(shown)
    for ax_a, ax_b in zip(fig_native.axes, fig_shown.axes):
        assert ax_a.get_position().bounds == ax_b.get_position().bounds
        assert ax_a.get_xlim() == ax_b.get_xlim() and ax_a.get_ylim() == ax_b.get_ylim()
    # Only the stimulus row may differ, and only by the pre-filtering.
    height = a.shape[0]
    stim_cells = np.zeros(a.shape[:2], bool)
    for ax in fig_native.axes[:3]:
        x0, y0, x1, y1 = np.round(ax.get_window_extent().extents).astype(int)
        stim_cells[height - y1:height - y0, x0:x1] = True
    diff = np.abs(a - b)
    assert not diff[~stim_cells].any()
    assert diff[stim_cells].mean() < 0.5, diff[stim_cells].mean()


def test_decode_keeps_a_large_photo_at_the_size_its_figure_shows(tmp_path):
    from jaxsal import pipeline
    from jaxsal.models import get_net_spec

    spec = get_net_spec("AlexNet")
    path = tmp_path / "big.jpg"
    _photo((2400, 1800)).save(path, quality=90)
    (array, size), x, _ = pipeline.decode(path, spec, (3, 6))
    assert size == (1800, 2400) and array.shape == (450, 600, 3) and array.dtype == np.uint8
    assert x.shape == (224, 224, 3)
    small = tmp_path / "small.jpg"
    _photo((500, 375)).save(small, quality=90)
    (array, size), _, _ = pipeline.decode(small, spec, (3, 6))
    assert size == (375, 500) and array.shape == (375, 500, 3)
