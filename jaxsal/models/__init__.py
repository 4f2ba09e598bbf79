"""Networks by name: an open registry of `NetSpec` descriptions.

The CLI and the API look networks up here by their exact name -- never by evaluating the name as
code, which is what the original did. The built-in networks are `jaxsal.models.zoo`'s; anyone can
`register` another (the test suite registers a tiny network this way).
"""
from __future__ import annotations

from jaxsal.errors import UsageError
from jaxsal.models import zoo
from jaxsal.models.spec import LayerInfo, NetSpec, Preprocessing, WeightSource

__all__ = ["LayerInfo", "NetSpec", "Preprocessing", "WeightSource", "get_net_spec", "names",
           "register"]

_REGISTRY: dict[str, NetSpec] = {spec.name: spec for spec in zoo.NETWORKS}


def register(spec: NetSpec, *, replace: bool = False) -> NetSpec:
    """Make `spec` available by its name (`-net`, `load_net`). Refuses to shadow another network
    of the same name unless `replace`."""
    if not replace and spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"a network named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_net_spec(name: str) -> NetSpec:
    """Look a network up by its exact (case-sensitive) name, as the original's -net flag."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown network {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
