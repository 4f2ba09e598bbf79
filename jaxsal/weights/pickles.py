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
import pickle
from typing import Any, Callable, Mapping

import numpy as np


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow-list (nothing was executed)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refused to load global {module}.{name}")
        self.module = module
        self.name = name


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
        self._allowed = dict(allowed)
        self._persistent_load = persistent_load
        super().__init__(file, encoding=encoding)

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
