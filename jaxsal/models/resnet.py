"""torchvision's ResNets, one family with a block parameter (torchvision's `_resnet(block,
layers)`, Flax's `ResNet(stage_sizes, block_cls)`): ResNet-18/34 with basic blocks, ResNet-50/152
with bottlenecks. Layer names of SPEC §8: conv, bn, relu, maxpool, layer<i>_<block><j> (the
block's kind, `bottleneck` or `basicblock`, j from 0), avgpool, fc.

A block applies its ReLU at every use (a bottleneck three times, a basic block twice, the last
after the residual sum); the saliency method's rule applies at every use, also inside a target
block (the original left a target block's ReLUs vanilla: SPEC §8)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxsal.models.layers import (BatchNorm, Block, Conv, Flatten, GlobalAvgPool, Linear,
                                  MaxPool, ReLU)
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource, torchvision_url


@dataclasses.dataclass(frozen=True)
class ResidualBlock(Block):
    """A residual block of `planes` (output `expansion * planes` channels); `downsample`: the
    1x1 convolution + batch norm on the shortcut where the shape changes (stride or width)."""

    planes: int = 64
    stride: int = 1
    downsample: bool = False

    expansion: ClassVar[int] = 1
    kind: ClassVar[str] = ""  # the block's part of its layer name

    def residual(self, x, b):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x, b):
        out = self.residual(x, b)
        shortcut = x
        if self.downsample:
            width = self.expansion * self.planes
            shortcut = b.layer(Conv("downsample_conv", "downsample.0", width, 1, self.stride, bias=False), x)
            shortcut = b.layer(BatchNorm("downsample_bn", "downsample.1"), shortcut)
        return b.act(b.add(out, shortcut))


@dataclasses.dataclass(frozen=True)
class Bottleneck(ResidualBlock):
    """torchvision's Bottleneck (v1.5: the stride is on the 3x3 convolution)."""

    expansion: ClassVar[int] = 4
    kind: ClassVar[str] = "bottleneck"

    def residual(self, x, b):
        out = b.act(b.layer(BatchNorm("bn1", "bn1"), b.layer(Conv("conv1", "conv1", self.planes, 1, bias=False), x)))
        out = b.act(b.layer(BatchNorm("bn2", "bn2"),
                            b.layer(Conv("conv2", "conv2", self.planes, 3, self.stride, 1, bias=False), out)))
        return b.layer(BatchNorm("bn3", "bn3"),
                       b.layer(Conv("conv3", "conv3", self.expansion * self.planes, 1, bias=False), out))


@dataclasses.dataclass(frozen=True)
class BasicBlock(ResidualBlock):
    """torchvision's BasicBlock: two 3x3 convolutions, the stride on the first."""

    kind: ClassVar[str] = "basicblock"

    def residual(self, x, b):
        out = b.act(b.layer(BatchNorm("bn1", "bn1"),
                            b.layer(Conv("conv1", "conv1", self.planes, 3, self.stride, 1, bias=False), x)))
        return b.layer(BatchNorm("bn2", "bn2"), b.layer(Conv("conv2", "conv2", self.planes, 3, 1, 1, bias=False), out))


def resnet(name: str, block: type[ResidualBlock], blocks: tuple[int, int, int, int],
           files: tuple[str, ...]) -> NetSpec:
    """A torchvision ResNet: `blocks[i]` blocks of type `block` in stage i + 1 (64, 128, 256,
    512 planes; stages 2-4 start with stride 2)."""
    stages = [Conv("conv", "conv1", 64, 7, 2, 3, bias=False), BatchNorm("bn", "bn1"), ReLU("relu"),
              MaxPool("maxpool", window=3, stride=2, padding=1)]
    width = 64
    for i, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
        for j in range(count):
            stride = 2 if (j == 0 and i > 1) else 1
            stages.append(block(f"layer{i}_{block.kind}{j}", f"layer{i}.{j}", planes=planes, stride=stride,
                                downsample=stride != 1 or width != block.expansion * planes))
            width = block.expansion * planes
    stages += [GlobalAvgPool("avgpool"), Flatten(), Linear("fc", "fc", 1000)]
    return NetSpec(
        name=name,
        stages=tuple(stages),
        preprocessing=Preprocessing(size=224),
        weights=WeightSource(files=files, url=torchvision_url(files[0]),
                             original=f"{name.lower()}.pth"),
        cam_layer=f"layer4_{block.kind}{blocks[3] - 1}",
    )


RESNET50 = resnet("Resnet50", Bottleneck, (3, 4, 6, 3), ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"))
RESNET152 = resnet("Resnet152", Bottleneck, (3, 8, 36, 3), ("resnet152-b121ed2d.pth",))

# Beyond the original's networks (issue 18). torchvision's current files first (IMAGENET1K_V1),
# then the same weights under their pre-0.10 names.
RESNET18 = resnet("Resnet18", BasicBlock, (2, 2, 2, 2), ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"))
RESNET34 = resnet("Resnet34", BasicBlock, (3, 4, 6, 3), ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"))
