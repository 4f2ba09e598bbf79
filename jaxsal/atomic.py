"""Writing a file whole or not at all: figures, map files and weights files all go through here.

A reader (or a rerun after a crash or a full disk) must never find a half-written file under
the final name, and a failed write must leave no temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from typing import Iterator

from jaxsal.errors import OutputError

__all__ = ["atomic_path", "output_error", "write_bytes_atomically"]


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a fresh temporary path in ``dst``'s folder for the caller to write; on a normal
    exit the file is fsynced and moved over ``dst`` with ``os.replace`` (an existing file is
    overwritten), on any exception it is removed and the exception propagates.

    The temporary file is hidden (``.<name>.<random>.tmp``) and does not exist yet: the caller
    creates it (exclusively, if it wants to be sure it is its own). It sits in the same folder
    because ``os.replace`` is atomic only within one file system. The folder must exist.
    """
    dst = pathlib.Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        # Flushed to disk before the rename, so a crash right after it cannot leave an empty
        # or partial file under the final name.
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def output_error(dst: str | os.PathLike, error: OSError) -> OutputError:
    """The one-line error for an output that could not be written: the final file's name (not
    the temporary one's) and the system's reason, e.g. "No space left on device"."""
    return OutputError(f"cannot write {os.fspath(dst)}: {error.strerror or error}")


def write_bytes_atomically(dst: str | os.PathLike, data) -> pathlib.Path:
    """Writes ``data`` (bytes or any buffer) to ``dst`` through :func:`atomic_path`; returns
    ``dst`` as a Path. A failed write (a full disk, a folder removed) raises
    :class:`jaxsal.errors.OutputError` naming ``dst``; no temporary file is left."""
    dst = pathlib.Path(dst)
    try:
        with atomic_path(dst) as tmp:
            with open(tmp, "xb") as f:
                f.write(data)
    except OSError as e:
        raise output_error(dst, e) from None
    return dst
