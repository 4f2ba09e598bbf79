"""The known result of the sanity checks, on real weights: AlexNet conv5 with the bundled
ImageNet conv weights and the example photos. Under cascading randomisation down to conv1,
vanilla gradients lose their maps (Spearman of |map| with the trained maps falls, and the signed
maps decorrelate entirely) while guided backprop keeps much of its picture (Adebayo et al.,
2018). Measured medians (docs/methods.md): at conv1, Spearman(|map|) vanilla 0.245, guided 0.341;
signed Spearman vanilla ~0.00, guided 0.23; at conv2 0.308 against 0.510. The test asserts the
ordering with margins, not the values. Also: the console script's bad input on AlexNet."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # AlexNet at 224: ~15 s

REPO = pathlib.Path(__file__).resolve().parents[1]
STIM = REPO / "examples" / "examples.stim.csv"
SCRIPT = pathlib.Path(sys.executable).with_name("dnn_saliency_check")


def test_guided_backprop_survives_randomisation_vanilla_does_not(weights_env):
    import jaxsal

    df = jaxsal.check("AlexNet", "conv5", [60, 125], STIM, ["vanilla", "guided"],
                      tests="mprt_cascading")
    median = df.groupby(["metric", "method", "step"])["value"].median()
    assert list(dict.fromkeys(df["step"])) == ["conv5", "conv4", "conv3", "conv2", "conv1"]
    for step in ("conv5", "conv4", "conv3", "conv2", "conv1"):
        gap = median["spearman_abs", "guided", step] - median["spearman_abs", "vanilla", step]
        assert gap > 0.05, (step, gap)
    assert median["spearman_abs", "guided", "conv2"] - median["spearman_abs", "vanilla", "conv2"] > 0.15
    assert abs(median["spearman", "vanilla", "conv1"]) < 0.05  # signs: random
    assert median["spearman", "guided", "conv1"] > 0.15
    assert median["spearman_abs", "guided", "conv5"] > 0.85  # conv5 alone barely matters to guided


def test_bad_input_through_the_console_script(tmp_path, weights_env):
    done = subprocess.run([str(SCRIPT), "-net", "AlexNet", "-layer", "conv5", "-chn", "1",
                           "-stim", str(STIM), "-rand_layers", "fc1", "-out", "out"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "above the target" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
