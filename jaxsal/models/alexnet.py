"""torchvision's AlexNet ("one weird trick" variant; no LRN, no BN), layer names of SPEC §6."""
from __future__ import annotations

from jaxsal.models.layers import Conv, Flatten, Linear, MaxPool, ReLU
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource, torchvision_url


def _conv(n: int, torch: int, features: int, kernel: int, stride: int, padding: int, pool: bool):
    stages = [Conv(f"conv{n}", f"features.{torch}", features, kernel, stride, padding),
              ReLU(f"conv{n}_relu")]
    if pool:
        stages.append(MaxPool(f"conv{n}_maxpool", window=3, stride=2))
    return stages


ALEXNET = NetSpec(
    name="AlexNet",
    stages=(
        *_conv(1, 0, 64, 11, 4, 2, pool=True),
        *_conv(2, 3, 192, 5, 1, 2, pool=True),
        *_conv(3, 6, 384, 3, 1, 1, pool=False),
        *_conv(4, 8, 256, 3, 1, 1, pool=False),
        *_conv(5, 10, 256, 3, 1, 1, pool=True),
        # AdaptiveAvgPool2d((6, 6)) is the identity at 224 x 224; dropout is the identity in eval.
        Flatten(),
        Linear("fc1", "classifier.1", 4096), ReLU("fc1_relu"),
        Linear("fc2", "classifier.4", 4096), ReLU("fc2_relu"),
        Linear("fc3", "classifier.6", 1000),
    ),
    preprocessing=Preprocessing(size=224),
    weights=WeightSource(
        files=("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
        url=torchvision_url("alexnet-owt-7be5be79.pth"),
        original="alexnet.pth",
        bundled="alexnet_conv.safetensors",
    ),
    cam_layer="conv5_maxpool",
)
