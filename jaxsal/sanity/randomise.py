"""Model-parameter randomisation: seeded re-initialised layers and the parameter sets of the
cascading and independent tests.

The i-th parameter of stage s (its position in `NetSpec.weight_stages()`) is drawn by the rules
of `jaxsal.sanity.stages` from NumPy's PCG64 generator seeded with (seed, 0, s, i). So a stage's
random values depend on the seed and the stage only: they are the same in the cascading and the
independent test, whichever other layers are chosen, on every platform. They are drawn once on
the host (a few million numbers: milliseconds, where `jax.random` would compile for every
parameter shape) and put on the device once; the parameter sets share every array they do not
replace, so L randomised stages cost L stages' memory, not L networks'.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from jaxsal.models import NetSpec
from jaxsal.sanity.stages import reinit_rules

CASCADING, INDEPENDENT = "cascading", "independent"


def draw(spec: NetSpec, stage: str, seed: int) -> dict[str, np.ndarray]:
    """{flat key: float32 array} of fresh parameters for `stage` (on the host)."""
    s = spec.weight_stages().index(stage)
    shapes = spec.param_shapes()
    out = {}
    for i, (name, rule) in enumerate(reinit_rules(spec, stage).items()):
        shape = shapes[name]
        if rule.kind == "uniform":
            rng = np.random.default_rng([seed, 0, s, i])
            out[name] = rng.uniform(-rule.value, rule.value, shape).astype(np.float32)
        else:
            out[name] = np.full(shape, rule.value, np.float32)
    return out


def draw_on_device(spec: NetSpec, stages: Sequence[str], seed: int) -> dict[str, dict]:
    """{stage: {flat key: device array}}: `draw` for each of `stages`, put on the device."""
    return {stage: jax.device_put(draw(spec, stage, seed)) for stage in stages}


def with_replaced(params: dict, flat: dict) -> dict:
    """Nested Flax params with the leaves named by `flat` ({'conv1.kernel': array}) replaced;
    only the dicts on those paths are copied, every other array is shared."""
    out = dict(params)
    for key, value in flat.items():
        *scopes, leaf = key.split(".")
        node = out
        for scope in scopes:
            node[scope] = dict(node[scope])
            node = node[scope]
        node[leaf] = value
    return out


def parameter_sets(params: dict, stages: Sequence[str], draws: dict[str, dict], mode: str):
    """[(stage, nested params)] for `stages` top-down: `cascading` -- that stage and every stage
    before it in `stages` randomised; `independent` -- that stage alone. `params`: the trained
    nested params; `draws`: {stage: its `draw`}."""
    if mode not in (CASCADING, INDEPENDENT):
        raise ValueError(f"unknown randomisation mode {mode!r}")
    sets, replaced = [], {}
    for stage in stages:
        replaced = {**replaced, **draws[stage]} if mode == CASCADING else draws[stage]
        sets.append((stage, with_replaced(params, replaced)))
    return sets
