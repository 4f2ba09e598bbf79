"""Writing the raw maps of a run (`-save_maps`) to one .npz without holding them in memory.

Maps are written with plain file writes (`os.pwrite`, at their place in the array) into a
scratch file that has no name (`jaxsal.atomic.unnamed_file`), then packed into the .npz
(uncompressed, streamed in chunks) through `jaxsal.atomic.atomic_file`: thousands of stimuli do
not need thousands of maps in the process's memory (the pages are the file system's), a run
that fails, or is killed, leaves no .npz and no scratch file behind, and a full disk is one
`jaxsal.errors.OutputError` naming the file.
"""
from __future__ import annotations

import json
import os
import pathlib
import zipfile

import numpy as np

from jaxsal.atomic import atomic_file, output_error, unnamed_file

COPY_BYTES = 16 << 20  # packing reads the scratch file in pieces of this size


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
        self.shape = tuple(shape)
        self._map_bytes = int(np.prod(self.shape[2:])) * 4
        try:
            self._scratch = unnamed_file(self.path.parent)
        except OSError as error:
            raise output_error(self.path, error) from None

    def _pwrite(self, data: np.ndarray, channel: int, stimulus: int) -> None:
        """Write maps of one channel for consecutive stimuli from `stimulus` on."""
        view = memoryview(np.ascontiguousarray(data, np.float32)).cast("B")
        offset = (channel * self.shape[1] + stimulus) * self._map_bytes
        try:
            while view:
                written = os.pwrite(self._scratch.fileno(), view, offset)
                view, offset = view[written:], offset + written
        except OSError as error:
            raise output_error(self.path, error) from None

    def write(self, start: int, maps: np.ndarray, channel_start: int = 0) -> None:
        """Store maps (B, b, ...) of channels channel_start .. + B - 1 for stimuli start ..
        start + b - 1."""
        for c in range(maps.shape[0]):
            self._pwrite(maps[c], channel_start + c, start)

    def write_at(self, indices, maps: np.ndarray) -> None:
        """Store maps (K, len(indices), ...) for the given stimulus indices."""
        for c in range(maps.shape[0]):
            for j, i in enumerate(indices):
                self._pwrite(maps[c, j], c, int(i))

    def commit(self) -> pathlib.Path:
        """Pack the maps and metadata into the .npz, written whole or not at all
        (`jaxsal.atomic.atomic_file`); the scratch file is dropped either way."""
        try:
            arrays = {key: np.asarray(value) for key, value in self.meta.items()}
            with atomic_file(self.path) as f:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED,
                                     allowZip64=True) as zf:
                    with zf.open("maps.npy", "w", force_zip64=True) as member:
                        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                  "fortran_order": False, "shape": self.shape}
                        np.lib.format.write_array_header_1_0(member, header)
                        self._copy_scratch(member)
                    for key, value in arrays.items():
                        with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array(member, value, allow_pickle=False)
        except OSError as error:
            raise output_error(self.path, error) from None
        finally:
            self.abort()
        return self.path

    def _copy_scratch(self, member) -> None:
        total, offset = int(np.prod(self.shape)) * 4, 0
        while offset < total:
            piece = os.pread(self._scratch.fileno(), min(COPY_BYTES, total - offset), offset)
            if not piece:
                raise OSError(0, f"the scratch file of {self.path} ended early")
            member.write(piece)
            offset += len(piece)

    def abort(self) -> None:
        """Drop the scratch file (also after a successful commit)."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None


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
