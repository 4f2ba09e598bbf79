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
import numpy as np
import jax.numpy as jnp
from jax import lax

from jaxsal.errors import UsageError
from jaxsal.models.layers import (AvgPool, BatchNorm, Block, ChannelAffine, Conv, Flatten,
                                  GlobalAvgPool, Linear, MaxPool, ReLU, run_stages)
from jaxsal.models.primitives import conv_space_to_depth, max_pool
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
        if op.stride > 1 and kh == kw and ph == pw and kh >= 2 * op.stride:
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
        return self.op.forward(x, FlaxBackend(self.act, self.precision))


def _avg_pool(op: AvgPool, x):
    if op.ceil:
        raise NotImplementedError("AvgPool with ceil_mode")
    k, s, p = op.window, op.stride, op.padding
    lead = (1,) * (x.ndim - 3)
    pads = ((0, 0),) * (x.ndim - 3) + ((p, p), (p, p), (0, 0))
    # A concrete zero (numpy, not traced) makes this XLA's differentiable window sum.
    total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, lead + (k, k, 1),
                              lead + (s, s, 1), pads)
    return total / jnp.asarray(k * k, x.dtype)  # count_include_pad=True


class FlaxBackend:
    """Runs a description on arrays, inside a Flax module's compact method (primitives with
    parameters become submodules named after their op)."""

    def __init__(self, act: Callable, precision):
        self._act, self.precision = act, precision

    def layer(self, op, x):
        if isinstance(op, Block):
            return _Block(op, self._act, self.precision, name=op.name)(x)
        if isinstance(op, Conv):
            return _Conv(op, self.precision, name=op.name)(x)
        if isinstance(op, Linear):
            return _Linear(op, self.precision, name=op.name)(x)
        if isinstance(op, BatchNorm):
            return _BatchNorm(op, name=op.name)(x)
        if isinstance(op, ReLU):
            return self._act(x)
        if isinstance(op, MaxPool):
            return max_pool(x, op.window, op.stride, op.padding, op.ceil)
        if isinstance(op, AvgPool):
            return _avg_pool(op, x)
        if isinstance(op, GlobalAvgPool):
            return jnp.mean(x, axis=(-3, -2), keepdims=True)
        if isinstance(op, Flatten):
            return x.reshape(x.shape[:-3] + (-1,))  # H,W,C order (see layers.Linear)
        if isinstance(op, ChannelAffine):
            return x * jnp.asarray(op.scale, x.dtype) + jnp.asarray(op.shift, x.dtype)
        raise TypeError(f"no Flax implementation for {type(op).__name__}")

    def act(self, x):
        return self._act(x)

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
        return run_stages(self.stages[first : last + 1], x, FlaxBackend(self.act, self.precision))


def build(spec: NetSpec, stop_at: str, *, act: Callable = nn.relu, precision=HIGHEST,
          start_at: str | None = None) -> Network:
    """The Flax module of `spec` computing layer `stop_at` (see the module docstring)."""
    return Network(spec.stages, stop_at, act=act, precision=precision, start_at=start_at)
