"""Download a torchvision checkpoint and convert it into jaxsal's cache.

The file is streamed (urllib, 1 MiB chunks) into a hidden temporary folder inside the destination
folder while its sha256 is computed; the byte count is checked against Content-Length and the
digest against the sha256 prefix in the URL's file name (torchvision's convention). Only then is
it converted; the converted .safetensors is written atomically and the .pth is deleted. Any
failure -- network error, short transfer, hash mismatch, bad contents, Ctrl-C -- removes the
temporary file, so nothing partial is ever left behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import posixpath
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

from jaxsal.errors import UsageError
from jaxsal.models import NetSpec
from jaxsal.weights import conversion
from jaxsal.weights.hashing import name_hash_prefix
from jaxsal.weights.resolve import cache_dir

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def url_env_var(spec: NetSpec) -> str:
    """Environment variable overriding the download URL, e.g. JAXSAL_ALEXNET_URL."""
    return f"JAXSAL_{spec.name.upper()}_URL"


def default_url(spec: NetSpec) -> str:
    return os.environ.get(url_env_var(spec), "").strip() or spec.weights.url


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Progress:
    """A single self-overwriting progress line on stderr, updated at most 10 times a second."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self.last = 0.0
        self.open = False  # a line was started and not yet ended

    def end(self) -> None:
        """End a started line (after an error), so later messages start on their own line."""
        if self.open:
            sys.stderr.write("\n")
            self.open = False

    def update(self, done: int, final: bool = False) -> None:
        if not self.enabled or (not final and time.monotonic() - self.last < 0.1):
            return
        self.last = time.monotonic()
        if self.total:
            text = f"{_mb(done)} / {_mb(self.total)} ({100 * done // self.total}%)"
        else:
            text = _mb(done)
        sys.stderr.write(f"\rdownloading {self.name}: {text}" + ("\n" if final else ""))
        sys.stderr.flush()
        self.open = not final


def _fetch(url: str, dest: pathlib.Path, name: str, progress: bool) -> str:
    """Stream `url` into `dest`; return the sha256. Raises UsageError on any transfer failure."""
    digest = hashlib.sha256()
    done, total = 0, None
    bar = _Progress(name, None, progress)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar.total = total
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(done)
            bar.update(done, final=True)
    except http.client.IncompleteRead as e:
        done += len(e.partial)
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise UsageError(
            f"cannot download {url}: {reason}. Check the network (or the URL), or download the "
            f"file by other means and run `jaxsal-convert --src FILE`"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot download {url} into {dest.parent}: {e.strerror or e}") from None
    finally:
        bar.end()
    if total is not None and done != total:
        raise UsageError(f"download of {url} was interrupted after {done} of {total} bytes; try again")
    return digest.hexdigest()


def _file_name(url: str, spec: NetSpec) -> str:
    """The URL's file name if it is a plain one (it carries the sha256 prefix), else <net>.pth."""
    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    return name if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name) else f"{spec.name.lower()}.pth"


@contextlib.contextmanager
def fetched_checkpoint(
    spec: NetSpec, url: str | None = None, work_dir: str | os.PathLike | None = None, progress: bool = True
) -> Iterator[pathlib.Path]:
    """Download and sha256-check the checkpoint; yield its temporary path; always delete it.

    The file keeps its published name (so the converter records it and re-checks the hash
    prefix) inside a private hidden folder of `work_dir` (default `cache_dir()`), which is
    removed on exit: a failed or interrupted run cannot leave a .pth that looks complete.
    """
    url = url or default_url(spec)
    name = _file_name(url, spec)
    work_dir = pathlib.Path(work_dir).expanduser().absolute() if work_dir is not None else cache_dir()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir = work_dir / f".download-{secrets.token_hex(4)}"
        tmp_dir.mkdir()
    except OSError as e:
        raise UsageError(f"cannot write into {work_dir}: {e.strerror or e}; choose a writable folder") from None
    tmp = tmp_dir / name
    try:
        sha = _fetch(url, tmp, name, progress)
        prefix = name_hash_prefix(name)
        if prefix is not None and not sha.startswith(prefix):
            raise UsageError(
                f"download of {url} is corrupt: its sha256 {sha} does not start with {prefix} as "
                "its file name says; try again later or check the URL"
            )
        if prefix is None:  # e.g. vgg_face_dag.pth: nothing published to check against
            print(f"{name} has no published sha256 to check; its sha256 is {sha} (recorded in the "
                  f"converted file's provenance)", file=sys.stderr)
        yield tmp
    finally:
        try:
            tmp.unlink(missing_ok=True)
            tmp_dir.rmdir()
        except OSError:
            pass


def download(
    spec: NetSpec,
    url: str | None = None,
    dest_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Fetch the torchvision checkpoint of `spec` and convert it; returns the .safetensors path.

    `url` defaults to `$JAXSAL_<NET>_URL`, then `spec.weights.url`; `dest_dir` to `cache_dir()`,
    where `load_weights` looks right after explicit paths. The result is
    `<dest_dir>/<net>.safetensors` (e.g. alexnet.safetensors), replacing any previous one.
    """
    dest_dir = pathlib.Path(dest_dir).expanduser().absolute() if dest_dir is not None else cache_dir()
    dst = dest_dir / f"{spec.name.lower()}.safetensors"
    with fetched_checkpoint(spec, url, dest_dir, progress) as pth:
        conversion.convert_checkpoint(spec, pth, dst)
    return dst
