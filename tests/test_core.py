"""The saliency core's building blocks, checked against hand computations and textbook forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsal
from jaxsal.errors import UsageError
from jaxsal.models import get_net_spec
from jaxsal.core.targets import target_cotangents
from jaxsal.core.relu_rules import guided_relu
from jaxsal.models.primitives import conv_space_to_depth, max_pool
from jaxsal.net import Net, nest_params
from jaxsal.weights import Weights


def normal(seed, shape):
    """Seeded float32 normals from NumPy (eager jax.random compiles per shape: seconds each)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@jax.jit  # one compilation instead of dozens of eager dispatches of the custom VJP
def max_pool_3x3_s2(x):
    return max_pool(x, 3, 2)


def test_guided_relu_hand_computed():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0, 3.0])
    g = jnp.array([1.0, -1.0, 1.0, 1.0, -3.0, 0.25])
    y, vjp = jax.vjp(guided_relu, x)
    np.testing.assert_array_equal(y, [0, 0, 0, 0.5, 2.0, 3.0])
    # g_in = g * 1[x > 0] * 1[g > 0]: only x=0.5 (g=1) and x=3 (g=0.25) pass.
    np.testing.assert_array_equal(vjp(g)[0], [0, 0, 0, 1.0, 0, 0.25])


def test_guided_relu_is_not_linear_in_the_cotangent():
    x = jnp.array([1.0, 1.0])
    _, vjp = jax.vjp(guided_relu, x)
    a, b = jnp.array([1.0, -1.0]), jnp.array([-1.0, 2.0])
    assert not np.allclose(vjp(a + b)[0], vjp(a)[0] + vjp(b)[0])


def test_vanilla_relu_derivative_is_zero_at_zero():
    assert jax.grad(jax.nn.relu)(0.0) == 0.0
    assert jax.grad(jax.nn.relu)(1e-30) == 1.0


def reference_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


@pytest.mark.parametrize("shape", [(2, 13, 13, 5), (1, 55, 55, 3), (2, 8, 9, 2)])
def test_max_pool_matches_reduce_window(shape):
    x = normal(0, shape)
    y, vjp = jax.vjp(max_pool_3x3_s2, x)
    y_ref, vjp_ref = jax.vjp(reference_pool, x)
    np.testing.assert_array_equal(y, y_ref)
    g = normal(1, y.shape)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=0, atol=1e-6)


def test_max_pool_ties_go_to_the_first_maximum_in_scan_order():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 0, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)
    _, vjp = jax.vjp(max_pool_3x3_s2, x)
    grad = np.asarray(vjp(jnp.ones((1, 1, 1, 1)))[0])[0, :, :, 0]
    expected = np.zeros((3, 3))
    expected[0, 2] = 1.0  # row-major scan: (0, 2) comes before (2, 0), as in PyTorch
    np.testing.assert_array_equal(grad, expected)


def test_max_pool_under_vmap_of_cotangents():
    x = normal(2, (2, 7, 7, 3))
    _, vjp = jax.vjp(max_pool_3x3_s2, x)
    gs = normal(3, (4, 2, 3, 3, 3))
    batched = jax.vmap(vjp)(gs)[0]
    for i in range(4):
        np.testing.assert_array_equal(batched[i], vjp(gs[i])[0])


@pytest.mark.parametrize("size", [224, 227, 64])
def test_space_to_depth_conv_equals_strided_conv(size):
    x = normal(0, (2, size, size, 3))
    k = normal(1, (11, 11, 3, 8))

    def plain(x):
        return lax.conv_general_dilated(x, k, (4, 4), ((2, 2), (2, 2)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)

    def s2d(x):
        return conv_space_to_depth(x, k, 4, 2, lax.Precision.HIGHEST)

    y, vjp = jax.vjp(s2d, x)
    y_ref, vjp_ref = jax.vjp(plain, x)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    g = normal(2, y.shape)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-5, atol=1e-4)


def test_target_cotangents_are_the_gradient_of_the_target():
    spec = get_net_spec("AlexNet")
    conv = spec.layer("conv5")
    cot = target_cotangents(conv, jnp.array([0, 9]), 2, jnp.float32)
    assert cot.shape == (2, 2, 13, 13, 256)
    np.testing.assert_allclose(cot[1, 1, 4, 4, 9], 1 / 169)
    assert float(cot[1].sum()) == pytest.approx(2.0)  # 2 images x mean weights summing to 1
    assert float(cot[1, :, :, :, 8].sum()) == 0
    fc = spec.layer("fc3")
    cot = target_cotangents(fc, jnp.array([539]), 3, jnp.float32)
    assert cot.shape == (1, 3, 1000) and float(cot[0, 2, 539]) == 1.0 and float(cot.sum()) == 3.0


@pytest.mark.parametrize("layer", ["conv5", "fc3"])
def test_target_cotangents_are_the_gradient_of_target_values(layer):
    from jaxsal.core.targets import target_values

    info = get_net_spec("AlexNet").layer(layer)
    shape = (2,) + (info.shape[1:] + info.shape[:1] if info.kind == "conv" else info.shape)
    act = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    channels0 = jnp.array([3, 0, 3])
    values = target_values(info, act, channels0)
    assert values.shape == (3, 2)
    expected = act.mean(axis=(1, 2)) if info.kind == "conv" else act
    np.testing.assert_allclose(values, np.asarray(expected)[:, [3, 0, 3]].T, rtol=1e-6)
    grads = jax.vmap(lambda c: jax.grad(lambda a: target_values(info, a, c[None]).sum())(act))(
        channels0)
    np.testing.assert_allclose(grads, target_cotangents(info, channels0, 2, jnp.float32),
                               rtol=1e-6, atol=1e-9)


def test_unknown_layer_and_net_list_valid_names():
    spec = get_net_spec("AlexNet")
    with pytest.raises(UsageError, match="conv5_maxpool"):
        spec.layer("conv6")
    with pytest.raises(UsageError, match="AlexNet"):
        get_net_spec("alexnet")


@pytest.mark.parametrize("layer,bad", [("conv1", [0]), ("conv1", [65]), ("fc3", [1001, -1]), ("conv5", [257])])
def test_channel_range_is_checked(layer, bad):
    spec = get_net_spec("AlexNet")
    with pytest.raises(UsageError) as err:
        spec.check_channels(layer, [1] + bad)
    width = spec.layer(layer).width
    assert f"1..{width}" in str(err.value) and str(bad[0]) in str(err.value)


def test_max_pool_with_padding_matches_reduce_window():
    x = normal(4, (2, 9, 9, 3))
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))

    def reference(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)

    y, vjp = jax.vjp(jax.jit(lambda x: max_pool(x, 3, 2, 1)), x)
    y_ref, vjp_ref = jax.vjp(reference, x)
    np.testing.assert_array_equal(y, y_ref)
    g = normal(5, y.shape)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=0, atol=1e-6)


def test_batched_equals_per_image(tiny_net):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + 6 * i, 24, 3), dtype=np.uint8) for i in range(3)]
    together = jaxsal.saliency(tiny_net, images, "conv3", [3, 3, 10], batch_size=2)
    assert together.shape == (3, 3, 3, 32, 32)
    np.testing.assert_array_equal(together[0], together[1])  # duplicate channels are allowed
    for i, image in enumerate(images):
        alone = jaxsal.saliency(tiny_net, [image], "conv3", [3, 3, 10])
        np.testing.assert_allclose(together[:, i], alone[:, 0], rtol=1e-5, atol=1e-7 * np.abs(alone).max())


def test_relu_target_guided_equals_vanilla(tiny_net):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # conv1_relu is the only ReLU below this target, and its cotangent is positive (SPEC §5).
    guided = jaxsal.saliency(tiny_net, [image], "conv1_relu", [5], method="guided")
    vanilla = jaxsal.saliency(tiny_net, [image], "conv1_relu", [5], method="vanilla")
    np.testing.assert_array_equal(guided, vanilla)
    guided = jaxsal.saliency(tiny_net, [image], "conv3", [5], method="guided")
    vanilla = jaxsal.saliency(tiny_net, [image], "conv3", [5], method="vanilla")
    assert not np.allclose(guided, vanilla)


def test_fc_layer_without_fc_weights_names_the_fix(tiny_net):
    conv_only = {k: v for k, v in tiny_net.weights.params.items() if not k.startswith("fc")}
    weights = Weights(params=conv_only, source="conv-only.safetensors", sha256="0" * 64,
                      provenance={})
    assert weights.missing_stages(tiny_net.spec, "fc2") == ("fc1", "fc2")
    assert weights.missing_stages(tiny_net.spec, "conv3") == ()
    net = Net(spec=tiny_net.spec, weights=weights, params=tiny_net.params)
    with pytest.raises(UsageError, match="jaxsal-convert --download") as err:
        jaxsal.saliency(net, [np.zeros((8, 8, 3), np.uint8)], "fc2", [4])
    assert "needs the weights of fc1, fc2" in str(err.value)


def test_saliency_is_the_function_of_jaxsal_api(tiny_net):
    import importlib.util

    import jaxsal.api

    assert jaxsal.saliency is jaxsal.api.saliency and callable(jaxsal.saliency)
    assert importlib.util.find_spec("jaxsal.saliency") is None  # no module of that name any more
    image = np.zeros((32, 32, 3), np.uint8)
    assert jaxsal.saliency(tiny_net, [image], "conv1", [1]).shape == (1, 1, 3, 32, 32)


def test_nest_params():
    assert nest_params({"conv1.kernel": 1, "conv1.bias": 2, "fc3.bias": 3}) == {
        "conv1": {"kernel": 1, "bias": 2}, "fc3": {"bias": 3}}
    assert nest_params({"layer1_bottleneck0.conv1.kernel": 1}) == {
        "layer1_bottleneck0": {"conv1": {"kernel": 1}}}
