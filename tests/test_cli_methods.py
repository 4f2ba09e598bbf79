"""dnn_saliency with every attribution method, end to end (on TinyNet, run in this process:
conftest's `dnn_saliency` fixture), and its bad method combinations (exit 2, one clear line,
nothing written), also through the installed console script."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxsal import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = pathlib.Path(sys.executable).with_name("dnn_saliency")
STIM = "two.stim.csv"
PHOTOS = ("chelsea_cat.jpg", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Isolated caches (shared by this module's runs) and no user weights: the bundled conv-only
    AlexNet weights are used."""
    home = tmp_path_factory.mktemp("cli_methods_home")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXSAL_WEIGHTS", "DNNBRAIN_DATA", "XDG_CACHE_HOME", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(home), JAXSAL_HOME=str(home / "jaxsal"), TORCH_HOME=str(home / "torch"),
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def workdir(tmp_path):
    """Two example photographs and a .stim.csv naming them."""
    for name in PHOTOS:
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    (tmp_path / STIM).write_text("type=image\npath=.\ndata=stimID\n" + "\n".join(PHOTOS) + "\n")
    return tmp_path


def run(args, cwd, env):
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def tiny_base(weights):
    return ["-net", "TinyNet", "-weights", weights, "-layer", "conv3", "-chn", "5", "14", "-stim",
            STIM, "-out", "out", "-save_maps", "-batch_size", "2"]


RUNS = {
    "deconv": (["-meth", "deconv"], {"name": "deconv"}, (2, 2, 3, 32, 32)),
    "smoothgrad": (["-meth", "guided", "-smooth", "3", "-noise", "0.2", "-seed", "5"],
                   {"name": "guided", "smooth": 3, "noise": 0.2, "seed": 5}, (2, 2, 3, 32, 32)),
    "ig": (["-meth", "ig", "-ig_steps", "4", "-baseline", "zeros", "-mode", "gray"],
           {"name": "ig", "ig_steps": 4, "baseline": "zeros", "ig_rule": "gausslegendre"},
           (2, 2, 3, 32, 32)),
    "gradcam": (["-meth", "gradcam", "-cam_layer", "conv1_maxpool", "-overlay", "-cmap", "jet"],
                {"name": "gradcam", "cam_layer": "conv1_maxpool"}, (2, 2, 32, 32)),
    "guided_gradcam": (["-meth", "guided_gradcam"], {"name": "guided_gradcam", "cam_layer": "conv3"},
                       (2, 2, 3, 32, 32)),
}


@pytest.mark.parametrize("case", [  # gradcam (2-D maps, -overlay, -cmap) fast, the rest slow
    case if case == "gradcam" else pytest.param(case, marks=pytest.mark.slow)
    for case in sorted(RUNS)])
def test_each_method_end_to_end(case, workdir, dnn_saliency, tiny_weights):
    extra, options, shape = RUNS[case]
    done = dnn_saliency(tiny_base(tiny_weights) + extra, workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Finish: 2/2"]
    assert "Traceback" not in done.stderr
    with Image.open(workdir / "out" / "TinyNet_conv3_fig1.jpg") as im:
        assert im.size == (1000, 600)
    with np.load(workdir / "out" / "TinyNet_conv3_maps.npz") as z:
        maps = z["maps"]
        assert maps.shape == shape and maps.dtype == np.float32
        assert str(z["method"]) == options["name"]
        assert json.loads(str(z["method_options"])) == options
        assert str(z["maps_axes"]) == ("channel, stimulus, y, x" if len(shape) == 4
                                       else "channel, stimulus, rgb, y, x")
    assert np.abs(maps).max() > 0
    if case == "gradcam":
        assert maps.min() >= 0
    if case == "smoothgrad":  # the CLI and the API give the same seeded maps
        import jaxsal

        net = jaxsal.load_net("TinyNet", weights=tiny_weights)
        api = jaxsal.saliency(net, [workdir / p for p in PHOTOS], "conv3", [5, 14], method="guided",
                              smooth=3, noise=0.2, seed=5)
        np.testing.assert_allclose(maps, api, rtol=1e-5, atol=1e-6 * np.abs(api).max())


def test_overlay_draws_the_picture_under_the_map(workdir, dnn_saliency, tiny_weights):
    """With -overlay the map rows show the photograph through the map; without, they do not."""
    figures = {}
    for tag, extra in (("plain", []), ("overlay", ["-overlay"])):
        done = dnn_saliency(["-net", "TinyNet", "-weights", tiny_weights, "-layer", "conv2", "-chn",
                             "3", "-stim", STIM, "-out", tag, "-meth", "gradcam", "-cmap", "gray"]
                            + extra, workdir)
        assert done.returncode == 0, done.stderr
        figures[tag] = np.asarray(Image.open(workdir / tag / "TinyNet_conv2_fig1.jpg")).astype(int)
    lower = slice(320, 580)  # the map row (2 rows: stimuli, then chn3)
    plain, overlay = figures["plain"][lower], figures["overlay"][lower]
    # A gray colormap alone draws gray pixels; the photograph underneath brings colour back.
    assert np.abs(plain[..., 0] - plain[..., 2]).max() < 30
    assert np.abs(overlay[..., 0] - overlay[..., 2]).max() > 60


def test_help_lists_the_methods_and_their_flags(capsys):
    assert cli.main(["dnn_saliency", "-help"]) == 0
    out = capsys.readouterr().out
    for word in ("deconv", "gradcam", "guided_gradcam", "-smooth", "-noise", "-seed", "-baseline",
                 "-ig_steps", "-ig_rule", "-cam_layer", "-overlay"):
        assert word in out


GOOD = ["dnn_saliency", "-net", "AlexNet", "-layer", "conv5", "-chn", "60", "-stim", STIM, "-out", "out"]
BAD = {
    "ig_steps zero": (["-meth", "ig", "-ig_steps", "0"], "-ig_steps must be at least 1"),
    "trapezoid needs two steps": (["-meth", "ig", "-ig_steps", "1", "-ig_rule", "trapezoid"], "at least 2"),
    "unknown ig rule": (["-meth", "ig", "-ig_rule", "simpson"], "ig_rule"),
    "unknown baseline": (["-meth", "ig", "-baseline", "white"], "baseline"),
    "gradcam on an fc layer": (["-meth", "gradcam", "-cam_layer", "fc1", "-layer", "fc3"], "fully connected"),
    "cam layer above the target": (["-meth", "gradcam", "-cam_layer", "conv5", "-layer", "conv3"], "above the target"),
    "unknown cam layer": (["-meth", "guided_gradcam", "-cam_layer", "conv9"], "unknown -cam_layer"),
    "cam layer without gradcam": (["-meth", "guided", "-cam_layer", "conv2"], "-cam_layer applies to"),
    "smoothgrad with gradcam": (["-meth", "gradcam", "-smooth", "4"], "-smooth applies to"),
    "negative smooth": (["-smooth", "-1"], "-smooth"),
    "negative noise": (["-smooth", "4", "--noise=-0.5"], "-noise must be"),
    "noise without smooth": (["-noise", "0.3"], "-smooth N"),
    "seed out of range": (["-smooth", "2", "-seed", "5000000000"], "seed"),
    "ig_steps without ig": (["-meth", "vanilla", "-ig_steps", "8"], "-ig_steps applies to"),
    "unknown method": (["-meth", "smoothgrad"], "-meth must be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_are_usage_errors(case, workdir, capsys, monkeypatch):
    extra, expected = BAD[case]
    monkeypatch.chdir(workdir)
    args = list(GOOD)
    if "-layer" in extra:
        i = extra.index("-layer")
        args[args.index("-layer") + 1] = extra[i + 1]
        extra = extra[:i] + extra[i + 2:]
    assert cli.main(args + extra) == 2, case
    err = capsys.readouterr().err
    assert err.startswith("dnn_saliency: error:") and expected in err, err
    assert "Traceback" not in err
    assert not (workdir / "out").exists()


def test_bad_combination_exit_status_through_the_console_script(workdir, cli_env):
    done = run(["-net", "AlexNet", "-layer", "fc3", "-chn", "1", "-stim", STIM, "-out", "out",
                "-meth", "gradcam", "-cam_layer", "fc1"], workdir, cli_env)
    assert done.returncode == 2 and "fully connected" in done.stderr and done.stdout == ""
    assert not (workdir / "out").exists()
