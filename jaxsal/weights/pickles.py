"""Restricted unpickling: read weight files that are pickles without running their code.

A pickle is a small program: its GLOBAL/STACK_GLOBAL opcodes import any callable and REDUCE calls
it, so `pickle.load` on a downloaded file can run anything (`os.system`, `builtins.eval`, ...).
Every pickle jaxsal reads goes through `RestrictedUnpickler`, whose `find_class` -- the only way a
pickle can reach a Python object -- answers from an explicit allow-list and refuses everything
else *before* anything is called. The allowed objects are either harmless data constructors or
jaxsal's own stand-ins (see `torch_checkpoint`), never the real torch functions.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
from typing import Any, Callable, Mapping

import numpy as np


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow-list (nothing was executed)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refused to load global {module}.{name}")
        self.module = module
        self.name = name


class RefusedShape(pickle.UnpicklingError):
    """The pickle's objects would be far larger or deeper than the pickle itself (nothing was
    built); the message says how."""


# A pickle of N bytes may build objects of at most this many nodes, counted as a tree (a shared
# object once per reference): a state_dict's pickle stays far below 1 node per byte (a tensor
# record is ~25 nodes over ~100 bytes), a "billion laughs" pickle (lists of lists, each
# referenced twice) doubles per level and passes it within a few levels.
NODES_PER_BYTE = 8
MAX_DEPTH = 100  # nesting; a state_dict's is under 10


class _Node:
    """An object the pickle builds: its size as a tree and its depth."""

    __slots__ = ("size", "depth")

    def __init__(self, size: int, depth: int):
        self.size, self.depth = size, depth


_MARK = _Node(0, 0)  # a MARK on the dry run's stack


def _effect(op) -> tuple[str, int, bool, int]:
    """(kind, items taken below the mark or in all, takes a mark, items pushed) of an opcode,
    from pickletools' description of its stack."""
    before, after = op.stack_before, op.stack_after
    mark = pickletools.markobject in before
    below = before.index(pickletools.markobject) if mark else len(before)
    kind = ("get" if op.name in ("GET", "BINGET", "LONG_BINGET") else
            "put" if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE") else
            "mark" if op.name == "MARK" else
            "same" if op.name in ("DUP", "READONLY_BUFFER") else
            "grow" if op.name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS",
                                  "BUILD") else  # the container below, the same object, grown
            "new" if after else "drop")
    return kind, below, mark, len(after)


_EFFECTS = {op.name: _effect(op) for op in pickletools.opcodes}


class _BoundedReader:
    """The stream as `pickletools.genops` reads it, refusing a read longer than what is left
    (a length field is a claim: checked before anything of that size is allocated)."""

    def __init__(self, stream, end: int):
        self._stream, self._end = stream, end
        self.tell, self.readline = stream.tell, stream.readline

    def read(self, n: int = -1) -> bytes:
        if n > self._end - self._stream.tell():
            raise RefusedShape(f"the pickle declares a {n}-byte item, more than the file holds")
        return self._stream.read(n)


def check_pickle_shape(stream) -> None:
    """Refuse (`RefusedShape`) a pickle whose objects, counted as trees, would be much larger
    than the pickle (`NODES_PER_BYTE`) or nested deeper than `MAX_DEPTH`, without building any
    of them: a dry run over its opcodes (linear in its size) that tracks what each builds.
    Why: shared references let a few hundred bytes describe 2^40 nodes; anything that walks,
    hashes, prints or copies such an object (the checkpoint reader, a dict key's hash) would
    hang or exhaust memory. The stream is left where it was."""
    start = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(start)
    # An in-memory stream's read(n) returns what it holds; a file's would allocate n first.
    reader = stream if isinstance(stream, io.BytesIO) else _BoundedReader(stream, end)
    stack: list = []
    memo: dict = {}
    try:
        for op, arg, pos in pickletools.genops(reader):
            kind, below, mark, pushed = _EFFECTS[op.name]
            if kind == "mark":
                stack.append(_MARK)
                continue
            if kind == "put":
                if not stack or stack[-1] is _MARK:
                    raise RefusedShape("malformed pickle (nothing to memoize)")
                memo[len(memo) if arg is None else arg] = stack[-1]
                continue
            if kind == "get":
                if arg not in memo:
                    raise RefusedShape("malformed pickle (a memo key that was never set)")
                stack.append(memo[arg])
                continue
            popped = _pop(stack, below, mark)
            if kind == "same":
                stack.extend([popped[0]] * pushed)
                continue
            if kind == "grow":
                node = popped[0]
                for item in popped[1:]:
                    node.size += item.size
                    node.depth = max(node.depth, item.depth + 1)
                stack.append(node)
            elif kind == "new":
                node = _Node(1, 1)
                for item in popped:
                    node.size += item.size
                    node.depth = max(node.depth, item.depth + 1)
                stack.append(node)
            else:
                continue
            if node.depth > MAX_DEPTH:
                raise RefusedShape(f"its pickle nests objects more than {MAX_DEPTH} deep, "
                                   f"which no state_dict does; refused, nothing was built")
            if node.size > NODES_PER_BYTE * (pos + 1) + 4096:
                raise RefusedShape(
                    f"its pickle refers to the same objects over and over: its first {pos + 1} "
                    f"bytes would build more than {node.size} nodes (a 'billion laughs' pickle), "
                    f"which no state_dict does; refused, nothing was built")
    finally:
        stream.seek(start)


def _pop(stack: list, below: int, mark: bool) -> list:
    """The items an opcode takes off the stack, in stack order: everything above the topmost
    mark and the mark (if it takes one), then `below` more."""
    popped: list = []
    if mark:
        while stack and stack[-1] is not _MARK:
            popped.append(stack.pop())
        if not stack:
            raise RefusedShape("malformed pickle (no mark)")
        stack.pop()
    for _ in range(below):
        if not stack or stack[-1] is _MARK:
            raise RefusedShape("malformed pickle (stack underflow)")
        popped.append(stack.pop())
    popped.reverse()
    return popped


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves globals only through `allowed`.

    `allowed` maps (module, qualified name) to the object to hand back. `persistent_load`, when
    given, resolves persistent ids (torch uses them for tensor storages); without it a persistent
    id is an error, as in the stock unpickler.
    """

    def __init__(
        self,
        file,
        allowed: Mapping[tuple[str, str], Any],
        persistent_load: Callable[[Any], Any] | None = None,
        encoding: str = "utf-8",
    ):
        # Set before super().__init__: the C unpickler looks `persistent_load` up while initialising.
        self._file = file
        self._allowed = dict(allowed)
        self._persistent_load = persistent_load
        super().__init__(file, encoding=encoding)

    def load(self):
        """The unpickled object, after `check_pickle_shape` has passed the pickle."""
        check_pickle_shape(self._file)
        return super().load()

    def find_class(self, module: str, name: str):  # noqa: D102 - see class docstring
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid):  # noqa: D102 - see class docstring
        if self._persistent_load is None:
            raise pickle.UnpicklingError("unexpected persistent id in pickle")
        return self._persistent_load(pid)


# numpy's array reconstructor; `np.ndarray.__reduce__` names it, whatever module numpy keeps it
# in (numpy.core.multiarray before numpy 2, numpy._core.multiarray after).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]

NUMPY_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""The only globals needed to rebuild plain numpy arrays from a pickle."""


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` admitting nothing but numpy array reconstruction.

    Containers (dict, list, tuple) and scalars need no globals. Object arrays are refused: they
    could smuggle arbitrary (if still allow-listed) objects and are never weights.
    Raises `RefusedGlobal` or another `pickle.UnpicklingError`/ValueError on bad input.
    """
    obj = RestrictedUnpickler(io.BytesIO(data), NUMPY_ARRAY_GLOBALS).load()
    _reject_object_arrays(obj)
    return obj


def _reject_object_arrays(obj: Any) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise pickle.UnpicklingError("object arrays are not weights; refused")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
