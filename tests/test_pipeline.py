"""`jaxsal.run(request)`: the command's pipeline from Python (TinyNet with random weights), and
the command's flag table, from which the absl definitions, the synopsis, the usage text and the
`Request` are derived."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jaxsal
import tiny_net  # noqa: F401  (registers TinyNet)
from jaxsal import cli, method_flags, pipeline
from jaxsal.methods import METHODS, Method
from jaxsal.request import Flag, Request

REPO = pathlib.Path(__file__).resolve().parents[1]
STIM = REPO / "examples" / "examples.stim.csv"  # 7 photographs: figures of 6 and 1


def tiny_request(weights_file, **changes) -> Request:
    fields = dict(net="TinyNet", layer="conv3", channels=[6, 14], stim=STIM, weights=weights_file)
    fields.update(changes)
    return Request(**fields)


@pytest.fixture
def headless(monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "JAXSAL_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")


# ----------------------------------------------------------------------------------------------
# Runs


def test_a_reporter_receives_the_runs_lines(tmp_path, tiny_weights, dnn_saliency, headless):
    """A caller's Reporter gets every line of the run: Finish lines and its own messages."""
    import io

    from jaxsal.reporting import Reporter

    out, err = io.StringIO(), io.StringIO()
    jaxsal.run(tiny_request(tiny_weights, out=tmp_path, save_maps=True),
               reporter=Reporter("mytool", stdout=out, stderr=err))
    assert out.getvalue().splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    lines = err.getvalue().replace("\r", "\n").splitlines()
    assert lines and all(line.startswith("mytool: ") for line in lines), lines
    assert any(line.startswith("mytool: maps saved to") for line in lines), lines


def test_warnings_during_a_run_are_the_commands_one_line_warnings(tmp_path, tiny_weights,
                                                                  dnn_saliency, headless,
                                                                  monkeypatch):
    """Every line of the command goes through its reporter, Python warnings raised during the
    run included (one line each, not file:line and source). From Python they stay warnings."""
    import warnings

    real = pipeline.load_net

    def load_net(plan, reporter=None):
        warnings.warn("something odd about the weights", UserWarning)
        return real(plan, reporter)

    monkeypatch.setattr(pipeline, "load_net", load_net)
    done = dnn_saliency(["-net", "TinyNet", "-layer", "conv3", "-chn", "6", "-stim", STIM,
                         "-weights", tiny_weights, "-show"], cwd=tmp_path)  # -show: no workers
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["dnn_saliency: warning: something odd about the weights",
                                        "dnn_saliency: cannot show figures: no display"]


def test_run_writes_the_commands_figures_and_maps_and_reports_them(tmp_path, tiny_weights,
                                                                   dnn_saliency, capsys, headless):
    out = tmp_path / "py"
    report = jaxsal.run(tiny_request(tiny_weights, out=out, save_maps=True))
    printed = capsys.readouterr()
    assert printed.out.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    assert f"jaxsal: maps saved to {out / 'TinyNet_conv3_maps.npz'}" in printed.err
    assert "dnn_saliency" not in printed.err  # the command's prefix is the command's alone

    assert isinstance(report, jaxsal.RunReport)
    assert report.figures == (out / "TinyNet_conv3_fig1.jpg", out / "TinyNet_conv3_fig2.jpg")
    assert report.maps == out / "TinyNet_conv3_maps.npz"
    assert sorted(p.name for p in out.iterdir()) == ["TinyNet_conv3_fig1.jpg",
                                                     "TinyNet_conv3_fig2.jpg",
                                                     "TinyNet_conv3_maps.npz"]
    for figure in report.figures:
        with Image.open(figure) as im:
            assert im.size == (1000, 600) and im.format == "JPEG"
    assert report.stimuli == 7
    assert report.weights["source"] == os.fspath(pathlib.Path(tiny_weights).resolve())
    digest = hashlib.sha256(pathlib.Path(tiny_weights).read_bytes()).hexdigest()
    assert report.weights["sha256"] == digest
    t = report.timings
    assert 0 < t.setup <= t.total and t.compute >= 0 and t.decode > 0 and t.render > 0
    assert "profile: total" in t.report()
    with np.load(report.maps) as z:
        assert z["maps"].shape == (2, 7, 3, 32, 32) and z["channels"].tolist() == [6, 14]
        assert str(z["net"]) == "TinyNet" and str(z["method"]) == "guided"
        py_maps = z["maps"]

    # The command draws the same bytes from the same flags.
    done = dnn_saliency(["-net", "TinyNet", "-layer", "conv3", "-chn", "6", "14", "-stim", STIM,
                         "-weights", tiny_weights, "-out", tmp_path / "cli", "-save_maps"],
                        tmp_path)
    assert done.returncode == 0, done.stderr
    for figure in report.figures:
        assert (tmp_path / "cli" / figure.name).read_bytes() == figure.read_bytes()
    with np.load(tmp_path / "cli" / "TinyNet_conv3_maps.npz") as z:
        np.testing.assert_array_equal(z["maps"], py_maps)


def test_show_only_run_writes_nothing_and_says_it_cannot_show(tmp_path, tiny_weights, capsys,
                                                              headless, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = jaxsal.run(tiny_request(tiny_weights, layer="conv1", channels=[3], show=True,
                                     method="vanilla"))
    printed = capsys.readouterr()
    assert printed.out.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
    assert printed.err.count("cannot show figures") == 1
    assert report.figures == () and report.maps is None and report.stimuli == 7
    assert list(tmp_path.iterdir()) == []


BAD_REQUESTS = {
    "unknown net": (dict(net="alexnet"), "unknown network 'alexnet'"),
    "unknown layer": (dict(layer="conv9"), "unknown layer 'conv9' for TinyNet"),
    "channel zero": (dict(channels=[0]), "1..16"),
    "channel as a word": (dict(channels=["6", "six"]), "got 'six'"),
    "channels None": (dict(channels=None), "channels takes"),
    "reversed range": (dict(channels="9-3"), "write 3-9"),
    "six channels without saving them": (dict(channels="1-6"), "add -save_maps"),
    "all without saving them": (dict(channels="all"), "16 channels: figures show at most 5"),
    "bad maps format": (dict(save_maps=True, maps_format="hdf5"), "-maps_format"),
    "maps format without save_maps": (dict(maps_format="zarr"), "needs -save_maps"),
    "reduce for the npz": (dict(save_maps=True, maps_reduce="float16"), "-maps_format zarr"),
    "bad reduction": (dict(save_maps=True, maps_format="zarr", maps_reduce="half"),
                      "-maps_reduce takes"),
    "gray of 2-D maps": (dict(save_maps=True, maps_format="zarr", maps_reduce=["gray"],
                              method="gradcam"), "already 2-D"),
    "resume without a store": (dict(save_maps=True, resume=True), "-resume continues"),
    "unknown method": (dict(method="smoothgrad"), "unknown method 'smoothgrad'"),
    "gradcam on an fc layer": (dict(method=Method("gradcam", cam_layer="fc1"), layer="fc2",
                                    channels=[3]), "fully connected"),
    "bad mode": (dict(mode="grey"), "-mode must be RGB or gray"),
    "bad cmap": (dict(mode="gray", cmap="nosuchmap"), "unknown colormap"),
    "vmin above vmax": (dict(vmin=5, vmax=1), "-vmin"),
    "nothing kept": (dict(out=None), "nothing would be kept"),
    "maps without out": (dict(out=None, show=True, save_maps=True), "-save_maps needs -out"),
    "batch size zero": (dict(batch_size=0), "-batch_size"),
    "bad precision": (dict(precision="half"), "-precision"),
    "not a stim file": (dict(stim=REPO / "examples" / "chelsea_cat.jpg"), ".stim.csv"),
    "missing stim file": (dict(stim="nope.stim.csv"), "nope.stim.csv"),
    "missing weights": (dict(weights="nope.safetensors"), "nope.safetensors"),
    "cluster without coordinator": (dict(num_processes=2), "-coordinator_address"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_fail_before_any_compute(case, tmp_path, tiny_weights, monkeypatch):
    changes, expected = BAD_REQUESTS[case]
    monkeypatch.chdir(tmp_path)

    def no_compute(*args, **kwargs):
        raise AssertionError("the run started although its request is bad")

    monkeypatch.setattr(pipeline, "Pipeline", no_compute)
    monkeypatch.setattr(pipeline, "load_net", no_compute)
    with pytest.raises(jaxsal.UsageError, match=re.escape(expected)):
        jaxsal.run(tiny_request(tiny_weights, **{"out": tmp_path / "out", **changes}))
    assert list(tmp_path.iterdir()) == []


def test_importing_and_validating_need_no_jax(tmp_path, tiny_weights):
    """`jaxsal.run`, `Request` and `RunReport` import no JAX (numpy and Pillow are the run's
    host side); validating a sound request reads the stimulus list and the weights without
    JAX, and a bad one fails without it."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import jaxsal\n"
        "jaxsal.run, jaxsal.Request, jaxsal.RunReport\n"
        "heavy = lambda: sorted(m for m in ('jax', 'flax', 'matplotlib', 'numpy')\n"
        "                       if m in sys.modules)\n"
        "print([m for m in heavy() if m != 'numpy'])\n"
        "import tiny_net\n"
        "from jaxsal.request import validate\n"
        "r = jaxsal.Request(net='TinyNet', layer='conv3', channels=[6], stim=sys.argv[2],\n"
        "                   weights=sys.argv[3], out='out')\n"
        "plan = validate(r)\n"
        "print(len(plan.stimuli.paths), plan.channels0, plan.method.name)\n"
        "try:\n"
        "    jaxsal.run(jaxsal.Request(net='TinyNet', layer='conv9', channels=[6],\n"
        "                              stim=sys.argv[2], out='out'))\n"
        "except jaxsal.UsageError as e:\n"
        "    print('UsageError', 'conv9' in str(e))\n"
        "print([m for m in heavy() if m != 'numpy'])\n")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "tests"), str(STIM),
                           str(tiny_weights)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "7 (5,) guided", "UsageError True", "[]"]
    assert not (tmp_path / "out").exists()


def test_request_from_flags_equals_the_python_request():
    flags_request = cli.parse_args(["dnn_saliency", "-net", "TinyNet", "-layer", "conv3", "-chn",
                                    "6", "14", "-stim", "x.stim.csv", "-out", "o", "-meth", "ig",
                                    "-ig_steps", "4", "-mode", "gray", "-vmin", "2"])
    assert flags_request == Request(net="TinyNet", layer="conv3", channels=[6, 14],
                                    stim="x.stim.csv", out="o", method=Method("ig", ig_steps=4),
                                    mode="gray", vmin=2.0)
    assert flags_request.channels == (6, 14) and flags_request.meth == "ig"


# ----------------------------------------------------------------------------------------------
# The flag table


def test_synopsis_lists_every_flag_once_and_reads_like_the_seed():
    text = cli.synopsis()
    layout = [item for line in cli.SYNOPSIS_LINES for item in line.replace("+", " ").split()]
    assert sorted(layout) == sorted(flag.name for flag in cli.FLAGS)
    for flag in cli.FLAGS:
        assert len(re.findall(rf"-{flag.name}[ \]\n]", text)) == 1, flag.name
        assert (f"[{flag.synopsis()}" in text) != flag.required or flag.name in (
            "coordinator_address", "num_processes", "process_id")
    assert text.startswith("usage: dnn_saliency [-h] -net Net -layer Layer -chn Channel "
                           "[Channel ...]\n                    -stim Stimulus [-meth Method]")
    assert "[-coordinator_address Host:Port -num_processes N -process_id I]" in text


def test_usage_and_absl_definitions_come_from_the_table():
    fv = cli.define_flags()
    assert set(fv) == {flag.name for flag in cli.FLAGS}
    usage = cli.usage_text(fv)
    for flag in cli.FLAGS:
        line = next(line for line in usage.splitlines() if line.startswith(f"  -{flag.name}"))
        assert flag.help_text in line
        assert ("(required)" in line) == flag.required
        assert fv[flag.name].default == flag.default_value
    assert fv["mode"].default == "RGB" and fv["meth"].default == "guided"
    assert fv["noise"].default == Method().noise and fv["profile"].default is False
    assert "TinyNet" in fv["net"].help  # the registry, read when the flags are defined


def test_every_request_and_method_field_has_exactly_one_flag():
    targets = {(flag.of, flag.target) for flag in cli.FLAGS}
    assert len(targets) == len(cli.FLAGS)
    request_fields = {f.name for f in dataclasses.fields(Request)} - {"method"}
    assert {t for of, t in targets if of == "request"} == request_fields
    method_fields = {f.name for f in dataclasses.fields(Method)}
    assert {t for of, t in targets if of == "method"} == method_fields
    assert {flag.name for flag in cli.FLAGS if flag.required} == {"net", "layer", "chn", "stim"}
    kinds = ("string", "integer", "float", "boolean", "list")
    assert all(isinstance(flag, Flag) and flag.kind in kinds for flag in cli.FLAGS)


def test_which_method_an_option_applies_to_is_read_from_the_methods_table():
    for name, info in METHODS.items():
        assert (name in method_flags.APPLIES_TO["smooth"]) == info.smoothable
        for option in ("baseline", "ig_steps", "ig_rule", "cam_layer"):
            assert (name in method_flags.APPLIES_TO[option]) == (option in info.options)


def test_every_flag_is_in_the_readme():
    """The README's command section: its synopsis names every flag, its table every flag but
    the multi-process ones (documented in their own section, with an example)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The command", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(dnn_saliency .*?)```", section, re.S).group(1)
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `-"))
    multi = {"coordinator_address", "num_processes", "process_id"}
    for flag in cli.FLAGS:
        assert re.search(rf"-{flag.name}\b", block), flag.name
        if flag.name in multi:
            assert re.search(rf"dnn_saliency .*-{flag.name} ", readme), flag.name
        else:
            assert re.search(rf"`-{flag.name}`", table), flag.name
