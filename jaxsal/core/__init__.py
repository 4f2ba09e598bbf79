"""The attribution core: pure, jit-compiled functions (params, images, channels) -> maps.

Every method is one module of this package with a function `maps(spec, layer, method, precision,
params, images, channels0)`, named in the method table (`jaxsal.methods.METHODS`); SmoothGrad
wraps any method the table marks smoothable. `compiled_saliency` jits one (net, layer, method,
precision) and caches it, so equal requests share one compilation.

Many channels (`compiled_blocks`): one forward per batch of images, then the channels in blocks
of a fixed size, each block's VJPs batched -- so 256 units need the memory of one block, not 256
times that of one channel. A method module that can share its forward between blocks defines
`forward(...) -> (state, values)` and `backward(..., state, channels0) -> maps` (the gradient
methods: the state is the forward's pullback, a pytree one jitted function returns and the next
takes); for the others (SmoothGrad, integrated gradients, Grad-CAM) each block is a call of the
whole method, the forward repeated per block.
"""
from __future__ import annotations

import functools
import importlib

import jax

from jaxsal.core import smoothgrad
from jaxsal.core.precision import setup_precision
from jaxsal.core.relu_rules import RULES
from jaxsal.core.targets import target_values
from jaxsal.methods import Method, resolve
from jaxsal.models import NetSpec
from jaxsal.models.network import build


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


def target_forward(spec: NetSpec, layer: str, precision: str, params, images, channels0):
    """Pure: (K, N) float32, the targets' values on the images (a forward to the target)."""
    params, images, xla_precision = setup_precision(precision, params, images)
    model = build(spec, layer, act=RULES["vanilla"], precision=xla_precision)
    activation = model.apply({"params": params}, images)
    return target_values(spec.layer(layer), activation, channels0).astype(jax.numpy.float32)


def _shares_forward(method: Method):
    """The method's module if its forward can be shared between channel blocks, else None."""
    implementation = importlib.import_module(method.info.implementation)
    if method.smooth or not hasattr(implementation, "forward"):
        return None
    return implementation


def block_forward(spec: NetSpec, layer: str, method: Method, precision: str, params, images,
                  channels0):
    """Pure: (state for `block_backward`, the targets' values (K, N) float32) for all the
    channels of a run, `channels0` (K,)."""
    shared = _shares_forward(method)
    if shared is None:
        return None, target_forward(spec, layer, precision, params, images, channels0)
    return shared.forward(spec, layer, method, precision, params, images, channels0)


def block_backward(spec: NetSpec, layer: str, method: Method, precision: str, params, images,
                   state, channels0):
    """Pure: the maps of one block of channels, `channels0` (B,): (B, N, ...) as `method_maps`."""
    shared = _shares_forward(method)
    if shared is None:
        return method_maps(spec, layer, method, precision, params, images, channels0)
    return shared.backward(spec, layer, method, precision, params, images, state, channels0)


def compiled_blocks(spec: NetSpec, layer: str, method, precision: str):
    """The jitted halves of a channel-block run, cached per process: (forward(params, images,
    channels0 (K,)) -> (state, values (K, N)), backward(params, images, state, block0 (B,)) ->
    maps (B, N, ...)). Compiled once per batch shape and block size."""
    return _compiled_blocks(spec, layer, resolve(method, spec, layer), precision)


@functools.lru_cache(maxsize=64)
def _compiled_blocks(spec: NetSpec, layer: str, method: Method, precision: str):
    return (jax.jit(functools.partial(block_forward, spec, layer, method, precision)),
            jax.jit(functools.partial(block_backward, spec, layer, method, precision)))
