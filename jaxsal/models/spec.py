"""`NetSpec`: one network's description, and everything derived from it (no JAX).

A network module (`jaxsal/models/alexnet.py`, ...) states its stages, input size,
preprocessing and weight sources. From those this module derives the layer table (names,
kinds, output shapes, affinity), the parameter table (flat keys, shapes, torchvision keys and
layout rules) and the checks of a command's layer and channels. The Flax module is derived in
`jaxsal.models.network`, the weight conversion in `jaxsal.weights.conversion`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from jaxsal.channels import expand_channels, parse_channels
from jaxsal.errors import UsageError
from jaxsal.models.layers import CountingBackend, ParamBackend, Tokens, run_stages

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Image -> network input: PIL bilinear resize to `size` x `size` (no crop), pixel / 255 *
    `scale`, minus `mean`, divided by `std`, per RGB channel (SPEC §3; VggFace: scale 255, its
    own mean, std 1)."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0


def torchvision_url(file: str) -> str:
    """Where torchvision publishes its checkpoint `file`."""
    return f"https://download.pytorch.org/models/{file}"


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a network's pretrained weights come from (see `jaxsal.weights`).

    files: published checkpoint names, newest first (torchvision's carry their sha256 prefix);
    url: download URL of the first; original: the file name DNNBrain loads from
    `$DNNBRAIN_DATA/models`; bundled: a file of the package's weights/ folder, or None;
    ignored_torch_keys: key prefixes of a checkpoint that jaxsal does not use (aux heads);
    rename_torch_key: a module-level function from a key of a published checkpoint to the key
    the description uses, for checkpoints saved under older module names (torchvision fixes
    those in its own loaders, e.g. DenseNet's `norm.1` -> `norm1`); None: keys are used as they
    are. The converter applies it before matching keys, so no network's quirks live in
    `jaxsal.weights`."""

    files: tuple[str, ...]
    url: str | None
    original: str
    bundled: str | None = None
    ignored_torch_keys: tuple[str, ...] = ()
    rename_torch_key: Callable[[str], str] | None = None


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One named layer. `kind` 'conv' (output C,H,W; target = the channel's mean), 'fc'
    (output F; target = the unit) or 'tokens' (a transformer's output C,T; target = the
    channel's mean over the patch tokens, `grid` their h x w arrangement, the class token
    excluded). `shape` is channel-first as in the original program.
    `affine`: an affine function of the layer below (a raw conv, linear or batch-norm output,
    with only affine glue such as a flatten in between); `jaxsal.core.gradients` then skips the
    target layer's batched backward pass. `activations`: elements per image of every
    intermediate result from the image up to this layer (block internals included).
    `nonlinearities`: those applied from the image up to this layer, by name ('ReLU',
    'max-pool', 'GELU', ...; `layers.Op.nonlinearity`)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    affine: bool = False
    activations: int = 0
    grid: tuple[int, int] | None = None
    nonlinearities: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Number of channels (conv) or units (fc): valid 1-based channel numbers are 1..width."""
        return self.shape[0]

    @property
    def spatial(self) -> bool:
        """Its channels are maps over the image (conv, or tokens of patches): Grad-CAM layers."""
        return self.kind in ("conv", "tokens")

    @property
    def prefix_tokens(self) -> int:
        """tokens: how many tokens (the class token) come before the patch tokens."""
        return self.shape[1] - self.grid[0] * self.grid[1]


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """A network: its name (`-net`), its stages (`jaxsal.models.layers`), preprocessing,
    weights, and the layer Grad-CAM uses for targets above it (the last conv-like block)."""

    name: str
    stages: tuple
    preprocessing: Preprocessing
    weights: WeightSource
    cam_layer: str

    def __post_init__(self):
        names = [s.name for s in self.stages if s.name]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate layer names")
        if self.cam_layer not in names:
            raise ValueError(f"{self.name}: cam_layer {self.cam_layer!r} is not a layer")

    # -- derived tables ------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self.preprocessing.size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    @functools.cached_property
    def layers(self) -> tuple[LayerInfo, ...]:
        out = []
        glue_affine = [True]  # the unnamed stages since the last layer are all affine
        backend = CountingBackend()

        def record(stage, shape):
            if not stage.name:
                glue_affine[0] &= stage.affine
                return
            tokens = isinstance(shape, Tokens)
            kind = "tokens" if tokens else "conv" if len(shape) == 3 else "fc"
            out.append(LayerInfo(stage.name, kind, tuple(shape), stage.affine and glue_affine[0],
                                 backend.elements, shape.grid if tokens else None,
                                 tuple(backend.nonlinearities)))
            glue_affine[0] = True

        run_stages(self.stages, self.input_shape, backend, record)
        return tuple(out)

    @functools.cached_property
    def params(self) -> tuple:
        """Every parameter (`jaxsal.models.layers.Param`), in forward order."""
        backend = ParamBackend()
        run_stages(self.stages, self.input_shape, backend)
        return tuple(backend.found)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise UsageError(
            f"unknown layer {name!r} for {self.name}; valid layers: {', '.join(self.layer_names)}"
        )

    def weight_stages(self, layer: str | None = None) -> tuple[str, ...]:
        """The stages with parameters that computing `layer` needs (all of them for None)."""
        stages, seen = [], set()
        for p in self.params:
            if p.stage not in seen:
                seen.add(p.stage)
                stages.append(p.stage)
        if layer is None:
            return tuple(stages)
        order = [s.name for s in self.stages]
        upto = order.index(self.layer(layer).name)
        return tuple(s for s in stages if order.index(s) <= upto)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Flat jaxsal key -> shape of every parameter."""
        return {p.key: p.shape for p in self.params}

    # -- checks of a request ------------------------------------------------------------------

    def check_channels(self, layer: str, channels, name: str = "channels") -> tuple[int, ...]:
        """Validate a channel selection for `layer` (`jaxsal.channels`: numbers, ranges, 'all');
        returns its 1-based numbers as a tuple of ints."""
        info = self.layer(layer)
        channels = expand_channels(parse_channels(channels, name), info.width)
        bad = [c for c in channels if not 1 <= c <= info.width]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5
                                                     else "")
            raise UsageError(
                f"channel number(s) {shown} out of range for {self.name} layer "
                f"{layer!r}, which has {info.width} channels: use 1..{info.width} (1-based)"
            )
        return channels

    def conv_layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.kind == "conv")
