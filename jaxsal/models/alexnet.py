"""torchvision's AlexNet ("one weird trick" variant) as a Flax Linen module.

NHWC, eval mode (dropout is the identity), no LRN/BN. Layer names and output shapes follow the
original program (SPEC §6). The forward pass stops at the requested layer, so a conv5 target
never touches the fully-connected weights. The ReLU is a module attribute: guided
backpropagation is `AlexNet(act=guided_relu)`, not a hook.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsal.errors import UsageError
from jaxsal.models import LayerInfo, NetSpec, WeightSource
from jaxsal.models.ops import conv_space_to_depth, max_pool_3x3_s2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name, in channels, out channels, kernel, stride, padding) of the five convolutions.
CONVS = (
    ("conv1", 3, 64, 11, 4, 2),
    ("conv2", 64, 192, 5, 1, 2),
    ("conv3", 192, 384, 3, 1, 1),
    ("conv4", 384, 256, 3, 1, 1),
    ("conv5", 256, 256, 3, 1, 1),
)
FCS = (("fc1", 256 * 6 * 6, 4096), ("fc2", 4096, 4096), ("fc3", 4096, 1000))

LAYERS = (
    LayerInfo("conv1", "conv", (64, 55, 55), affine=True),
    LayerInfo("conv1_relu", "conv", (64, 55, 55)),
    LayerInfo("conv1_maxpool", "conv", (64, 27, 27)),
    LayerInfo("conv2", "conv", (192, 27, 27), affine=True),
    LayerInfo("conv2_relu", "conv", (192, 27, 27)),
    LayerInfo("conv2_maxpool", "conv", (192, 13, 13)),
    LayerInfo("conv3", "conv", (384, 13, 13), affine=True),
    LayerInfo("conv3_relu", "conv", (384, 13, 13)),
    LayerInfo("conv4", "conv", (256, 13, 13), affine=True),
    LayerInfo("conv4_relu", "conv", (256, 13, 13)),
    LayerInfo("conv5", "conv", (256, 13, 13), affine=True),
    LayerInfo("conv5_relu", "conv", (256, 13, 13)),
    LayerInfo("conv5_maxpool", "conv", (256, 6, 6)),
    LayerInfo("fc1", "fc", (4096,), needs_fc_weights=True, affine=True),
    LayerInfo("fc1_relu", "fc", (4096,), needs_fc_weights=True),
    LayerInfo("fc2", "fc", (4096,), needs_fc_weights=True, affine=True),
    LayerInfo("fc2_relu", "fc", (4096,), needs_fc_weights=True),
    LayerInfo("fc3", "fc", (1000,), needs_fc_weights=True, affine=True),
)
LAYER_NAMES = tuple(layer.name for layer in LAYERS)


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


def expected_shapes(with_fc: bool = True) -> dict[str, tuple[int, ...]]:
    """Flat jaxsal key -> shape of every parameter (conv kernels HWIO, fc kernels (in, out))."""
    shapes = {}
    for name, cin, cout, k, _, _ in CONVS:
        shapes[f"{name}.kernel"] = (k, k, cin, cout)
        shapes[f"{name}.bias"] = (cout,)
    if with_fc:
        for name, fin, fout in FCS:
            shapes[f"{name}.kernel"] = (fin, fout)
            shapes[f"{name}.bias"] = (fout,)
    return shapes


# torchvision state_dict key prefix of each jaxsal layer.
TORCH_NAMES = {
    "conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
    "conv4": "features.8", "conv5": "features.10",
    "fc1": "classifier.1", "fc2": "classifier.4", "fc3": "classifier.6",
}


def from_torchvision(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convert a torchvision AlexNet state_dict (numpy arrays) to flat jaxsal params.

    Conv weights OIHW -> HWIO; Linear weights (out, in) -> (in, out); fc1's input rows go from
    torch's C,H,W flattening to our H,W,C flattening. Values are not altered, only moved.
    Raises ValueError naming any missing, unexpected or mis-shaped key.
    """
    want = {f"{TORCH_NAMES[n]}.weight" for n in TORCH_NAMES} | {f"{TORCH_NAMES[n]}.bias" for n in TORCH_NAMES}
    missing = sorted(want - set(state_dict))
    extra = sorted(set(state_dict) - want)
    if missing or extra:
        raise ValueError(
            "not a torchvision AlexNet state_dict: "
            + (f"missing keys {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected keys {extra}" if extra else "")
        )
    out = {}
    for name, tname in TORCH_NAMES.items():
        w = np.asarray(state_dict[f"{tname}.weight"])
        b = np.asarray(state_dict[f"{tname}.bias"])
        if name.startswith("conv"):
            w = w.transpose(2, 3, 1, 0)
        elif name == "fc1":
            if w.shape != (4096, 256 * 6 * 6):
                raise ValueError(f"{tname}.weight has shape {w.shape}, expected (4096, 9216)")
            w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(256 * 6 * 6, 4096)
        else:
            w = w.T
        out[f"{name}.kernel"] = np.ascontiguousarray(w)
        out[f"{name}.bias"] = np.ascontiguousarray(b)
    for key, shape in expected_shapes().items():
        if out[key].shape != shape:
            raise ValueError(
                f"{key} (torch {TORCH_NAMES[key.split('.')[0]]}) has converted shape "
                f"{out[key].shape}, expected {shape}"
            )
    return out


def build(stop_at: str = "fc3", act: Callable = nn.relu, precision: Any = lax.Precision.HIGHEST,
          start_at: str | None = None):
    return AlexNet(stop_at=stop_at, act=act, precision=precision, start_at=start_at)


SPEC = NetSpec(
    name="AlexNet",
    layers=LAYERS,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    build=build,
    weights=WeightSource(
        torchvision_files=("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        bundled="alexnet_conv.safetensors",
        convert=from_torchvision,
        expected=expected_shapes,
    ),
)
