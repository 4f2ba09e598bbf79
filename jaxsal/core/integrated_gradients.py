"""Integrated gradients (Sundararajan et al. 2017): (x - x') * the path integral of the gradient
from a baseline x' to x, by quadrature (docs/methods.md)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsal.core.gradients import gradient_maps
from jaxsal.core.sampling import sum_over_samples


def baseline_image(preprocessing, baseline: str):
    """(3,) per-channel value of the IG baseline in normalized space: 'black' is the normalized
    black picture, (0 - mean) / std; 'zeros' is 0 (the mean picture)."""
    if baseline == "zeros":
        return (0.0, 0.0, 0.0)
    return tuple(-m / s for m, s in zip(preprocessing.mean, preprocessing.std))


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
    """(x - x') * sum_k w_k grads(x' + alpha_k (x - x')). grads: (B, S, S, 3) -> (K, B, 3, S, S);
    baseline: (3,) per channel in normalized space; alphas, weights: (M,) host arrays
    (`ig_nodes`). -> (K, N, 3, S, S)."""
    base = jnp.asarray(baseline, images.dtype)
    delta = images - base  # (N, S, S, 3)
    alphas = jnp.asarray(alphas, images.dtype)

    def make_inputs(idx):
        return base + alphas[idx][:, None, None, None, None] * delta[None]

    total = sum_over_samples(grads, make_inputs, jnp.asarray(weights, images.dtype), images.shape[0])
    return total * jnp.transpose(delta, (0, 3, 1, 2))[None].astype(total.dtype)


def maps(spec, layer, method, precision, params, images, channels0):
    def grads(x):
        return gradient_maps(spec, layer, method.rule, precision, params, x, channels0)

    return integrated_gradients(grads, baseline_image(spec.preprocessing, method.baseline),
                                *ig_nodes(method.ig_rule, method.ig_steps), images)
