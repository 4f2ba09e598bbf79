"""Every primitive has every backend: a shape and parameter description (jaxsal.models.layers)
and a Flax computation (jaxsal.models.network.FLAX_LAYERS), found by type, not by a chain of
isinstance checks."""
from __future__ import annotations

import pytest

from jaxsal import models
from jaxsal.models import layers, network


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def primitive_types():
    """Every primitive type the registered networks use, and every one layers.py defines."""
    found = set(_subclasses(layers.Op))
    return sorted(found, key=lambda t: (t.__module__, t.__name__))


def test_every_primitive_has_a_flax_computation():
    missing = [t.__name__ for t in primitive_types() if not _has_flax(t)]
    assert not missing, f"primitives without a Flax computation: {missing}"


def _has_flax(op_type) -> bool:
    try:
        network.flax_computation(op_type)
    except TypeError:
        return False
    return True


def test_unknown_primitive_is_named():
    class Strange(layers.Op):
        pass

    with pytest.raises(TypeError, match="no Flax implementation for Strange"):
        network.flax_computation(Strange)


@pytest.mark.parametrize("name", models.names())
def test_every_registered_network_runs_on_the_shape_and_param_backends(name):
    spec = models.get_net_spec(name)
    assert spec.layers and spec.layers[-1].shape  # ShapeBackend and CountingBackend
    for p in spec.params:  # ParamBackend: every leaf has a shape and a torch key
        assert p.shape and p.torch_key and p.rule
