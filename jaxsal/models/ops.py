"""Layer primitives with fast, exact gradients on every backend.

Both functions compute exactly what the textbook operation computes; they exist because XLA's
CPU gradients for the textbook forms are slow (see BENCHMARKS.md):

* `max_pool_3x3_s2`: 3x3/stride-2 VALID max-pool with a custom VJP that remembers which of the
  9 window positions won (first maximum in scan order wins, PyTorch's tie rule) and scatters the
  cotangent back with strided pads, instead of XLA's select-and-scatter.
* `conv_space_to_depth`: a stride-s convolution rewritten as a stride-1 convolution over s x s
  pixel blocks folded into channels (AlexNet's 11x11/4 conv1 becomes a 3x3/1 conv over 48
  channels). Same sums, much cheaper input gradient.

Both are shape- and dtype-generic over leading batch dimensions (NHWC on the last three axes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_K, _S = 3, 2  # AlexNet's pools: window 3, stride 2, VALID (floor mode)


def _window_views(x):
    """The 9 strided views x[..., dy::2, dx::2, :] that make up the 3x3/2 pooling windows."""
    *lead, h, w, c = x.shape
    ho, wo = (h - _K) // _S + 1, (w - _K) // _S + 1
    nlead = len(lead)
    views = []
    for dy in range(_K):
        for dx in range(_K):
            start = (0,) * nlead + (dy, dx, 0)
            limit = tuple(lead) + (dy + _S * (ho - 1) + 1, dx + _S * (wo - 1) + 1, c)
            strides = (1,) * nlead + (_S, _S, 1)
            views.append(lax.slice(x, start, limit, strides))
    return views


def _pool_fwd_impl(x):
    views = _window_views(x)
    best, arg = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for i, v in enumerate(views[1:], start=1):
        better = v > best  # strict: the first maximum in scan order keeps the gradient
        best = jnp.where(better, v, best)
        arg = jnp.where(better, jnp.int8(i), arg)
    return best, arg


@jax.custom_vjp
def max_pool_3x3_s2(x):
    """3x3 stride-2 VALID max-pool over axes (-3, -2) of an NHWC array."""
    return _pool_fwd_impl(x)[0]


def _pool_fwd(x):
    best, arg = _pool_fwd_impl(x)
    return best, (arg, x.shape)


def _pool_bwd(res, g):
    arg, in_shape = res
    h, w = in_shape[-3], in_shape[-2]
    ho, wo = g.shape[-3], g.shape[-2]
    nlead = g.ndim - 3
    zero = jnp.zeros((), g.dtype)
    out = None
    for i in range(_K * _K):
        dy, dx = divmod(i, _K)
        part = jnp.where(arg == i, g, zero)
        cfg = [(0, 0, 0)] * nlead + [
            (dy, h - dy - _S * (ho - 1) - 1, _S - 1),
            (dx, w - dx - _S * (wo - 1) - 1, _S - 1),
            (0, 0, 0),
        ]
        part = lax.pad(part, zero, cfg)
        out = part if out is None else out + part
    return (out,)


max_pool_3x3_s2.defvjp(_pool_fwd, _pool_bwd)


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
