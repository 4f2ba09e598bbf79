"""The dnn_saliency command end to end, with isolated caches.

Successful runs compute on TinyNet with random weights, in a subprocess (`python
tests/tiny_net.py ARGS`: the command with TinyNet registered) or, to spare the ~2 s of importing
JAX, in this process (conftest's `dnn_saliency` fixture); the golden and seed tests run the
installed `dnn_saliency` console script on full AlexNet (`slow`): the README's example figure,
byte for byte, and the seed's `-chn 294 23` fc3 command. Runs that must fail check: exit status
2, one clear message on stderr, no traceback, no files (AlexNet: they stop before computing).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPT = pathlib.Path(sys.executable).with_name("dnn_saliency")
TINY_SCRIPT = pathlib.Path(__file__).with_name("tiny_net.py")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Environment for the subprocesses: isolated caches (shared by this module's runs, so the
    persistent compilation cache makes later runs cheaper), no user weights."""
    home = tmp_path_factory.mktemp("cli_home")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXSAL_WEIGHTS", "DNNBRAIN_DATA", "XDG_CACHE_HOME", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(home), JAXSAL_HOME=str(home / "jaxsal"), TORCH_HOME=str(home / "torch"),
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def full_weights(torchvision_alexnet_checkpoint, tmp_path_factory):
    """A random full AlexNet (conv + fc), converted once to .safetensors with jaxsal-convert."""
    src, _ = torchvision_alexnet_checkpoint
    dst = tmp_path_factory.mktemp("w") / "alexnet_random.safetensors"
    convert = pathlib.Path(sys.executable).with_name("jaxsal-convert")
    done = subprocess.run([str(convert), "--src", str(src), "--dst", str(dst)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return dst


@pytest.fixture
def workdir(tmp_path):
    """A working folder holding a copy of the bundled examples and their .stim.csv."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    return tmp_path


def run(args, cwd, env, check_rc=None, tiny=False):
    """The installed `dnn_saliency ARGS`; with `tiny`, the command with TinyNet registered."""
    command = [sys.executable, str(TINY_SCRIPT)] if tiny else [str(SCRIPT)]
    done = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if check_rc is not None:
        assert done.returncode == check_rc, f"rc={done.returncode}\nstdout:{done.stdout}\nstderr:{done.stderr}"
    return done


def files_under(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


STIM = "examples/examples.stim.csv"
N_EXAMPLES = 7


def test_examples_are_seven_stimuli_so_two_figures():
    lines = (EXAMPLES / "examples.stim.csv").read_text().splitlines()
    data = lines.index(next(line for line in lines if line.startswith("data=")))
    assert len([line for line in lines[data + 1:] if line.strip()]) == N_EXAMPLES


# ----------------------------------------------------------------------------------------------
# Successful runs


@pytest.mark.slow
def test_seed_command_gray_fc3_with_full_weights(workdir, cli_env, full_weights):
    # The seed's second example, word for word, plus -weights for the fc layers.
    done = run(["-net", "AlexNet", "-layer", "fc3", "-chn", "294", "23", "-stim", STIM,
                "-mode", "gray", "-cmap", "gray", "-out", ".", "-weights", str(full_weights)],
               workdir, cli_env, check_rc=0)
    assert done.stdout.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    figs = sorted(workdir.glob("AlexNet_fc3_fig*.jpg"))
    assert [f.name for f in figs] == ["AlexNet_fc3_fig1.jpg", "AlexNet_fc3_fig2.jpg"]
    for f in figs:
        with Image.open(f) as im:
            assert im.size == (1000, 600) and im.format == "JPEG"
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_readme_example_figure_is_the_documented_one(workdir, cli_env):
    """The README's command with the bundled weights draws docs/AlexNet_conv5_fig1.jpg exactly."""
    done = run(["-net", "AlexNet", "-layer", "conv5", "-chn", "60", "125", "-stim", STIM,
                "-out", "out"], workdir, cli_env, check_rc=0)
    assert done.stdout.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    assert files_under(workdir / "out") == ["AlexNet_conv5_fig1.jpg", "AlexNet_conv5_fig2.jpg"]
    golden = REPO / "docs" / "AlexNet_conv5_fig1.jpg"
    assert (workdir / "out" / "AlexNet_conv5_fig1.jpg").read_bytes() == golden.read_bytes()


def test_save_maps_equals_python_api_and_flag_forms(workdir, dnn_saliency, tiny_weights):
    import jaxsal

    out = workdir / "nested" / "out"  # created with its parents
    done = dnn_saliency(["--net=TinyNet", "--layer=conv3", "--chn=6,14", f"--stim={STIM}",
                         f"--out={out}", "--save_maps", f"--weights={tiny_weights}", "-profile"],
                        workdir)
    assert done.returncode == 0, done.stderr
    assert "profile:" in done.stderr and "compute" in done.stderr
    assert files_under(out) == ["TinyNet_conv3_fig1.jpg", "TinyNet_conv3_fig2.jpg",
                                "TinyNet_conv3_maps.npz"]
    with np.load(out / "TinyNet_conv3_maps.npz") as z:
        assert set(z.files) == {"maps", "channels", "stim_ids", "layer", "method", "method_options",
                                "maps_axes", "net", "weights"}
        maps = z["maps"]
        assert maps.dtype == np.float32 and maps.shape == (2, N_EXAMPLES, 3, 32, 32)
        assert z["channels"].tolist() == [6, 14]
        assert str(z["layer"]) == "conv3" and str(z["method"]) == "guided" and str(z["net"]) == "TinyNet"
        ids = z["stim_ids"].tolist()
        assert "sha256" in str(z["weights"])
    stim_lines = (EXAMPLES / "examples.stim.csv").read_text().splitlines()
    expected_ids = [line.split(",")[0] for line in stim_lines[stim_lines.index("data=stimID,label") + 1:] if line]
    assert ids == expected_ids
    net = jaxsal.load_net("TinyNet", weights=tiny_weights)
    api = jaxsal.saliency(net, [EXAMPLES / i for i in ids], "conv3", [6, 14], method="guided")
    np.testing.assert_allclose(maps, api, rtol=1e-6, atol=1e-6 * np.abs(api).max())
    assert np.abs(maps).max() > 0


@pytest.mark.slow
def test_rgb_ignores_cmap_gray_uses_it_and_vmin_vmax(workdir, dnn_saliency, tiny_weights):
    """cmap/vmin/vmax change gray maps only (matplotlib applies them to 2-D images)."""
    def figure(tag, *extra):
        out = workdir / tag
        done = dnn_saliency(["-net", "TinyNet", "-weights", tiny_weights, "-layer", "conv2", "-chn",
                             "5", "-stim", STIM, "-out", out, "-batch_size", "4", *extra], workdir)
        assert done.returncode == 0, done.stderr
        assert len(list(out.glob("*.jpg"))) == 2
        return np.asarray(Image.open(out / "TinyNet_conv2_fig1.jpg")).astype(int)

    rgb_default = figure("rgb")
    rgb_gray_cmap = figure("rgb_cmap", "-cmap", "gray", "-vmin", "10", "-vmax", "20")
    np.testing.assert_array_equal(rgb_default, rgb_gray_cmap)
    gray_coolwarm = figure("gray", "-mode", "gray")
    gray_gray = figure("gray_gray", "-mode", "gray", "-cmap", "gray")
    gray_clipped = figure("gray_clip", "-mode", "gray", "-cmap", "gray", "-vmin", "0", "-vmax", "10")
    assert np.abs(gray_coolwarm - gray_gray).mean() > 1
    assert np.abs(gray_gray - gray_clipped).mean() > 1
    # A gray colormap draws gray pixels in the map rows; coolwarm draws coloured ones.
    lower = gray_gray[350:, :, :]  # the map row (2 rows: stimuli, then chn5)
    assert np.abs(lower[..., 0] - lower[..., 2]).max() < 30
    assert np.abs(gray_coolwarm[350:, :, 0] - gray_coolwarm[350:, :, 2]).max() > 60


@pytest.mark.slow
def test_show_on_headless_machine_says_so_once(workdir, cli_env, tiny_weights):
    done = run(["-net", "TinyNet", "-weights", str(tiny_weights), "-layer", "conv1", "-chn", "3",
                "-stim", STIM, "-show", "-meth", "vanilla", "-precision", "default"], workdir,
               cli_env, check_rc=0, tiny=True)
    assert done.stderr.count("cannot show figures") == 1
    assert done.stdout.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    assert not list(workdir.glob("*.jpg"))


def test_help_reads_like_the_seed_synopsis(cli_env, tmp_path):
    for flag in ("-h", "-help", "--help"):
        done = run([flag], tmp_path, cli_env, check_rc=0)
        assert "usage: dnn_saliency [-h] -net Net -layer Layer -chn Channel [Channel ...]" in done.stdout
        assert "-stim Stimulus [-meth Method] [-mode Mode] [-cmap Colormap]" in done.stdout
        for name in ("-meth", "-mode", "-cmap", "-vmin", "-vmax", "-show", "-out", "-weights",
                     "-save_maps", "-batch_size"):
            assert name in done.stdout


# ----------------------------------------------------------------------------------------------
# Every bad input: exit 2, one clear line, no traceback, no output files


def write_stim(folder: pathlib.Path, body: str, name="bad.stim.csv") -> str:
    (folder / name).write_text(body)
    return name


BASE = ["-net", "AlexNet", "-layer", "conv5", "-chn", "60", "-stim", STIM, "-out", "out"]


def with_flag(flag, value):
    args = list(BASE)
    i = args.index(flag)
    if value is None:
        del args[i:i + 2]
    else:
        args[i + 1] = value
    return args


BAD_CASES = {
    "unknown net": (with_flag("-net", "alexnet"), "unknown network 'alexnet'"),
    "code as net name": (with_flag("-net", "__import__('os').system('touch pwned')"), "unknown network"),
    "unknown layer": (with_flag("-layer", "conv6"), "valid layers: conv1, conv1_relu"),
    "channel zero": (with_flag("-chn", "0"), "1..256"),
    "negative channel": (["-net", "AlexNet", "-layer", "conv5", "-chn", "-1", "-stim", STIM, "-out", "out"], "1..256"),
    "channel too large": (with_flag("-chn", "257"), "1..256"),
    "six channels without -save_maps": (["-net", "AlexNet", "-layer", "conv5", "-chn", "1", "2",
                                         "3", "4", "5", "6", "-stim", STIM, "-out", "out"],
                                        "add -save_maps"),
    "non-integer channel": (with_flag("-chn", "1.5"), "got '1.5'"),
    "a word as channel": (with_flag("-chn", "abc"), "-chn takes channel numbers (1-based), "
                                                    "ranges FIRST-LAST or 'all', got 'abc'"),
    "an exponent as channel": (with_flag("-chn", "1e3"), "got '1e3'"),
    "bad method": (BASE + ["-meth", "smooth"], "-meth must be one of vanilla, guided"),
    "bad mode": (BASE + ["-mode", "grey"], "-mode must be RGB or gray"),
    "bad cmap": (BASE + ["-mode", "gray", "-cmap", "nosuchmap"], "unknown colormap"),
    "vmin above vmax": (BASE + ["-mode", "gray", "-vmin", "5", "-vmax", "1"], "-vmin"),
    "missing stim file": (with_flag("-stim", "nope.stim.csv"), "nope.stim.csv"),
    "stim not .stim.csv": (with_flag("-stim", "examples/chelsea_cat.jpg"), ".stim.csv"),
    "neither show nor out": (with_flag("-out", None), "-out"),
    "missing required flag": (["-net", "AlexNet", "-chn", "1", "-stim", STIM, "-out", "out"], "-layer"),
    "unknown flag": (BASE + ["-colour", "red"], "colour"),
    "stray argument": (BASE + ["extra"], "extra"),
    "missing weights file": (BASE + ["-weights", "nope.safetensors"], "nope.safetensors"),
    "fc layer with conv-only weights": (with_flag("-layer", "fc3"), "jaxsal-convert --download"),
    "batch size zero": (BASE + ["-batch_size", "0"], "-batch_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exit_2_one_clear_message_no_files(case, workdir, cli_env):
    args, expected = BAD_CASES[case]
    before = files_under(workdir)
    done = run(args, workdir, cli_env)
    assert done.returncode == 2, f"{case}: rc={done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert expected in done.stderr, done.stderr
    assert done.stderr.startswith("dnn_saliency: error:")
    assert done.stdout == ""
    assert files_under(workdir) == before
    assert not (workdir / "out").exists()


BAD_STIM = {
    "no data line": ("type=image\npath=examples\n", "data="),
    "no type": ("path=examples\ndata=stimID\nchelsea_cat.jpg\n", "type"),
    "video type": ("type=video\npath=examples\ndata=stimID\nchelsea_cat.jpg\n", "video"),
    "ragged row": ("type=image\npath=examples\ndata=stimID,label\nchelsea_cat.jpg,1\ncoffee.jpg\n", "line 5"),
    "zero rows": ("type=image\npath=examples\ndata=stimID,label\n", "no stimulus rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_STIM))
def test_bad_stim_files(case, workdir, cli_env):
    body, expected = BAD_STIM[case]
    name = write_stim(workdir, body)
    before = files_under(workdir)
    done = run(with_flag("-stim", name), workdir, cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr.lower() or expected in done.stderr, done.stderr
    assert files_under(workdir) == before


def test_every_missing_and_broken_image_is_reported_at_once(workdir, cli_env):
    (workdir / "examples" / "broken.jpg").write_bytes(b"not a jpeg at all")
    name = write_stim(workdir, "type=image\npath=examples\ndata=stimID\nchelsea_cat.jpg\n"
                               "missing1.jpg\nbroken.jpg\nmissing2.png\n")
    before = files_under(workdir)
    done = run(with_flag("-stim", name), workdir, cli_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for bad in ("missing1.jpg", "broken.jpg", "missing2.png"):
        assert bad in done.stderr
    assert "chelsea_cat.jpg" not in done.stderr
    assert files_under(workdir) == before


def test_unwritable_out_is_an_early_error(workdir, cli_env):
    (workdir / "afile").write_text("x")
    done = run(with_flag("-out", "afile/sub"), workdir, cli_env)
    assert done.returncode == 2 and "not a folder" in done.stderr


# ----------------------------------------------------------------------------------------------
# Argument handling in process (fast)


def test_space_separated_channels_are_joined():
    from jaxsal.cli import join_channel_values, parse_args

    assert join_channel_values(["-chn", "294", "23", "-stim", "x"]) == ["--chn=294,23", "-stim", "x"]
    assert join_channel_values(["--chn", "-1", "5"]) == ["--chn=-1,5"]
    opts = parse_args(["p", "-net", "AlexNet", "-layer", "fc3", "-chn", "294", "23", "-stim",
                       "e.stim.csv", "-show"])
    assert opts.channels == (294, 23) and opts.show and opts.out is None
    opts = parse_args(["p", "--net=AlexNet", "--layer=fc3", "--chn=294,23", "--stim=e.stim.csv",
                       "--out=o", "--nosave_maps"])
    assert opts.channels == (294, 23) and str(opts.out) == "o"
    assert opts.meth == "guided" and opts.mode == "RGB" and opts.cmap == "coolwarm"


def test_inputs_and_weights_are_checked_before_jax_is_imported(workdir, cli_env):
    """prepare() validates everything and reads the weights without JAX or Flax, so decoding
    and the figure workers start while JAX is imported (pipeline.Pipeline)."""
    code = (
        "import sys; from jaxsal import cli; from jaxsal.request import validate\n"
        "o = cli.parse_args(['dnn_saliency', '-net', 'AlexNet', '-layer', 'conv5', '-chn', '60',"
        " '-stim', 'examples/examples.stim.csv', '-out', 'out'])\n"
        "plan = validate(o)\n"
        "print(sorted(m for m in ('jax', 'flax', 'matplotlib.pyplot') if m in sys.modules),"
        " len(plan.stimuli.paths), plan.weights.missing_stages(plan.spec))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "7", "('fc1',", "'fc2',", "'fc3')"]


def test_progress_writes_to_the_current_stderr(tmp_path):
    """A run in a process whose sys.stderr was replaced after jaxsal was imported (a notebook,
    contextlib.redirect_stderr, a test harness) reports progress on the current stderr, and does
    not fail when the stream of import time has been closed."""
    code = (
        "import contextlib, io, sys\n"
        "old = io.StringIO()\n"
        "with contextlib.redirect_stderr(old):\n"
        "    from jaxsal import reporting\n"
        "old.close()\n"
        "new = io.StringIO()\n"
        "with contextlib.redirect_stderr(new):\n"
        "    p = reporting.Progress(2, delay=0.0)\n"
        "    p.update(1)\n"
        "assert 'stimuli' in new.getvalue(), new.getvalue()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_decode_threads_follow_the_cores(monkeypatch):
    from jaxsal import pipeline

    for cores, threads in [(None, 2), (1, 2), (2, 2), (4, 2), (6, 3), (16, 8), (64, 8)]:
        monkeypatch.setattr(pipeline.os, "cpu_count", lambda: cores)
        assert pipeline.decode_threads() == threads, cores
