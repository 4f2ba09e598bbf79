"""torchvision's ResNets with bottleneck blocks (ResNet-50, ResNet-152), layer names of SPEC §8:
conv, bn, relu, maxpool, layer<i>_bottleneck<j>, avgpool, fc.

A bottleneck applies its ReLU three times (after bn1, after bn2, after the residual sum); the
saliency method's rule applies at every use, also inside a target block (the original left a
target block's ReLUs vanilla: SPEC §8)."""
from __future__ import annotations

import dataclasses

from jaxsal.models.layers import (BatchNorm, Block, Conv, Flatten, GlobalAvgPool, Linear,
                                  MaxPool, ReLU)
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource


@dataclasses.dataclass(frozen=True)
class Bottleneck(Block):
    """torchvision's Bottleneck (v1.5: the stride is on the 3x3 convolution); `downsample`: the
    1x1 convolution + batch norm on the shortcut of each stage's first block."""

    planes: int = 64
    stride: int = 1
    downsample: bool = False

    def forward(self, x, b):
        out = b.act(b.layer(BatchNorm("bn1", "bn1"), b.layer(Conv("conv1", "conv1", self.planes, 1, bias=False), x)))
        out = b.act(b.layer(BatchNorm("bn2", "bn2"),
                            b.layer(Conv("conv2", "conv2", self.planes, 3, self.stride, 1, bias=False), out)))
        out = b.layer(BatchNorm("bn3", "bn3"), b.layer(Conv("conv3", "conv3", 4 * self.planes, 1, bias=False), out))
        shortcut = x
        if self.downsample:
            shortcut = b.layer(Conv("downsample_conv", "downsample.0", 4 * self.planes, 1, self.stride, bias=False), x)
            shortcut = b.layer(BatchNorm("downsample_bn", "downsample.1"), shortcut)
        return b.act(b.add(out, shortcut))


def resnet(name: str, blocks: tuple[int, int, int, int], files: tuple[str, ...]) -> NetSpec:
    stages = [Conv("conv", "conv1", 64, 7, 2, 3, bias=False), BatchNorm("bn", "bn1"), ReLU("relu"),
              MaxPool("maxpool", window=3, stride=2, padding=1)]
    for i, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
        for j in range(count):
            stages.append(Bottleneck(f"layer{i}_bottleneck{j}", f"layer{i}.{j}", planes=planes,
                                     stride=2 if (j == 0 and i > 1) else 1, downsample=j == 0))
    stages += [GlobalAvgPool("avgpool"), Flatten(), Linear("fc", "fc", 1000)]
    return NetSpec(
        name=name,
        stages=tuple(stages),
        preprocessing=Preprocessing(size=224),
        weights=WeightSource(files=files, url=f"https://download.pytorch.org/models/{files[0]}",
                             original=f"{name.lower()}.pth"),
        cam_layer=f"layer4_bottleneck{blocks[3] - 1}",
    )


RESNET50 = resnet("Resnet50", (3, 4, 6, 3), ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"))
RESNET152 = resnet("Resnet152", (3, 8, 36, 3), ("resnet152-b121ed2d.pth",))
