"""Parity of jaxsal's maps with an independent plain-PyTorch implementation (tests/torch_nets.py's
AlexNet) on the same random weights, saved with torch.save and converted by jaxsal's converter.

float64 on both sides: relative L2 error < 1e-9 per case. float32: median per-map relative error
< 1e-5 and no map above 5e-2 (max-pool near-ties may route a gradient to a neighbouring pixel).

Layers: one of each kind at the first, inner and last positions (PARITY_LAYERS: the first conv,
which jaxsal computes space-to-depth, its ReLU, a max-pool, an inner conv, the last max-pool,
the fc after the flatten, an fc ReLU and the output); the other layers are the same primitives
in between. Full AlexNet, hence `slow`; the fast tests of the core use TinyNet.

The float32 maps are computed here, through the public API, in the configuration the command
ships (its XLA CPU flag included: tests/conftest.py calls `jaxsal.tune_cpu()`). The float64 maps
are computed by tests/parity_float64_maps.py in one subprocess with XLA's default configuration:
jaxsal's flag keeps convolutions on XLA's Eigen path, which is fast in float32 but ~20x slower
than the default in float64 (measured: 2 vs 50 GFLOP/s on conv2), and the float64 cases were 7
of the suite's 14 minutes. The model and gradient code under test is the same; only XLA's
choice of convolution kernel differs.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jaxsal  # noqa: E402
from jaxsal.xla_config import EIGEN_CONV_FLAG, OPT_OUT_ENV  # noqa: E402
from jaxsal.stimuli import to_network_input  # noqa: E402
import torch_nets  # noqa: E402

METHODS = ("vanilla", "guided")
PARITY_LAYERS = ("conv1", "conv1_relu", "conv2_maxpool", "conv4", "conv5_maxpool", "fc1", "fc2_relu",
                 "fc3")
assert set(PARITY_LAYERS) <= set(jaxsal.models.get_net_spec("AlexNet").layer_names)


def channels_for(net, layer, torch_sd, x_nhwc):
    """First, last, and the most active channel for these images (so that at least one map is
    non-zero even where random weights leave units dead, e.g. after fc1's ReLU)."""
    reference = torch_nets.build("AlexNet", torch_sd)
    with torch.no_grad():
        out = reference.forward_to(torch.as_tensor(x_nhwc.transpose(0, 3, 1, 2)).float(), layer)
    score = out.mean(dim=(2, 3)) if out.ndim == 4 else out
    most_active = int(score.mean(dim=0).argmax()) + 1
    return [1, most_active, net.spec.layer(layer).width]


@pytest.fixture(scope="module")
def converted(torchvision_alexnet_checkpoint, tmp_path_factory):
    """The random torchvision checkpoint converted by jaxsal's converter, loaded as a Net."""
    from jaxsal.weights import convert_checkpoint

    src, state_dict = torchvision_alexnet_checkpoint
    dst = tmp_path_factory.mktemp("converted") / "alexnet.safetensors"
    convert_checkpoint(jaxsal.models.get_net_spec("AlexNet"), src, dst)
    net = jaxsal.load_net("AlexNet", weights=dst)
    assert net.weights.missing_stages(net.spec) == ()  # conv and fc weights
    torch_sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    return net, torch_sd


@pytest.fixture(scope="module")
def photos():
    """Four smooth, photo-like uint8 images of different sizes (one grayscale)."""
    rng = np.random.default_rng(1)
    out = []
    for h, w, c in [(240, 320, 3), (224, 224, 3), (300, 200, 3), (256, 256, 1)]:
        coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, c))
        img = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 12, (h, w, c))
        img = np.clip(img, 0, 255).astype(np.uint8)
        out.append(img[..., 0] if c == 1 else img)
    return out


def relative_errors(ours, ref):
    """Per-map (channel x image) relative L2 errors; an all-zero reference must be matched exactly."""
    k, n = ref.shape[:2]
    diff = np.linalg.norm((ours - ref).reshape(k * n, -1), axis=1)
    norm = np.linalg.norm(ref.reshape(k * n, -1), axis=1)
    assert np.all((norm > 0) | (diff == 0)), "a map that should be zero is not"
    return np.where(norm > 0, diff / np.where(norm > 0, norm, 1), 0.0)


@pytest.fixture(scope="module")
def float64_maps(converted, photos, tmp_path_factory):
    """(inputs, {layer: channels}, {"<layer>/<method>": maps}): jaxsal's float64 maps, computed
    in one subprocess with XLA's default configuration (see the module docstring)."""
    net, torch_sd = converted
    x = np.stack([to_network_input(jaxsal.stimuli.as_pil(p)) for p in photos[:3]]).astype(np.float64)
    channels = {layer: channels_for(net, layer, torch_sd, x) for layer in PARITY_LAYERS}
    folder = tmp_path_factory.mktemp("float64")
    np.save(folder / "x.npy", x)
    (folder / "channels.json").write_text(json.dumps(channels))
    env = dict(os.environ)
    env[OPT_OUT_ENV] = "0"
    flags = env.get("XLA_FLAGS", "").replace(EIGEN_CONV_FLAG, "").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    script = pathlib.Path(__file__).with_name("parity_float64_maps.py")
    done = subprocess.run([sys.executable, str(script), net.weights.source, str(folder)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(folder / "maps.npz") as maps:
        return x, channels, dict(maps)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", PARITY_LAYERS)
def test_float64_parity(converted, float64_maps, layer, method):
    _, torch_sd = converted
    x, channels, maps = float64_maps
    ours = maps[f"{layer}/{method}"]
    assert ours.dtype == np.float64
    ref = torch_nets.torch_saliency("AlexNet", torch_sd, x.transpose(0, 3, 1, 2), layer,
                                    channels[layer], method == "guided", torch.float64)
    assert ours.shape == ref.shape == (3, 3, 3, 224, 224)
    assert np.abs(ref).max() > 0
    err = relative_errors(ours, ref)
    assert err.max() < 1e-9, f"float64 {layer}/{method}: max relative error {err.max():.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", PARITY_LAYERS)
def test_float32_parity_through_api(converted, photos, layer, method):
    net, torch_sd = converted
    x = np.stack([to_network_input(jaxsal.stimuli.as_pil(p)) for p in photos])
    channels = channels_for(net, layer, torch_sd, x)
    # Batch size 3 for 4 images: the last batch is padded, and must not change the maps.
    ours = jaxsal.saliency(net, photos, layer, channels, method=method, batch_size=3)
    assert ours.dtype == np.float32 and ours.shape == (3, 4, 3, 224, 224)
    assert np.abs(ours).max() > 0
    ref = torch_nets.torch_saliency("AlexNet", torch_sd, x.transpose(0, 3, 1, 2), layer, channels,
                                    method == "guided", torch.float32)
    err = relative_errors(ours, ref)
    assert np.median(err) < 1e-5, f"float32 {layer}/{method}: median relative error {np.median(err):.3g}"
    assert err.max() < 5e-2, f"float32 {layer}/{method}: worst map relative error {err.max():.3g}"
