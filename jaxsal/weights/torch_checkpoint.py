"""Read PyTorch checkpoints (`torch.save` files) without importing torch.

Why: jaxsal must not depend on torch, and `torch.load` on an untrusted file unpickles arbitrary
code. Here the pickle inside the checkpoint is read by `pickles.RestrictedUnpickler`, which admits
only the handful of globals a saved state_dict refers to, each mapped to a jaxsal stand-in that
merely records what to read; tensors are then cut out of the raw storage bytes with numpy.

Two on-disk formats are understood:

* zip (torch >= 1.6, e.g. `alexnet-owt-7be5be79.pth`): `<top>/data.pkl` is the pickle, and
  `<top>/data/<key>` holds the bytes of each storage. The top folder name varies.
* legacy (`torch.save(..., _use_new_zipfile_serialization=False)`, and old files such as
  `alexnet-owt-4df8aa71.pth`): four pickles in a row (magic number, protocol version, sys_info,
  the object), then a pickled list of storage keys, then for each key an int64 element count
  and the raw bytes.

Storages referenced from the pickle as persistent ids `('storage', StorageType, key, location,
numel[, view])`. Tensors are rebuilt with their storage offset, size and stride, so views and
non-contiguous tensors come out right; every index is bounds-checked against the storage first.
Only little-endian checkpoints are supported (what torch writes on every common platform).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pathlib
import reprlib
import zipfile
from typing import Any

import numpy as np

from jaxsal.errors import UsageError
from jaxsal.weights.pickles import MAX_DEPTH, RefusedGlobal, RefusedShape, RestrictedUnpickler

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> little-endian numpy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointError(Exception):
    """The file is not a (supported) torch checkpoint; message says why, without the path."""


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 6, 6, 4, 40, 40
    return r


_short = _bounded_repr().repr
"""repr of an object from the file, bounded whatever its size or nesting (for messages)."""

# Bytes that materialising tensors may allocate beyond the file's storages: a stride-0 view
# (`expand`) is stored once and copied out whole, so a legitimate one costs at most a few times
# its storage; a crafted one would ask for gigabytes from a few bytes.
COPY_SLACK_BYTES = 64 * 2**20


class _Sealed:
    """Refuses the pickle BUILD opcode, which would otherwise overwrite the attributes of the
    allow-listed stand-ins and of the records they return (e.g. a tensor's offset)."""

    def __setstate__(self, state):
        raise CheckpointError("the pickle tries to modify a tensor record")


@dataclasses.dataclass(frozen=True, eq=False)
class _StorageType(_Sealed):
    """Stand-in for `torch.FloatStorage` & co.: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(eq=False)
class _Storage(_Sealed):
    """A storage named by a persistent id; `offset`/`numel` select a legacy view of the root.
    `declared`: the root's element count as the persistent id states it."""

    key: str
    dtype: np.dtype
    offset: int = 0
    numel: int | None = None
    declared: int = 0


@dataclasses.dataclass(eq=False)
class _TensorRef(_Sealed):
    """What `_rebuild_tensor*` would build, recorded until the storage bytes are at hand."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise CheckpointError(f"bad tensor {what}: {_short(value)}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor without a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError(f"bad storage offset {_short(storage_offset)}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} disagree")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointError("parameter without a tensor")
    return data


class _StandIn(_Sealed):
    """A jaxsal function handed to the pickle in place of a torch one (sealed against BUILD)."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)


def _torch_globals() -> dict[tuple[str, str], Any]:
    """Everything a saved state_dict may name; anything else is refused (`RefusedGlobal`).

    Fresh objects on every call, so nothing one file does can affect the next.
    """
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _StandIn(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _StandIn(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): _StandIn(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _StandIn(_rebuild_parameter),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        stype = _StorageType(name, np.dtype(dtype))
        allowed[("torch", name)] = stype
        allowed[("torch.cuda", name)] = stype  # old files saved from GPU; bytes are the same
    return allowed


class _StorageTable:
    """Persistent-id resolver: one `_Storage` per key (tensors may share a storage)."""

    def __init__(self):
        self.roots: dict[str, _Storage] = {}

    def __call__(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {_short(pid)}")
        stype, key = pid[1], pid[2]
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"unsupported storage type {_short(stype)}")
        if not isinstance(key, str):
            raise CheckpointError(f"bad storage key {_short(key)}")
        declared = pid[4]
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0:
            raise CheckpointError(f"bad element count {_short(declared)} of storage {key}")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Storage(key, stype.dtype, declared=declared)
        elif root.dtype != stype.dtype:
            raise CheckpointError(f"storage {key} used with two dtypes")
        elif root.declared != declared:
            raise CheckpointError(f"storage {key} declared with two sizes")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        # Legacy view: (view_key, offset, size) into the root storage, in elements.
        if not (isinstance(view, tuple) and len(view) == 3
                and all(isinstance(v, int) for v in view[1:]) and view[1] >= 0 and view[2] >= 0):
            raise CheckpointError(f"bad storage view {_short(view)}")
        return _Storage(key, stype.dtype, offset=view[1], numel=view[2])


def _unpickle(stream, storages: _StorageTable | None) -> Any:
    allowed = _torch_globals() if storages is not None else {}
    return RestrictedUnpickler(stream, allowed, persistent_load=storages).load()


class _CopyBudget:
    """Bytes that copying non-contiguous tensors out may still allocate: the storages' own size
    plus `COPY_SLACK_BYTES`, charged before each copy is made."""

    def __init__(self, data: dict[str, np.ndarray]):
        self.left = sum(arr.nbytes for arr in data.values()) + COPY_SLACK_BYTES

    def charge(self, nbytes: int, ref: _TensorRef) -> None:
        if nbytes > self.left:
            raise CheckpointError(
                f"a tensor of shape {_short(ref.size)} with strides {_short(ref.stride)} would "
                f"take {nbytes} bytes from a storage of {ref.storage.declared} elements (a "
                f"stride-0 or overlapping view far larger than the file): refused")
        self.left -= nbytes


def _materialize(obj: Any, data: dict[str, np.ndarray], budget: _CopyBudget | None = None,
                 depth: int = 0) -> Any:
    """Replace every `_TensorRef` in the unpickled object by a numpy array (native byte order).

    Contiguous tensors are read-only views of the storage bytes; others are C-contiguous copies,
    within a `_CopyBudget`. The walk is bounded: `RestrictedUnpickler` refused any pickle whose
    objects, as a tree, are much larger than the pickle, and a cycle stops at `MAX_DEPTH`.
    """
    budget = _CopyBudget(data) if budget is None else budget
    if depth > MAX_DEPTH:
        raise CheckpointError(f"objects nested more than {MAX_DEPTH} deep (or circular)")
    if isinstance(obj, _TensorRef):
        return _tensor_array(obj, data, budget)
    if isinstance(obj, dict):
        return {k: _materialize(v, data, budget, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, data, budget, depth + 1) for v in obj)
    return obj


def _check_record(ref: _TensorRef) -> None:
    """Re-check a tensor record just before indexing memory with it (never trust the pickle)."""
    def nonneg_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    st = ref.storage
    ok = (
        isinstance(st, _Storage) and isinstance(st.key, str) and isinstance(st.dtype, np.dtype)
        and nonneg_int(st.offset) and (st.numel is None or nonneg_int(st.numel))
        and nonneg_int(ref.offset) and isinstance(ref.size, tuple) and isinstance(ref.stride, tuple)
        and len(ref.size) == len(ref.stride)
        and all(nonneg_int(v) for v in ref.size) and all(nonneg_int(v) for v in ref.stride)
    )
    if not ok:
        raise CheckpointError("malformed tensor record")


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _tensor_array(ref: _TensorRef, data: dict[str, np.ndarray], budget: _CopyBudget) -> np.ndarray:
    st = ref.storage
    _check_record(ref)
    flat = data[st.key]
    if st.numel is not None:  # a legacy storage view
        if st.offset + st.numel > flat.size:
            raise CheckpointError(f"storage view of {st.key} out of bounds")
        flat = flat[st.offset : st.offset + st.numel]
    native = st.dtype.newbyteorder("=")
    if any(n == 0 for n in ref.size):
        return np.zeros(ref.size, native)  # nothing to allocate, whatever the other sizes
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= flat.size:
        raise CheckpointError(
            f"tensor of shape {ref.size} reaches element {last} of storage {st.key}, "
            f"which holds {flat.size} (truncated or corrupt file)"
        )
    count = math.prod(ref.size)
    if st.dtype.isnative and ref.stride == _contiguous_strides(ref.size):
        # The common case: a slice of the storage, no copy (read-only, like the bytes it views).
        return flat[ref.offset : ref.offset + count].reshape(ref.size)
    budget.charge(count * flat.itemsize, ref)  # shape x stride fit the storage; the copy may not
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.size, strides=tuple(s * flat.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=native, order="C", copy=True)


def _read_record(zf: zipfile.ZipFile, name: str, size: int | None = None) -> bytes:
    """A zip record's bytes, refused unless stored as torch stores them: uncompressed (a
    deflated record could inflate a few bytes into gigabytes), within the file, and of the
    `size` its storage declares."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"record {name} is compressed, which torch never does: refused")
    if info.header_offset + info.file_size > zf.fp.seek(0, os.SEEK_END):
        raise CheckpointError(f"record {name} claims {info.file_size} bytes, more than the file "
                              f"holds (truncated)")
    if size is not None and info.file_size != size:
        raise CheckpointError(f"record {name} holds {info.file_size} bytes, but its storage "
                              f"declares {size}")
    return zf.read(name)


def _read_zip(path: pathlib.Path) -> Any:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise CheckpointError("zip file without a single <top>/data.pkl: not a torch checkpoint")
            prefix = pkls[0][: -len("data.pkl")]
            if prefix + "byteorder" in names:
                order = _read_record(zf, prefix + "byteorder").decode("ascii", "replace").strip()
                if order != "little":
                    raise CheckpointError(f"byte order {_short(order)}: only little-endian checkpoints are supported")
            storages = _StorageTable()
            obj = _unpickle(io.BytesIO(_read_record(zf, pkls[0])), storages)
            data = {}
            for key, st in storages.roots.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointError(f"storage record {record} is missing")
                raw = _read_record(zf, record, st.declared * st.dtype.itemsize)
                data[key] = np.frombuffer(raw, st.dtype)
            return _materialize(obj, data)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"corrupt or truncated zip checkpoint ({e})") from None


def _read_legacy(path: pathlib.Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            magic = _unpickle(f, None)
        except (RefusedGlobal, RefusedShape):
            raise
        except Exception:
            raise CheckpointError("not a PyTorch checkpoint (neither a zip nor a legacy torch.save file)") from None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError("not a PyTorch checkpoint (a pickle, but without torch's magic number)")
        protocol = _unpickle(f, None)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"unsupported legacy torch protocol {_short(protocol)}")
        sys_info = _unpickle(f, None)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError("big-endian checkpoint: only little-endian checkpoints are supported")
        storages = _StorageTable()
        obj = _unpickle(f, storages)
        keys = _unpickle(f, None)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError("bad storage key list")
        data = {}
        for key in keys:
            st = storages.roots.get(key)
            if st is None:
                raise CheckpointError(f"storage {key} is not used by any tensor")
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError("file ends before its storages (truncated)")
            numel = int.from_bytes(head, "little", signed=True)
            nbytes = numel * st.dtype.itemsize
            if numel < 0 or nbytes > size - f.tell():
                raise CheckpointError(f"storage {key} claims {numel} elements, more than the file holds (truncated)")
            if numel != st.declared:
                raise CheckpointError(f"storage {key} holds {numel} elements, but its tensors "
                                      f"declare {st.declared}")
            data[key] = np.frombuffer(f.read(nbytes), st.dtype)
        missing = set(storages.roots) - set(data)
        if missing:
            raise CheckpointError(f"storages {sorted(missing)[:3]} are missing")
        return _materialize(obj, data)


def _unwrap_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """The name -> array mapping in the checkpoint (also inside {'state_dict': ...}, and
    without DataParallel's 'module.' prefixes)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("it does not hold a state_dict (a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"it does not hold a state_dict: entries {_short(bad[:3])} are not tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a torch.save'd state_dict as {name: numpy array}, without importing torch.

    Arrays are C-contiguous in native byte order, and may be read-only (views of the file's
    bytes). A state_dict wrapped as {'state_dict': ...} or saved from DataParallel ('module.'
    prefixes) is unwrapped.
    Raises `UsageError` naming the file for anything wrong with it: missing, not a checkpoint,
    truncated, or a pickle asking for a global outside the allow-list (refused, never executed).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist (or is not a file)")
    with open(path, "rb") as f:
        head = f.read(10)
    try:
        if head.startswith(b"PK\x03\x04"):
            obj = _read_zip(path)
        elif head[:1] == b"\x80":
            obj = _read_legacy(path)
        else:
            raise CheckpointError("not a PyTorch checkpoint (neither a zip nor a legacy torch.save file)")
        return _unwrap_state_dict(obj)
    except RefusedGlobal as e:
        raise UsageError(
            f"refused to load {path}: its pickle asks for the Python global {e.module}.{e.name}, "
            "which a weights file never needs (nothing was executed); the file is corrupt or "
            "malicious -- use the official torchvision checkpoint"
        ) from None
    except (CheckpointError, RefusedShape) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except Exception as e:  # any other failure of parsing untrusted bytes
        raise UsageError(
            f"cannot read {path}: not a valid PyTorch checkpoint, or truncated "
            f"({type(e).__name__}: {str(e)[:120]})"
        ) from None
