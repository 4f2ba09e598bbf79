"""torchvision checkpoint (.pth) -> jaxsal params, in memory or into a safetensors file.

The layout change itself (OIHW -> HWIO, fc transposes, fc1 row order) is the network's own
`spec.weights.convert` (SPEC §7); this module adds what makes it safe for user files: the file
name's sha256 prefix is checked, every key and shape is validated, values are cast to float32,
and the result records its provenance (original file name and sha256, converter).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib

import numpy as np

from jaxsal.errors import UsageError
from jaxsal.models import NetSpec
from jaxsal.weights import safetensors_io
from jaxsal.weights.hashing import name_hash_prefix, sha256_file
from jaxsal.weights.params import FORMAT, LAYOUT, Weights, validate_params
from jaxsal.weights.torch_checkpoint import read_torch_checkpoint


def _jaxsal_version() -> str:
    try:
        return importlib.metadata.version("jaxsal")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def check_name_hash(path: str | os.PathLike, sha256: str) -> None:
    """`UsageError` if the file name carries a torchvision hash prefix its contents do not match."""
    prefix = name_hash_prefix(os.fspath(path))
    if prefix is not None and not sha256.startswith(prefix):
        raise UsageError(
            f"{path}: sha256 mismatch: the file name says the sha256 starts with {prefix}, but the "
            f"file's sha256 is {sha256}; the file is corrupt or incomplete -- download it again"
        )


def convert_state_dict(
    spec: NetSpec, state_dict: dict[str, np.ndarray], *, source_file: str, source_sha256: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(params, provenance metadata) from a torchvision state_dict of numpy arrays."""
    for key, arr in state_dict.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise UsageError(f"{source_file}: tensor {key} is {arr.dtype}, not floating point")
    try:
        params = spec.weights.convert(state_dict)
    except ValueError as e:
        raise UsageError(
            f"{source_file} is not a torchvision {spec.name} checkpoint: {e}. "
            f"Use {' or '.join(spec.weights.torchvision_files)} ({spec.weights.url})"
        ) from None
    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    validate_params(spec, params, source_file)
    has_fc = any(k.startswith("fc") for k in params)
    origin = "torchvision " if source_file in spec.weights.torchvision_files else ""
    metadata = {
        "format": FORMAT,
        "net": spec.name,
        "layout": LAYOUT,
        "contents": "conv and fc layers" if has_fc else "conv layers only",
        "source_file": source_file,
        "source_sha256": source_sha256,
        "converter": f"jaxsal {_jaxsal_version()} (jaxsal.weights.convert_checkpoint)",
        "description": f"{origin}{source_file}",
    }
    return params, metadata


def _read_checked(spec: NetSpec, src: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not src.is_file():
        raise UsageError(f"checkpoint {src} does not exist (or is not a file)")
    sha = sha256_file(src)
    check_name_hash(src, sha)
    state_dict = read_torch_checkpoint(src)
    return convert_state_dict(spec, state_dict, source_file=src.name, source_sha256=sha)


def load_torch_weights(spec: NetSpec, src: str | os.PathLike) -> Weights:
    """Convert a .pth in memory (nothing written). `source`/`sha256` are the .pth's own."""
    src = pathlib.Path(src).absolute()
    params, metadata = _read_checked(spec, src)
    return Weights(params=params, source=str(src), sha256=metadata["source_sha256"], provenance=metadata)


def convert_checkpoint(spec: NetSpec, src: str | os.PathLike, dst: str | os.PathLike) -> Weights:
    """Convert torchvision checkpoint `src` to the safetensors file `dst` (atomic write).

    Checks the sha256 prefix in `src`'s name, every key and shape; returns the new `Weights`.
    """
    src = pathlib.Path(src).absolute()
    dst = pathlib.Path(dst).absolute()
    if dst.suffix != ".safetensors":
        raise UsageError(f"destination {dst} must end in .safetensors")
    if dst.exists() and src.exists() and dst.samefile(src):
        raise UsageError(f"destination {dst} is the source file")
    try:  # fail before the (slow) conversion if the destination folder cannot exist
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write {dst}: {e.strerror or e}; choose a writable destination") from None
    params, metadata = _read_checked(spec, src)
    return save_weights(params, metadata, dst)


def save_weights(params: dict[str, np.ndarray], metadata: dict[str, str], dst: str | os.PathLike) -> Weights:
    """Write params + metadata to `dst` (canonical, atomic); the `Weights` now backed by `dst`."""
    dst = safetensors_io.save(dst, params, metadata)
    return Weights(params=params, source=str(dst), sha256=sha256_file(dst), provenance=metadata)
