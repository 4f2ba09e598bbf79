"""Sums of gradients over many inputs per image, in bounded memory (SmoothGrad's samples,
integrated gradients' path points).

The inputs are folded into the batch axis (all channels share each forward pass) and walked
through in chunks (`lax.scan`, unrolled when short), so memory stays near that of one plain
batch whatever the count, and the cost is about the count times that of the base method.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Inputs are folded into the batch until a pass holds about this many images; with a batch at
# least this large, one input per image per pass.
CHUNK_IMAGES = 64
# Passes are unrolled up to this many (XLA:CPU runs the network inside a while loop slower;
# BENCHMARKS.md); beyond it, a scan bounds the compile time.
MAX_UNROLLED_PASSES = 32


def samples_per_pass(n_samples: int, batch: int, inner: int = 1) -> int:
    """The largest divisor of n_samples that keeps a pass near CHUNK_IMAGES images."""
    limit = max(1, CHUNK_IMAGES // max(1, batch * inner))
    return max(d for d in range(1, min(n_samples, limit) + 1) if n_samples % d == 0)


def sum_over_samples(grads, make_inputs, weights, batch: int, inner: int = 1):
    """sum_s weights[s] * grads(make_inputs(s)) for s = 0 .. len(weights) - 1.

    grads: (B, S, S, 3) -> (K, B, ...). make_inputs: (c,) int sample indices -> (c, N, S, S, 3).
    `inner`: inputs `grads` itself evaluates per image (to size the passes).
    """
    n = weights.shape[0]
    c = samples_per_pass(n, batch, inner)
    index = jnp.arange(n, dtype=jnp.uint32).reshape(n // c, c)
    weights = weights.reshape(n // c, c)

    def part(idx, w):
        x = make_inputs(idx)  # (c, N, S, S, 3)
        g = grads(x.reshape((c * batch,) + x.shape[2:]))  # (K, c*N, ...)
        g = g.reshape((g.shape[0], c, batch) + g.shape[2:])
        return jnp.tensordot(w.astype(g.dtype), g, axes=((0,), (1,)),
                             precision=lax.Precision.HIGHEST)  # (K, N, ...)

    if n == c:
        return part(index[0], weights[0])
    out = jax.eval_shape(part, index[0], weights[0])
    total, _ = lax.scan(lambda t, chunk: (t + part(*chunk), None),
                        jnp.zeros(out.shape, out.dtype), (index, weights),
                        unroll=n // c <= MAX_UNROLLED_PASSES)
    return total
