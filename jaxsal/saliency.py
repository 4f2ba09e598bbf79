"""The saliency core: vanilla and guided-backprop maps, all channels x a batch in one jitted call.

For channel c (1-based) of layer L the target is the mean of the channel's map (conv-like layers)
or the unit itself (fc layers), per image (SPEC §4). The map is d(target)/d(normalized input).

One call runs ONE forward pass per batch, truncated at the target layer, then one VJP per channel
(`vmap` over one-hot cotangents). Images share a VJP -- they are independent in eval mode -- but
channels never do: the guided rule is not linear in the cotangent, so summing channels would be
wrong. Shapes are fixed per run (the last batch is padded), so a run compiles once.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsal.errors import UsageError
from jaxsal.attribution import deconv_relu, method_maps, setup_precision
from jaxsal.methods import METHOD_NAMES, Method, as_method, resolve
from jaxsal.models import LayerInfo, NetSpec, get_net_spec

# ---------------------------------------------------------------------------------------------
# Backward rules for the ReLUs


@jax.custom_vjp
def guided_relu(x):
    """ReLU whose backward pass is guided backpropagation (Springenberg et al. 2015):
    g_in = g_out * 1[x > 0] * 1[g_out > 0]."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _guided_fwd(x):
    return guided_relu(x), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros((), g.dtype)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)

# Vanilla uses jax.nn.relu, whose derivative is 1[x > 0] (0 at 0), as torch's. These are the
# ReLU backward rules of `saliency_maps`; every method (jaxsal.methods) builds on one of them.
ACTIVATIONS = {"vanilla": jax.nn.relu, "guided": guided_relu, "deconv": deconv_relu}
METHODS = METHOD_NAMES

PRECISIONS = ("highest", "default", "bfloat16")


def check_method(method) -> Method:
    """A method name or `jaxsal.methods.Method` -> the Method (UsageError if invalid)."""
    return as_method(method)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


# ---------------------------------------------------------------------------------------------
# The pure, jitted core


def target_cotangents(layer: LayerInfo, channels0, batch: int, dtype):
    """One cotangent per channel at the layer's output: (K, N, H, W, C) or (K, N, F).

    conv: 1/(H*W) on channel c and 0 elsewhere (the gradient of the spatial mean); fc: one-hot.
    `channels0` is a (K,) int array of 0-based channel indices (traced, so any channel choice
    reuses the compiled function).
    """
    onehot = jax.nn.one_hot(channels0, layer.width, dtype=dtype)  # (K, C)
    if layer.kind == "fc":
        return jnp.broadcast_to(onehot[:, None, :], (onehot.shape[0], batch, layer.width))
    c, h, w = layer.shape
    onehot = onehot / jnp.asarray(h * w, dtype)
    return jnp.broadcast_to(onehot[:, None, None, None, :], (onehot.shape[0], batch, h, w, c))


def saliency_maps(spec: NetSpec, layer: str, method: str, precision: str, params, images, channels0):
    """Pure function: params, normalized NHWC images (N, S, S, 3), channels0 (K,) int ->
    signed maps (K, N, 3, S, S) in the images' dtype (float32 for bfloat16 precision).

    When the target layer is affine (`LayerInfo.affine`: a raw conv or fc output), the target's
    gradient with respect to the layer below does not depend on the image. It is computed once
    per channel -- a batch-1 VJP of that single layer -- and the batched forward and VJPs stop
    below the target layer. The maps are the same; the target layer's forward and its K x N
    input gradients are skipped (about 15 % of the arithmetic for conv5, all of it for conv1,
    little for fc layers; BENCHMARKS.md).
    """
    info = spec.layer(layer)
    out_dtype = images.dtype
    params, images, xla_precision = setup_precision(precision, params, images)
    act = ACTIVATIONS[method]

    def apply(**where):
        model = spec.build(act=act, precision=xla_precision, **where)
        return lambda x: model.apply({"params": params}, x)

    if not info.affine:
        activation, vjp = jax.vjp(apply(stop_at=layer), images)
        cot = target_cotangents(info, channels0, images.shape[0], activation.dtype)
        (grads,) = jax.vmap(vjp)(cot)  # (K, N, S, S, 3)
    else:
        index = spec.layer_names.index(layer)
        below = spec.layer_names[index - 1] if index else None  # None: the image
        if below is None:
            below_act, vjp = images, None
        else:
            below_act, vjp = jax.vjp(apply(stop_at=below), images)
        # The target layer alone, from a dummy one-image input: being affine, its VJP is the same
        # at every input. Its forward output is unused (only its shape), so XLA drops it.
        one = jnp.zeros((1,) + below_act.shape[1:], below_act.dtype)
        activation, layer_vjp = jax.vjp(apply(start_at=below, stop_at=layer), one)
        (cot,) = jax.vmap(layer_vjp)(target_cotangents(info, channels0, 1, activation.dtype))
        cot = jnp.broadcast_to(cot, (cot.shape[0],) + below_act.shape)  # (K, N, ...) at `below`
        grads = cot if vjp is None else jax.vmap(vjp)(cot)[0]
    return jnp.transpose(grads, (0, 1, 4, 2, 3)).astype(out_dtype)


def compiled_saliency(spec: NetSpec, layer: str, method, precision: str):
    """The jitted core for one (net, layer, method, precision); cached per process.

    Returns fn(params, images (N, S, S, 3), channels0 (K,)) -> maps (K, N, 3, S, S), or
    (K, N, S, S) for gradcam. `method`: a name or a `jaxsal.methods.Method`, validated against
    the layer here (UsageError), so equal methods share one compiled function.
    """
    return _compiled(spec, layer, resolve(method, spec, layer), precision)


@functools.lru_cache(maxsize=64)
def _compiled(spec: NetSpec, layer: str, method: Method, precision: str):
    return jax.jit(functools.partial(method_maps, spec, layer, method, precision))


# ---------------------------------------------------------------------------------------------
# Networks with weights


@dataclasses.dataclass
class Net:
    """A network with its weights, ready for `saliency`. Build it with `load_net`."""

    spec: NetSpec
    weights: "jaxsal.weights.Weights"  # noqa: F821
    params: dict  # nested Flax params {'conv1': {'kernel', 'bias'}, ...} as jax arrays

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """Which weights this network uses, in one line."""
        return f"{self.spec.name} with {self.weights.describe()}"

    def check_layer(self, layer: str) -> LayerInfo:
        """The layer's info; a UsageError if the layer is unknown or its weights are missing."""
        from jaxsal.weights import check_layer_weights

        return check_layer_weights(self.spec, self.weights, layer)


def nest_params(flat: dict) -> dict:
    """{'conv1.kernel': a, ...} -> {'conv1': {'kernel': a}, ...}."""
    nested: dict = {}
    for key, value in flat.items():
        layer, leaf = key.split(".")
        nested.setdefault(layer, {})[leaf] = value
    return nested


def load_net(name: str = "AlexNet", weights=None) -> Net:
    """Load a network by name with pretrained weights.

    `weights`: a .safetensors or torchvision .pth path, or None to resolve automatically
    ($JAXSAL_WEIGHTS, the jaxsal cache, the torch hub cache, then the bundled conv-only file;
    see `jaxsal.weights.load_weights`).
    """
    from jaxsal.weights import load_weights

    spec = get_net_spec(name)
    return net_from_weights(spec, load_weights(spec, weights))


def net_from_weights(spec: NetSpec, weights) -> Net:
    """A `Net` from weights already read from disk (`jaxsal.weights.load_weights`)."""
    params = jax.tree_util.tree_map(jnp.asarray, nest_params(weights.params))
    return Net(spec=spec, weights=weights, params=params)


def saliency(
    net: Net,
    images,
    layer: str,
    channels: Sequence[int],
    method: str | Method = "guided",
    *,
    smooth: int = 0,
    noise: float = 0.15,
    seed: int = 0,
    baseline: str = "black",
    ig_steps: int = 32,
    ig_rule: str = "gausslegendre",
    cam_layer: str | None = None,
    batch_size: int | None = None,
    precision: str = "highest",
) -> np.ndarray:
    """Saliency maps of `channels` (1-based) of `layer` for every image.

    images: a sequence of paths, PIL images or uint8 arrays ((H,W,3), (H,W) or (3,H,W)); each is
    EXIF-rotated, converted to RGB, resized to the net's input size (PIL bilinear, no crop) and
    normalized with ImageNet mean/std, as the original program.

    method: vanilla, guided, deconv, ig, gradcam or guided_gradcam, or a `jaxsal.methods.Method`
    holding the options below (docs/methods.md):
      smooth, noise, seed: SmoothGrad over `smooth` noisy copies (0 = off) with noise standard
        deviation noise * (max - min) of each normalized image; for vanilla, guided, deconv, ig.
      baseline ('black' | 'zeros'), ig_steps, ig_rule ('gausslegendre' | 'trapezoid'):
        integrated gradients.
      cam_layer: Grad-CAM layer (default: the target if conv-like, else the last conv-like one).
    Options a method does not use are ignored.

    Returns float32 (n_channels, n_images, 3, S, S), attributions with respect to the normalized
    input (S = 224 for AlexNet); for gradcam (n_channels, n_images, S, S), non-negative.
    """
    from jaxsal.stimuli import as_pil, to_network_input

    method = resolve(as_method(method, smooth=smooth, noise=noise, seed=seed, baseline=baseline,
                               ig_steps=ig_steps, ig_rule=ig_rule, cam_layer=cam_layer),
                     net.spec, layer)
    net.check_layer(layer)
    net.spec.check_channels(layer, channels)
    spec = net.spec
    inputs = [to_network_input(as_pil(im), spec.input_size, spec.mean, spec.std) for im in images]
    if not inputs:
        raise UsageError("no images given")
    from jaxsal.runner import iter_saliency

    parts = list(
        iter_saliency(net, inputs, layer, channels, method, n_images=len(inputs),
                      batch_size=batch_size, precision=precision)
    )
    return np.concatenate(parts, axis=1)


class _CallableModule(type(functools)):
    """`jaxsal.saliency` names both this module and the function above. Once the module has been
    imported, Python binds the package attribute to the module; making the module callable keeps
    `jaxsal.saliency(net, images, ...)` working either way without importing JAX eagerly."""

    def __call__(self, *args, **kwargs):
        return saliency(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
