"""torchvision's AlexNet as a Flax Linen module (its description: `jaxsal.models.alexnet`).

NHWC, eval mode (dropout is the identity), no LRN/BN. The forward pass stops at the requested
layer, so a conv5 target never touches the fully-connected weights. The ReLU is a module
attribute: guided backpropagation is `AlexNet(act=guided_relu)`, not a hook.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxsal.errors import UsageError
from jaxsal.models.alexnet import CONVS, FCS, LAYER_NAMES
from jaxsal.models.ops import conv_space_to_depth, max_pool_3x3_s2


class Conv(nn.Module):
    """A convolution with torch's explicit symmetric padding (never 'SAME': conv1 would differ)."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel = kernel.astype(x.dtype)
        if self.stride > 1:
            y = conv_space_to_depth(x, kernel, self.stride, self.padding, self.precision)
        else:
            p = self.padding
            y = lax.conv_general_dilated(
                x, kernel, (1, 1), ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision,
            )
        return y + bias.astype(x.dtype)


class Dense(nn.Module):
    features: int
    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.dot(x, kernel.astype(x.dtype), precision=self.precision) + bias.astype(x.dtype)


class AlexNet(nn.Module):
    """AlexNet from the normalized NHWC image to the activation of layer `stop_at`.

    Input: (N, 224, 224, 3) normalized with ImageNet mean/std. Output: NHWC (N, H, W, C) for
    conv-like layers, (N, F) for fc layers. `act` is every ReLU (pass a guided ReLU for guided
    backprop); `pool` is the 3x3/2 max-pool. With `start_at` set, the input is instead the
    activation of that layer (NHWC or (N, F)) and the layers up to it are skipped (Grad-CAM
    differentiates the target with respect to an inner layer this way).
    """

    stop_at: str = "fc3"
    act: Callable = nn.relu
    pool: Callable = max_pool_3x3_s2
    precision: Any = lax.Precision.HIGHEST
    start_at: str | None = None

    @nn.compact
    def __call__(self, x):
        if self.stop_at not in LAYER_NAMES:
            raise UsageError(f"unknown layer {self.stop_at!r}; valid layers: {', '.join(LAYER_NAMES)}")
        first = 0
        if self.start_at is not None:
            if self.start_at not in LAYER_NAMES[: LAYER_NAMES.index(self.stop_at) + 1]:
                raise UsageError(f"start_at {self.start_at!r} is not a layer at or below {self.stop_at!r}")
            if self.start_at == self.stop_at:
                return x
            first = LAYER_NAMES.index(self.start_at) + 1

        def runs(layer):  # is this layer computed (not skipped by start_at)?
            return LAYER_NAMES.index(layer) >= first

        pooled_after = {"conv1", "conv2", "conv5"}
        for name, _, cout, k, s, p in CONVS:
            if runs(name):
                x = Conv(cout, k, s, p, self.precision, name=name)(x)
            if self.stop_at == name:
                return x
            if runs(f"{name}_relu"):
                x = self.act(x)
            if self.stop_at == f"{name}_relu":
                return x
            if name in pooled_after:
                if runs(f"{name}_maxpool"):
                    x = self.pool(x)
                if self.stop_at == f"{name}_maxpool":
                    return x
        # AdaptiveAvgPool2d((6, 6)) is the identity at 224x224; dropout is the identity in eval.
        # Flatten in H,W,C order: fc1's rows were reordered to match at conversion (SPEC §7).
        if x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        for i, (name, _, fout) in enumerate(FCS):
            if runs(name):
                x = Dense(fout, self.precision, name=name)(x)
            if self.stop_at == name:
                return x
            if i < len(FCS) - 1:
                if runs(f"{name}_relu"):
                    x = self.act(x)
                if self.stop_at == f"{name}_relu":
                    return x
        raise AssertionError("unreachable")
