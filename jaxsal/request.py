"""What a run asks for (`Request`), checked once into what it will do (`Plan`).

    Request (names, 1-based channels, paths; cheap checks on construction)
      -> validate(request) -> Plan (NetSpec, 0-based channels, resolved Method, the stimulus
         list read and every image checked, the weights read and checked for the layer)

Every mistake is a `jaxsal.errors.UsageError` raised here, before any model is built or any
gradient computed (SPEC §13); the stages of `jaxsal.pipeline` take a `Plan` and do not check
again. No JAX is imported: the command validates its flags and reads the weights while nothing
heavy is loaded. `Flag` says how a field of a `Request` (or of a `jaxsal.methods.Method`) is
spelled on the command line; the tables are `jaxsal.cli.FLAGS` and `jaxsal.method_flags`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Sequence, Union

from jaxsal import arguments
from jaxsal.channels import parse_channels
from jaxsal.distributed import Cluster, stimuli_per_shard
from jaxsal.errors import UsageError
from jaxsal.methods import PRECISIONS, Method, as_method, resolve

MODES = ("RGB", "gray")
MAPS_FORMATS = ("npz", "zarr")
MAPS_REDUCTIONS = ("float16", "gray")
DEFAULT_CMAP = "coolwarm"
STIM_SUFFIX = ".stim.csv"

PathLike = Union[str, "os.PathLike[str]"]


def check_batch_size(value, name: str = "batch_size") -> int:
    """A batch size: a whole number >= 1 (`name` is how the message spells the option)."""
    return arguments.whole_number(name, value, minimum=1)


def maps_reductions(what: str, value) -> tuple[str, ...]:
    """-maps_reduce: None, "float16,gray" or a list of those words -> a sorted tuple."""
    words = () if value is None else value.split(",") if isinstance(value, str) else value
    try:
        words = [w.strip() for w in words if w.strip()]
    except (TypeError, AttributeError):
        words = None
    if words is None or any(w not in MAPS_REDUCTIONS for w in words):
        raise UsageError(f"{what} takes float16 and/or gray (e.g. -maps_reduce float16,gray), "
                         f"got {value!r}")
    return tuple(sorted(set(words)))


@dataclasses.dataclass(frozen=True)
class Request:
    """A saliency run as a user asks for it: the command's flags, as Python values.

        jaxsal.run(jaxsal.Request(net="AlexNet", layer="conv5", channels=[60, 125],
                                  stim="examples/examples.stim.csv", out="out"))

    net, layer: a registered network (`jaxsal.models.names()`) and one of its layers.
    channels: 1-based channel (or unit) numbers of `layer`, ranges or 'all' (`jaxsal.channels`:
      [60, 125], "1-64", ["1-4", 60], "all"); one figure row each, figures show the first 5 (more
      channels need save_maps).
    stim: a `.stim.csv` file (README: Stimulus files).
    method: a method name (vanilla, guided, deconv, ig, gradcam, guided_gradcam) or a
      `jaxsal.methods.Method` holding its options (SmoothGrad, integrated gradients, Grad-CAM).
    mode, cmap, vmin, vmax, overlay: how maps are drawn (README: The command).
    show: show each figure after it is saved (says so once on a machine without a display).
    out: the folder for the figures (and the maps); created if missing. `out` or `show` is needed.
    save_maps: also write the raw maps to `out/{net}_{layer}_maps.npz` (or `.zarr`).
    maps_format: "npz" (one file, for small runs) or "zarr" (a chunked store, written as the run
      goes, resumable; `jaxsal.map_store`).
    maps_reduce: zarr only, any of "float16" (half the size; each map scaled by a power of two)
      and "gray" (max |RGB| per pixel, a third of the size): a list or "float16,gray".
    resume: continue the zarr store a killed run left (the same request), skipping what it holds.
    weights: a .safetensors or torchvision .pth file; None = the usual search order.
    batch_size: at most this many images per batch; None = chosen from the device's memory.
    precision: highest (float32, the default), default or bfloat16.
    coordinator_address, num_processes, process_id: a run shared by several processes
      (`jaxsal.distributed`).

    Construction checks what needs no file, no registry and no JAX (a `UsageError`);
    `validate` checks the rest.
    """

    net: str
    layer: str
    channels: Sequence[int]
    stim: PathLike
    method: str | Method = "guided"
    mode: str = "RGB"
    cmap: str = DEFAULT_CMAP
    vmin: float | None = None
    vmax: float | None = None
    overlay: bool = False
    show: bool = False
    out: PathLike | None = None
    save_maps: bool = False
    maps_format: str = "npz"
    maps_reduce: str | Sequence[str] | None = None
    resume: bool = False
    weights: PathLike | None = None
    batch_size: int | None = None
    precision: str = "highest"
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):  # types and single values: FIELD_CHECKS
            check = FIELD_CHECKS[field.name]
            object.__setattr__(self, field.name, check(f"-{field.name}", getattr(self, field.name)))
        if not self.show and self.out is None:
            raise UsageError("nothing would be kept: give -out DIR to save the figures, or -show "
                             "to display them")
        if self.save_maps and self.out is None:
            raise UsageError("-save_maps needs -out DIR (the folder the .npz file is written to)")
        self._check_map_options()
        if self.vmin is not None and self.vmax is not None and self.vmin > self.vmax:
            raise UsageError(f"-vmin ({self.vmin}) is larger than -vmax ({self.vmax})")
        self.cluster.check()

    def _check_map_options(self) -> None:
        if self.maps_format != "npz" and not self.save_maps:
            raise UsageError(f"-maps_format {self.maps_format} needs -save_maps")
        if self.maps_reduce and self.maps_format != "zarr":
            raise UsageError("-maps_reduce needs -save_maps -maps_format zarr (the .npz keeps "
                             "float32 RGB maps)")
        if self.resume and not (self.save_maps and self.maps_format == "zarr"):
            raise UsageError("-resume continues a map store: it needs -save_maps -maps_format "
                             "zarr")

    @property
    def meth(self) -> str:
        """The method's name, as -meth spells it."""
        return self.method.name

    @property
    def cluster(self) -> Cluster:
        return Cluster(self.num_processes, self.process_id, self.coordinator_address)


# Each field of a `Request`, its check: `check(name, value) -> value` (`jaxsal.arguments`), run
# first on construction, so a wrong type or value is one line naming the field. A new field
# needs its entry here (a test checks that every field has one); checks across fields follow in
# `Request.__post_init__`, and those needing files, the registry or the layer in `validate`.
FIELD_CHECKS: dict[str, arguments.Check] = {
    "net": arguments.name,
    "layer": arguments.name,
    "channels": lambda what, value: parse_channels(value, "channels"),
    "stim": arguments.path,
    "method": lambda what, value: as_method(value),
    "mode": arguments.one_of(MODES),
    "cmap": arguments.name,
    "vmin": arguments.optional(arguments.finite_number),
    "vmax": arguments.optional(arguments.finite_number),
    "overlay": arguments.flag,
    "show": arguments.flag,
    "out": arguments.optional(arguments.path),
    "save_maps": arguments.flag,
    "maps_format": arguments.one_of(MAPS_FORMATS),
    "maps_reduce": lambda what, value: maps_reductions(what, value),
    "resume": arguments.flag,
    "weights": arguments.optional(arguments.path),
    "batch_size": arguments.optional(arguments.at_least(1)),
    "precision": arguments.one_of(PRECISIONS),
    # ranges and the address's form: `Cluster.check`, run on construction
    "coordinator_address": arguments.optional(arguments.name),
    "num_processes": arguments.whole_number,
    "process_id": arguments.whole_number,
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated run: the `Request` and what checking it found; nothing computed yet.

    request: the `Request` as given. Its fields are read through the plan (`plan.mode` is
      `plan.request.mode`), except those checking gave a new form:
    spec: the network's description (`net` is its name).
    channels0: 0-based indices into the layer's channels (`channels`: the 1-based numbers,
      ranges and `all` expanded, for labels and files).
    method: the resolved, canonical `Method` (Grad-CAM layer filled in).
    stimuli: the stimulus list (`jaxsal.stimuli.StimulusSet`), every image checked.
    weights: `jaxsal.weights.Weights` read from disk (numpy, not on a device), holding the
      layer's stages.
    out: the output folder as a Path (not created yet), or None.
    stimuli_per_shard: stimuli are dealt to processes, and saved in a zarr store, in shards of
      this many (whole figures; `jaxsal.distributed.stimuli_per_shard`, or the store's).
    store: with -maps_format zarr and -resume, what the existing store holds
      (`jaxsal.map_store.StoreState`), else None.
    """

    request: Request
    spec: "jaxsal.models.NetSpec"  # noqa: F821
    channels0: tuple[int, ...]
    method: Method
    stimuli: "jaxsal.stimuli.StimulusSet"  # noqa: F821
    weights: "jaxsal.weights.Weights | None"  # noqa: F821
    out: pathlib.Path | None = None
    stimuli_per_shard: int = 0
    store: "jaxsal.map_store.StoreState | None" = None  # noqa: F821

    def __getattr__(self, name: str):
        """The request's fields (and its `cluster`), read through; called only for names the
        plan itself does not have."""
        if name in _REQUEST_NAMES:
            return getattr(self.request, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def net(self) -> str:
        return self.spec.name

    @property
    def channels(self) -> tuple[int, ...]:
        """The 1-based channel numbers, in the order asked for (ranges and `all` expanded)."""
        return tuple(c + 1 for c in self.channels0)

    @property
    def figure_channels(self) -> tuple[int, ...]:
        """The channels drawn in the figures: the first `CHANNELS_PER_FIGURE`."""
        from jaxsal.render.figures import CHANNELS_PER_FIGURE

        return self.channels[:CHANNELS_PER_FIGURE]

    @property
    def maps_path(self) -> pathlib.Path | None:
        """`out/{net}_{layer}_maps.npz` (or `.zarr`) with -save_maps, else None."""
        if not self.save_maps or self.out is None:
            return None
        return self.out / f"{self.net}_{self.layer}_maps.{self.maps_format}"


# What a Plan reads through from its Request.
_REQUEST_NAMES = frozenset(f.name for f in dataclasses.fields(Request)) | {"cluster"}


def validate(request: Request) -> Plan:
    """Check everything the `Request`'s construction could not, cheapest first -- network, layer
    and channels, method, colormap, output folder, stimulus list and every image, weights --
    and read the stimulus list and the weights. UsageError on the first problem. No JAX."""
    from jaxsal.models import get_net_spec
    from jaxsal.render.figures import CHANNELS_PER_FIGURE, STIMULI_PER_FIGURE
    from jaxsal.stimuli import read_stim_csv
    from jaxsal.weights import check_layer_weights, load_weights

    r = request
    spec = get_net_spec(r.net)
    channels = spec.check_channels(r.layer, r.channels)
    if len(channels) > CHANNELS_PER_FIGURE and not r.save_maps:
        raise UsageError(f"{len(channels)} channels: figures show at most {CHANNELS_PER_FIGURE}, "
                         f"so the maps of all {len(channels)} must be saved: add -save_maps "
                         f"-maps_format zarr (or name at most {CHANNELS_PER_FIGURE} channels)")
    method = resolve(r.method, spec, r.layer)
    if "gray" in r.maps_reduce and method.info.maps_2d:
        raise UsageError(f"-maps_reduce gray: the maps of -meth {method.name} are already 2-D "
                         f"(one value per pixel)")
    if r.mode == "gray" or r.cmap != DEFAULT_CMAP or r.vmin is not None or r.vmax is not None:
        from jaxsal.render import check_cmap  # imports matplotlib: only when a cmap may be used

        check_cmap(r.cmap)  # RGB maps ignore it (as matplotlib does), but it is still checked
    out = pathlib.Path(r.out) if r.out is not None else None
    if out is not None:
        check_out_dir(out)
    if not os.fspath(r.stim).endswith(STIM_SUFFIX):
        raise UsageError(f"-stim must be a .stim.csv file, got {os.fspath(r.stim)!r}")
    stimuli = read_stim_csv(r.stim)
    weights = load_weights(spec, r.weights)
    check_layer_weights(spec, weights, r.layer)
    plan = Plan(request=r, spec=spec, channels0=tuple(c - 1 for c in channels), method=method,
                stimuli=stimuli, weights=weights, out=out,
                stimuli_per_shard=stimuli_per_shard(len(stimuli.paths), r.num_processes,
                                                    STIMULI_PER_FIGURE))
    if r.save_maps and r.maps_format == "zarr":
        from jaxsal import map_store

        plan = map_store.check_existing(plan)
    return plan


def check_out_dir(out: pathlib.Path) -> None:
    """Fail early if `out` cannot be created or written -- without creating anything yet."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"-out {out}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"-out {out}: cannot write into {probe} (permission denied)")


# ---------------------------------------------------------------------------------------------
# How a field is spelled on the command line


@dataclasses.dataclass(frozen=True)
class Flag:
    """One row of the command's flag table: a field of a `Request` (or of a `Method`) as a flag.

    name: the flag, without its dash. kind: the absl flag type (string, integer, float,
    boolean, list). help: its help text (a function for text known only at run time, e.g. the
    registered networks). metavar: the word after it in the synopsis (None for booleans).
    field: the field it sets, on `Request` (`of="request"`), on `Method` (`of="method"`), or
    nothing (`of="command"`: the command's own, e.g. -profile, with its `default`).
    The default of a request or method flag is its field's default; a field without one makes
    the flag required.
    """

    name: str
    kind: str
    help: str | Callable[[], str]
    metavar: str | None = None
    field: str | None = None
    of: str = "request"
    default: object = None

    @property
    def target(self) -> str:
        return self.field or self.name

    def _field(self) -> dataclasses.Field | None:
        owner = {"request": Request, "method": Method}.get(self.of)
        if owner is None:
            return None
        return {f.name: f for f in dataclasses.fields(owner)}[self.target]

    @property
    def required(self) -> bool:
        f = self._field()
        return f is not None and f.default is dataclasses.MISSING

    @property
    def default_value(self):
        f = self._field()
        if f is None:
            return self.default
        return None if f.default is dataclasses.MISSING else f.default

    @property
    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def synopsis(self) -> str:
        """e.g. `-net Net`, `-chn Channel [Channel ...]`, `-show` (without brackets)."""
        text = f"-{self.name}"
        if self.metavar:
            text += f" {self.metavar}"
            if self.kind == "list":
                text += f" [{self.metavar} ...]"
        return text
