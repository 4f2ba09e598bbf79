"""The Flax module of any described network (`jaxsal.models.spec.NetSpec`).

`build(spec, stop_at=...)` is a Linen module from the normalised NHWC image to the activation of
layer `stop_at`: the forward stops there, so a conv target never touches the fully-connected
weights. With `start_at`, its input is instead that layer's activation and the stages up to it
are skipped (Grad-CAM differentiates the target with respect to an inner layer this way). The
ReLU is an attribute: guided backpropagation is `build(spec, act=guided_relu)`, not a hook.
Eval mode: dropout is the identity, batch norm uses its running statistics.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import jax.numpy as jnp
from jax import lax

from jaxsal.errors import UsageError
from jaxsal.models.layers import (GELU, AvgPool, BatchNorm, Block, ChannelAffine,
                                  ClassTokenPool, Conv, Flatten, GlobalAvgPool, LayerNorm, Linear,
                                  MaxPool, ReLU, SelfAttention, TokenEmbedding, run_stages)
from jaxsal.models.primitives import conv_space_to_depth, gelu, layer_norm, max_pool
from jaxsal.models.spec import NetSpec

HIGHEST = lax.Precision.HIGHEST


class _Conv(nn.Module):
    op: Conv
    precision: Any = HIGHEST

    @nn.compact
    def __call__(self, x):
        op = self.op
        (kh, kw), (ph, pw) = op.kernel_hw, op.padding_hw
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], op.features))
        kernel = kernel.astype(x.dtype)
        if op.space_to_depth:
            y = conv_space_to_depth(x, kernel, op.stride, ph, self.precision)
        else:
            y = lax.conv_general_dilated(
                x, kernel, (op.stride, op.stride), ((ph, ph), (pw, pw)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision,
            )
        if op.bias:
            y = y + self.param("bias", nn.initializers.zeros, (op.features,)).astype(x.dtype)
        return y


class _Linear(nn.Module):
    op: Linear
    precision: Any = HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.op.features))
        bias = self.param("bias", nn.initializers.zeros, (self.op.features,))
        return jnp.dot(x, kernel.astype(x.dtype), precision=self.precision) + bias.astype(x.dtype)


class _BatchNorm(nn.Module):
    op: BatchNorm

    @nn.compact
    def __call__(self, x):
        c = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, c)
        bias = self.param("bias", nn.initializers.zeros, c)
        mean = self.param("mean", nn.initializers.zeros, c)
        var = self.param("var", nn.initializers.ones, c)
        inv = (scale * lax.rsqrt(var + jnp.asarray(self.op.eps, var.dtype))).astype(x.dtype)
        return (x - mean.astype(x.dtype)) * inv + bias.astype(x.dtype)


class _Block(nn.Module):
    op: Block
    act: Callable
    precision: Any = HIGHEST

    @nn.compact
    def __call__(self, x):
        return self.op.forward(x, FlaxBackend(self.act, self.precision, self))


# The Flax computation of each primitive type: `FLAX_LAYERS[type(op)](op, x, backend)`. A new
# primitive is its description in `layers.py` plus one `@flax_layer` entry here
# (tests/test_layers.py checks that every primitive has one).
FLAX_LAYERS: dict[type, Callable] = {}


def flax_layer(op_type: type):
    """Register the Flax computation `fn(op, x, backend)` of primitives of `op_type`."""

    def register(fn):
        FLAX_LAYERS[op_type] = fn
        return fn

    return register


def flax_computation(op_type: type) -> Callable:
    """The registered computation of `op_type` (or of its nearest registered base class)."""
    for cls in op_type.__mro__:
        if cls in FLAX_LAYERS:
            return FLAX_LAYERS[cls]
    raise TypeError(f"no Flax implementation for {op_type.__name__}")


@flax_layer(Block)
def _block(op, x, b):
    return _Block(op, b.relu, b.precision, name=op.name)(x)


@flax_layer(Conv)
def _conv(op, x, b):
    return _Conv(op, b.precision, name=op.name)(x)


@flax_layer(Linear)
def _linear(op, x, b):
    return _Linear(op, b.precision, name=op.name)(x)


@flax_layer(BatchNorm)
def _batch_norm(op, x, b):
    return _BatchNorm(op, name=op.name)(x)


@flax_layer(ReLU)
def _relu(op, x, b):
    return b.act(x)


@flax_layer(MaxPool)
def _max_pool(op, x, b):
    return max_pool(x, op.window, op.stride, op.padding, op.ceil)


@flax_layer(AvgPool)
def _avg_pool(op, x, b):
    if op.ceil:
        raise NotImplementedError("AvgPool with ceil_mode")
    k, s, p = op.window, op.stride, op.padding
    lead = (1,) * (x.ndim - 3)
    pads = ((0, 0),) * (x.ndim - 3) + ((p, p), (p, p), (0, 0))
    # A concrete zero (numpy, not traced) makes this XLA's differentiable window sum.
    total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, lead + (k, k, 1),
                              lead + (s, s, 1), pads)
    return total / jnp.asarray(k * k, x.dtype)  # count_include_pad=True


@flax_layer(GlobalAvgPool)
def _global_avg_pool(op, x, b):
    return jnp.mean(x, axis=(-3, -2), keepdims=True)


@flax_layer(Flatten)
def _flatten(op, x, b):
    return x.reshape(x.shape[:-3] + (-1,))  # H,W,C order (see layers.Linear)


@flax_layer(ChannelAffine)
def _channel_affine(op, x, b):
    return x * jnp.asarray(op.scale, x.dtype) + jnp.asarray(op.shift, x.dtype)


# ---------------------------------------------------------------------------------------------
# Transformer primitives: tokens are (..., T, C)


class _LayerNorm(nn.Module):
    op: LayerNorm

    @nn.compact
    def __call__(self, x):
        c = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, c).astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, c).astype(x.dtype)
        return layer_norm(x, self.op.eps) * scale + bias


class _SelfAttention(nn.Module):
    op: SelfAttention
    precision: Any = HIGHEST

    @nn.compact
    def __call__(self, x):
        *lead, t, c = x.shape
        h = self.op.heads
        d = c // h
        qkv = _Linear(Linear(features=3 * c), self.precision, name="in_proj")(x)
        # Heads before tokens, (..., 3, heads, T, d): the products are then batched matmuls
        # with their batch axes leading (an encoder block's forward ~10% faster on XLA:CPU than
        # with (..., T, heads, d)).
        qkv = jnp.moveaxis(qkv.reshape(*lead, t, 3, h, d), -4, -2)
        q, k, v = qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]
        q = q * jnp.asarray(1.0 / np.sqrt(d), x.dtype)
        logits = jnp.einsum("...htd,...hsd->...hts", q, k, precision=self.precision)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("...hts,...hsd->...htd", weights, v, precision=self.precision)
        out = jnp.moveaxis(out, -3, -2).reshape(*lead, t, c)  # heads concatenated per token
        return _Linear(Linear(features=c), self.precision, name="out_proj")(out)


@flax_layer(TokenEmbedding)
def _token_embedding(op, x, b):
    *lead, h, w, c = x.shape
    tokens = x.reshape(*lead, h * w, c)  # row-major patches, as torchvision's reshape + permute
    init = nn.initializers.normal(0.02)
    cls = b.module.param("class_token", init, (1, 1, c)).astype(x.dtype)
    pos = b.module.param("pos_embedding", init, (1, 1 + h * w, c)).astype(x.dtype)
    cls = jnp.broadcast_to(cls.reshape(c), (*lead, 1, c))
    return jnp.concatenate([cls, tokens], axis=-2) + pos.reshape(1 + h * w, c)


@flax_layer(LayerNorm)
def _layer_norm(op, x, b):
    return _LayerNorm(op, name=op.name)(x)


@flax_layer(SelfAttention)
def _self_attention(op, x, b):
    return _SelfAttention(op, b.precision, name=op.name)(x)


@flax_layer(GELU)
def _gelu(op, x, b):
    return gelu(x)


@flax_layer(ClassTokenPool)
def _class_token_pool(op, x, b):
    return x[..., 0, :]


# ---------------------------------------------------------------------------------------------


class FlaxBackend:
    """Runs a description on arrays, inside a Flax module's compact method (primitives with
    parameters become submodules named after their op; an unnamed op's parameters are made in
    `module`, the module whose compact method runs)."""

    def __init__(self, relu: Callable, precision, module: nn.Module | None = None):
        self.relu, self.precision = relu, precision  # relu: the method's ReLU (its VJP rule)
        self.module = module

    def layer(self, op, x):
        return flax_computation(type(op))(op, x, self)

    def act(self, x):
        return self.relu(x)

    def add(self, a, b):
        return a + b

    def concat(self, xs):
        return jnp.concatenate(xs, axis=-1)


class Network(nn.Module):
    """The stages of a `NetSpec` from the normalised NHWC image (or `start_at`'s activation) to
    layer `stop_at`: NHWC (N, H, W, C) for conv-like layers, (N, F) for fc layers."""

    stages: tuple
    stop_at: str
    act: Callable = nn.relu
    precision: Any = HIGHEST
    start_at: str | None = None

    @nn.compact
    def __call__(self, x):
        names = [s.name for s in self.stages]
        if self.stop_at not in names:
            raise UsageError(f"unknown layer {self.stop_at!r}")
        last = names.index(self.stop_at)
        first = 0
        if self.start_at is not None:
            if self.start_at not in names[: last + 1]:
                raise UsageError(f"start_at {self.start_at!r} is not a layer at or below {self.stop_at!r}")
            first = names.index(self.start_at) + 1
        return run_stages(self.stages[first : last + 1], x, FlaxBackend(self.act, self.precision, self))


def build(spec: NetSpec, stop_at: str, *, act: Callable = nn.relu, precision=HIGHEST,
          start_at: str | None = None) -> Network:
    """The Flax module of `spec` computing layer `stop_at` (see the module docstring)."""
    return Network(spec.stages, stop_at, act=act, precision=precision, start_at=start_at)
