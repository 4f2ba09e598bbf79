"""Writing a file whole or not at all: figures, map files and weights files all go through here.

A reader (or a rerun after a crash or a full disk) must never find a half-written file under
the final name, and a failed write must leave no temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import tempfile
from typing import BinaryIO, Iterator

from jaxsal.errors import OutputError

__all__ = ["atomic_file", "atomic_path", "output_error", "unnamed_file", "write_bytes_atomically"]


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


def output_error(dst: str | os.PathLike, error: OSError, hint: str = "") -> OutputError:
    """The one-line error for an output that could not be written: the final file's name (not
    the temporary one's) and the system's reason, e.g. "No space left on device"; then
    `hint`."""
    return OutputError(f"cannot write {os.fspath(dst)}: {error.strerror or error}{hint}")


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


def unnamed_file(folder: str | os.PathLike) -> BinaryIO:
    """A new read-write binary file in `folder` that has no name (Linux's O_TMPFILE; elsewhere
    one unlinked at once): it vanishes when closed or when the process dies, even by SIGKILL,
    and its pages are the file system's, not the process's memory."""
    return tempfile.TemporaryFile(dir=folder)


def _linkable_file(folder: pathlib.Path) -> BinaryIO | None:
    """An O_TMPFILE file that can later be given a name (`os.link` through /proc), or None
    where the system or the file system does not offer one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = os.open(folder, flag | os.O_RDWR, 0o666)  # the umask applies, as for any new file
    except OSError:
        return None
    return os.fdopen(fd, "w+b")


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yields an open binary file (read-write, seekable) that becomes ``dst`` on a normal exit,
    whole (fsynced, then renamed over ``dst``); on an exception nothing is left.

    Where Linux allows it the file has no name while it is written (O_TMPFILE), so even a
    SIGKILL leaves nothing behind; it gets a (hidden, random) name only for the instant
    between linking it into the folder and renaming it over ``dst``. Elsewhere this is
    :func:`atomic_path`.
    """
    dst = pathlib.Path(dst)
    f = _linkable_file(dst.parent)
    if f is None:
        with atomic_path(dst) as tmp, open(tmp, "xb+") as f:
            yield f
        return
    with f:
        yield f
        f.flush()
        os.fsync(f.fileno())
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.tmp")
        folder = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # a dir_fd makes os.link call linkat, which follows /proc's link to the file
            os.link(f"/proc/self/fd/{f.fileno()}", tmp.name, dst_dir_fd=folder)
        finally:
            os.close(folder)
        try:
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
