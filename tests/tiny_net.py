"""TinyNet: a small registered network for fast tests of the core, the command, rendering,
sharding and multi-process runs (full-size networks are kept for parity and golden tests).

32 x 32 input; an AlexNet-like shape in miniature, so every primitive the real networks use on
that path is exercised: a space-to-depth convolution (kernel 5, stride 2), overlapping max-pools,
stride-1 convolutions, a flatten and linear layers. `python tests/tiny_net.py ARGS` runs
`dnn_saliency ARGS` with TinyNet registered (subprocess tests of the command).
"""
from __future__ import annotations

import sys

import numpy as np

from jaxsal.models import NetSpec, Preprocessing, WeightSource, register
from jaxsal.models.layers import Conv, Flatten, Linear, MaxPool, ReLU

TINY = NetSpec(
    name="TinyNet",
    stages=(
        Conv("conv1", "features.0", 8, 5, 2, 2), ReLU("conv1_relu"),
        MaxPool("conv1_maxpool", window=3, stride=2),
        Conv("conv2", "features.3", 12, 3, 1, 1), ReLU("conv2_relu"),
        Conv("conv3", "features.5", 16, 3, 1, 1), ReLU("conv3_relu"),
        MaxPool("conv3_maxpool", window=3, stride=2),
        Flatten(),
        Linear("fc1", "classifier.1", 32), ReLU("fc1_relu"),
        Linear("fc2", "classifier.3", 10),
    ),
    preprocessing=Preprocessing(size=32),
    weights=WeightSource(files=("tinynet-00000000.pth",), url=None, original="tinynet.pth"),
    cam_layer="conv3_maxpool",
)
register(TINY, replace=True)


def random_params(spec: NetSpec = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat float32 params of `spec`: He-scaled kernels, small biases, batch-norm statistics
    near the identity (seeded)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in spec.params:
        leaf = p.key.rsplit(".", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(p.shape[:-1]))
            value = rng.standard_normal(p.shape) * (2.0 / fan_in) ** 0.5
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, p.shape)
        else:
            value = rng.standard_normal(p.shape) * 0.05
        out[p.key] = value.astype(np.float32)
    return out


def write_weights(path, spec: NetSpec = TINY, seed: int = 0):
    """A jaxsal .safetensors file of random weights for `spec`; returns its path."""
    from jaxsal.weights import safetensors_io

    return safetensors_io.save(path, random_params(spec, seed), {"format": "jaxsal-flat-v1",
                                                                  "net": spec.name})


if __name__ == "__main__":
    from jaxsal import cli

    sys.exit(cli.run())
