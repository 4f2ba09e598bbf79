"""torchvision's AlexNet ("one weird trick" variant): its layer table, preprocessing, weight
conversion and registry entry.

Layer names and output shapes follow the original program (SPEC §6). This module imports neither
JAX nor Flax, so that looking a network up and checking a command's inputs stays cheap; the Flax
module itself is in `jaxsal.models.alexnet_flax`, imported by `build`.
"""
from __future__ import annotations

import numpy as np

from jaxsal.models import LayerInfo, NetSpec, WeightSource

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


def build(stop_at: str = "fc3", **options):
    """The Flax module `jaxsal.models.alexnet_flax.AlexNet(stop_at=..., **options)`; options:
    act (default the ReLU), precision (default HIGHEST), start_at."""
    from jaxsal.models import alexnet_flax

    return alexnet_flax.AlexNet(stop_at=stop_at, **options)


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
