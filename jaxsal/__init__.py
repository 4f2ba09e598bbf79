"""jaxsal: DNNBrain's dnn_saliency on JAX/Flax.

    import jaxsal
    net = jaxsal.load_net("AlexNet")                 # bundled conv weights, or your full weights
    maps = jaxsal.saliency(net, ["cat.jpg"], "conv5", [60, 125], method="guided")
    maps.shape  # (2, 1, 3, 224, 224): channels x images x RGB x H x W, d(target)/d(input)
    fig = jaxsal.plot(maps, ["cat.jpg"], [60, 125])  # the command's figure (matplotlib)
    report = jaxsal.run(jaxsal.Request(net="AlexNet", layer="conv5", channels=[60, 125],
                                       stim="examples/examples.stim.csv", out="out"))
    report.figures  # the command's run from Python: figure files, maps file, timings, weights
    df = jaxsal.check("AlexNet", "conv5", [60], "examples/examples.stim.csv")  # sanity checks

Importing jaxsal has no side effects on the process, and imports JAX only when a name that needs
it is used (so `dnn_saliency -help` and input validation do not pay for JAX); matplotlib only for
`jaxsal.plot`, which needs no JAX.

On a CPU, jaxsal makes float32 maps ~1.2x faster with one XLA flag that must be set before JAX
starts: it sets it itself when it is the first to start JAX (`load_net`, `run`), as the command
does. One line on stderr says when it cannot: JAX was already started by your own code (call
`jaxsal.tune_cpu()` before your first JAX computation), or float64 is on (`jax_enable_x64`: the
flag makes float64 convolutions ~20x slower, so jaxsal leaves it out). `JAXSAL_XLA_TUNING=0`
turns it off (set it too if you turn float64 on later in the same process).
"""
__version__ = "0.1.0"

__all__ = ["load_net", "saliency", "plot", "run", "Request", "RunReport", "check", "tune_cpu",
           "register", "UsageError"]

from jaxsal.errors import UsageError
from jaxsal.models import register
from jaxsal.xla_config import tune_cpu


def __getattr__(name):
    if name == "load_net":
        from jaxsal.net import load_net

        return load_net
    if name == "saliency":
        from jaxsal.api import saliency

        return saliency
    if name == "plot":  # matplotlib, no JAX
        from jaxsal.plotting import plot

        return plot
    if name == "run":  # JAX once the request is validated
        from jaxsal.pipeline import run

        return run
    if name == "check":  # JAX once the check's inputs are validated
        from jaxsal.sanity import check

        return check
    if name in ("Request", "RunReport"):  # no JAX
        from jaxsal import pipeline, request

        return getattr(request if name == "Request" else pipeline, name)
    raise AttributeError(f"module 'jaxsal' has no attribute {name!r}")
