"""ViT-B/16 (`VitB16`, jaxsal/models/vit.py) against independent plain PyTorch
(`tests/torch_nets.py`: torchvision's VisionTransformer module for module, the attention written
out with matmuls and softmax) and against torch's own modules.

Fast: the transformer primitives in float64 against torch.nn's LayerNorm, MultiheadAttention
and GELU (forward and VJP); TinyVit, a ViT of the same description with 2 layers, width 16 and
a 32 x 32 input (registered here), for the maps (float64 and float32), the token target, IG,
SmoothGrad and Grad-CAM (pytorch-grad-cam's reshape of the patch tokens); the methods refused
for a network with GELU, softmax attention and LayerNorm; VitB16's layer table, default Grad-CAM
layer, published file and legacy key names; checkpoints of another network named. Slow:
VitB16's maps at full size (224) in float64 and float32 against PyTorch float64.
"""
from __future__ import annotations

import functools
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch_nets  # noqa: E402

from jaxsal.core import compiled_saliency  # noqa: E402
from jaxsal.errors import UsageError  # noqa: E402
from jaxsal.methods import METHODS, Method, resolve  # noqa: E402
from jaxsal.models import get_net_spec, register  # noqa: E402
from jaxsal.models.layers import GELU, LayerNorm, SelfAttention, Tokens  # noqa: E402
from jaxsal.models.vit import legacy_mlp_key, vit  # noqa: E402
from jaxsal.net import nest_params  # noqa: E402
from jaxsal.weights.conversion import LAYOUT_RULES, convert_state_dict, from_torchvision  # noqa: E402


class TinyVitTorch(torch_nets.VisionTransformer):
    INPUT_SIZE, PATCH, DEPTH, HIDDEN, HEADS, MLP_DIM, CLASSES = 32, 8, 2, 16, 2, 32, 10
    LAYERS = torch_nets._vit_layer_names(2)


TINY = register(vit("TinyVit", image_size=32, patch=8, layers=2, hidden=16, heads=2, mlp_dim=32,
                    classes=10), replace=True)
VIT = get_net_spec("VitB16")


@functools.lru_cache(maxsize=1)
def tiny_state_dict():
    return {k: v.numpy() for k, v in torch_nets.random_state_dict(TinyVitTorch, seed=1).items()}


def tiny_params():
    return nest_params(from_torchvision(TINY, tiny_state_dict()))


def relative_l2(ours, ref):
    axes = tuple(range(2, ref.ndim))
    return np.sqrt(((ours - ref) ** 2).sum(axes)) / np.sqrt((ref ** 2).sum(axes))


def noise_images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3))


def maps64(spec, layer, method, params, x, channels):
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        fn = compiled_saliency(spec, layer, method, "highest")
        return np.asarray(fn(params64, np.asarray(x, np.float64), np.asarray(channels) - 1))


# ----------------------------------------------------------------------------------------------
# The primitives against torch.nn, float64


def apply_op(op, torch_module, x, cotangent):
    """jaxsal's Flax computation of `op` (parameters converted from `torch_module` by the op's
    own torch leaves and layout rules) at x (N, T, C): (output, VJP of `cotangent`), float64."""
    import flax.linen as nn

    from jaxsal.models.network import HIGHEST, FlaxBackend

    class One(nn.Module):
        @nn.compact
        def __call__(self, a):
            return FlaxBackend(nn.relu, HIGHEST, self).layer(op, a)

    shape = Tokens(x.shape[-1], (1, x.shape[1]))
    sd = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    leaves = {leaf: LAYOUT_RULES[rule](sd[torch_leaf], None)
              for leaf, (torch_leaf, rule) in op.torch_leaves(shape).items()}
    assert {k: v.shape for k, v in leaves.items()} == op.params(shape)
    variables = {"params": nest_params({f"{op.name}.{k}": v for k, v in leaves.items()})} if leaves else {}
    with jax.enable_x64(True):
        out, grad = jax.jit(lambda a, g: (lambda y, vjp: (y, vjp(g)[0]))(
            *jax.vjp(lambda b: One().apply(variables, b), a)))(jnp.asarray(x), jnp.asarray(cotangent))
        return np.asarray(out), np.asarray(grad)


def torch_op(module, x, cotangent):
    xt = torch.tensor(x, requires_grad=True)
    out = module(xt)
    out = out[0] if isinstance(out, tuple) else out
    (g,) = torch.autograd.grad(out, xt, torch.tensor(cotangent))
    return out.detach().numpy(), g.numpy()


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + (p.ndim == 1) * 0.1)
    return module.eval()


@pytest.mark.parametrize("case", ["layer_norm", "attention", "gelu"])
def test_primitives_match_torch_modules_in_float64(case):
    torch.set_default_dtype(torch.float64)
    try:
        n, t, c = 2, 7, 12
        rng = np.random.default_rng(4)
        x, g = rng.standard_normal((n, t, c)), rng.standard_normal((n, t, c))
        op, module = {
            "layer_norm": (LayerNorm("ln", eps=1e-6), torch.nn.LayerNorm(c, eps=1e-6)),
            "attention": (SelfAttention("attn", heads=3),
                          torch.nn.MultiheadAttention(c, 3, batch_first=True)),
            "gelu": (GELU("gelu"), torch.nn.GELU()),
        }[case]
        randomize(module, 5)
        if case == "attention":  # torch's own module, then the reference's written-out one
            forward = functools.partial(module, need_weights=False)
            ref = torch_op(lambda a: forward(a, a, a), x, g)
            for sdpa in (False, True):
                written = torch_nets.SelfAttention(c, 3, sdpa)
                written.load_state_dict(module.state_dict())
                for a, b in zip(torch_op(written, x, g), ref):
                    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
        else:
            ref = torch_op(module, x, g)
        ours = apply_op(op, module, x, g)
    finally:
        torch.set_default_dtype(torch.float32)
    for a, b in zip(ours, ref):
        assert np.max(np.abs(a - b)) <= 1e-13 * np.max(np.abs(b)), case


@pytest.mark.parametrize("shape", [(16, 197, 64), (3, 5, 12)])
def test_layer_norm_under_vmap_of_cotangents_equals_one_cotangent_at_a_time(shape):
    """Channels share one VJP call (vmap over their cotangents). With LayerNorm's autodiff
    backward, XLA:CPU (jaxlib 0.10.2, YNNPACK's reduce fusion) got every cotangent after the first
    wrong from 12 images of 197 tokens on (relative error 0.1-0.4 here at 16 x 197 x 64, and
    in VitB16's maps): the written-out backward must not depend on how cotangents are batched."""
    from jaxsal.models.primitives import layer_norm

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((3,) + shape), jnp.float32)

    def both(x, cot):
        _, pullback = jax.vjp(lambda a: layer_norm(a, 1e-6), x)
        together = jax.vmap(pullback)(cot)[0]
        alone = jnp.stack([pullback(cot[k])[0] for k in range(cot.shape[0])])
        return together, alone

    together, alone = map(np.asarray, jax.jit(both)(x, cot))
    for k in range(cot.shape[0]):
        err = np.abs(together[k] - alone[k]).max() / np.abs(alone[k]).max()
        assert err < 1e-5, (k, err)


# ----------------------------------------------------------------------------------------------
# The description: layers, targets, weights


def test_layer_table_and_key_map_are_the_torch_models():
    for spec, net in ((TINY, TinyVitTorch), (VIT, torch_nets.VitB16)):
        assert spec.layer_names == net.LAYERS
        assert {l.name: l.shape for l in spec.layers} == torch_nets.layer_shapes(net)
        assert {l.name: l.kind for l in spec.layers} == {
            "conv_proj": "conv", "head": "fc", **{n: "tokens" for n in net.LAYERS[1:-1]}}
        assert {p.torch_key: p.shape[::-1] if p.rule == "linear" else p.shape for p in spec.params
                if p.rule != "conv"} == {k: s for k, (s, _) in torch_nets.state_dict_shapes(net).items()
                                          if not k.startswith("conv_proj.weight")}
    layer = VIT.layer("encoder_layer3")
    assert layer.grid == (14, 14) and layer.prefix_tokens == 1 and layer.width == 768
    assert sum(np.prod(p.shape) for p in VIT.params) == 86567656  # torchvision's num_params


def test_published_file_and_its_legacy_key_names():
    assert VIT.weights.files == ("vit_b_16-c867db91.pth",)
    assert VIT.weights.url == "https://download.pytorch.org/models/vit_b_16-c867db91.pth"
    assert legacy_mlp_key("encoder.layers.encoder_layer_11.mlp.linear_2.bias") == \
        "encoder.layers.encoder_layer_11.mlp.3.bias"
    assert legacy_mlp_key("encoder.layers.encoder_layer_0.mlp.linear_1.weight") == \
        "encoder.layers.encoder_layer_0.mlp.0.weight"
    for key in ("encoder.layers.encoder_layer_0.mlp.0.weight", "heads.head.weight", "class_token"):
        assert legacy_mlp_key(key) == key
    sd = tiny_state_dict()
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
              for k, v in sd.items()}
    assert legacy.keys() != sd.keys()
    ours, theirs = from_torchvision(TINY, legacy), from_torchvision(TINY, sd)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_a_legacy_checkpoint_file_converts(tmp_path):
    """A file saved by torch.save with the published file's old MLP names, read without torch."""
    import hashlib

    from jaxsal.weights.conversion import load_torch_weights

    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): torch.from_numpy(v)
              for k, v in tiny_state_dict().items()}
    tmp = tmp_path / "partial.pth"
    torch.save(legacy, tmp)
    path = tmp.rename(tmp_path / f"tinyvit-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth")
    params = load_torch_weights(TINY, path).params
    expected = from_torchvision(TINY, tiny_state_dict())
    assert params.keys() == expected.keys() and all(np.array_equal(params[k], expected[k]) for k in params)


def test_a_checkpoint_of_another_network_is_named():
    def keys_of(net):  # right keys, no values needed: the keys identify the network
        return {k: np.zeros((1,), np.float32) for k in torch_nets.state_dict_shapes(net)}

    vit_keys = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
                for k, v in keys_of("VitB16").items()}  # as the published file names them
    with pytest.raises(UsageError, match="holds VitB16 weights, not Resnet50"):
        convert_state_dict(get_net_spec("Resnet50"), vit_keys, source_file="x.pth", source_sha256="0" * 64)
    with pytest.raises(UsageError, match="holds Resnet50 weights, not VitB16.*vit_b_16-c867db91.pth"):
        convert_state_dict(VIT, keys_of("Resnet50"), source_file="x.pth", source_sha256="0" * 64)


def test_sanity_checks_can_randomise_every_layer():
    """dnn_saliency_check's MPRT re-initialises a ViT's parameters too: the projections of the
    attention as linear layers, LayerNorm to the identity, the embeddings to 0."""
    from jaxsal.sanity import stages

    chosen = stages.select(VIT, "head")
    assert chosen[0] == "head" and chosen[-1] == "conv_proj" and len(chosen) == 15
    rules = stages.reinit_rules(VIT, "encoder_layer0")
    assert rules["class_token"].value == rules["pos_embedding"].value == 0
    assert rules["encoder_layer0.self_attention.in_proj.bias"].value == pytest.approx(768 ** -0.5)
    assert rules["encoder_layer0.ln_1.scale"].value == 1 and rules["encoder_layer0.ln_1.bias"].value == 0


def test_token_target_is_the_mean_over_the_patch_tokens():
    from jaxsal.core.targets import target_cotangents, target_values

    info = TINY.layer("encoder_layer1")  # (16, 17): the class token, then 4 x 4 patches
    act = jnp.asarray(np.random.default_rng(0).standard_normal((2, 17, 16)))
    channels0 = jnp.array([3, 0])
    np.testing.assert_allclose(target_values(info, act, channels0),
                               np.asarray(act)[:, 1:, [3, 0]].mean(axis=1).T, rtol=1e-6, atol=1e-7)
    cot = target_cotangents(info, channels0, 2, jnp.float32)
    grads = jax.vmap(lambda c: jax.grad(lambda a: target_values(info, a, c[None]).sum())(act))(channels0)
    np.testing.assert_allclose(cot, grads, rtol=1e-6, atol=1e-9)
    assert float(cot[:, :, 0].sum()) == 0 and float(cot[0, 0, 1:, 3].sum()) == pytest.approx(1.0)
    with pytest.raises(UsageError, match="which has 768 channels"):
        VIT.check_channels("encoder_layer3", [768, 769])


# ----------------------------------------------------------------------------------------------
# Methods


@pytest.mark.parametrize("method", ["guided", "deconv", "guided_gradcam",
                                    Method("guided", smooth=2), Method("deconv", smooth=2)],
                         ids=str)
def test_relu_rules_are_refused_for_a_transformer(method):
    usable = [name for name, info in METHODS.items() if info.rule == "vanilla"]
    for layer in ("encoder_layer0", "head"):
        with pytest.raises(UsageError) as e:
            resolve(method, VIT, layer)
        line = str(e.value)
        assert "\n" not in line and "defined for ReLU networks" in line
        assert "GELU" in line and "softmax attention" in line and "LayerNorm" in line
        assert f"use {', '.join(usable)}" in line, line
    for name in usable:
        resolve(name, VIT, "head")


@pytest.mark.slow
def test_relu_rules_below_the_first_nonlinearity_equal_vanilla():
    """conv_proj's path has no nonlinearity at all: guided and deconv are vanilla there."""
    x = noise_images(2, 32).astype(np.float32)
    vanilla = compiled_saliency(TINY, "conv_proj", "vanilla", "highest")(tiny_params(), x, np.array([0, 5]))
    guided = compiled_saliency(TINY, "conv_proj", "guided", "highest")(tiny_params(), x, np.array([0, 5]))
    np.testing.assert_array_equal(vanilla, guided)


def tiny_reference(layer, channels, x):
    ref = torch_nets.torch_saliency(TinyVitTorch, tiny_state_dict(), x.transpose(0, 3, 1, 2), layer,
                                    channels, guided=False, dtype=torch.float64)
    assert np.all(np.abs(ref).sum(axis=(2, 3, 4)) > 0)
    return ref


@pytest.mark.parametrize("layer,channels", [
    ("encoder_layer1", (3, 16)), pytest.param("head", (1, 10), marks=pytest.mark.slow),
    pytest.param("conv_proj", (2, 16), marks=pytest.mark.slow)])
def test_tiny_vit_maps_match_pytorch_in_float64(layer, channels):
    """Every map <= 1e-9 of PyTorch float64: a token target (the mean over the patch tokens),
    a unit of the head (through the class token) and the patch convolution."""
    x = noise_images(3, 32)
    ours = maps64(TINY, layer, "vanilla", tiny_params(), x, channels)
    assert np.max(relative_l2(ours, tiny_reference(layer, channels, x))) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("layer,channels", [("encoder_layer1", (3, 16)), ("head", (1, 10))])
def test_tiny_vit_float32_maps_match_pytorch_float64(layer, channels):
    x = noise_images(3, 32)
    fn = compiled_saliency(TINY, layer, "vanilla", "highest")
    ours = np.asarray(fn(tiny_params(), x.astype(np.float32), np.asarray(channels) - 1))
    assert np.median(relative_l2(ours, tiny_reference(layer, channels, x))) < 1e-5


@pytest.mark.slow
def test_integrated_gradients_match_pytorch():
    """IG with the 2-point trapezoid, (x - x') (g(x') + g(x)) / 2, from PyTorch's gradients at
    the baseline and the image (float64)."""
    from jaxsal.core.integrated_gradients import baseline_image

    layer, channels = "encoder_layer1", (2, 7)
    x = noise_images(2, 32)
    base = np.broadcast_to(np.asarray(baseline_image(TINY.preprocessing, "black")), x.shape).copy()
    ours = maps64(TINY, layer, Method("ig", ig_steps=2, ig_rule="trapezoid"), tiny_params(), x, channels)
    ref = (tiny_reference(layer, channels, base) + tiny_reference(layer, channels, x)) / 2
    ref = ref * (x - base).transpose(0, 3, 1, 2)[None]
    assert np.max(relative_l2(ours, ref)) < 1e-9


@pytest.mark.slow
def test_smoothgrad_is_the_mean_of_pytorch_gradients_over_its_noise():
    from jaxsal.core.smoothgrad import smoothgrad_noise

    x = noise_images(2, 32)
    ours = maps64(TINY, "head", Method("vanilla", smooth=2, noise=0.2, seed=3), tiny_params(), x, [4])
    with jax.enable_x64(True):
        noise = jax.jit(smoothgrad_noise, static_argnums=(1, 2))(jnp.asarray(x), 0.2, 3, jnp.arange(2))
        noisy = x[None] + np.asarray(noise)
    ref = np.mean([tiny_reference("head", [4], xs) for xs in noisy], axis=0)
    assert np.max(relative_l2(ours, ref)) < 1e-9


def torch_grad_cam(net, x, cam_layer, layer, channel):
    """Grad-CAM as pytorch-grad-cam computes it on a ViT: the CAM layer's tokens (N, T, C) with
    its `reshape_transform` (class token dropped, patches folded to the grid), alpha = the grid
    mean of the gradient, ReLU of the weighted sum, bilinear upsampling (align_corners=False)."""
    grid = net.INPUT_SIZE // net.PATCH

    def reshape_transform(tokens):  # pytorch-grad-cam's, for ViTs
        return tokens[:, 1:, :].reshape(tokens.shape[0], grid, grid, tokens.shape[2]).permute(0, 3, 1, 2)

    a = torch.tensor(x.transpose(0, 3, 1, 2))
    for name, fn in net._stages():
        a = fn(a)
        if name == cam_layer:
            a = tokens = a.detach().requires_grad_(True)
        if name == layer:
            break
    target = torch_nets.channel_target(net, a.transpose(1, 2) if a.ndim == 3 else a, channel)
    (g,) = torch.autograd.grad(target.sum(), tokens)
    grads, feats = reshape_transform(g), reshape_transform(tokens.detach())
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats).sum(dim=1, keepdim=True))
    size = (net.INPUT_SIZE, net.INPUT_SIZE)
    return torch.nn.functional.interpolate(cam, size, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("layer,cam_layer,channel", [("head", None, 3),
                                                     ("encoder_layer1", "encoder_layer1", 5)])
def test_grad_cam_folds_the_patch_tokens_to_their_grid(layer, cam_layer, channel):
    """jaxsal's Grad-CAM on a token layer = pytorch-grad-cam's with its ViT reshape_transform
    (jaxsal computes CAMs in float32: relative L2 <= 1e-5 of PyTorch float64)."""
    method = resolve(Method("gradcam", cam_layer=cam_layer), TINY, layer)
    x = noise_images(2, 32)
    net = torch_nets.build(TinyVitTorch, tiny_state_dict(), dtype=torch.float64)
    ref = torch_grad_cam(net, x, method.cam_layer, layer, channel)
    fn = compiled_saliency(TINY, layer, method, "highest")
    ours = np.asarray(fn(tiny_params(), x.astype(np.float32), np.array([channel - 1])))[0]
    assert ours.shape == (2, 32, 32) and np.all(np.abs(ref).sum(axis=(1, 2)) > 0)
    assert np.max(relative_l2(ours[None], ref[None])) < 1e-5


@pytest.mark.parametrize("spec,layer,cam", [
    (TINY, "head", "encoder_layer0"), (TINY, "encoder_layer1", "encoder_layer0"),
    (VIT, "head", "encoder_layer10"), (VIT, "encoder_ln", "encoder_layer10"),
    (VIT, "encoder_layer11", "encoder_layer10"), (VIT, "encoder_layer3", "encoder_layer3"),
    (VIT, "conv_proj", "conv_proj")], ids=str)
def test_default_grad_cam_layer(spec, layer, cam):
    """The target if spatial, up to the input of the last block (see jaxsal/models/vit.py)."""
    assert resolve("gradcam", spec, layer).cam_layer == cam


def test_the_command_refuses_guided_for_vit_in_one_line(tmp_path):
    done = subprocess.run([str(pathlib.Path(sys.executable).with_name("dnn_saliency")), "-net", "VitB16", "-layer", "head", "-chn", "1",
                           "-stim", str(pathlib.Path(__file__).parents[1] / "examples" / "examples.stim.csv"),
                           "-out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "-meth guided is defined for ReLU networks" in line and "use vanilla, ig, gradcam" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Full size


@pytest.mark.slow
def test_vit_b16_maps_match_pytorch_at_full_size():
    """224 x 224, random weights (86 M parameters), one image, two head units: float64 <= 1e-9
    per map, float32 median <= 1e-5 of PyTorch float64."""
    sd = {k: v.numpy() for k, v in torch_nets.random_state_dict("VitB16", seed=1).items()}
    params = nest_params(from_torchvision(VIT, sd))
    x, layer, channels = noise_images(1, 224), "head", (1, 500)
    ref = torch_nets.torch_saliency("VitB16", sd, x.transpose(0, 3, 1, 2), layer, channels,
                                    guided=False, dtype=torch.float64)
    assert np.all(np.abs(ref).sum(axis=(2, 3, 4)) > 0)
    fn = compiled_saliency(VIT, layer, "vanilla", "highest")
    ours32 = np.asarray(fn(params, x.astype(np.float32), np.asarray(channels) - 1))
    assert np.median(relative_l2(ours32, ref)) < 1e-5
    assert np.max(relative_l2(maps64(VIT, layer, "vanilla", params, x, channels), ref)) < 1e-9


@pytest.mark.slow
def test_vit_b16_float32_maps_of_a_batch_match_pytorch():
    """12 images (the batch at which the LayerNorm backward above went wrong), two channels
    computed together, against PyTorch float32 image by image: every map within 1e-4."""
    sd = {k: v.numpy() for k, v in torch_nets.random_state_dict("VitB16", seed=1).items()}
    params = nest_params(from_torchvision(VIT, sd))
    x, layer, channels = noise_images(12, 224).astype(np.float32), "encoder_layer11", (1, 500)
    ours = np.asarray(compiled_saliency(VIT, layer, "vanilla", "highest")(
        params, x, np.asarray(channels) - 1))
    ref = torch_nets.torch_saliency("VitB16", sd, x.transpose(0, 3, 1, 2), layer, channels,
                                    guided=False)
    assert np.max(relative_l2(ours, ref)) < 1e-4
