"""Layer primitives with fast, exact gradients on every backend.

These functions compute exactly what the textbook operation computes; they exist because XLA's
CPU gradients for the textbook forms are slow (see BENCHMARKS.md):

* `max_pool`: torch's max-pool with a custom VJP that remembers which of the k*k window
  positions won (first maximum in scan order wins, PyTorch's tie rule) and scatters the
  cotangent back with strided pads, instead of XLA's select-and-scatter.
* `conv_space_to_depth`: a stride-s convolution rewritten as a stride-1 convolution over s x s
  pixel blocks folded into channels (AlexNet's 11x11/4 conv1 becomes a 3x3/1 conv over 48
  channels). Same sums, much cheaper input gradient.

* `layer_norm`: LayerNorm's normalisation with its backward written out (torch's formula):
  XLA:CPU's YNNPACK reduce fusion (jaxlib 0.10.2) miscomputes the autodiff backward when it is
  vmapped over channels at 12 or more images of 197 tokens, giving wrong maps for every channel
  after the first (BENCHMARKS.md, "ViT-B/16 at 16 images").
* `gelu`: torch's exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), with its derivative written out
  (Phi(x) + x phi(x), as torch's backward): jax.nn.gelu's erfc form and its autodiff ran ~4x
  slower on XLA:CPU.

All are shape- and dtype-generic over leading batch dimensions (NHWC on the last three axes).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

def _pool_geometry(h: int, k: int, s: int, p: int, ceil: bool) -> tuple[int, int]:
    """(output size, padding needed on the high side) of torch's max-pool along one axis."""
    span = h + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= h + p:
        out -= 1
    return out, max(0, (out - 1) * s + k - h - p)


def _window_views(x, k: int, s: int, p: int, ceil: bool):
    """The k*k strided views x[..., dy::s, dx::s, :] that make up the pooling windows (the
    input padded with -inf where torch's padding or ceil mode reach past it)."""
    *lead, h, w, c = x.shape
    ho, high_h = _pool_geometry(h, k, s, p, ceil)
    wo, high_w = _pool_geometry(w, k, s, p, ceil)
    nlead = len(lead)
    if p or high_h or high_w:
        cfg = [(0, 0)] * nlead + [(p, high_h), (p, high_w), (0, 0)]
        x = jnp.pad(x, cfg, constant_values=-jnp.inf)
    views = []
    for dy in range(k):
        for dx in range(k):
            start = (0,) * nlead + (dy, dx, 0)
            limit = tuple(lead) + (dy + s * (ho - 1) + 1, dx + s * (wo - 1) + 1, c)
            strides = (1,) * nlead + (s, s, 1)
            views.append(lax.slice(x, start, limit, strides))
    return views


def _pool_fwd_impl(x, k, s, p, ceil):
    views = _window_views(x, k, s, p, ceil)
    best, arg = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for i, v in enumerate(views[1:], start=1):
        better = v > best  # strict: the first maximum in scan order keeps the gradient
        best = jnp.where(better, v, best)
        arg = jnp.where(better, jnp.int8(i), arg)
    return best, arg


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def max_pool(x, window: int = 3, stride: int = 2, padding: int = 0, ceil: bool = False):
    """torch's MaxPool2d(window, stride, padding, ceil_mode=ceil) over axes (-3, -2) of an NHWC
    array (any leading dimensions)."""
    return _pool_fwd_impl(x, window, stride, padding, ceil)[0]


def _pool_fwd(x, k, s, p, ceil):
    best, arg = _pool_fwd_impl(x, k, s, p, ceil)
    return best, (arg, x.shape)


def _pool_bwd(k, s, p, ceil, res, g):
    arg, in_shape = res
    h, w = in_shape[-3], in_shape[-2]
    ho, wo = g.shape[-3], g.shape[-2]
    nlead = g.ndim - 3
    zero = jnp.zeros((), g.dtype)
    out = None
    for i in range(k * k):
        dy, dx = divmod(i, k)
        part = jnp.where(arg == i, g, zero)
        # Output (i, j) of view (dy, dx) came from input (i*s + dy - p, j*s + dx - p); negative
        # edge padding crops what fell on the -inf padding.
        cfg = [(0, 0, 0)] * nlead + [
            (dy - p, h - (dy - p) - s * (ho - 1) - 1, s - 1),
            (dx - p, w - (dx - p) - s * (wo - 1) - 1, s - 1),
            (0, 0, 0),
        ]
        part = lax.pad(part, zero, cfg)
        out = part if out is None else out + part
    return (out,)


max_pool.defvjp(_pool_fwd, _pool_bwd)


def conv_space_to_depth(x, kernel, stride: int, padding: int, precision=None):
    """Equivalent of conv(x, kernel, stride, explicit symmetric `padding`), computed stride-1.

    x: (N, H, W, Cin); kernel: HWIO (k, k, Cin, Cout). Returns (N, Ho, Wo, Cout) with torch's
    output size floor((H + 2p - k) / s) + 1.
    """
    n, h, w, cin = x.shape
    k = kernel.shape[0]
    s = stride
    ho = (h + 2 * padding - k) // s + 1
    wo = (w + 2 * padding - k) // s + 1
    hp = -(-(h + 2 * padding) // s) * s  # padded size rounded up to a multiple of s
    wp = -(-(w + 2 * padding) // s) * s
    x = jnp.pad(x, ((0, 0), (padding, hp - h - padding), (padding, wp - w - padding), (0, 0)))
    x = x.reshape(n, hp // s, s, wp // s, s, cin).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, hp // s, wp // s, s * s * cin)
    kb = -(-k // s)  # kernel size in blocks
    kernel = jnp.pad(kernel, ((0, kb * s - k), (0, kb * s - k), (0, 0), (0, 0)))
    cout = kernel.shape[-1]
    kernel = kernel.reshape(kb, s, kb, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(kb, kb, s * s * cin, cout)
    y = lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )
    return y[:, :ho, :wo, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def layer_norm(x, eps: float):
    """(x - mean) / sqrt(var + eps) over the last axis, var biased (torch's LayerNorm without
    its affine part)."""
    return _layer_norm_fwd(x, eps)[0]


def _layer_norm_fwd(x, eps):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    rstd = lax.rsqrt(var + jnp.asarray(eps, x.dtype))
    normed = centred * rstd
    return normed, (normed, rstd)


def _layer_norm_bwd(eps, res, g):
    normed, rstd = res
    g_mean = jnp.mean(g, axis=-1, keepdims=True)
    gx_mean = jnp.mean(g * normed, axis=-1, keepdims=True)
    return (rstd * (g - g_mean - normed * gx_mean),)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def _gelu_cdf(x):
    """Phi(x) = 0.5 * (1 + erf(x / sqrt 2))."""
    return jnp.asarray(0.5, x.dtype) * (1 + lax.erf(x * jnp.asarray(0.5 ** 0.5, x.dtype)))


@jax.custom_jvp
def gelu(x):
    """torch.nn.GELU() (approximate='none'): x * Phi(x)."""
    return x * _gelu_cdf(x)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = _gelu_cdf(x)
    pdf = jnp.exp(jnp.asarray(-0.5, x.dtype) * x * x) * jnp.asarray((2 * math.pi) ** -0.5, x.dtype)
    return x * cdf, (cdf + x * pdf) * t
