"""How alike two saliency maps are: the similarity measures of the randomisation tests (JAX).

Every measure compares two maps of one unit and one stimulus as 2-D (S, S) images, as Adebayo
et al. (2018) did: a map with colour channels is reduced over them, to

    |map| = sum over RGB of |m|   (magnitude: what the figures show)
    map   = sum over RGB of m     (signed)

and a 2-D map (Grad-CAM) is used as it is. `SIMILARITIES`, in the order `similarities` returns:

    spearman_abs   Spearman rank correlation of |map| and |map'| over the S*S pixels (ties get
                   their average rank, as scipy.stats.spearmanr)
    spearman       the same of the signed maps
    ssim           structural similarity of |map| / max|map| and |map'| / max|map'|: 7 x 7
                   uniform windows (only those inside the image), K1 = 0.01, K2 = 0.03, sample
                   covariances, data range = max - min over both maps -- scikit-image's
                   `structural_similarity` defaults and Quantus 0.6.0's `ssim`
    topk_overlap   the fraction of the k most salient pixels of |map| that are also among the k
                   most salient of |map'| (k = topk percent of S*S, at least 1; equal values are
                   ranked by pixel index)

A measure is NaN where it is undefined: a constant map has no ranks to correlate and no
structure to compare. All functions are pure and batch over leading axes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

SIMILARITIES = ("spearman_abs", "spearman", "ssim", "topk_overlap")
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def reduce_maps(maps, maps_2d: bool):
    """maps (..., 3, S, S), or (..., S, S) if `maps_2d` -> (|map|, signed map), each (..., S, S)."""
    if maps_2d:
        return jnp.abs(maps), maps
    return jnp.sum(jnp.abs(maps), axis=-3), jnp.sum(maps, axis=-3)


def _ranks_1d(v):
    """One stable ascending sort -> (average ranks, descending positions), both float32."""
    n = v.shape[0]
    order = jnp.argsort(v, stable=True)
    s = v[order]
    j = jnp.arange(n)
    differs = s[1:] != s[:-1]
    first = lax.cummax(jnp.where(jnp.concatenate([jnp.ones((1,), bool), differs]), j, 0))
    last = lax.cummin(jnp.where(jnp.concatenate([differs, jnp.ones((1,), bool)]), j, n - 1),
                      reverse=True)  # each value's run of ties is first..last in sorted order
    average = (first + last).astype(jnp.float32) / 2 + 1
    descending = (n - 1 - last) + (j - first)  # runs reversed, ties kept in pixel order
    both = jnp.stack([average, descending.astype(jnp.float32)])
    return jnp.zeros((2, n), jnp.float32).at[:, order].set(both)


def ranks(v):
    """Along the last axis: (1-based ranks, tied values sharing their average rank; each
    value's place when sorted by decreasing value, 0 first, equal values in index order).
    Both from one sort: XLA's CPU sort is the costly step of the similarities."""
    flat = v.reshape((-1, v.shape[-1]))
    both = jax.vmap(_ranks_1d)(flat)
    return both[:, 0].reshape(v.shape), both[:, 1].astype(jnp.int32).reshape(v.shape)


def average_ranks(v):
    """1-based ranks along the last axis; tied values share their average rank."""
    return ranks(v)[0]


def pearson(x, y):
    """Pearson correlation along the last axis (NaN if either is constant)."""
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = y - jnp.mean(y, axis=-1, keepdims=True)
    return jnp.sum(x * y, axis=-1) / jnp.sqrt(jnp.sum(x * x, axis=-1) * jnp.sum(y * y, axis=-1))


def spearman(a, b):
    """Spearman rank correlation of a and b (..., S, S) over their pixels."""
    return pearson(average_ranks(_flat(a)), average_ranks(_flat(b)))


def _window_mean(x):
    w = SSIM_WINDOW
    ones = (1,) * (x.ndim - 2)
    total = lax.reduce_window(x, 0.0, lax.add, ones + (w, w), ones + (1, 1), "VALID")
    return total / (w * w)


def _by_max(a):
    peak = jnp.max(a, axis=(-2, -1), keepdims=True)
    return jnp.where(peak > 0, a / jnp.where(peak > 0, peak, 1), a)


def ssim(a, b):
    """Structural similarity of non-negative maps a and b (..., S, S), each divided by its
    maximum first (see the module docstring)."""
    a, b = _by_max(a), _by_max(b)
    both = jnp.stack([a, b])
    data_range = jnp.max(both, axis=(0, -2, -1)) - jnp.min(both, axis=(0, -2, -1))
    c1 = ((SSIM_K1 * data_range) ** 2)[..., None, None]
    c2 = ((SSIM_K2 * data_range) ** 2)[..., None, None]
    n = SSIM_WINDOW * SSIM_WINDOW
    cov = n / (n - 1)
    ua, ub = _window_mean(a), _window_mean(b)
    va = cov * (_window_mean(a * a) - ua * ua)
    vb = cov * (_window_mean(b * b) - ub * ub)
    vab = cov * (_window_mean(a * b) - ua * ub)
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return jnp.mean(s, axis=(-2, -1))


def _flat(m):
    return m.reshape(m.shape[:-2] + (-1,))


def descending_positions(a):
    """(..., S, S) -> (..., S*S) int32: each pixel's place (0 = most salient) when the pixels
    are sorted by decreasing value, equal values in pixel order."""
    return ranks(_flat(a))[1]


def topk_count(n_pixels: int, topk: float) -> int:
    """k of `topk_overlap`: `topk` percent of the pixels, rounded, at least 1."""
    return max(1, math.floor(n_pixels * topk / 100 + 0.5))


def topk_overlap(a, b, k: int):
    """|top k pixels of a  and  top k pixels of b| / k, for a and b (..., S, S)."""
    return _overlap(descending_positions(a), descending_positions(b), k)


def _overlap(positions_a, positions_b, k: int):
    return jnp.sum((positions_a < k) & (positions_b < k), axis=-1).astype(jnp.float32) / k


class MapStats(NamedTuple):
    """What the similarities need of one map, computed once per map (a trained map is compared
    with every randomised one): |map| (..., S, S); the average ranks of |map| and of the signed
    map and the places of |map|'s pixels in decreasing order (..., S*S)."""

    magnitude: jax.Array
    magnitude_ranks: jax.Array
    positions: jax.Array
    signed_ranks: jax.Array


def map_stats(magnitude, signed) -> MapStats:
    """`MapStats` of maps given as (|map|, signed map) (..., S, S): two sorts per map."""
    magnitude_ranks, positions = ranks(_flat(magnitude))
    return MapStats(magnitude, magnitude_ranks, positions, average_ranks(_flat(signed)))


def similarities(a: MapStats, b: MapStats, k: int):
    """(..., 4): `SIMILARITIES` of maps a and b."""
    return jnp.stack([pearson(a.magnitude_ranks, b.magnitude_ranks),
                      pearson(a.signed_ranks, b.signed_ranks), ssim(a.magnitude, b.magnitude),
                      _overlap(a.positions, b.positions, k)], axis=-1)
