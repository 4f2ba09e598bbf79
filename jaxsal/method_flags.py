"""The dnn_saliency flags of the attribution methods: -meth's options, to a validated `Method`.

Kept apart from jaxsal/cli.py so the method options live in one place; imports no JAX.
"""
from __future__ import annotations

from absl import flags

from jaxsal.errors import UsageError
from jaxsal.methods import (CAM_METHODS, DEFAULT_IG_STEPS, DEFAULT_NOISE, GRADIENT_METHODS,
                            METHOD_NAMES, Method)

METHOD_HELP = ("the method used to generate the saliency image: guided (guided backprop), "
               "vanilla (plain gradient), deconv (deconvnet), ig (integrated gradients), gradcam "
               "(Grad-CAM: one 2-D map per image, drawn with -cmap) or guided_gradcam; add "
               "-smooth N for SmoothGrad (docs/methods.md)")

# flag -> the -meth values it applies to
APPLIES_TO = {
    "smooth": GRADIENT_METHODS,
    "baseline": ("ig",),
    "ig_steps": ("ig",),
    "ig_rule": ("ig",),
    "cam_layer": CAM_METHODS,
}
FLAG_NAMES = ("smooth", "noise", "seed", "baseline", "ig_steps", "ig_rule", "cam_layer", "overlay")
SYNOPSIS = ("[-smooth N] [-noise Noise] [-seed Seed] [-baseline Baseline]\n"
            "                    [-ig_steps M] [-ig_rule Rule] [-cam_layer Layer] [-overlay]")


def define_method_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("smooth", 0, "SmoothGrad: average the map over N noisy copies of each "
                         "image (0 = off); with -meth vanilla, guided, deconv or ig",
                         flag_values=fv)
    flags.DEFINE_float("noise", DEFAULT_NOISE, "SmoothGrad noise level: standard deviation = "
                       "noise x (max - min) of each normalized image (needs -smooth)",
                       flag_values=fv)
    flags.DEFINE_integer("seed", 0, "SmoothGrad random seed, 0..2^32-1; the noise of an image "
                         "depends only on the seed and the image (needs -smooth)", flag_values=fv)
    flags.DEFINE_string("baseline", "black", "integrated gradients baseline: black (a black "
                        "picture) or zeros (zeros in normalized space = the mean picture)",
                        flag_values=fv)
    flags.DEFINE_integer("ig_steps", DEFAULT_IG_STEPS, "integrated gradients: gradient "
                         "evaluations per image along the path", flag_values=fv)
    flags.DEFINE_string("ig_rule", "gausslegendre", "integrated gradients quadrature: "
                        "gausslegendre or trapezoid", flag_values=fv)
    flags.DEFINE_string("cam_layer", None, "Grad-CAM layer, convolutional, at or below -layer "
                        "(default: -layer itself if convolutional, else the last convolutional "
                        "layer, conv5_maxpool for AlexNet)", flag_values=fv)
    flags.DEFINE_boolean("overlay", False, "draw each map half-transparent over the 224x224 "
                         "image the network saw", flag_values=fv)


def method_from_flags(fv: flags.FlagValues) -> Method:
    """-meth and its options -> Method. UsageError for an unknown method, an option given to a
    method that does not use it, or a bad value. Layer-dependent checks (-cam_layer against
    -layer) are `jaxsal.methods.resolve`'s."""
    meth = fv.meth
    if meth not in METHOD_NAMES:
        raise UsageError(f"-meth must be one of {', '.join(METHOD_NAMES)}, got {meth!r}")
    for name, methods in APPLIES_TO.items():
        if fv[name].present and meth not in methods:
            raise UsageError(f"-{name} applies to -meth {' or '.join(methods)}, not to {meth}")
    if (fv["noise"].present or fv["seed"].present) and fv.smooth <= 0:
        raise UsageError("-noise and -seed are SmoothGrad options: give -smooth N (N >= 1) too")
    try:
        return Method(meth, smooth=fv.smooth, noise=fv.noise, seed=fv.seed, baseline=fv.baseline,
                      ig_steps=fv.ig_steps, ig_rule=fv.ig_rule, cam_layer=fv.cam_layer)
    except UsageError as e:
        message = str(e)
        if message.split(" ")[0] in FLAG_NAMES:  # "ig_steps must be ..." -> "-ig_steps must be ..."
            message = "-" + message
        raise UsageError(message) from None
