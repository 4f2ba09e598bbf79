"""The gradient core: d target / d input for a batch and several channels, one jitted call.

For channel c (1-based) of layer L the target is the mean of the channel's map (conv-like layers)
or the unit itself (fc layers), per image (SPEC §4). ONE forward pass per batch, truncated at the
target layer, then one VJP per channel (`vmap` over one-hot cotangents). Images share a VJP --
they are independent in eval mode -- but channels never do: the guided rule is not linear in the
cotangent. This is the method vanilla, guided and deconv (their ReLU rule), and the gradient
every other method builds on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsal.core.precision import setup_precision
from jaxsal.core.relu_rules import RULES
from jaxsal.core.targets import target_cotangents, target_values
from jaxsal.models import NetSpec
from jaxsal.models.network import build


def _network(spec: NetSpec, rule: str, xla_precision, params):
    """apply(**where) -> the network between `where`'s layers as a function of its input."""
    act = RULES[rule]

    def apply(**where):
        model = build(spec, act=act, precision=xla_precision, **where)
        return lambda x: model.apply({"params": params}, x)

    return apply


def _below(spec: NetSpec, layer: str) -> str | None:
    """The layer under an affine target (None: the image)."""
    index = spec.layer_names.index(layer)
    return spec.layer_names[index - 1] if index else None


def gradient_forward(spec: NetSpec, layer: str, rule: str, precision: str, params, images):
    """The forward half of `gradient_maps`: (output, pullback) -- the activation where the VJPs
    start and their pullback (a pytree: a jitted function may return it and another take it).

    At the target layer, or, when the target is affine (`LayerInfo.affine`), at the layer below
    it (output = the images and pullback None if the target is the first layer)."""
    params, images, xla_precision = setup_precision(precision, params, images)
    apply = _network(spec, rule, xla_precision, params)
    if not spec.layer(layer).affine:
        return jax.vjp(apply(stop_at=layer), images)
    below = _below(spec, layer)
    if below is None:
        return images, None
    return jax.vjp(apply(stop_at=below), images)


def gradient_target_values(spec: NetSpec, layer: str, precision: str, params, output, channels0):
    """(K, N) float32: the targets' values from `gradient_forward`'s output (for an affine
    target, the target layer is applied to it)."""
    info = spec.layer(layer)
    if info.affine:
        params, _, xla_precision = setup_precision(precision, params, output)
        output = _network(spec, "vanilla", xla_precision, params)(
            start_at=_below(spec, layer), stop_at=layer)(output)
    return target_values(info, output, channels0).astype(jnp.float32)


def gradient_backward(spec: NetSpec, layer: str, rule: str, precision: str, params, images,
                      forward, channels0):
    """The backward half of `gradient_maps`: one VJP per channel of `channels0` (K,), batched
    (`vmap`), from `gradient_forward`'s (output, pullback) -> (K, N, 3, S, S)."""
    info = spec.layer(layer)
    out_dtype = images.dtype
    output, pullback = forward
    if not info.affine:
        cot = target_cotangents(info, channels0, output.shape[0], output.dtype)
        (grads,) = jax.vmap(pullback)(cot)  # (K, N, S, S, 3)
    else:
        params, _, xla_precision = setup_precision(precision, params, images)
        apply = _network(spec, rule, xla_precision, params)
        # The target layer alone, from a dummy one-image input: being affine, its VJP is the same
        # at every input. Its forward output is unused (only its shape), so XLA drops it.
        one = jnp.zeros((1,) + output.shape[1:], output.dtype)
        activation, layer_vjp = jax.vjp(apply(start_at=_below(spec, layer), stop_at=layer), one)
        (cot,) = jax.vmap(layer_vjp)(target_cotangents(info, channels0, 1, activation.dtype))
        cot = jnp.broadcast_to(cot, (cot.shape[0],) + output.shape)  # (K, N, ...) below
        grads = cot if pullback is None else jax.vmap(pullback)(cot)[0]
    return jnp.transpose(grads, (0, 1, 4, 2, 3)).astype(out_dtype)


def gradient_maps(spec: NetSpec, layer: str, rule: str, precision: str, params, images, channels0):
    """Pure: params, normalized NHWC images (N, S, S, 3), channels0 (K,) int -> signed maps
    (K, N, 3, S, S) in the images' dtype (float32 for bfloat16 precision), with the ReLU
    backward `rule` (`relu_rules.RULES`).

    When the target layer is affine (`LayerInfo.affine`), the target's gradient with respect to
    the layer below does not depend on the image: it is computed once per channel, a batch-1 VJP
    of that single layer, and the batched forward and VJPs stop below the target layer.
    """
    forward = gradient_forward(spec, layer, rule, precision, params, images)
    return gradient_backward(spec, layer, rule, precision, params, images, forward, channels0)


def maps(spec, layer, method, precision, params, images, channels0):
    """The methods vanilla, guided and deconv: the gradient with their ReLU rule."""
    return gradient_maps(spec, layer, method.rule, precision, params, images, channels0)


def forward(spec, layer, method, precision, params, images, channels0):
    """The shared forward of a channel-block run (`jaxsal.core.compiled_blocks`): (state, the
    targets' values (K, N))."""
    state = gradient_forward(spec, layer, method.rule, precision, params, images)
    return state, gradient_target_values(spec, layer, precision, params, state[0], channels0)


def backward(spec, layer, method, precision, params, images, state, channels0):
    """The maps of a block of channels from `forward`'s state."""
    return gradient_backward(spec, layer, method.rule, precision, params, images, state, channels0)
