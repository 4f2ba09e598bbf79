"""jaxsal: DNNBrain's dnn_saliency on JAX/Flax.

    import jaxsal
    net = jaxsal.load_net("AlexNet")                 # bundled conv weights, or your full weights
    maps = jaxsal.saliency(net, ["cat.jpg"], "conv5", [60, 125], method="guided")
    maps.shape  # (2, 1, 3, 224, 224): channels x images x RGB x H x W, d(target)/d(input)

Imports are lazy so that `dnn_saliency -help` and input validation do not pay for JAX.
"""
__version__ = "0.1.0"

__all__ = ["load_net", "saliency", "UsageError"]

from jaxsal.errors import UsageError
from jaxsal.runtime import configure_xla_flags as _configure_xla_flags

# Before anything imports JAX: XLA reads XLA_FLAGS once, at the first computation. Appends only
# flags verified on the installed jaxlib and never overrides the user's (jaxsal/runtime.py).
_configure_xla_flags()


def __getattr__(name):
    if name in ("load_net", "saliency"):
        import importlib

        return getattr(importlib.import_module("jaxsal.saliency"), name)
    raise AttributeError(f"module 'jaxsal' has no attribute {name!r}")
