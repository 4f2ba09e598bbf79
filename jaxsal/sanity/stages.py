"""Which layers model-parameter randomisation re-initialises, and with what (no JAX).

A unit's map is d target / d input, and the target is computed from the layers at or below it:
the parameters of layers above the target take no part in it, so randomising them cannot change
the map. The candidates are therefore the stages with parameters at or below the target
(`NetSpec.weight_stages(layer)`), taken top-down, as Adebayo et al. (2018) and Quantus 0.6.0's
MPRT (`layer_order="top_down"`) do. A stage is randomised whole: a ResNet bottleneck's
convolutions and batch norms together.

Re-initialisation, per parameter (`REINIT`, by the parameter's leaf name): torch's
`reset_parameters`, which is what Quantus's MPRT calls on each module:

    kernel (conv HWIO, linear (in, out))   U(-1/sqrt(fan_in), +1/sqrt(fan_in)),
                                           fan_in = the product of all axes but the last
    bias beside a kernel                   U(-1/sqrt(fan_in), +1/sqrt(fan_in)), the kernel's fan_in
    bias of a norm layer (no kernel), mean 0
    scale, var                             1     (a batch norm reset to the identity)
    class_token, pos_embedding             0     (a transformer's learned embeddings, glue
                                                 parameters of its first block's stage)

Adebayo et al. drew from a truncated normal instead; the test's outcome does not hinge on the
law, only on the trained values being gone. The draws themselves (seeded) are
`jaxsal.sanity.randomise`'s.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from jaxsal.errors import UsageError
from jaxsal.models import NetSpec


@dataclasses.dataclass(frozen=True)
class Reinit:
    """How one parameter is re-initialised: `uniform` on [-bound, bound], or `constant`."""

    kind: str
    value: float


def _fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1])


def reinit_rules(spec: NetSpec, stage: str) -> dict[str, Reinit]:
    """{flat key: Reinit} for every parameter of `stage`; UsageError for a parameter of a kind
    that has no rule (a network with a new kind of layer: add its rule here)."""
    params = [p for p in spec.params if p.stage == stage]
    kernels = {p.key.rsplit(".", 1)[0]: p.shape for p in params if p.key.endswith(".kernel")}
    rules = {}
    for p in params:
        scope, _, leaf = p.key.rpartition(".")
        if leaf == "kernel":
            rules[p.key] = Reinit("uniform", 1 / math.sqrt(_fan_in(p.shape)))
        elif leaf == "bias" and scope in kernels:
            rules[p.key] = Reinit("uniform", 1 / math.sqrt(_fan_in(kernels[scope])))
        elif leaf in ("bias", "mean", "class_token", "pos_embedding"):
            rules[p.key] = Reinit("constant", 0.0)
        elif leaf in ("scale", "var"):
            rules[p.key] = Reinit("constant", 1.0)
        else:
            raise UsageError(f"{spec.name} layer {stage!r}: cannot randomise its parameter "
                             f"{p.key!r} (no re-initialisation rule for {leaf!r} parameters)")
    return rules


def randomisable(spec: NetSpec, layer: str) -> tuple[str, ...]:
    """The stages with parameters at or below `layer`, top-down (the order of the cascade)."""
    return tuple(reversed(spec.weight_stages(layer)))


def above(spec: NetSpec, layer: str) -> tuple[str, ...]:
    """The stages with parameters above `layer`: randomising them cannot change its maps."""
    below = set(spec.weight_stages(layer))
    return tuple(s for s in spec.weight_stages() if s not in below)


def select(spec: NetSpec, layer: str, requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The stages to randomise, top-down: `requested` (any order) or all of `randomisable`.
    UsageError for an unknown layer, a layer without parameters, a layer above the target, or
    a parameter without a re-initialisation rule."""
    candidates = randomisable(spec, layer)
    if not candidates:
        raise UsageError(f"{spec.name} has no layer with parameters at or below {layer!r}: "
                         f"nothing to randomise")
    if requested is None:
        chosen = set(candidates)
    else:
        chosen = set()
        for name in requested:
            spec.layer(name)  # unknown: the spec's own message, listing the layers
            if name in above(spec, layer):
                raise UsageError(f"-rand_layers {name}: {name!r} is above the target {layer!r}, "
                                 f"so randomising it cannot change the maps; choose from "
                                 f"{', '.join(candidates)}")
            if name not in candidates:
                raise UsageError(f"-rand_layers {name}: {name!r} has no parameters to "
                                 f"randomise; layers with parameters at or below {layer!r}: "
                                 f"{', '.join(candidates)}")
            chosen.add(name)
    stages = tuple(s for s in candidates if s in chosen)
    for stage in stages:
        reinit_rules(spec, stage)
    return stages
