"""Registry of networks by name.

A network is described by a `NetSpec`: its layer table (names as the original program spells them,
with output shapes), its preprocessing constants, the Flax module that computes it, and where its
weights come from. The CLI and the API look networks up here by name -- never by evaluating the
name as code, which is what the original did.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jaxsal.errors import UsageError


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One named layer: `kind` is 'conv' (output C,H,W; target = channel mean) or 'fc' (output F;
    target = the unit itself). `shape` is channel-first as in the original: (C, H, W) or (F,).

    `affine`: the layer's output is an affine function of the previous named layer's output (or
    of the image, for the first layer) -- a raw convolution or linear layer, pre-activation. The
    net's `build` must then accept `start_at=<previous layer>` (None for the first layer). The
    saliency core uses it to skip the target layer's batched work (`jaxsal.saliency`)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    needs_fc_weights: bool = False
    affine: bool = False

    @property
    def width(self) -> int:
        """Number of channels (conv) or units (fc): valid 1-based channel numbers are 1..width."""
        return self.shape[0]


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a network's pretrained weights come from (see `jaxsal.weights`)."""

    torchvision_files: tuple[str, ...]  # published checkpoint names, newest first
    url: str  # official download URL of the first file
    bundled: str | None  # file name under the package's weights/ folder, or None
    convert: Callable  # torchvision state_dict (name -> np.ndarray) -> flat jaxsal params
    expected: Callable  # () -> {flat key: shape} of the full weights


@dataclasses.dataclass(frozen=True)
class NetSpec:
    name: str
    layers: tuple[LayerInfo, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable  # build(act=..., stop_at=..., precision=..., start_at=None) -> flax.linen.Module
    weights: WeightSource

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

    def check_channels(self, layer: str, channels) -> tuple[int, ...]:
        """Validate 1-based channel numbers for `layer`; returns them as a tuple of ints."""
        info = self.layer(layer)
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise UsageError("no channel given: name at least one channel number, e.g. -chn 1")
        bad = [c for c in channels if not 1 <= c <= info.width]
        if bad:
            raise UsageError(
                f"channel number(s) {', '.join(map(str, bad))} out of range for {self.name} layer "
                f"{layer!r}, which has {info.width} channels: use 1..{info.width} (1-based)"
            )
        return channels


def _registry() -> dict[str, NetSpec]:
    from jaxsal.models import alexnet

    return {spec.name: spec for spec in (alexnet.SPEC,)}


def net_names() -> tuple[str, ...]:
    return tuple(_registry())


def get_net_spec(name: str) -> NetSpec:
    """Look a network up by its exact (case-sensitive) name, as the original's -net flag."""
    nets = _registry()
    if name not in nets:
        raise UsageError(f"unknown network {name!r}; available: {', '.join(nets)}")
    return nets[name]
