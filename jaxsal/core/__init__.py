"""The attribution core: pure, jit-compiled functions (params, images, channels) -> maps.

Every method is one module of this package with a function `maps(spec, layer, method, precision,
params, images, channels0)`, named in the method table (`jaxsal.methods.METHODS`); SmoothGrad
wraps any method the table marks smoothable. `compiled_saliency` jits one (net, layer, method,
precision) and caches it, so equal requests share one compilation.
"""
from __future__ import annotations

import functools
import importlib

import jax

from jaxsal.core import smoothgrad
from jaxsal.methods import Method, resolve
from jaxsal.models import NetSpec


def method_maps(spec: NetSpec, layer: str, method: Method, precision: str, params, images, channels0):
    """Pure: params, normalized NHWC images (N, S, S, 3), channels0 (K,) int -> maps in the
    images' dtype: (K, N, 3, S, S), or (K, N, S, S) for 2-D methods. `method` must be resolved
    (`jaxsal.methods.resolve`)."""
    implementation = importlib.import_module(method.info.implementation)

    def fn(x):
        return implementation.maps(spec, layer, method, precision, params, x, channels0)

    if method.smooth:
        return smoothgrad.smoothgrad(fn, method.smooth, method.noise, method.seed, images,
                                     inner=method.evaluations_per_image)
    return fn(images)


def compiled_saliency(spec: NetSpec, layer: str, method, precision: str):
    """The jitted core for one (net, layer, method, precision); cached per process.

    Returns fn(params, images (N, S, S, 3), channels0 (K,)) -> maps (K, N, 3, S, S), or
    (K, N, S, S) for 2-D methods. `method`: a name or a `jaxsal.methods.Method`, validated
    against the layer here (UsageError), so equal methods share one compiled function.
    """
    return _compiled(spec, layer, resolve(method, spec, layer), precision)


@functools.lru_cache(maxsize=64)
def _compiled(spec: NetSpec, layer: str, method: Method, precision: str):
    return jax.jit(functools.partial(method_maps, spec, layer, method, precision))
