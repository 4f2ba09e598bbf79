"""The attribution core: pure, jit-able functions of (params, images) -> maps for every method.

`method_maps(spec, layer, method, precision, params, images, channels0)` dispatches on a resolved
`jaxsal.methods.Method`:

* vanilla, guided, deconv: `jaxsal.saliency.saliency_maps` with that ReLU backward rule (one
  forward pass, one VJP per channel via `vmap`);
* ig: a quadrature of those gradients along the straight path from a baseline;
* SmoothGrad (`smooth` > 0): the mean of any of the above over noisy copies of each image;
* gradcam, guided_gradcam: `cam_maps`.

SmoothGrad and integrated gradients evaluate the gradient at many inputs per image. Those are
folded into the batch axis (all channels share each forward pass) and walked through in chunks
(`lax.scan`, unrolled when short), so memory stays near that of one plain batch whatever the
sample or step count, and the cost is about the count times that of the base method.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsal.methods import Method

# Samples (SmoothGrad) or path points (IG) are folded into the batch until a pass holds about
# this many images; with a batch at least this large, one sample per pass.
CHUNK_IMAGES = 64
# Passes are unrolled up to this many (XLA:CPU ran the same network inside a while loop 2-3x
# slower: SmoothGrad n=4 cost 10x the base method rolled, 3.5x unrolled); beyond it, a scan
# bounds the compile time.
MAX_UNROLLED_PASSES = 32


# ---------------------------------------------------------------------------------------------
# The deconvnet ReLU


@jax.custom_vjp
def deconv_relu(x):
    """ReLU whose backward pass is the deconvnet rule (Zeiler & Fergus 2014; Springenberg et al.
    2015, Fig. 1): g_in = g_out * 1[g_out > 0], whatever the forward input was."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _deconv_fwd(x):
    return deconv_relu(x), None


def _deconv_bwd(_, g):
    return (jnp.where(g > 0, g, jnp.zeros((), g.dtype)),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


# ---------------------------------------------------------------------------------------------
# The pure core


def method_maps(spec, layer: str, method: Method, precision: str, params, images, channels0):
    """Pure: params, normalized NHWC images (N, S, S, 3), channels0 (K,) int -> maps in the
    images' dtype: (K, N, 3, S, S), or (K, N, S, S) for gradcam. `method` must be resolved
    (`resolve`)."""
    if method.is_cam:
        return cam_maps(spec, layer, method, precision, params, images, channels0)

    from jaxsal.saliency import saliency_maps

    def grads(x):
        return saliency_maps(spec, layer, method.rule, precision, params, x, channels0)

    fn = grads
    if method.name == "ig":
        fn = functools.partial(integrated_gradients, grads, baseline_image(spec, method.baseline),
                               *ig_nodes(method.ig_rule, method.ig_steps))
    if method.smooth:
        fn = functools.partial(smoothgrad, fn, method.smooth, method.noise, method.seed,
                               inner=method.ig_steps if method.name == "ig" else 1)
    return fn(images)


def _samples_per_pass(n_samples: int, batch: int, inner: int = 1) -> int:
    """The largest divisor of n_samples that keeps a pass near CHUNK_IMAGES images."""
    limit = max(1, CHUNK_IMAGES // max(1, batch * inner))
    return max(d for d in range(1, min(n_samples, limit) + 1) if n_samples % d == 0)


def _sum_over_samples(grads, make_inputs, weights, batch: int, inner: int = 1):
    """sum_s weights[s] * grads(make_inputs(s)) for s = 0 .. len(weights) - 1.

    grads: (B, S, S, 3) -> (K, B, ...). make_inputs: (c,) int sample indices -> (c, N, S, S, 3).
    Samples are folded into the batch c at a time (c divides the count) and the passes are
    accumulated in a (fully unrolled, if short) scan, so memory does not grow with the count.
    """
    n = weights.shape[0]
    c = _samples_per_pass(n, batch, inner)
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


def baseline_image(spec, baseline: str):
    """(3,) float32 per-channel value of the IG baseline in normalized space: 'black' is the
    normalized black picture, (0 - mean) / std; 'zeros' is 0 (the mean picture)."""
    if baseline == "zeros":
        return (0.0, 0.0, 0.0)
    return tuple(-m / s for m, s in zip(spec.mean, spec.std))


def ig_nodes(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes alpha_k in [0, 1] and weights w_k (summing to 1), float64.

    gausslegendre: numpy's Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1]
    (exactly Captum's 'gausslegendre'). trapezoid: alpha_k = k / (M - 1), weights h/2, h, ...,
    h, h/2 with h = 1 / (M - 1) (Captum's 'riemann_trapezoid' uses weights 1/M with halved
    ends, which sum to (M - 1)/M: its sums are ours times (M - 1)/M).
    """
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1.0 + x), 0.5 * w
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return alphas, weights
    raise ValueError(f"unknown IG rule {rule!r}")


def integrated_gradients(grads, baseline, alphas, weights, images):
    """(x - x') * sum_k w_k grads(x' + alpha_k (x - x')), the quadrature of the path integral
    of integrated gradients. grads: (B, S, S, 3) -> (K, B, 3, S, S); baseline: (3,) per channel
    in normalized space; alphas, weights: (M,) host arrays (`ig_nodes`). -> (K, N, 3, S, S)."""
    base = jnp.asarray(baseline, images.dtype)
    delta = images - base  # (N, S, S, 3)
    alphas = jnp.asarray(alphas, images.dtype)

    def make_inputs(idx):
        return base + alphas[idx][:, None, None, None, None] * delta[None]

    total = _sum_over_samples(grads, make_inputs, jnp.asarray(weights, images.dtype), images.shape[0])
    return total * jnp.transpose(delta, (0, 3, 1, 2))[None].astype(total.dtype)


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
    """One PRNG key per image: fold_in(fold_in(key(seed), hash1), hash2) of its pixels. The noise
    of an image therefore depends on the seed and the image only -- not on its position in the
    list, the batch size, padding or the device count."""
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
    """(1/n) sum_s fn(x + eps_s), eps_s ~ N(0, sigma^2 I) with sigma = noise * (max - min) of each
    image. fn: (B, S, S, 3) -> (K, B, ...) (any gradient method). `inner`: images fn already
    evaluates per input (IG's steps), to size the passes."""
    weights = jnp.full((n,), 1.0 / n, images.dtype)

    def make_inputs(idx):
        return images[None] + smoothgrad_noise(images, noise, seed, idx)

    return _sum_over_samples(fn, make_inputs, weights, images.shape[0], inner)


# ---------------------------------------------------------------------------------------------
# Grad-CAM


def setup_precision(precision: str, params, images):
    """(params, images, XLA precision) for a jaxsal precision: bfloat16 casts the params and the
    images and lets XLA use its default precision; highest/default only pick the precision."""
    if precision == "bfloat16":
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
        return params, images.astype(jnp.bfloat16), lax.Precision.DEFAULT
    xla = lax.Precision.HIGHEST if precision == "highest" else lax.Precision.DEFAULT
    return params, images, xla


def cam_maps(spec, layer: str, method: Method, precision: str, params, images, channels0):
    """Grad-CAM (K, N, S, S) or guided Grad-CAM (K, N, 3, S, S).

    With A the activation (h, w, C) at cam_layer and y the target: alpha_c = mean over h, w of
    dy/dA_c (vanilla gradients), cam = relu(sum_c alpha_c A_c), upsampled bilinearly (half-pixel
    centres, i.e. align_corners=False) to S x S. Guided Grad-CAM = guided map x cam. One forward
    to cam_layer serves both parts: the guided map is the guided VJP of the lower part applied to
    the guided VJP of the upper part.
    """
    from jaxsal.saliency import ACTIVATIONS, target_cotangents

    out_dtype = images.dtype
    size = images.shape[1]
    params, images, xla = setup_precision(precision, params, images)
    variables = {"params": params}
    guided = method.name == "guided_gradcam"
    lower = spec.build(stop_at=method.cam_layer, act=ACTIVATIONS[method.rule], precision=xla)
    upper = spec.build(start_at=method.cam_layer, stop_at=layer, act=ACTIVATIONS["vanilla"],
                       precision=xla)
    if guided:
        acts, lower_vjp = jax.vjp(lambda x: lower.apply(variables, x), images)
    else:
        acts = lower.apply(variables, images)  # (N, h, w, C)
    target, upper_vjp = jax.vjp(lambda a: upper.apply(variables, a), acts)
    cot = target_cotangents(spec.layer(layer), channels0, images.shape[0], target.dtype)
    (d_acts,) = jax.vmap(upper_vjp)(cot)  # (K, N, h, w, C)
    alpha = jnp.mean(d_acts.astype(jnp.float32), axis=(2, 3))  # (K, N, C)
    cam = jnp.einsum("knc,nhwc->knhw", alpha, acts.astype(jnp.float32), precision=lax.Precision.HIGHEST)
    cam = jax.nn.relu(cam)
    cam = jax.image.resize(cam, cam.shape[:2] + (size, size), method="bilinear")
    if not guided:
        return cam.astype(out_dtype)
    upper_guided = spec.build(start_at=method.cam_layer, stop_at=layer,
                              act=ACTIVATIONS["guided"], precision=xla)
    _, upper_guided_vjp = jax.vjp(lambda a: upper_guided.apply(variables, a), acts)
    grads = jax.vmap(lambda c: lower_vjp(upper_guided_vjp(c)[0])[0])(cot)  # (K, N, S, S, 3)
    grads = jnp.transpose(grads, (0, 1, 4, 2, 3)).astype(jnp.float32)
    return (grads * cam[:, :, None]).astype(out_dtype)
