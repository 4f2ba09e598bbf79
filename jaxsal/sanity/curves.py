"""Deletion and insertion curves on the target unit (JAX).

For one image x, one unit (the scalar its map explains: the channel's mean or the fc unit,
`jaxsal.core.targets.target_values`) and an order of the S*S pixels (most salient first, by
|map|, `similarity.descending_positions`; or a random permutation, the reference), with a
baseline image b (`FILLS`) and `steps` steps, step t = 0..steps sets n_t = floor(t * S*S /
steps) pixels, all three colours of each:

    deletion    the n_t first pixels of the order replaced by b's  (t = 0: x; t = steps: b)
    insertion   the n_t first pixels of the order taken from x, the rest from b  (b ... x)

and records y_t, the unit's value for that input. The normalised curve is

    (y_t - y(b)) / (y(x) - y(b))

from 1 to 0 (deletion) or 0 to 1 (insertion), NaN where the unit does not tell x from b
(|y(x) - y(b)| <= 1e-6 max(|y(x)|, |y(b)|)); `auc` is its area over the fraction t / steps
(trapezoids). A faithful map makes the deletion curve fall fast (small area) and the insertion
curve rise fast (large area) -- faster than the random order does.

Baselines (`FILLS`), in the network's normalised input space:
    blur   the image under a Gaussian blur of sigma = 5 px at 224 (scaled with the input size),
           cut at 3 sigma, edges mirrored (the blurred image of Petsiuk et al.'s insertion, 2018)
    mean   zeros: the dataset's mean colour (for ImageNet networks, the ImageNet mean), as the
           `zeros` baseline of integrated gradients
All the masked inputs of a curve are one batched forward pass to the target layer.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxsal.core import target_forward
from jaxsal.models import NetSpec

FILLS = ("blur", "mean")
BLUR_SIGMA_AT_224 = 5.0
UNDEFINED = 1e-6  # relative |y(x) - y(b)| below which the normalised curve is NaN


def blur_kernel(size: int) -> np.ndarray:
    """The 1-D Gaussian of the `blur` baseline for an input of `size` pixels (sums to 1)."""
    sigma = BLUR_SIGMA_AT_224 * size / 224
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(images):
    """Separable Gaussian blur of NHWC images (edges mirrored, 'symmetric')."""
    k = jnp.asarray(blur_kernel(images.shape[1]))
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
    n = images.shape[1]
    x = sum(k[i] * x[:, i:i + n] for i in range(k.shape[0]))  # along H
    return sum(k[i] * x[:, :, i:i + n] for i in range(k.shape[0]))  # along W


def baseline_images(images, fill: str):
    """The baseline image b of each of `images` (NHWC, normalised)."""
    if fill == "blur":
        return blur(images)
    if fill == "mean":
        return jnp.zeros_like(images)
    raise ValueError(f"unknown fill {fill!r}")


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """n_t for t = 0..steps: pixels removed (deletion) or inserted (insertion) at each step."""
    return (np.arange(steps + 1, dtype=np.int64) * n_pixels // steps).astype(np.int32)


def random_positions(seed: int, stimulus_indices, n_pixels: int) -> np.ndarray:
    """(B, n_pixels) int32: a random pixel order (each pixel's place) per stimulus, from NumPy's
    PCG64 seeded with (seed, 1, index of the stimulus in the run) -- the same whatever the batch
    the stimulus falls in."""
    return np.stack([np.random.default_rng([seed, 1, int(i)]).permutation(n_pixels)
                     for i in stimulus_indices]).astype(np.int32)


def masked_targets(spec: NetSpec, layer: str, precision: str, params, images, baselines,
                   positions, counts, insert, channels0):
    """Pure: the target of every channel in `channels0` (K,) for the masked inputs of steps
    `counts` (C,). images, baselines (B, S, S, 3); positions (R, B, S*S) int: each pixel's place
    in R orders; insert: False (deletion) or True (insertion), a traced bool. Returns
    (C, R, B, K): one forward pass for all C * R * B inputs."""
    n_steps, (n_orders, batch, _), size = counts.shape[0], positions.shape, images.shape[1]
    chosen = positions[None] < counts[:, None, None, None]  # (C, R, B, P)
    use_baseline = (chosen != insert).reshape((n_steps, n_orders, batch, size, size, 1))
    inputs = jnp.where(use_baseline, baselines[None, None], images[None, None])
    inputs = inputs.reshape((-1,) + images.shape[1:])
    y = target_forward(spec, layer, precision, params, inputs, channels0)  # (K, CRB)
    return jnp.moveaxis(y.reshape((-1, n_steps, n_orders, batch)), 0, -1)


def normalise(values, insert: bool):
    """Raw curves (..., T) -> normalised curves (see the module docstring)."""
    values = np.asarray(values, np.float64)
    original, base = (values[..., -1], values[..., 0]) if insert else (values[..., 0], values[..., -1])
    span = original - base
    tiny = np.abs(span) <= UNDEFINED * np.maximum(np.abs(original), np.abs(base))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (values - base[..., None]) / span[..., None]
    return np.where(tiny[..., None], np.nan, out)


def area(curves, fractions):
    """The area under normalised curves (..., T) over `fractions` (T,), by trapezoids."""
    curves = np.asarray(curves, np.float64)
    widths = np.diff(np.asarray(fractions, np.float64))
    return np.sum((curves[..., 1:] + curves[..., :-1]) / 2 * widths, axis=-1)
