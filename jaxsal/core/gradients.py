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
from jaxsal.core.targets import target_cotangents
from jaxsal.models import NetSpec
from jaxsal.models.network import build


def gradient_maps(spec: NetSpec, layer: str, rule: str, precision: str, params, images, channels0):
    """Pure: params, normalized NHWC images (N, S, S, 3), channels0 (K,) int -> signed maps
    (K, N, 3, S, S) in the images' dtype (float32 for bfloat16 precision), with the ReLU
    backward `rule` (`relu_rules.RULES`).

    When the target layer is affine (`LayerInfo.affine`), the target's gradient with respect to
    the layer below does not depend on the image: it is computed once per channel, a batch-1 VJP
    of that single layer, and the batched forward and VJPs stop below the target layer.
    """
    info = spec.layer(layer)
    out_dtype = images.dtype
    params, images, xla_precision = setup_precision(precision, params, images)
    act = RULES[rule]

    def apply(**where):
        model = build(spec, act=act, precision=xla_precision, **where)
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


def maps(spec, layer, method, precision, params, images, channels0):
    """The methods vanilla, guided and deconv: the gradient with their ReLU rule."""
    return gradient_maps(spec, layer, method.rule, precision, params, images, channels0)
