"""The ReLU backward rules of the saliency methods, each a ReLU with its own VJP.

The forward is always max(x, 0); the rule is what flows back (g: the cotangent, x: the input):
vanilla g * 1[x > 0] (jax.nn.relu, 0 at 0 as torch), guided g * 1[x > 0] * 1[g > 0]
(Springenberg et al. 2015), deconv g * 1[g > 0] whatever x was (Zeiler & Fergus 2014). The guided
and deconv rules are not linear in g: channels must never share a VJP (SPEC §5).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def guided_relu(x):
    """ReLU whose backward pass is guided backpropagation: g_in = g_out 1[x > 0] 1[g_out > 0]."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _guided_fwd(x):
    return guided_relu(x), x


def _guided_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros((), g.dtype)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x):
    """ReLU whose backward pass is the deconvnet rule: g_in = g_out 1[g_out > 0]."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _deconv_fwd(x):
    return deconv_relu(x), None


def _deconv_bwd(_, g):
    return (jnp.where(g > 0, g, jnp.zeros((), g.dtype)),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)

RULES = {"vanilla": jax.nn.relu, "guided": guided_relu, "deconv": deconv_relu}
