"""torchvision's GoogLeNet and Inception-v3, layer names of SPEC §8.

Fixed on purpose against the original (SPEC §8): the gradient is taken with respect to the image
(the original read it inside conv1), the saliency method's ReLU rule applies to every ReLU,
the functional ones inside each conv-bn-relu included, and the input goes through
`transform_input` as the published weights expect.
"""
from __future__ import annotations

import dataclasses

from jaxsal.models.layers import (AvgPool, BatchNorm, Block, ChannelAffine, Conv, Flatten,
                                  GlobalAvgPool, Linear, MaxPool)
from jaxsal.models.spec import (IMAGENET_MEAN, IMAGENET_STD, NetSpec, Preprocessing, WeightSource,
                                torchvision_url)

# torchvision's `_transform_input`: ImageNet-normalised x -> (pixel - 0.5) / 0.5, per channel.
TRANSFORM_INPUT = ChannelAffine(scale=tuple(s / 0.5 for s in IMAGENET_STD),
                                shift=tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN))


@dataclasses.dataclass(frozen=True)
class BasicConv(Block):
    """torchvision's BasicConv2d: convolution without bias, batch norm (eps 1e-3), ReLU."""

    features: int = 0
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    def forward(self, x, b):
        x = b.layer(Conv("conv", "conv", self.features, self.kernel, self.stride, self.padding, bias=False), x)
        return b.act(b.layer(BatchNorm("bn", "bn", eps=1e-3), x))


def _conv(name: str, features: int, kernel=1, stride=1, padding=0) -> BasicConv:
    """A BasicConv whose torch module path is its name ('branch2.0' is scoped 'branch2_0')."""
    return BasicConv(name.replace(".", "_"), name, features, kernel, stride, padding)


def _chain(x, b, *convs):
    for conv in convs:
        x = b.layer(conv, x)
    return x


# ---------------------------------------------------------------------------------------------
# GoogLeNet


@dataclasses.dataclass(frozen=True)
class GoogLeNetInception(Block):
    """torchvision's GoogLeNet Inception block (its "5x5" branch has a 3x3 kernel, as the
    published weights do)."""

    ch1x1: int = 0
    ch3x3red: int = 0
    ch3x3: int = 0
    ch5x5red: int = 0
    ch5x5: int = 0
    pool_proj: int = 0

    def forward(self, x, b):
        return b.concat([
            b.layer(_conv("branch1", self.ch1x1), x),
            _chain(x, b, _conv("branch2.0", self.ch3x3red), _conv("branch2.1", self.ch3x3, 3, padding=1)),
            _chain(x, b, _conv("branch3.0", self.ch5x5red), _conv("branch3.1", self.ch5x5, 3, padding=1)),
            b.layer(_conv("branch4.1", self.pool_proj),
                    b.layer(MaxPool(window=3, stride=1, padding=1, ceil=True), x)),
        ])


def _googlenet_inception(name: str, *channels: int) -> GoogLeNetInception:
    return GoogLeNetInception(name, name, *channels)


GOOGLENET = NetSpec(
    name="Googlenet",
    stages=(
        TRANSFORM_INPUT,
        _conv("conv1", 64, 7, 2, 3),
        MaxPool("maxpool1", window=3, stride=2, ceil=True),
        _conv("conv2", 64, 1),
        _conv("conv3", 192, 3, padding=1),
        MaxPool("maxpool2", window=3, stride=2, ceil=True),
        _googlenet_inception("inception3a", 64, 96, 128, 16, 32, 32),
        _googlenet_inception("inception3b", 128, 128, 192, 32, 96, 64),
        MaxPool("maxpool3", window=3, stride=2, ceil=True),
        _googlenet_inception("inception4a", 192, 96, 208, 16, 48, 64),
        _googlenet_inception("inception4b", 160, 112, 224, 24, 64, 64),
        _googlenet_inception("inception4c", 128, 128, 256, 24, 64, 64),
        _googlenet_inception("inception4d", 112, 144, 288, 32, 64, 64),
        _googlenet_inception("inception4e", 256, 160, 320, 32, 128, 128),
        MaxPool("maxpool4", window=2, stride=2, ceil=True),
        _googlenet_inception("inception5a", 256, 160, 320, 32, 128, 128),
        _googlenet_inception("inception5b", 384, 192, 384, 48, 128, 128),
        GlobalAvgPool(), Flatten(),  # then dropout: the identity in eval mode
        Linear("fc", "fc", 1000),
    ),
    preprocessing=Preprocessing(size=224),
    weights=WeightSource(files=("googlenet-1378be20.pth",),
                         url=torchvision_url("googlenet-1378be20.pth"),
                         original="googlenet.pth", ignored_torch_keys=("aux1.", "aux2.")),
    cam_layer="inception5b",
)

# ---------------------------------------------------------------------------------------------
# Inception-v3


@dataclasses.dataclass(frozen=True)
class InceptionA(Block):
    pool_features: int = 32

    def forward(self, x, b):
        return b.concat([
            b.layer(_conv("branch1x1", 64), x),
            _chain(x, b, _conv("branch5x5_1", 48), _conv("branch5x5_2", 64, 5, padding=2)),
            _chain(x, b, _conv("branch3x3dbl_1", 64), _conv("branch3x3dbl_2", 96, 3, padding=1),
                   _conv("branch3x3dbl_3", 96, 3, padding=1)),
            b.layer(_conv("branch_pool", self.pool_features), b.layer(AvgPool(window=3, stride=1, padding=1), x)),
        ])


@dataclasses.dataclass(frozen=True)
class InceptionB(Block):
    def forward(self, x, b):
        return b.concat([
            b.layer(_conv("branch3x3", 384, 3, stride=2), x),
            _chain(x, b, _conv("branch3x3dbl_1", 64), _conv("branch3x3dbl_2", 96, 3, padding=1),
                   _conv("branch3x3dbl_3", 96, 3, stride=2)),
            b.layer(MaxPool(window=3, stride=2), x),
        ])


@dataclasses.dataclass(frozen=True)
class InceptionC(Block):
    channels_7x7: int = 128

    def forward(self, x, b):
        c7 = self.channels_7x7
        return b.concat([
            b.layer(_conv("branch1x1", 192), x),
            _chain(x, b, _conv("branch7x7_1", c7), _conv("branch7x7_2", c7, (1, 7), padding=(0, 3)),
                   _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))),
            _chain(x, b, _conv("branch7x7dbl_1", c7), _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0)),
                   _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3)),
                   _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0)),
                   _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))),
            b.layer(_conv("branch_pool", 192), b.layer(AvgPool(window=3, stride=1, padding=1), x)),
        ])


@dataclasses.dataclass(frozen=True)
class InceptionD(Block):
    def forward(self, x, b):
        return b.concat([
            _chain(x, b, _conv("branch3x3_1", 192), _conv("branch3x3_2", 320, 3, stride=2)),
            _chain(x, b, _conv("branch7x7x3_1", 192), _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3)),
                   _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0)),
                   _conv("branch7x7x3_4", 192, 3, stride=2)),
            b.layer(MaxPool(window=3, stride=2), x),
        ])


@dataclasses.dataclass(frozen=True)
class InceptionE(Block):
    def forward(self, x, b):
        b3 = b.layer(_conv("branch3x3_1", 384), x)
        dbl = _chain(x, b, _conv("branch3x3dbl_1", 448), _conv("branch3x3dbl_2", 384, 3, padding=1))
        return b.concat([
            b.layer(_conv("branch1x1", 320), x),
            b.concat([b.layer(_conv("branch3x3_2a", 384, (1, 3), padding=(0, 1)), b3),
                      b.layer(_conv("branch3x3_2b", 384, (3, 1), padding=(1, 0)), b3)]),
            b.concat([b.layer(_conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1)), dbl),
                      b.layer(_conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0)), dbl)]),
            b.layer(_conv("branch_pool", 192), b.layer(AvgPool(window=3, stride=1, padding=1), x)),
        ])


INCEPTION_V3 = NetSpec(
    name="InceptionV3",
    stages=(
        TRANSFORM_INPUT,
        BasicConv("conv1", "Conv2d_1a_3x3", 32, 3, stride=2),
        BasicConv("conv2", "Conv2d_2a_3x3", 32, 3),
        BasicConv("conv3", "Conv2d_2b_3x3", 64, 3, padding=1),
        MaxPool("maxpool1", window=3, stride=2),
        BasicConv("conv4", "Conv2d_3b_1x1", 80, 1),
        BasicConv("conv5", "Conv2d_4a_3x3", 192, 3),
        MaxPool("maxpool2", window=3, stride=2),
        InceptionA("inception1", "Mixed_5b", pool_features=32),
        InceptionA("inception2", "Mixed_5c", pool_features=64),
        InceptionA("inception3", "Mixed_5d", pool_features=64),
        InceptionB("inception4", "Mixed_6a"),
        InceptionC("inception5", "Mixed_6b", channels_7x7=128),
        InceptionC("inception6", "Mixed_6c", channels_7x7=160),
        InceptionC("inception7", "Mixed_6d", channels_7x7=160),
        InceptionC("inception8", "Mixed_6e", channels_7x7=192),
        InceptionD("inception9", "Mixed_7a"),
        InceptionE("inception10", "Mixed_7b"),
        InceptionE("inception11", "Mixed_7c"),
        GlobalAvgPool("avgpool"), Flatten(),  # then dropout: the identity in eval mode
        Linear("fc", "fc", 1000),
    ),
    preprocessing=Preprocessing(size=299),
    weights=WeightSource(files=("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth"),
                         url=torchvision_url("inception_v3_google-0cc3c7bd.pth"),
                         original="inception_v3_google.pth", ignored_torch_keys=("AuxLogits.",)),
    cam_layer="inception11",
)
