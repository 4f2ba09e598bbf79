"""The numeric precision of a computation, for every method (the names and their check are
`jaxsal.methods.PRECISIONS`, which the command validates before importing JAX)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax



def setup_precision(precision: str, params, images):
    """(params, images, XLA precision) for a jaxsal precision: bfloat16 casts the params and the
    images and lets XLA use its default precision; highest/default only pick the precision."""
    if precision == "bfloat16":
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
        return params, images.astype(jnp.bfloat16), lax.Precision.DEFAULT
    xla = lax.Precision.HIGHEST if precision == "highest" else lax.Precision.DEFAULT
    return params, images, xla
