"""Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM.

With A the activation (h, w, C) at the CAM layer (a transformer layer's patch tokens folded
back to their grid, `as_grid`) and y the target: alpha_c = mean over h, w of
dy/dA_c (vanilla gradients), cam = relu(sum_c alpha_c A_c), upsampled bilinearly (half-pixel
centres, i.e. align_corners=False) to S x S. Guided Grad-CAM = guided map x cam. One forward to
the CAM layer serves both parts: the guided map is the guided VJP of the lower part applied to
the guided VJP of the upper part.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxsal.core.targets import target_cotangents
from jaxsal.core.precision import setup_precision
from jaxsal.core.relu_rules import RULES
from jaxsal.models.network import build


def as_grid(info, a):
    """A Grad-CAM layer's activation (or its gradient) as a map (..., h, w, C): a transformer
    layer's (..., T, C) tokens become their h x w patch grid, the class token dropped
    (pytorch-grad-cam's `reshape_transform` for ViTs); a conv layer's stays as it is."""
    if info.kind != "tokens":
        return a
    h, w = info.grid
    return a[..., info.prefix_tokens:, :].reshape(a.shape[:-2] + (h, w, a.shape[-1]))


def maps(spec, layer, method, precision, params, images, channels0):
    """Grad-CAM (K, N, S, S) when the method's maps are 2-D, else guided Grad-CAM
    (K, N, 3, S, S)."""
    out_dtype = images.dtype
    size = images.shape[1]
    params, images, xla = setup_precision(precision, params, images)
    variables = {"params": params}
    guided = not method.info.maps_2d
    lower = build(spec, method.cam_layer, act=RULES[method.rule], precision=xla)
    upper = build(spec, layer, start_at=method.cam_layer, act=RULES["vanilla"], precision=xla)
    if guided:
        acts, lower_vjp = jax.vjp(lambda x: lower.apply(variables, x), images)
    else:
        acts = lower.apply(variables, images)  # (N, h, w, C)
    target, upper_vjp = jax.vjp(lambda a: upper.apply(variables, a), acts)
    cot = target_cotangents(spec.layer(layer), channels0, images.shape[0], target.dtype)
    (d_acts,) = jax.vmap(upper_vjp)(cot)  # (K, N, h, w, C)
    cam_info = spec.layer(method.cam_layer)
    alpha = jnp.mean(as_grid(cam_info, d_acts).astype(jnp.float32), axis=(2, 3))  # (K, N, C)
    cam = jnp.einsum("knc,nhwc->knhw", alpha, as_grid(cam_info, acts).astype(jnp.float32),
                     precision=lax.Precision.HIGHEST)
    cam = jax.nn.relu(cam)
    cam = jax.image.resize(cam, cam.shape[:2] + (size, size), method="bilinear")
    if not guided:
        return cam.astype(out_dtype)
    upper_guided = build(spec, layer, start_at=method.cam_layer, act=RULES["guided"], precision=xla)
    _, upper_guided_vjp = jax.vjp(lambda a: upper_guided.apply(variables, a), acts)
    grads = jax.vmap(lambda c: lower_vjp(upper_guided_vjp(c)[0])[0])(cot)  # (K, N, S, S, 3)
    grads = jnp.transpose(grads, (0, 1, 4, 2, 3)).astype(jnp.float32)
    return (grads * cam[:, :, None]).astype(out_dtype)
