"""The chunked map store (`-save_maps -maps_format zarr`): `{out}/{net}_{layer}_maps.zarr`.

A Zarr v3 group that xarray opens as-is (`xarray.open_zarr`): every array names its dimensions,
the coordinates are arrays of the group, the run's metadata is the group's attributes.

    maps         (channel, stimulus, rgb, y, x) -- or (channel, stimulus, y, x) for 2-D methods
                 and -maps_reduce gray -- float32, or float16 with -maps_reduce float16.
                 One shard file per channel and stimulus shard, one inner chunk per map: a
                 reader of one unit x 100 stimuli reads those 100 maps and the shards' indexes.
                 Never-written maps read as NaN.
    maps_scale   (channel, stimulus) float32, with float16 only: a map's values are
                 maps * maps_scale (each map is divided by a power of two so that its largest
                 magnitude lies in [0.5, 1): float16 keeps 3 significant digits everywhere,
                 where a plain cast would lose the small gradients of low layers).
    activations  (channel, stimulus) float32: the target's value on the stimulus (the channel's
                 mean, or the unit), the quantity the maps are the gradient of.
    channel      (channel,) int64: the channel numbers, 1-based, as requested.
    stimulus     (stimulus,) str: the stim ids of the .stim.csv, in order.
    shards_done  (shard,) uint8: the manifest -- 1 once every map and value of stimulus shard s
                 (stimuli s*T .. s*T+T-1, T = attrs["stimuli_per_shard"]) is written.

Attributes: net, layer, method, method_options, maps_axes, weights (file, sha256, provenance),
maps_dtype, maps_reduce, input_size, stimuli_per_shard, compute (images and channels per call),
stim_file, and `complete`: false until every shard is in, set to true last, like a commit (the
metadata is then consolidated, so `xarray.open_zarr` opens it without a warning). Each file is
written whole (zarr writes a new file and renames it), so a run killed at any point leaves a
store that says it is incomplete, and `-resume` skips the shards it holds (`check_existing`).

Each process of a multi-process run writes its own shards (`jaxsal.distributed`); process 0
creates the store and, after a barrier at the end, marks it complete. No JAX here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from jaxsal.atomic import output_error
from jaxsal.channels import describe_channels
from jaxsal.errors import OutputError, UsageError

FORMAT = "jaxsal-maps"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class StoreState:
    """An existing store that a -resume run continues: its shard size, the shards it holds, the
    call shape it was computed with (kept, so resumed maps equal an uninterrupted run's bit for
    bit), and whether it is complete."""

    path: pathlib.Path
    stimuli_per_shard: int
    done: frozenset
    compute: dict
    complete: bool


def identity(plan) -> dict:
    """What makes a store this request's: -resume refuses a store whose entries differ."""
    return {
        "net": plan.net,
        "layer": plan.layer,
        "channels": list(plan.channels),
        "method_options": plan.method.options(),
        "weights sha256": plan.weights.sha256 if plan.weights is not None else None,
        "maps_reduce": list(plan.maps_reduce),
        "input size": plan.spec.input_size,
    }


def _stored_identity(attrs: dict, channels: list) -> dict:
    return {
        "net": attrs.get("net"),
        "layer": attrs.get("layer"),
        "channels": channels,
        "method_options": attrs.get("method_options"),
        "weights sha256": (attrs.get("weights") or {}).get("sha256"),
        "maps_reduce": attrs.get("maps_reduce"),
        "input size": attrs.get("input_size"),
    }


def read_attrs(path: pathlib.Path) -> dict:
    """The group attributes of a jaxsal map store; UsageError if `path` is not one."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
        attrs = meta["attributes"]
        if attrs["jaxsal"]["format"] != FORMAT:
            raise KeyError("format")
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} exists and is not a jaxsal map store: remove it, or choose "
                         f"another -out") from None
    if attrs["jaxsal"].get("version") != VERSION:
        raise UsageError(f"{path} was written by another version of jaxsal (store format "
                         f"{attrs['jaxsal'].get('version')}, this one reads {VERSION}): remove "
                         f"it, or choose another -out")
    return attrs


def check_existing(plan):
    """Validation of a zarr run's output: the plan, with the existing store's state when it is
    resumed. An existing store is never overwritten: without -resume it is a UsageError that
    says how to continue it; with -resume it must hold this very request (else a UsageError
    naming what differs)."""
    import numpy as np
    import zarr

    path = plan.maps_path
    if not path.exists():
        return plan
    attrs = read_attrs(path)
    group = zarr.open_group(path, mode="r")
    done = np.flatnonzero(np.asarray(group["shards_done"][:]) == 1)
    n_shards = group["shards_done"].shape[0]
    state = "complete" if attrs.get("complete") else f"incomplete: {len(done)} of {n_shards} " \
                                                       f"stimulus shards done"
    if not plan.resume:
        raise UsageError(f"the map store {path} exists ({state}): add -resume to continue it "
                         f"(or to keep it as it is), or remove it, or choose another -out")
    stored = _stored_identity(attrs, [int(c) for c in group["channel"][:]])
    wanted = identity(plan)
    differ = [key for key in wanted if _canonical(wanted[key]) != _canonical(stored[key])]
    stim_ids = [str(s) for s in group["stimulus"][:]]
    if stim_ids != list(plan.stimuli.ids):
        differ.append(_stimulus_difference(stim_ids, list(plan.stimuli.ids)))
    if differ:
        what = "; ".join(_difference(key, stored, wanted) for key in differ)
        raise UsageError(f"-resume: the map store {path} holds another request ({what}); "
                         f"remove it, or choose another -out, to start this one")
    return dataclasses.replace(
        plan, stimuli_per_shard=int(attrs["stimuli_per_shard"]),
        store=StoreState(path=path, stimuli_per_shard=int(attrs["stimuli_per_shard"]),
                         done=frozenset(int(s) for s in done), compute=dict(attrs["compute"]),
                         complete=bool(attrs.get("complete"))))


def _canonical(value):
    return json.dumps(value, sort_keys=True)


def _difference(key, stored: dict, wanted: dict) -> str:
    if key not in wanted:  # the stimulus list, already described
        return key

    def show(value) -> str:
        if key == "channels" and isinstance(value, list):
            return describe_channels(tuple(value))
        return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)

    return f"{key} {show(stored[key])} in the store, {show(wanted[key])} now"


def _stimulus_difference(stored: list, wanted: list) -> str:
    if len(stored) != len(wanted):
        return f"the stimulus list has {len(stored)} stimuli in the store, {len(wanted)} now"
    row = next(i for i, (a, b) in enumerate(zip(stored, wanted)) if a != b)
    return f"the stimulus list differs at stimulus {row + 1}: {stored[row]!r} in the store, " \
           f"{wanted[row]!r} now"


class MapStore:
    """Writes a run's maps into its zarr store, shard by shard.

    `create` makes the store (every array, its coordinates and attributes, `complete: false`);
    `open` opens an existing one (a resumed run's, or process 0's in a multi-process run). A
    shard is written as its channel blocks land (`write_maps`), then its values and its
    manifest entry (`finish_shard`); `complete` marks the whole store done.
    """

    def __init__(self, path: pathlib.Path, group, attrs: dict):
        self.path, self.group, self.attrs = path, group, attrs
        self.maps = group["maps"]
        self.gray = "gray" in attrs["maps_reduce"]
        self.float16 = "float16" in attrs["maps_reduce"]
        self.maps_scale = group["maps_scale"] if self.float16 else None

    # -----------------------------------------------------------------------------------------
    # Making and opening

    @classmethod
    def create(cls, plan, compute: dict) -> "MapStore":
        """A new store for `plan` (which must not exist). compute: {"stimuli_per_call",
        "channels_per_call"} of the run, kept for -resume."""
        import numpy as np
        import zarr
        from zarr.codecs import BloscCodec

        from jaxsal.maps_io import weights_record
        from jaxsal.methods import map_shape

        path = plan.maps_path
        k, n, size = len(plan.channels), len(plan.stimuli.paths), plan.spec.input_size
        gray = "gray" in plan.maps_reduce
        shape = map_shape(plan.method, k, n, size)
        axes = plan.method.map_axes
        if gray:
            shape, axes = shape[:2] + shape[3:], "channel, stimulus, y, x"
        names = tuple(a.strip() for a in axes.split(","))
        t = plan.stimuli_per_shard
        attrs = {
            "jaxsal": {"format": FORMAT, "version": VERSION},
            "complete": False,
            "net": plan.net,
            "layer": plan.layer,
            "method": plan.method.name,
            "method_options": plan.method.options(),
            "maps_axes": axes,
            "maps_dtype": "float16" if "float16" in plan.maps_reduce else "float32",
            "maps_reduce": list(plan.maps_reduce),
            "weights": weights_record(plan.weights) if plan.weights is not None else None,
            "input_size": size,
            "stimuli_per_shard": t,
            "compute": dict(compute),
            "stim_file": os.fspath(plan.stimuli.stim_file),
        }
        compressor = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        fast = {"write_empty_chunks": True}  # no scan of each chunk for the fill value
        try:  # the attributes (jaxsal's mark) last: a store killed while being made is no store
            group = zarr.open_group(path, mode="w-", zarr_format=3)
            group.create_array(
                "maps", shape=shape, dtype=attrs["maps_dtype"], fill_value=np.nan,
                chunks=(1, 1) + shape[2:], shards=(1, t) + shape[2:], compressors=compressor,
                dimension_names=names, config=fast)
            if "float16" in plan.maps_reduce:
                group.create_array("maps_scale", shape=(k, n), dtype="float32",
                                   fill_value=np.nan, chunks=(k, t), compressors=None,
                                   dimension_names=("channel", "stimulus"), config=fast)
            group.create_array("activations", shape=(k, n), dtype="float32", fill_value=np.nan,
                               chunks=(k, t), compressors=None,
                               dimension_names=("channel", "stimulus"), config=fast)
            channel = group.create_array("channel", shape=(k,), dtype="int64", chunks=(k,),
                                         dimension_names=("channel",), fill_value=0)
            channel[:] = np.asarray(plan.channels, np.int64)
            stimulus = group.create_array("stimulus", shape=(n,), dtype=str,
                                          chunks=(max(1, n),), dimension_names=("stimulus",))
            stimulus[:] = np.asarray(list(plan.stimuli.ids), dtype=str)
            n_shards = -(-n // t)
            group.create_array("shards_done", shape=(n_shards,), dtype="uint8", fill_value=0,
                               chunks=(1,), compressors=None, dimension_names=("shard",))
            group.attrs.update(attrs)
        except OSError as error:
            raise output_error(path, error) from None
        return cls(path, group, attrs)

    @classmethod
    def open(cls, path: pathlib.Path, clean: bool = True) -> "MapStore":
        """An existing store, for writing its remaining shards. With `clean` (one process
        only, before any writes), files a killed run left half written (zarr's `*.partial`,
        visible) are removed first."""
        import zarr

        if clean:
            for leftover in path.rglob("*.partial"):
                leftover.unlink(missing_ok=True)
        group = zarr.open_group(path, mode="r+")
        return cls(path, group, dict(group.attrs))

    # -----------------------------------------------------------------------------------------
    # Writing

    def prepare(self, maps):
        """float32 maps (B, b, ...) -> (what is stored, per-map scale (B, b) or None)."""
        import numpy as np

        if self.gray:
            maps = np.abs(maps).max(axis=2)
        if not self.float16:
            return maps, None
        peak = np.abs(maps).max(axis=tuple(range(2, maps.ndim)))
        _, exponent = np.frexp(peak)  # peak = m * 2**e, 0.5 <= m < 1 (e = 0 for 0)
        scale = np.ldexp(np.float32(1), exponent).astype(np.float32)
        scaled = maps / scale.reshape(scale.shape + (1,) * (maps.ndim - 2))  # exact: 2**-e
        return scaled.astype(np.float16), scale

    def write_maps(self, stimuli: range, channel_start: int, maps) -> "object | None":
        """Write float32 maps (B, len(stimuli), ...) of channels channel_start .. + B - 1 for a
        shard's stimuli (whole shard files); returns their per-map scale (float16) or None."""
        stored, scale = self.prepare(maps)
        try:
            self.maps[channel_start:channel_start + stored.shape[0],
                      stimuli.start:stimuli.stop] = stored
        except OSError as error:
            raise self.error(error) from None
        return scale

    def finish_shard(self, shard: int, stimuli: range, values, scale=None) -> None:
        """The shard's values (K, b) and per-map scales (K, b) (float16), then its manifest
        entry: written last, so a shard marked done is whole."""
        import numpy as np

        try:
            self.group["activations"][:, stimuli.start:stimuli.stop] = values
            if self.maps_scale is not None:
                self.maps_scale[:, stimuli.start:stimuli.stop] = scale
            self.group["shards_done"][shard] = np.uint8(1)
        except OSError as error:
            raise self.error(error) from None

    def done(self):
        """Shard indices marked done (numpy array)."""
        import numpy as np

        return np.flatnonzero(np.asarray(self.group["shards_done"][:]) == 1)

    def complete(self) -> bool:
        """Mark the store complete if every shard is in (written last); whether it is. The
        arrays' metadata is then consolidated into the group's, as xarray expects of a store
        that no longer changes (a zarr-python convention that other readers ignore)."""
        import warnings

        import zarr

        if len(self.done()) != self.group["shards_done"].shape[0]:
            return False
        try:
            self.group.attrs["complete"] = True
            with warnings.catch_warnings():  # "not part of the Zarr format 3 specification"
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(self.path)
        except OSError as error:
            raise self.error(error) from None
        return True

    def error(self, error: OSError) -> OutputError:
        return output_error(self.path, error, "; the store is kept, incomplete: free some "
                                               "space, then run the same command with -resume")
