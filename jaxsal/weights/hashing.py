"""SHA-256 of weight files, and the torchvision "hash in the file name" convention.

torchvision names its checkpoints `<name>-<first 8 hex digits of the file's sha256>.pth`
(SPEC §9); `torch.hub` checks that prefix after downloading. jaxsal checks it whenever a file
name carries one, so a truncated or swapped file is caught before it is used.
"""
from __future__ import annotations

import hashlib
import os
import re

_CHUNK = 1 << 20
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weight files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def name_hash_prefix(name: str) -> str | None:
    """The hex sha256 prefix a torchvision-style file name carries, or None.

    >>> name_hash_prefix("alexnet-owt-7be5be79.pth")
    '7be5be79'
    >>> name_hash_prefix("alexnet.pth") is None
    True
    """
    match = _NAME_HASH.search(os.path.basename(str(name)))
    return match.group(1) if match else None
