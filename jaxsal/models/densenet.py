"""torchvision's DenseNet-121 (`densenet121`), layers named after torchvision's modules under
`features`: conv0, norm0, relu0, pool0, denseblock1, transition1, ..., denseblock4, norm5; then
fc (torchvision's `classifier`).

The ReLU and the global average pool between norm5 and fc are functional in torchvision
(`F.relu`, `F.adaptive_avg_pool2d`), so they are glue here, not layers; the ReLU is still one
of the network's ReLUs (the saliency method's rule applies to it). A dense block's output is
the concatenation of its input and every dense layer's new features.

The published checkpoint (densenet121-a639ec97.pth) was saved under older module names
(`denselayer1.norm.1.weight` for today's `denselayer1.norm1.weight`); `rename_torch_key` is the
rename torchvision's own loader applies, and the converter applies it before matching keys.
"""
from __future__ import annotations

import dataclasses
import re

from jaxsal.models.layers import (AvgPool, BatchNorm, Block, Conv, Flatten, GlobalAvgPool, Linear,
                                  MaxPool, ReLU)
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource, torchvision_url

# torchvision's `_load_state_dict` pattern: '.'s are no longer allowed in module names.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def rename_torch_key(key: str) -> str:
    """A published DenseNet checkpoint's key -> today's torchvision key
    (`...denselayer1.norm.1.weight` -> `...denselayer1.norm1.weight`); other keys unchanged."""
    match = _OLD_DENSE_LAYER_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


@dataclasses.dataclass(frozen=True)
class DenseLayer(Block):
    """torchvision's _DenseLayer: batch norm, ReLU, 1x1 convolution to `bn_size * growth`
    channels, batch norm, ReLU, 3x3 convolution to `growth` new channels."""

    growth: int = 32
    bn_size: int = 4

    def forward(self, x, b):
        x = b.act(b.layer(BatchNorm("norm1", "norm1"), x))
        x = b.layer(Conv("conv1", "conv1", self.bn_size * self.growth, 1, bias=False), x)
        x = b.act(b.layer(BatchNorm("norm2", "norm2"), x))
        return b.layer(Conv("conv2", "conv2", self.growth, 3, 1, 1, bias=False), x)


@dataclasses.dataclass(frozen=True)
class DenseBlock(Block):
    """torchvision's _DenseBlock: `layers` dense layers, each seeing the concatenation of the
    block's input and every earlier layer's new features; the output is all of them."""

    layers: int = 6
    growth: int = 32
    bn_size: int = 4

    def forward(self, x, b):
        for i in range(1, self.layers + 1):
            x = b.concat([x, b.layer(DenseLayer(f"denselayer{i}", f"denselayer{i}", self.growth, self.bn_size), x)])
        return x


@dataclasses.dataclass(frozen=True)
class Transition(Block):
    """torchvision's _Transition: batch norm, ReLU, 1x1 convolution to `features` channels,
    2x2 average pool with stride 2."""

    features: int = 0

    def forward(self, x, b):
        x = b.act(b.layer(BatchNorm("norm", "norm"), x))
        x = b.layer(Conv("conv", "conv", self.features, 1, bias=False), x)
        return b.layer(AvgPool(window=2, stride=2), x)


def densenet(name: str, growth: int, blocks: tuple[int, ...], init_features: int,
             files: tuple[str, ...], bn_size: int = 4) -> NetSpec:
    """torchvision's `_densenet(arch, growth_rate, block_config, num_init_features)`."""
    stages = [Conv("conv0", "features.conv0", init_features, 7, 2, 3, bias=False),
              BatchNorm("norm0", "features.norm0"), ReLU("relu0"),
              MaxPool("pool0", window=3, stride=2, padding=1)]
    width = init_features
    for i, count in enumerate(blocks, 1):
        stages.append(DenseBlock(f"denseblock{i}", f"features.denseblock{i}", count, growth, bn_size))
        width += count * growth
        if i < len(blocks):
            width //= 2
            stages.append(Transition(f"transition{i}", f"features.transition{i}", width))
    stages += [BatchNorm("norm5", "features.norm5"), ReLU(), GlobalAvgPool(), Flatten(),
               Linear("fc", "classifier", 1000)]
    return NetSpec(
        name=name,
        stages=tuple(stages),
        preprocessing=Preprocessing(size=224),
        weights=WeightSource(files=files, url=torchvision_url(files[0]),
                             original=f"{name.lower()}.pth", rename_torch_key=rename_torch_key),
        cam_layer="norm5",
    )


DENSENET121 = densenet("Densenet121", 32, (6, 12, 24, 16), 64, ("densenet121-a639ec97.pth",))
