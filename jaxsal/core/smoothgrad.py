"""SmoothGrad (Smilkov et al. 2017): the mean of any gradient method over noisy copies of each
image, sigma = noise * (max - min) of the normalized image (SPEC §5; the original's bugs -- noise
overwriting the image, sigma^2 as the standard deviation -- are not copied).

The noise of an image depends on the seed and the image only: its PRNG key is derived from a
hash of its pixels, not from its position in the list, the batch size, padding or the device
count, so any batching gives the same maps.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsal.core.sampling import sum_over_samples


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (uint32 -> uint32, a bijection that mixes all bits)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def image_hashes(images):
    """Two 32-bit hashes per image of its float32 pixel values: (N, 2) uint32.

    Sums of mixed words, so any summation order gives the same bits (integer sums wrap exactly):
    the hash is identical on every backend, batch size and sharding.
    """
    bits = lax.bitcast_convert_type(images.astype(jnp.float32), jnp.uint32)
    bits = bits.reshape(bits.shape[0], -1)
    pos = jnp.arange(bits.shape[1], dtype=jnp.uint32)
    h1 = jnp.sum(_fmix32(bits ^ _fmix32(pos)), axis=1, dtype=jnp.uint32)
    h2 = jnp.sum(_fmix32(bits + _fmix32(pos ^ jnp.uint32(0x9E3779B9))), axis=1, dtype=jnp.uint32)
    return jnp.stack([h1, h2], axis=1)


def smoothgrad_keys(images, seed: int):
    """One PRNG key per image: fold_in(fold_in(key(seed), hash1), hash2) of its pixels."""
    root = jax.random.PRNGKey(seed)
    hashes = image_hashes(images)
    return jax.vmap(lambda h: jax.random.fold_in(jax.random.fold_in(root, h[0]), h[1]))(hashes)


def smoothgrad_sigma(images, noise: float):
    """(N,) noise standard deviation per image: noise * (max - min) of the normalized image."""
    flat = images.reshape(images.shape[0], -1)
    return jnp.asarray(noise, images.dtype) * (flat.max(axis=1) - flat.min(axis=1))


def smoothgrad_noise(images, noise: float, seed: int, sample_index):
    """The noise added to each image for the given samples: (c, N, S, S, 3), sample s of image i
    drawn from fold_in(key_i, s) (see `smoothgrad_keys`), times sigma_i."""
    keys = smoothgrad_keys(images, seed)  # (N, 2)
    sigma = smoothgrad_sigma(images, noise)
    samples = jnp.asarray(sample_index, jnp.uint32)
    n, c = keys.shape[0], samples.shape[0]
    # One flat vmap over (sample, image) pairs: nested vmaps compile threefry twice as slowly.
    pair_keys = jax.vmap(jax.random.fold_in)(jnp.tile(keys, (c, 1)), jnp.repeat(samples, n))
    # Drawn flat and reshaped (the same numbers): XLA compiles n-d threefry draws much slower.
    size = int(np.prod(images.shape[1:]))
    z = jax.vmap(lambda k: jax.random.normal(k, (size,), jnp.float32))(pair_keys)
    z = z.reshape((c, n) + images.shape[1:]).astype(images.dtype)
    return z * sigma[None, :, None, None, None]


def smoothgrad(fn, n: int, noise: float, seed: int, images, inner: int = 1):
    """(1/n) sum_s fn(x + eps_s), eps_s ~ N(0, sigma^2 I). fn: (B, S, S, 3) -> (K, B, ...), any
    gradient method. `inner`: inputs fn itself evaluates per image (IG's steps), to size the
    passes."""
    weights = jnp.full((n,), 1.0 / n, images.dtype)

    def make_inputs(idx):
        return images[None] + smoothgrad_noise(images, noise, seed, idx)

    return sum_over_samples(fn, make_inputs, weights, images.shape[0], inner)
