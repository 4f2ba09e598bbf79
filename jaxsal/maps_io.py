"""Writing the raw maps of a run (`-save_maps`) without holding them all in memory.

Maps are written into a memory-mapped .npy scratch file as batches arrive, then packed into the
final .npz (uncompressed, streamed in chunks) and renamed into place: a failed run leaves no
partial .npz behind, and thousands of stimuli do not need thousands of maps in RAM.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import zipfile

import numpy as np

from jaxsal.atomic import atomic_path


class MapWriter:
    """Collects maps (n_channels, n_stimuli, 3, S, S) float32 and metadata into one .npz file.

    Arrays in the file: `maps` (float32: the signed attribution w.r.t. the normalized input;
    (n_channels, n_stimuli, S, S), non-negative, for -meth gradcam), `channels` (1-based,
    int64), `stim_ids` (str), `layer`, `method` (the -meth name), `method_options` (JSON: the
    method's options, e.g. {"name": "ig", "ig_steps": 32, ...}), `maps_axes` (what the axes of
    `maps` are, e.g. "channel, stimulus, rgb, y, x"), `net` (0-d str), and `weights` (0-d str:
    JSON with the weights file, its sha256 and provenance).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], meta: dict):
        self.path = pathlib.Path(path)
        self.meta = meta
        self._scratch = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.npy")
        self._maps = np.lib.format.open_memmap(self._scratch, mode="w+", dtype=np.float32, shape=shape)

    def write(self, start: int, maps: np.ndarray) -> None:
        """Store maps (K, b, 3, S, S) for stimuli start .. start + b - 1."""
        self._maps[:, start : start + maps.shape[1]] = maps

    def write_at(self, indices, maps: np.ndarray) -> None:
        """Store maps (K, len(indices), ...) for the given stimulus indices."""
        self._maps[:, np.asarray(indices)] = maps

    def commit(self) -> pathlib.Path:
        """Pack the maps and metadata into the .npz, written whole or not at all
        (`jaxsal.atomic.atomic_path`); the scratch file is dropped either way."""
        try:
            self._maps.flush()
            arrays = {key: np.asarray(value) for key, value in self.meta.items()}
            with atomic_path(self.path) as tmp:
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED,
                                     allowZip64=True) as zf:
                    with zf.open("maps.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, self._maps, allow_pickle=False)
                    for key, value in arrays.items():
                        with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, value, allow_pickle=False)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop the scratch file (also after a successful commit)."""
        self._maps = None
        self._scratch.unlink(missing_ok=True)


def map_file_meta(net_name: str, layer: str, method, channels, stim_ids, weights) -> dict:
    """`method`: a `jaxsal.methods.Method` (or a method name)."""
    from jaxsal.methods import as_method

    method = as_method(method)
    return {
        "channels": np.asarray(channels, np.int64),
        "stim_ids": np.asarray(list(stim_ids), dtype=str),
        "layer": np.asarray(layer),
        "method": np.asarray(method.name),
        "method_options": np.asarray(method.to_json()),
        "maps_axes": np.asarray(method.map_axes),
        "net": np.asarray(net_name),
        "weights": np.asarray(json.dumps(weights_record(weights), sort_keys=True)),
    }


def weights_record(weights) -> dict:
    """Which weights a run used (a `jaxsal.weights.Weights`): {"source": the file read, "sha256":
    its digest, "provenance": its metadata} -- the `weights` entry of a maps file."""
    return {"source": weights.source, "sha256": weights.sha256,
            "provenance": dict(weights.provenance)}
