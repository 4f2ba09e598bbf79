"""torchvision checkpoint (.pth) -> jaxsal params, in memory or into a safetensors file.

Which torch key becomes which jaxsal key, and by which layout rule, is derived from the
network's description (`NetSpec.params`); the rules themselves (SPEC §7) are `LAYOUT_RULES`.
Around them, what makes it safe for user files: the file name's sha256 prefix is checked, every
key and shape is validated (a checkpoint of another network is named as such), values are cast
to float32, and the result records its provenance (original file name and sha256, converter).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib

import numpy as np

from jaxsal.errors import UsageError
from jaxsal import models
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


def _linear_after_flatten(w: np.ndarray, flat_from) -> np.ndarray:
    """torch flattens (C, H, W) in C,H,W order, jaxsal in H,W,C order: reorder the rows."""
    c, h, wd = flat_from
    return w.reshape(w.shape[0], c, h, wd).transpose(2, 3, 1, 0).reshape(c * h * wd, w.shape[0])


# rule name (`jaxsal.models.layers`) -> torch array -> jaxsal array. Values are only moved.
LAYOUT_RULES = {
    "copy": lambda w, p: w,
    "conv": lambda w, p: w.transpose(2, 3, 1, 0),  # (O, I, kH, kW) -> (kH, kW, I, O)
    "linear": lambda w, p: w.T,  # (out, in) -> (in, out)
    "linear_after_flatten": lambda w, p: _linear_after_flatten(w, p.flat_from),
}


def _used_keys(spec: NetSpec, state_dict: dict) -> dict:
    """The state_dict under the description's key names (`WeightSource.rename_torch_key`),
    without what jaxsal never uses: batch-norm counters, auxiliary heads."""
    rename = spec.weights.rename_torch_key or (lambda key: key)
    used = {}
    for key, value in state_dict.items():
        key = rename(key)
        if key.endswith("num_batches_tracked") or key.startswith(spec.weights.ignored_torch_keys):
            continue
        if key in used:
            raise ValueError(f"two checkpoint keys are both {key!r} once renamed")
        used[key] = value
    return used


def identify(state_dict: dict) -> str | None:
    """The registered network whose torchvision keys the state_dict holds exactly, if any."""
    for name in models.names():
        spec = models.get_net_spec(name)
        try:
            used = _used_keys(spec, state_dict)
        except ValueError:  # its renaming does not fit these keys: not this network
            continue
        if set(used) == {p.torch_key for p in spec.params}:
            return name
    return None


def from_torchvision(spec: NetSpec, state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision state_dict (numpy arrays) -> flat jaxsal params. ValueError naming any
    missing, unexpected or mis-shaped key."""
    used = _used_keys(spec, state_dict)
    want = {p.torch_key: p for p in spec.params}
    missing, extra = sorted(set(want) - set(used)), sorted(set(used) - set(want))
    if missing or extra:
        parts = [f"missing keys {missing[:8]}" if missing else "",
                 f"unexpected keys {extra[:8]}" if extra else ""]
        raise ValueError("; ".join(p for p in parts if p))
    out = {}
    for torch_key, p in want.items():
        w = np.asarray(used[torch_key])
        if p.rule == "linear_after_flatten" and w.shape != (p.shape[1], p.shape[0]):
            raise ValueError(f"{torch_key} has shape {w.shape}, expected {(p.shape[1], p.shape[0])}")
        w = LAYOUT_RULES[p.rule](w, p)
        if w.shape != p.shape:
            raise ValueError(f"{p.key} (torch {torch_key}) has converted shape {w.shape}, "
                             f"expected {p.shape}")
        out[p.key] = np.ascontiguousarray(w)
    return out


def convert_state_dict(
    spec: NetSpec, state_dict: dict[str, np.ndarray], *, source_file: str, source_sha256: str,
    where: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(params, provenance metadata) from a torchvision state_dict of numpy arrays. `where`
    names the file in messages (default: `source_file`)."""
    try:
        used = _used_keys(spec, state_dict)
    except ValueError as e:
        raise UsageError(f"{source_file}: {e}") from None
    for key, arr in used.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise UsageError(f"{source_file}: tensor {key} is {arr.dtype}, not floating point")
    try:
        params = from_torchvision(spec, state_dict)
    except ValueError as e:
        other = identify(state_dict)
        if other is not None and other != spec.name:
            raise UsageError(f"{source_file} holds {other} weights, not {spec.name}: use "
                             f"-net {other}, or a {spec.name} checkpoint "
                             f"({' or '.join(spec.weights.files)})") from None
        raise UsageError(
            f"{source_file} is not a torchvision {spec.name} checkpoint: {e}. "
            f"Use {' or '.join(spec.weights.files)} ({spec.weights.url})"
        ) from None
    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    validate_params(spec, params, where or source_file)
    origin = "torchvision " if source_file in spec.weights.files else ""
    metadata = {
        "format": FORMAT,
        "net": spec.name,
        "layout": LAYOUT,
        "contents": "all layers",
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
    return convert_state_dict(spec, state_dict, source_file=src.name, source_sha256=sha,
                              where=str(src))


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
