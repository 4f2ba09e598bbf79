"""The attribution methods checked against hand computations and mathematical identities.

Parity with Captum is in test_methods_captum.py; the CLI in test_cli_methods.py.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsal
from jaxsal.core import sampling
from jaxsal.core.integrated_gradients import baseline_image, ig_nodes, integrated_gradients
from jaxsal.core.relu_rules import deconv_relu, guided_relu
from jaxsal.core.smoothgrad import image_hashes, smoothgrad_noise
from jaxsal.errors import UsageError
from jaxsal.methods import METHODS, Method, as_method, default_cam_layer, map_shape, resolve
from jaxsal.models import get_net_spec
from jaxsal.models.network import build

SPEC = get_net_spec("AlexNet")
REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Backward rules, by hand


def test_deconv_relu_hand_computed():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0, 3.0])
    g = jnp.array([1.0, -1.0, 1.0, 1.0, -3.0, 0.25])
    y, vjp = jax.vjp(deconv_relu, x)
    np.testing.assert_array_equal(y, [0, 0, 0, 0.5, 2.0, 3.0])
    # g_in = g * 1[g > 0], whatever x was: x = -2 and x = 0 let their positive g through.
    np.testing.assert_array_equal(vjp(g)[0], [1.0, 0, 1.0, 1.0, 0, 0.25])


# y = w2 . relu(W1 x) at x = (1, 2, -1): h = W1 x = (2, -3, 1.5).
W1 = jnp.array([[1.0, 0.5, 0.0], [0.0, -1.0, 1.0], [0.5, 0.0, -1.0]])
W2 = jnp.array([1.0, 2.0, -3.0])
X = jnp.array([1.0, 2.0, -1.0])


@pytest.mark.parametrize("act, expected", [
    # g_h = w2 * 1[h > 0] = (1, 0, -3); dx = W1^T g_h = r1 - 3 r3
    (jax.nn.relu, [-0.5, 0.5, 3.0]),
    # g_h = w2 * 1[h > 0] * 1[w2 > 0] = (1, 0, 0); dx = r1
    (guided_relu, [1.0, 0.5, 0.0]),
    # g_h = w2 * 1[w2 > 0] = (1, 2, 0), the forward sign ignored; dx = r1 + 2 r2
    (deconv_relu, [1.0, -1.5, 2.0]),
], ids=["vanilla", "guided", "deconv"])
def test_two_layer_network_by_hand(act, expected):
    np.testing.assert_array_equal(W1 @ X, [2.0, -3.0, 1.5])
    grad = jax.grad(lambda x: W2 @ act(W1 @ x))(X)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Options and validation


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "smoothgrad"}, "unknown method"),
    ({"name": "ig", "ig_steps": 0}, "ig_steps must be at least 1"),
    ({"name": "ig", "ig_steps": 1, "ig_rule": "trapezoid"}, "at least 2 for the trapezoid"),
    ({"name": "ig", "ig_rule": "simpson"}, "unknown ig_rule"),
    ({"name": "vanilla", "smooth": -1}, "smooth"),
    ({"name": "vanilla", "smooth": 2, "noise": -0.1}, "noise"),
    ({"name": "vanilla", "smooth": 2, "noise": float("nan")}, "noise"),
    ({"name": "vanilla", "smooth": 2, "seed": -1}, "seed"),
    ({"name": "gradcam", "smooth": 4}, "SmoothGrad"),
    ({"name": "guided_gradcam", "smooth": 4}, "SmoothGrad"),
    ({"name": "ig", "baseline": "white"}, "baseline"),
    ({"name": "ig", "ig_steps": 2.5}, "whole number"),
])
def test_bad_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Method(**kwargs)


@pytest.mark.parametrize("layer, cam_layer, message", [
    ("fc3", "fc1", "fully connected"),
    ("fc3", "fc3_relu", "unknown -cam_layer"),
    ("conv3", "conv5", "above the target"),
])
def test_bad_cam_layers_are_usage_errors(layer, cam_layer, message):
    with pytest.raises(UsageError, match=message):
        resolve(Method("gradcam", cam_layer=cam_layer), SPEC, layer)


def test_default_cam_layer_is_the_last_conv_layer_at_or_below_the_target():
    assert default_cam_layer(SPEC, "fc3") == "conv5_maxpool"
    assert default_cam_layer(SPEC, "conv4") == "conv4"
    assert default_cam_layer(SPEC, "conv3_relu") == "conv3_relu"
    assert resolve("guided_gradcam", SPEC, "fc1").cam_layer == "conv5_maxpool"


def test_unused_options_are_dropped_so_equal_methods_share_a_compilation():
    a = resolve(Method("vanilla", ig_steps=7, baseline="zeros", seed=9), SPEC, "conv5")
    assert a == Method("vanilla") and hash(a) == hash(Method("vanilla"))
    assert resolve(Method("ig", smooth=2, seed=5), SPEC, "conv5").options() == {
        "name": "ig", "smooth": 2, "noise": 0.15, "seed": 5, "baseline": "black", "ig_steps": 32,
        "ig_rule": "gausslegendre"}


def test_method_object_and_keywords_are_not_mixed():
    assert as_method("ig", ig_steps=8) == Method("ig", ig_steps=8)
    assert as_method(Method("ig", ig_steps=8)) == Method("ig", ig_steps=8)
    with pytest.raises(UsageError, match="ig_steps"):
        as_method(Method("ig"), ig_steps=8)


def test_method_table_names_importable_implementations_and_known_rules():
    import importlib

    from jaxsal.core.relu_rules import RULES

    assert set(METHODS) == {"vanilla", "guided", "deconv", "ig", "gradcam", "guided_gradcam"}
    for name, info in METHODS.items():
        assert callable(importlib.import_module(info.implementation).maps), name
        assert info.rule in RULES, name
        assert info.smoothable == (name in ("vanilla", "guided", "deconv", "ig")), name
    assert [n for n, i in METHODS.items() if i.maps_2d] == ["gradcam"]
    assert Method("ig", ig_steps=5).evaluations_per_image == 5
    assert Method("guided").evaluations_per_image == 1


def test_map_shapes():
    assert map_shape(Method("gradcam"), 2, 5, 224) == (2, 5, 224, 224)
    assert map_shape(Method("guided_gradcam"), 2, 5, 224) == (2, 5, 3, 224, 224)
    assert Method("gradcam").map_axes == "channel, stimulus, y, x"


# ----------------------------------------------------------------------------------------------
# Integrated gradients: the quadrature


@pytest.mark.parametrize("rule, steps", [("gausslegendre", 2), ("gausslegendre", 5), ("trapezoid", 2),
                                         ("trapezoid", 9)])
def test_ig_nodes_integrate_exactly_what_they_should(rule, steps):
    alphas, weights = ig_nodes(rule, steps)
    assert alphas.shape == weights.shape == (steps,) and abs(weights.sum() - 1) < 1e-14
    assert np.all((alphas >= 0) & (alphas <= 1))
    degree = 2 * steps - 1 if rule == "gausslegendre" else 1
    for p in range(degree + 1):
        assert abs(np.sum(weights * alphas**p) - 1 / (p + 1)) < 1e-12


@pytest.mark.parametrize("rule", ["gausslegendre", "trapezoid"])
def test_ig_is_exact_for_a_quadratic_function(rule):
    """f(x) = sum x^2 has gradient 2x, linear along the path: IG = x^2 - x'^2 exactly."""
    images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 3)), jnp.float32)
    baseline = (-2.0, -1.0, 0.5)

    def grads(x):  # (B, S, S, 3) -> (K=1, B, 3, S, S)
        return jnp.transpose(2 * x, (0, 3, 1, 2))[None]

    ig = integrated_gradients(grads, baseline, *ig_nodes(rule, 4), images)
    b = np.asarray(baseline, np.float32)
    expected = (np.asarray(images) ** 2 - b**2).transpose(0, 3, 1, 2)[None]
    np.testing.assert_allclose(ig, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("baseline", ["black", "zeros"])
def test_ig_completeness(tiny_net, baseline):
    """Attributions sum to f(x) - f(x') within 1 % at M = 64, for the conv3 channels the
    photograph drives hardest (a channel the image barely changes makes the relative error
    meaningless: f(x) - f(x') ~ 0)."""
    from jaxsal.stimuli import load_image, preprocess

    spec = tiny_net.spec
    photo = REPO / "examples" / "chelsea_cat.jpg"
    x = preprocess(load_image(photo), spec.preprocessing)[None]
    b = np.broadcast_to(np.asarray(baseline_image(spec.preprocessing, baseline), np.float32), x.shape)
    model = build(spec, stop_at="conv3")
    target = jax.jit(lambda z: model.apply({"params": tiny_net.params}, z).mean(axis=(1, 2)))  # (N, C)
    delta = np.asarray(target(x) - target(b))[0]
    channels = [int(c) + 1 for c in np.argsort(-np.abs(delta))[:3]]
    ig = jaxsal.saliency(tiny_net, [photo], "conv3", channels, method="ig", ig_steps=64, baseline=baseline)
    sums = ig.reshape(len(channels), -1).sum(axis=1)
    expected = delta[np.asarray(channels) - 1]
    np.testing.assert_allclose(sums, expected, rtol=0.01)


def test_baseline_image_is_the_normalized_black_picture():
    from jaxsal.stimuli import as_pil, preprocess

    black = preprocess(as_pil(np.zeros((8, 8, 3), np.uint8)), SPEC.preprocessing)
    np.testing.assert_allclose(baseline_image(SPEC.preprocessing, "black"), black[0, 0], rtol=1e-6)
    assert baseline_image(SPEC.preprocessing, "zeros") == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------
# SmoothGrad


@pytest.fixture
def conv_net(tiny_net):
    """TinyNet with random weights (tests/tiny_net.py)."""
    return tiny_net


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(3)]


def test_smoothgrad_with_zero_noise_is_the_base_method(conv_net, images):
    plain = jaxsal.saliency(conv_net, images[:2], "conv2_relu", [4, 9], method="deconv")
    smooth = jaxsal.saliency(conv_net, images[:2], "conv2_relu", [4, 9], method="deconv", smooth=2,
                             noise=0.0)
    np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())


def test_smoothgrad_is_seeded_and_independent_of_batching_and_position(conv_net, images):
    def run(ims, **kw):
        return jaxsal.saliency(conv_net, ims, "conv2_relu", [4], method="guided", smooth=3, seed=7, **kw)

    together = run(images, batch_size=3)
    np.testing.assert_array_equal(together, run(images, batch_size=3))  # reproducible
    padded = run(images, batch_size=2)  # batches of 2, the last one padded
    reordered = run(images[::-1], batch_size=3)[:, ::-1]
    for other in (padded, reordered):
        np.testing.assert_allclose(other, together, rtol=1e-5, atol=1e-6 * np.abs(together).max())
    assert not np.allclose(together, jaxsal.saliency(conv_net, images, "conv2_relu", [4], method="guided"))


def test_smoothgrad_noise_statistics_and_layout():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 64, 64, 3)) * [[[[1.0]]], [[[3.0]]]], jnp.float32)
    noise_fn = jax.jit(smoothgrad_noise, static_argnums=(1, 2))
    noise = np.asarray(noise_fn(x, 0.2, 11, jnp.arange(4)))  # (samples, images, ...)
    assert noise.shape == (4, 2, 64, 64, 3)
    span = np.ptp(np.asarray(x).reshape(2, -1), axis=1)
    for i in range(2):
        assert abs(noise[:, i].std() / (0.2 * span[i]) - 1) < 0.02
        assert abs(noise[:, i].mean()) < 0.02 * 0.2 * span[i]
    assert not np.allclose(noise[0], noise[1])  # fresh noise per sample
    # Sample s is the same however the samples are chunked.
    np.testing.assert_array_equal(np.asarray(noise_fn(x, 0.2, 11, jnp.array([2, 0]))[0]), noise[2])
    # The noise of an image does not depend on the other images of the batch; the seed matters.
    np.testing.assert_array_equal(np.asarray(noise_fn(x[::-1], 0.2, 11, jnp.arange(4)))[:, 1],
                                  noise[:, 0])
    assert not np.allclose(np.asarray(noise_fn(x, 0.2, 12, jnp.arange(4))), noise)


def test_image_hashes_depend_on_the_pixels_only():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), jnp.float32)
    h = np.asarray(image_hashes(x))
    assert h.shape == (3, 2) and h.dtype == np.uint32 and len({tuple(r) for r in h}) == 3
    np.testing.assert_array_equal(np.asarray(image_hashes(x[::-1])), h[::-1])
    assert tuple(np.asarray(image_hashes(x.at[0, 3, 3, 1].add(1e-3)))[0]) != tuple(h[0])


def test_ig_and_smoothgrad_compose(conv_net, images):
    maps = jaxsal.saliency(conv_net, images[:1], "conv2", [4], method="ig", ig_steps=3, smooth=2)
    assert maps.shape == (1, 1, 3, 32, 32) and np.abs(maps).max() > 0


# ----------------------------------------------------------------------------------------------
# Grad-CAM


def test_gradcam_shapes_sign_and_guided_product(conv_net, images):
    cam = jaxsal.saliency(conv_net, images[:2], "conv3", [1, 14], method="gradcam", cam_layer="conv2")
    assert cam.shape == (2, 2, 32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() > 0
    guided = jaxsal.saliency(conv_net, images[:2], "conv3", [1, 14], method="guided")
    both = jaxsal.saliency(conv_net, images[:2], "conv3", [1, 14], method="guided_gradcam", cam_layer="conv2")
    assert both.shape == (2, 2, 3, 32, 32)
    np.testing.assert_allclose(both, guided * cam[:, :, None], rtol=1e-5, atol=1e-6 * np.abs(both).max())


def test_gradcam_at_the_target_layer_is_the_rectified_channel(conv_net, images):
    """cam_layer = target (conv): d mean(A_c) / dA = 1/(HW) on channel c, so alpha = 1/(HW) there
    and 0 elsewhere: cam = relu(A_c) / (HW), upsampled."""
    from jaxsal.stimuli import as_pil, preprocess

    spec = conv_net.spec
    cam = jaxsal.saliency(conv_net, images[:1], "conv3", [5], method="gradcam")
    x = preprocess(as_pil(images[0]), spec.preprocessing)[None]
    a = build(spec, stop_at="conv3").apply({"params": conv_net.params}, x)[0, :, :, 4]  # (7, 7)
    assert a.shape == (7, 7)
    expected = jax.image.resize(jax.nn.relu(a) / 49.0, (32, 32), "bilinear")
    np.testing.assert_allclose(cam[0, 0], expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()))


def test_api_rejects_bad_combinations_before_computing(conv_net):
    with pytest.raises(UsageError, match="fully connected"):
        jaxsal.saliency(conv_net, [np.zeros((8, 8, 3), np.uint8)], "fc2", [1], method="gradcam",
                        cam_layer="fc1")
    with pytest.raises(UsageError, match="above the target"):
        jaxsal.saliency(conv_net, [np.zeros((8, 8, 3), np.uint8)], "conv2", [1], method="gradcam",
                        cam_layer="conv3")
    with pytest.raises(UsageError, match="ig_steps"):
        jaxsal.saliency(conv_net, [np.zeros((8, 8, 3), np.uint8)], "conv1", [1], method="ig",
                        ig_steps=0)


@pytest.mark.slow
def test_passes_chunked_rolled_or_unrolled_give_the_same_maps(conv_net, images, monkeypatch):
    """SmoothGrad over IG in one pass, in many unrolled passes, and in a rolled scan."""
    from jaxsal.core import _compiled

    def run():
        _compiled.cache_clear()  # the chunking constants are read when tracing
        return jaxsal.saliency(conv_net, images[:2], "conv1_relu", [3], method="ig", ig_steps=4,
                               smooth=2, seed=1)

    one_pass = run()
    monkeypatch.setattr(sampling, "CHUNK_IMAGES", 2)  # one sample / path point per pass
    assert sampling.samples_per_pass(2, 2, inner=4) == 1 and sampling.samples_per_pass(4, 2) == 1
    unrolled = run()
    monkeypatch.setattr(sampling, "MAX_UNROLLED_PASSES", 1)
    rolled = run()
    monkeypatch.undo()
    _compiled.cache_clear()
    for other in (unrolled, rolled):
        np.testing.assert_allclose(other, one_pass, rtol=1e-5, atol=1e-6 * np.abs(one_pass).max())
