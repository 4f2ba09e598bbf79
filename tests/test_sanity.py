"""Sanity checks (jaxsal.sanity, dnn_saliency_check) on TinyNet: each similarity and curve
against a hand computation, the randomisation's parameter sets, bad input (one line, exit 2,
nothing written; validation only, so fast), and -- in the slow tier -- the command and the API
end to end. Quantus parity: test_sanity_quantus.py; the known result on AlexNet and the console
script's bad input: test_sanity_alexnet.py."""
from __future__ import annotations

import math
import pathlib
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import tiny_net
from jaxsal.errors import UsageError
from jaxsal.sanity import command, curves, frame, randomise, similarity, stages

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = tiny_net.TINY


# --- similarities, by hand ------------------------------------------------------------------

def test_spearman_with_ties_by_hand():
    a = np.array([[1.0, 2.0], [2.0, 4.0]], np.float32)  # ranks 1, 2.5, 2.5, 4
    b = np.array([[4.0, 3.0], [2.0, 1.0]], np.float32)  # ranks 4, 3, 2, 1
    # centred ranks (-1.5, 0, 0, 1.5) and (1.5, .5, -.5, -1.5): r = -4.5 / sqrt(4.5 * 5)
    assert float(similarity.spearman(a, b)) == pytest.approx(-3 / math.sqrt(10), abs=1e-6)
    assert np.isnan(float(similarity.spearman(a, np.ones_like(a))))  # a constant map


def test_ssim_one_window_by_hand():
    rng = np.random.default_rng(0)
    a = rng.random((7, 7)).astype(np.float32)
    b = (a + rng.random((7, 7))).astype(np.float32)
    x, y = a / a.max(), b / b.max()  # each divided by its max; one 7 x 7 window
    r = max(x.max(), y.max()) - min(x.min(), y.min())
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    vxy = ((x - mx) * (y - my)).sum() / 48
    expected = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert float(similarity.ssim(a, b)) == pytest.approx(expected, abs=1e-5)
    assert float(similarity.ssim(a, 3 * a)) == pytest.approx(1.0, abs=1e-6)


def test_topk_overlap_and_positions_by_hand():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)  # top 4: pixels 15, 14, 13, 12
    b = a.copy()
    b.flat[[15, 0]] = b.flat[[0, 15]]  # pixel 15 falls to the bottom, pixel 0 rises to the top
    assert similarity.topk_count(16, 25) == 4
    assert float(similarity.topk_overlap(a, b, 4)) == pytest.approx(3 / 4)  # 14, 13, 12 shared
    assert float(similarity.topk_overlap(a, a[::-1, ::-1], 4)) == 0
    ties = np.array([[1, 3], [3, 0]], np.float32)  # equal values in pixel order
    assert np.asarray(similarity.descending_positions(ties)).tolist() == [2, 0, 1, 3]


def test_maps_reduce_over_colour():
    m = np.array([[[[1.0]], [[-2.0]], [[0.5]]]], np.float32)  # (1, 3, 1, 1)
    magnitude, signed = similarity.reduce_maps(m, maps_2d=False)
    assert float(magnitude[0, 0, 0]) == 3.5 and float(signed[0, 0, 0]) == -0.5


# --- curves, by hand ------------------------------------------------------------------------

def test_normalised_curve_and_area_by_hand():
    raw = np.array([5.0, 3.0, 2.0, 1.0])
    deletion = curves.normalise(raw, insert=False)
    assert deletion.tolist() == [1.0, 0.5, 0.25, 0.0]
    assert curves.area(deletion, [0, 1 / 3, 2 / 3, 1]) == pytest.approx((0.75 + 0.375 + 0.125) / 3)
    insertion = curves.normalise(raw[::-1], insert=True)
    assert insertion.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert np.isnan(curves.normalise(np.array([2.0, 1.0, 2.0]), insert=False)).all()
    assert curves.step_counts(10, 4).tolist() == [0, 2, 5, 7, 10]


def test_blur_baseline():
    k = curves.blur_kernel(224)
    assert k.sum() == pytest.approx(1, abs=1e-6) and len(k) == 31 and k.argmax() == 15
    flat = np.full((1, 32, 32, 3), 0.7, np.float32)
    assert np.allclose(np.asarray(curves.blur(flat)), 0.7, atol=1e-6)
    assert not np.asarray(curves.baseline_images(flat, "mean")).any()


def test_masked_targets_by_hand(tiny_net):
    """Each step's input built pixel by pixel here, its unit computed by a plain forward."""
    import functools

    import jax
    import jax.numpy as jnp

    from jaxsal.core.targets import target_values
    from jaxsal.models.network import build

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
    base = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
    order = rng.permutation(32 * 32)  # pixel order: order[j] is the j-th pixel to go
    positions = np.argsort(order).astype(np.int32)[None, None]  # (R=1, B=1, P)
    counts = np.array([0, 300, 1024], np.int32)
    channels0 = np.array([2, 5], np.int32)
    masked_targets = jax.jit(functools.partial(curves.masked_targets, TINY, "conv2_relu",
                                               "highest"))
    got = {insert: np.asarray(masked_targets(tiny_net.params, x, base, positions, counts, insert,
                                             channels0))[:, 0, 0] for insert in (False, True)}
    model = build(TINY, "conv2_relu")
    forward = jax.jit(lambda inputs: target_values(TINY.layer("conv2_relu"), model.apply(
        {"params": tiny_net.params}, inputs), jnp.asarray(channels0)))
    for c, n in enumerate(counts):  # (C, K)
        for insert in (False, True):
            masked = (base if insert else x).copy().reshape(-1, 3)
            masked[order[:n]] = (x if insert else base).reshape(-1, 3)[order[:n]]
            want = np.asarray(forward(masked.reshape(x.shape)))[:, 0]
            np.testing.assert_allclose(got[insert][c], want, rtol=1e-5, atol=1e-6)


# --- randomisation --------------------------------------------------------------------------

def test_stages_from_the_target_down_and_their_laws():
    assert stages.randomisable(TINY, "conv3_maxpool") == ("conv3", "conv2", "conv1")
    assert stages.above(TINY, "conv3") == ("fc1", "fc2")
    assert stages.select(TINY, "conv3", ["conv1", "conv3"]) == ("conv3", "conv1")
    rules = stages.reinit_rules(TINY, "conv2")
    bound = 1 / math.sqrt(3 * 3 * 8)  # fan_in of a 3 x 3 kernel over 8 channels
    assert rules["conv2.kernel"] == stages.Reinit("uniform", pytest.approx(bound))
    assert rules["conv2.bias"] == stages.Reinit("uniform", pytest.approx(bound))
    for bad, says in (("fc1", "above the target"), ("conv1_relu", "no parameters"),
                      ("conv9", "unknown layer")):
        with pytest.raises(UsageError, match=says):
            stages.select(TINY, "conv3", [bad])


def test_parameter_sets_cascade_and_stand_alone(tiny_net):
    draws = randomise.draw_on_device(TINY, ("conv3", "conv2"), seed=7)
    again = randomise.draw(TINY, "conv2", seed=7)
    np.testing.assert_array_equal(np.asarray(draws["conv2"]["conv2.kernel"]), again["conv2.kernel"])
    assert not np.array_equal(again["conv2.kernel"], randomise.draw(TINY, "conv2", 8)["conv2.kernel"])
    assert np.abs(again["conv2.kernel"]).max() <= 1 / math.sqrt(72)
    p = tiny_net.params
    cascade = dict(randomise.parameter_sets(p, ("conv3", "conv2"), draws, "cascading"))
    alone = dict(randomise.parameter_sets(p, ("conv3", "conv2"), draws, "independent"))
    assert cascade["conv2"]["conv3"]["kernel"] is draws["conv3"]["conv3.kernel"]
    assert alone["conv2"]["conv3"]["kernel"] is p["conv3"]["kernel"]
    for sets in (cascade, alone):
        assert sets["conv2"]["conv2"]["bias"] is draws["conv2"]["conv2.bias"]
        assert sets["conv2"]["conv1"] is p["conv1"]  # untouched layers are shared, not copied
    assert p["conv3"]["kernel"] is not draws["conv3"]["conv3.kernel"]  # the trained set intact


# --- the command and the API, end to end ----------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    shutil.copytree(REPO / "examples", folder / "examples")
    return folder


@pytest.fixture
def check_cmd(monkeypatch, capsys, workdir):
    """dnn_saliency_check run in this process (TinyNet registered), in `workdir`."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    def run(args):
        capsys.readouterr()
        rc = command.main(["dnn_saliency_check", *map(str, args)])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return run


ARGS = ["-net", "TinyNet", "-layer", "conv3", "-chn", "2", "5", "-stim",
        "examples/examples.stim.csv", "-meth", "vanilla,guided", "-steps", "4"]


@pytest.mark.slow  # ~6 compilations and three figures: too much for the fast tier's budget
def test_command_writes_the_table_and_figures(check_cmd, workdir, tiny_weights):
    done = check_cmd([*ARGS, "-weights", tiny_weights, "-out", "out"])
    assert done.returncode == 0, done.stderr
    out = workdir / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "TinyNet_conv3_check.csv", "TinyNet_conv3_check_curves.jpg",
        "TinyNet_conv3_check_grid.jpg", "TinyNet_conv3_check_similarity.jpg"]
    assert "fc1, fc2 are above conv3" in done.stderr and "mprt_cascading" in done.stdout
    df = pd.read_csv(out / "TinyNet_conv3_check.csv", keep_default_na=False)
    assert tuple(df.columns) == frame.COLUMNS
    n, k = 7, 2
    count = df.groupby(["test", "metric"]).size().to_dict()
    assert count[("mprt_cascading", "spearman_abs")] == 2 * 3 * k * n  # methods x layers x ...
    assert count[("deletion", "normalised")] == 3 * 5 * k * n  # vanilla, guided, random x steps
    assert count[("insertion", "auc")] == 3 * k * n
    assert set(df["method"]) == {"vanilla", "guided", "random"}
    assert (df[df["metric"] == "auc"]["step"] == "").all()
    values = pd.to_numeric(df["value"])
    sims = df["test"].str.startswith("mprt") & (df["metric"] != "ssim")
    assert values[sims].between(-1, 1).all()

    # conv3 alone is the first cascading step: the same draws, the same numbers
    def layer(test):
        rows = df[(df["test"] == test) & (df["step"] == "conv3")]
        return rows.sort_values(["method", "channel", "stim_id", "metric"])["value"].to_numpy()

    np.testing.assert_array_equal(layer("mprt_cascading"), layer("mprt_independent"))

    # the API gives the same table, in batches of 3 (the last one padded)
    import jaxsal

    api = jaxsal.check("TinyNet", "conv3", [2, 5], "examples/examples.stim.csv",
                       ["vanilla", "guided"], steps=4, weights=tiny_weights,
                       tests="mprt_cascading,deletion", batch_size=3)
    mine = df[df["test"].isin(["mprt_cascading", "deletion"])]
    assert len(api) == len(mine)
    assert (api["stim_id"].to_numpy() == mine["stim_id"].to_numpy()).all()
    np.testing.assert_allclose(api["value"].to_numpy(), pd.to_numeric(mine["value"]).to_numpy(),
                               rtol=1e-5, atol=1e-5)


BAD = {  # flag -> value replacing or adding to ARGS; what the one line says
    "unknown test": ({"-tests": "mprt,deletion"}, "unknown test(s) 'mprt'"),
    "layer above the target": ({"-rand_layers": "fc1"}, "above the target"),
    "layer without parameters": ({"-rand_layers": "conv2,conv1_relu"}, "no parameters"),
    "rand_layers without mprt": ({"-rand_layers": "conv2", "-tests": "deletion"}, "-rand_layers"),
    "zero steps": ({"-steps": "0"}, "steps (-steps) must be a whole number >= 1"),
    "more steps than pixels": ({"-steps": "2000"}, "at most one step per pixel"),
    "topk": ({"-topk": "0"}, "percentage"),
    "fill": ({"-fill": "white"}, "blur or mean"),
    "method twice": ({"-meth": "guided,vanilla,guided"}, "more than once"),
    "unknown method": ({"-meth": "vanilla,smoothgrad"}, "smoothgrad"),
    "option of no listed method": ({"-ig_steps": "8"}, "-ig_steps applies to -meth ig"),
    "output is a file": ({"-out": "examples/coffee.jpg"}, "is not a folder"),
}


def _with(args, flags):
    args = list(args)
    for flag, value in flags.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_nothing_written(case, check_cmd, workdir, tiny_weights):
    flags, expected = BAD[case]
    done = check_cmd(_with([*ARGS, "-weights", tiny_weights, "-out", "bad_out"], flags))
    assert done.returncode == 2, (case, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnn_saliency_check: error:"), done.stderr
    assert expected in lines[0], lines[0]
    assert not (workdir / "bad_out").exists()


@pytest.mark.slow  # computes before it writes
def test_a_failed_write_leaves_nothing(check_cmd, workdir, tiny_weights, monkeypatch):
    """Figures first, the CSV last; when one cannot be written, those already written go."""
    from jaxsal.sanity import frame as frames

    def full_disk(table, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frames, "write_csv", full_disk)
    done = check_cmd(_with([*ARGS, "-weights", tiny_weights, "-out", "full"],
                           {"-tests": "deletion"}))
    assert done.returncode == 2 and "No space left on device" in done.stderr
    assert list((workdir / "full").iterdir()) == []


def test_help_lists_every_flag(check_cmd):
    done = check_cmd(["-help"])  # the console script itself: test_sanity_alexnet.py
    assert done.returncode == 0, done.stderr
    for word in ("usage: dnn_saliency_check", "-tests", "-steps", "-fill", "-topk",
                 "-rand_layers", "-rand_seed", "-meth", "-ig_steps", "-chn", "-weights"):
        assert word in done.stdout
