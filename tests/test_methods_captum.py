"""Parity of every attribution method with Captum (PyTorch's attribution library), float32.

Both sides use the same weights: the seeded random torchvision AlexNet of tests/conftest.py,
converted by jaxsal's converter. The torch side is tests/torch_nets.py's independent
AlexNet (nn.ReLU modules, not in place, so Captum's ReLU hooks apply), wrapped so that its
output is jaxsal's target (SPEC §4) for every channel at once: the spatial mean of each channel
(conv-like layers) or the units (fc layers), shape (N, C). Captum's `target=c - 1` then picks
channel c (1-based).

Like with like -- the conventions that differ, and what is compared:
* Saliency: Captum takes |gradient| by default; we compare with abs=False (signed).
* IntegratedGradients: the same baseline tensor, n_steps and quadrature. Gauss-Legendre is
  identical. Captum's 'riemann_trapezoid' weights (1/M with halved ends) sum to (M-1)/M, ours to
  1, so ours = Captum's x M/(M-1) exactly.
* NoiseTunnel (SmoothGrad): Captum draws its own torch noise, so its noise function is replaced
  for the call by one that adds jaxsal's noise (`jaxsal.core.smoothgrad.smoothgrad_noise`, laid
  out image-major as Captum's repeat_interleave). Everything else is Captum's code.
* LayerGradCam: relu_attributions=True, then LayerAttribution.interpolate(..., 'bilinear')
  (F.interpolate, align_corners=False: the same half-pixel convention as jax.image.resize).
* GuidedGradCam: interpolate_mode='bilinear' (Captum's default is 'nearest').

Tolerance: per-map relative L2 error < 1e-5 (deterministic methods and SmoothGrad with shared
noise).
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import LazyModule  # noqa: E402

from jaxsal.core import compiled_saliency  # noqa: E402
from jaxsal.core.smoothgrad import smoothgrad_noise  # noqa: E402
from jaxsal.methods import Method  # noqa: E402
from jaxsal.models import get_net_spec  # noqa: E402
from jaxsal.net import nest_params  # noqa: E402
from jaxsal.weights.conversion import from_torchvision  # noqa: E402
from jaxsal.stimuli import load_image, to_network_input  # noqa: E402
import torch_nets  # noqa: E402

pytestmark = pytest.mark.slow  # full-size AlexNet on both sides
captum_attr = LazyModule("captum.attr")

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5
CHANNELS = {"conv5": [1, 60], "conv2_maxpool": [7, 192], "fc3": [1, 540], "conv4": [3, 200]}


class ChannelTargets(torch.nn.Module):
    """(N, 3, S, S) -> (N, C): jaxsal's target for every channel of `layer` (SPEC §4)."""

    def __init__(self, net, layer):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x):
        out = self.net.forward_to(x, self.layer)
        return out.mean(dim=(2, 3)) if out.ndim == 4 else out


@pytest.fixture(scope="module")
def setup(torchvision_alexnet_checkpoint):
    _, state_dict = torchvision_alexnet_checkpoint
    spec = get_net_spec("AlexNet")
    params = {k: {n: jnp.asarray(a) for n, a in v.items()}
              for k, v in nest_params(from_torchvision(spec, state_dict)).items()}
    net = torch_nets.build("AlexNet", state_dict)
    photos = [REPO / "examples" / name for name in ("chelsea_cat.jpg", "coffee.jpg")]
    x = np.stack([to_network_input(load_image(p)) for p in photos])  # (N, S, S, 3)
    # Dither by ~1 grey level: flat patches (saturated sky, JPEG blocks) make exact max-pool
    # ties, where float32 rounding alone decides which pixel gets the gradient, differently in
    # XLA and torch. Real photographs have such patches; parity is about the methods.
    x = x + np.random.default_rng(0).normal(0, 1 / 255 / 0.226, x.shape).astype(np.float32)
    return spec, params, net, x


def ours(setup, layer, method, channels):
    spec, params, _, x = setup
    fn = compiled_saliency(spec, layer, method, "highest")
    return np.asarray(fn(params, jnp.asarray(x), jnp.asarray(np.asarray(channels) - 1)))


def theirs(setup, layer, channels, attribute):
    """Stack Captum's attributions per channel: attribute(model, x_nchw, target) -> (N, ...)."""
    _, _, net, x = setup
    model = ChannelTargets(net, layer)
    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return np.stack([attribute(model, inputs, c - 1).detach().numpy() for c in channels])


def relative_errors(a, b):
    k, n = b.shape[:2]
    a = a.reshape(k * n, -1).astype(np.float64)
    b = b.reshape(k * n, -1).astype(np.float64)
    norm = np.linalg.norm(b, axis=1)
    assert np.all(norm > 0), "a reference map is all zero: pick another channel"
    return np.linalg.norm(a - b, axis=1) / norm


def check(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = relative_errors(a, b)
    print(f"max relative error {err.max():.1e}")  # shown with pytest -s
    assert err.max() < TOL, err


GRADIENT_CASES = {
    "vanilla": lambda m, x, t: captum_attr.Saliency(m).attribute(x, target=t, abs=False),
    "guided": lambda m, x, t: captum_attr.GuidedBackprop(m).attribute(x, target=t),
    "deconv": lambda m, x, t: captum_attr.Deconvolution(m).attribute(x, target=t),
}


@pytest.mark.parametrize("layer", ["conv5", "conv2_maxpool", "fc3"])
@pytest.mark.parametrize("method", sorted(GRADIENT_CASES))
def test_gradient_methods(setup, method, layer):
    channels = CHANNELS[layer]
    check(ours(setup, layer, method, channels), theirs(setup, layer, channels, GRADIENT_CASES[method]))


def black_baseline(x_nchw, spec):
    value = torch.tensor([-m / s for m, s in zip(spec.preprocessing.mean, spec.preprocessing.std)], dtype=x_nchw.dtype)
    return value[None, :, None, None].expand_as(x_nchw).clone()


def captum_ig(setup, layer, channels, steps, captum_rule, baseline_of):
    def attribute(model, x, t):
        return captum_attr.IntegratedGradients(model).attribute(
            x, baselines=baseline_of(x), target=t, n_steps=steps, method=captum_rule)

    ref = theirs(setup, layer, channels, attribute)
    if captum_rule == "riemann_trapezoid":
        ref = ref * (steps / (steps - 1))  # Captum's trapezoid weights sum to (M-1)/M, ours to 1
    return ref


RULES = [("gausslegendre", "gausslegendre"), ("trapezoid", "riemann_trapezoid")]


@pytest.mark.parametrize("rule, captum_rule", RULES)
def test_integrated_gradients_black_baseline(setup, rule, captum_rule):
    """The public method with its black baseline, at a layer below the first max-pool.

    Why not deeper: both baselines are flat images. Near them the path's images are almost flat,
    max-pool windows hold (near-)ties, and float32 rounding differences between XLA and torch
    send the gradient through different pixels -- up to ~3 % per path point near the baseline,
    ~1e-7 once the contrast is up. Neither side is wrong; deeper layers are compared below from a
    baseline that keeps the contrast.
    """
    layer, channels, steps = "conv1_relu", [2, 60], 8
    spec = setup[0]
    ref = captum_ig(setup, layer, channels, steps, captum_rule, lambda x: black_baseline(x, spec))
    check(ours(setup, layer, Method("ig", ig_steps=steps, ig_rule=rule), channels), ref)


@pytest.mark.parametrize("rule, captum_rule", RULES)
def test_integrated_gradients_deep_layers(setup, rule, captum_rule):
    """jaxsal's IG machinery (`core.integrated_gradients`: path, quadrature, chunking, the
    product with x - x') against Captum's, from the baseline x' = x / 2 (every path point keeps
    at least half the image's contrast, so no max-pool near-ties)."""
    from jaxsal.core.gradients import gradient_maps
    from jaxsal.core.integrated_gradients import ig_nodes, integrated_gradients

    spec, params, _, x = setup
    layer = "conv5"
    channels, steps = CHANNELS[layer], 8
    ch0 = jnp.asarray(np.asarray(channels) - 1)

    def grads(z):
        return gradient_maps(spec, layer, "vanilla", "highest", params, z, ch0)

    fn = jax.jit(lambda z: integrated_gradients(grads, z / 2, *ig_nodes(rule, steps), z))
    ref = captum_ig(setup, layer, channels, steps, captum_rule, lambda z: z / 2)
    check(np.asarray(fn(jnp.asarray(x))), ref)


def test_smoothgrad_with_shared_noise(setup, monkeypatch):
    layer, channels, n = "conv2_maxpool", CHANNELS["conv2_maxpool"], 4
    method = Method("vanilla", smooth=n, noise=0.15, seed=3)
    x = setup[3]
    noise = np.asarray(smoothgrad_noise(jnp.asarray(x), method.noise, method.seed, jnp.arange(n)))
    # (n, N, S, S, 3) -> image-major (N * n, 3, S, S), the order of Captum's repeat_interleave
    shared = torch.from_numpy(np.ascontiguousarray(
        noise.transpose(1, 0, 4, 2, 3).reshape((-1, 3) + x.shape[1:3])))

    def add_shared_noise(inputs, stdev, samples):
        assert samples == n and inputs.shape[0] * n == shared.shape[0]
        return inputs.repeat_interleave(samples, dim=0) + shared

    from captum.attr._core.noise_tunnel import NoiseTunnel

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_shared_noise))

    def attribute(model, inputs, t):
        return captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
            inputs, nt_type="smoothgrad", nt_samples=n, stdevs=1.0, target=t, abs=False)

    check(ours(setup, layer, method, channels), theirs(setup, layer, channels, attribute))


def torch_module(setup, layer):
    return setup[2].module(layer)


@pytest.mark.parametrize("layer, cam_layer", [("fc3", "conv5"), ("conv4", "conv2")])
def test_gradcam(setup, layer, cam_layer):
    channels = CHANNELS[layer]
    size = setup[3].shape[1]

    def attribute(model, x, t):
        cam = captum_attr.LayerGradCam(model, torch_module(setup, cam_layer)).attribute(
            x, target=t, relu_attributions=True)
        return captum_attr.LayerAttribution.interpolate(cam, (size, size), "bilinear")[:, 0]

    ref = theirs(setup, layer, channels, attribute)
    assert ref.min() >= 0 and ref.max() > 0
    check(ours(setup, layer, Method("gradcam", cam_layer=cam_layer), channels), ref)


@pytest.mark.parametrize("layer, cam_layer", [("fc3", "conv5"), ("conv4", "conv2")])
def test_guided_gradcam(setup, layer, cam_layer):
    channels = CHANNELS[layer]

    def attribute(model, x, t):
        return captum_attr.GuidedGradCam(model, torch_module(setup, cam_layer)).attribute(
            x, target=t, interpolate_mode="bilinear")

    check(ours(setup, layer, Method("guided_gradcam", cam_layer=cam_layer), channels),
          theirs(setup, layer, channels, attribute))
