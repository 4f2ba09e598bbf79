"""Write and read jaxsal's weight files (safetensors, format "jaxsal-flat-v1").

A file holds flat float32 params ('conv1.kernel' HWIO, 'fc1.kernel' (in, out), ...) plus string
metadata recording where they came from. safetensors, unlike a pickle, cannot run code when read.

Writes are *canonical* and *atomic*:
* `safetensors.numpy.save` emits the `__metadata__` entries in hash-map order, which changes from
  run to run; we re-emit its JSON header with sorted keys (tensor bytes untouched), so the same
  params and metadata always give the same file, bit for bit (the bundled file relies on this).
* the bytes go through `jaxsal.atomic.atomic_path`: a crash or a full disk never leaves a
  half-written weights file under the final name.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct

import numpy as np
import safetensors
import safetensors.numpy

from jaxsal.atomic import atomic_path
from jaxsal.errors import UsageError


def _canonical_header(header_bytes: bytes) -> bytes:
    """The header JSON re-emitted with sorted metadata (tensor entries in file order), padded
    with spaces to a multiple of 8 bytes as safetensors does."""
    header = json.loads(header_bytes)
    meta = header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0]))
    canon = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    canon.update(entries)
    text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def _sorted(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(tensors[k]) for k in sorted(tensors)}


def canonical_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of `tensors` with a deterministic header (sorted metadata and tensors)."""
    raw = safetensors.numpy.save(_sorted(tensors), metadata=dict(metadata))
    (n,) = struct.unpack("<Q", raw[:8])
    header = _canonical_header(raw[8 : 8 + n])
    return struct.pack("<Q", len(header)) + header + raw[8 + n :]


def write_atomic(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`."""
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def _atomic(path: str | os.PathLike, write) -> pathlib.Path:
    """Run `write(tmp_path)` on a fresh temporary file next to `path` and move it into place
    (`jaxsal.atomic.atomic_path`). The folder is created if needed; the file gets the
    umask-filtered 0o666 mode. Raises `UsageError` if the folder or file cannot be written; the
    temporary file never survives a failure."""
    path = pathlib.Path(path).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask
            write(tmp)
            os.chmod(tmp, mode)  # the writer may have replaced the file with a 0o600 one
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}; choose a writable destination") from None
    return path


def _save_canonical_file(tmp: pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    # safetensors writes straight from the arrays' memory (no 250 MB bytes copy), then the
    # header is canonicalised in place. Same JSON content => same length, except in exotic
    # escaping cases, where the file is rewritten.
    safetensors.numpy.save_file(_sorted(tensors), str(tmp), metadata=dict(metadata))
    with open(tmp, "rb+") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = _canonical_header(f.read(n))
        if len(header) == n:
            f.seek(8)
            f.write(header)
            return
    tmp.write_bytes(canonical_bytes(tensors, metadata))


def save(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> pathlib.Path:
    """Canonical, atomic safetensors write of float32 `tensors` with string `metadata`.

    The file equals `canonical_bytes(tensors, metadata)` byte for byte.
    """
    return _atomic(path, lambda tmp: _save_canonical_file(tmp, tensors, metadata))


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; `UsageError` naming the file if it is not one."""
    path = pathlib.Path(path)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise UsageError(
            f"cannot read {path}: not a valid safetensors weights file ({str(e)[:120]}); "
            "re-create it with jaxsal-convert"
        ) from None
    return tensors, metadata
