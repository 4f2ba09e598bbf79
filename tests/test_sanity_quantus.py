"""jaxsal's sanity checks against Quantus 0.6.0 (test-only) on TinyNet, the same networks, maps
and perturbations on both sides.

Quantus drives the plain-PyTorch TinyNet (tests/torch_nets.py) with the target unit as its
"class" output, and its own machinery everywhere: `MPRT` re-initialises the modules
(`reset_parameters`, seeded, top-down, cascading or independent), explains with a torch
gradient and compares with scipy's Spearman or scikit-image's SSIM; `PixelFlipping` perturbs in
the order of the attributions it is given and records the unit. jaxsal runs its own engine
(`jaxsal.sanity.engine.run`) on Quantus's re-initialised values, so both randomise the same
networks; the pixel orders given to Quantus are jaxsal's (each map's, and the random one), and
the baseline image is jaxsal's blur. Spearman and SSIM agree to |d| <= 1e-3, the curves to float
precision.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Quantus and torch: ~5 s of imports

torch = pytest.importorskip("torch")

import conftest  # noqa: E402
import tiny_net  # noqa: E402
import torch_nets  # noqa: E402
from jaxsal.sanity import curves, engine, plan  # noqa: E402
from jaxsal.sanity.similarity import SIMILARITIES, descending_positions, reduce_maps  # noqa: E402

quantus = conftest.LazyModule("quantus")

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = tiny_net.TINY
LAYER, CHANNELS, STEPS, SEED = "conv3", (2, 5), 16, 42
S, P = 32, 32 * 32


class Unit(torch.nn.Module):
    """A layer's units as a classifier's outputs (N, C): the channel means, as jaxsal's target."""

    def __init__(self, net, layer):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x):
        return self.net.forward_to(x, self.layer).mean(dim=(2, 3))


def torch_unit(guided: bool):
    net = torch_nets.TinyNet(guided)
    state = conftest.torchvision_layout(TINY, tiny_net.random_params())  # = tiny_weights
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return Unit(net, LAYER).eval()


def explainer(signed: bool):
    """Quantus's explain_func: the torch gradient of the unit, reduced over RGB as jaxsal does."""

    def explain(model, inputs, targets, **kwargs):  # noqa: ARG001
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
        unit = model(x)[torch.arange(len(x)), torch.as_tensor(np.asarray(targets)).long()]
        (grad,) = torch.autograd.grad(unit.sum(), x)
        g = grad.numpy()
        return g.sum(axis=1) if signed else np.abs(g).sum(axis=1)

    return explain


def ssim_2d(a, b, batched=False, **kwargs):
    """Quantus's ssim on the (S, S) maps MPRT flattens to (B, S*S)."""
    ssim = quantus.functions.similarity_func.ssim
    return np.array([ssim(x.reshape(S, S), y.reshape(S, S)) for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def check(tiny_weights):
    return plan.validate(plan.CheckRequest(
        net="TinyNet", layer=LAYER, channels=CHANNELS, stim=REPO / "examples/examples.stim.csv",
        methods=("vanilla", "guided"), steps=STEPS, weights=tiny_weights))


@pytest.fixture(scope="module")
def images(check):
    from jaxsal.stimuli import load_image, preprocess

    return np.stack([preprocess(load_image(p), TINY.preprocessing) for p in check.run.stimuli.paths])


@pytest.fixture(scope="module")
def quantus_draws():
    """Quantus's re-initialised values: after its full top-down cascade every module holds its
    reset values (each reset is seeded alone: torch.manual_seed(seed + 1), then
    reset_parameters), as jaxsal params per stage."""
    from jaxsal.weights.conversion import from_torchvision

    model = quantus.helpers.model.pytorch_model.PyTorchModel(torch_unit(False))
    *_, (_, randomised) = model.get_random_layer_generator(order="top_down", seed=SEED)
    state = {k.removeprefix("net."): v.detach().numpy().copy()
             for k, v in randomised.state_dict().items()}
    flat = from_torchvision(TINY, state)
    return {stage: {p.key: flat[p.key] for p in TINY.params if p.stage == stage}
            for stage in ("conv1", "conv2", "conv3")}


@pytest.fixture(scope="module")
def results(check, tiny_net, quantus_draws):
    import jax

    return engine.run(check, tiny_net, draws=jax.device_put(quantus_draws))


MPRT_CASES = {  # (method, mode): the metrics compared (each Quantus run costs ~1 s)
    ("vanilla", "cascading"): ("spearman_abs", "spearman", "ssim"),
    ("guided", "cascading"): ("spearman_abs", "ssim"),
    ("vanilla", "independent"): ("spearman_abs", "spearman"),
}


@pytest.mark.parametrize("method, mode", sorted(MPRT_CASES))
def test_mprt_equals_quantus(results, images, method, mode):
    x = images.transpose(0, 3, 1, 2)
    ours = results.similarity[(mode, method)]  # (L = conv3, conv2, conv1; K; N; metrics)
    order = "top_down" if mode == "cascading" else "independent"
    k, channel = 1, CHANNELS[1]  # the second channel: the channel axis is checked too
    for metric in MPRT_CASES[(method, mode)]:
        # Each map is divided by its own max, as jaxsal's ssim does (Quantus's default
        # normalise_by_max divides the whole batch by one max); ranks do not care.
        mprt = quantus.MPRT(layer_order=order, seed=SEED, abs=metric != "spearman",
                            normalise=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
                            similarity_func=ssim_2d if metric == "ssim" else None,
                            disable_warnings=True)
        scores = mprt(model=torch_unit(method == "guided"), x_batch=x,
                      y_batch=np.full(len(x), channel - 1), a_batch=None,
                      explain_func=explainer(signed=metric == "spearman"), channel_first=True,
                      device="cpu", batch_size=len(x))
        for module in ("net.classifier.3", "net.classifier.1"):  # above the target: no change
            np.testing.assert_allclose(scores[module], 1.0, atol=1e-6)
        theirs = np.array([scores[f"net.features.{i}"] for i in (5, 3, 0)])  # conv3 .. conv1
        mine = ours[:, k, :, SIMILARITIES.index(metric)]
        assert np.abs(mine - theirs).max() <= 1e-3, (metric, mine - theirs)


def quantus_curve(x_start, fill_from, positions, channel):
    """Quantus PixelFlipping from x_start towards fill_from (N, 3, S, S) in the pixel order
    `positions` (N, P), `STEPS` steps: (N, STEPS), the unit after each step.

    Quantus steps in features, a number that must divide S*S, while a jaxsal step is P/STEPS
    whole pixels (3 features each); so the attribution orders the features pixel by pixel, the
    three colours of a pixel in a row, and every third of Quantus's 3*STEPS points is a jaxsal
    step's."""
    n = len(x_start)
    rank = 3 * positions[:, None, :] + np.arange(3)[None, :, None]  # (N, 3, P), 0 = first
    a = -rank.reshape(n, 3, S, S).astype(np.float64)
    source = fill_from.reshape(n, -1)

    def replace(arr, indices, **kwargs):
        out = arr.copy()
        rows = np.arange(n)[:, None]
        out[rows, indices] = source[rows, indices]
        return out

    flipping = quantus.PixelFlipping(features_in_step=P // STEPS, abs=False, normalise=False,
                                     perturb_func=replace, disable_warnings=True)
    curve = flipping(model=torch_unit(False), x_batch=x_start, y_batch=np.full(n, channel - 1),
                     a_batch=a, channel_first=True, softmax=False, device="cpu", batch_size=n)
    return np.asarray(curve)[:, 2::3]


@pytest.mark.parametrize("test, method", [("deletion", "vanilla"), ("insertion", "vanilla"),
                                          ("deletion", "random"), ("insertion", "random")])
def test_curves_equal_quantus_pixel_flipping(results, images, tiny_net, test, method):
    import jax.numpy as jnp

    from jaxsal.core import compiled_saliency

    n = len(images)
    x = images.transpose(0, 3, 1, 2)
    blurred = np.asarray(curves.baseline_images(jnp.asarray(images), "blur")).transpose(0, 3, 1, 2)
    k, channel = 1, CHANNELS[1]
    if method == "random":
        positions = curves.random_positions(0, range(n), P)  # the engine's: rand_seed 0
    else:
        maps = compiled_saliency(TINY, LAYER, method, "highest")(
            tiny_net.params, images, np.asarray(CHANNELS, np.int32) - 1)
        positions = np.asarray(descending_positions(reduce_maps(maps, False)[0]))[k]  # (N, P)
    start, fill = (x, blurred) if test == "deletion" else (blurred, x)
    theirs = quantus_curve(start, fill, positions, channel)  # (N, STEPS)
    mine = results.curves[(test, method)][1:, k, :].T  # step 0 is the image itself
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())
