"""The target of a channel (SPEC §4), said once: its value and its cotangent.

For channel c (0-based here) of layer L the target is the mean of the channel's map (conv-like
layers, NHWC activations), the unit itself (fc layers), or, for a transformer's tokens (N, T, C),
the channel's mean over the patch tokens -- the class token left out, so that it is the mean of
the channel's map over the image, as for a conv layer. `target_values` computes it from the
layer's activation; `target_cotangents` is its gradient with respect to that activation, the
seed of every method's backward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsal.models import LayerInfo


def target_values(layer: LayerInfo, activation, channels0):
    """(K, N): the target of each channel in `channels0` (K,) for each image, from the layer's
    activation (N, H, W, C), (N, F) or tokens (N, T, C)."""
    if layer.kind == "fc":
        return jnp.take(activation, channels0, axis=-1).T
    if layer.kind == "tokens":
        means = jnp.mean(activation[:, layer.prefix_tokens:], axis=1)  # (N, C)
    else:
        means = jnp.mean(activation, axis=(1, 2))  # (N, C)
    return jnp.take(means, channels0, axis=-1).T


def target_cotangents(layer: LayerInfo, channels0, batch: int, dtype):
    """One cotangent per channel at the layer's output: (K, N, H, W, C), (K, N, F) or
    (K, N, T, C).

    conv: 1/(H*W) on channel c and 0 elsewhere (the gradient of the spatial mean); fc: one-hot;
    tokens: 1/(h*w) on channel c of each of the h*w patch tokens, 0 on the class token.
    `channels0` is a (K,) int array of 0-based channel indices (traced, so any channel choice
    reuses the compiled function).
    """
    onehot = jax.nn.one_hot(channels0, layer.width, dtype=dtype)  # (K, C)
    if layer.kind == "fc":
        return jnp.broadcast_to(onehot[:, None, :], (onehot.shape[0], batch, layer.width))
    if layer.kind == "tokens":
        (c, t), (h, w) = layer.shape, layer.grid
        patches = (jnp.arange(t) >= layer.prefix_tokens).astype(dtype)  # 0 on the class token
        cot = onehot[:, None, :] * patches[:, None] / jnp.asarray(h * w, dtype)  # (K, T, C)
        return jnp.broadcast_to(cot[:, None], (onehot.shape[0], batch, t, c))
    c, h, w = layer.shape
    onehot = onehot / jnp.asarray(h * w, dtype)
    return jnp.broadcast_to(onehot[:, None, None, None, :], (onehot.shape[0], batch, h, w, c))
