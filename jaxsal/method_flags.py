"""The command's method flags: -meth and its options, as rows of the flag table, to a `Method`.

Which option applies to which method is read from `jaxsal.methods.METHODS` (`smoothable`,
`options`), never written here. Imports no JAX.
"""
from __future__ import annotations

from typing import Collection, Mapping, Sequence

from jaxsal.errors import UsageError
from jaxsal.methods import METHOD_NAMES, METHODS, Method
from jaxsal.request import Flag

METHOD_HELP = ("the method used to generate the saliency image: guided (guided backprop), "
               "vanilla (plain gradient), deconv (deconvnet), ig (integrated gradients), gradcam "
               "(Grad-CAM: one 2-D map per image, drawn with -cmap) or guided_gradcam; add "
               "-smooth N for SmoothGrad (docs/methods.md)")

SMOOTHABLE = tuple(name for name, info in METHODS.items() if info.smoothable)
SMOOTH_OPTIONS = ("noise", "seed")  # need -smooth N

# option flag -> the -meth values it applies to
APPLIES_TO = {"smooth": SMOOTHABLE}
for _info in METHODS.values():
    for _option in _info.options:
        APPLIES_TO.setdefault(_option, tuple(n for n, i in METHODS.items() if _option in i.options))


def _either(names) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


METH = Flag("meth", "string", METHOD_HELP, "Method", field="name", of="method")
OPTIONS = (
    Flag("smooth", "integer", "SmoothGrad: average the map over N noisy copies of each image "
         f"(0 = off); with -meth {_either(SMOOTHABLE)}", "N", of="method"),
    Flag("noise", "float", "SmoothGrad noise level: standard deviation = noise x (max - min) of "
         "each normalized image (needs -smooth)", "Noise", of="method"),
    Flag("seed", "integer", "SmoothGrad random seed, 0..2^32-1; the noise of an image depends "
         "only on the seed and the image (needs -smooth)", "Seed", of="method"),
    Flag("baseline", "string", "integrated gradients baseline: black (a black picture) or zeros "
         "(zeros in normalized space = the mean picture)", "Baseline", of="method"),
    Flag("ig_steps", "integer", "integrated gradients: gradient evaluations per image along the "
         "path", "M", of="method"),
    Flag("ig_rule", "string", "integrated gradients quadrature: gausslegendre or trapezoid",
         "Rule", of="method"),
    Flag("cam_layer", "string", "Grad-CAM layer, convolutional, at or below -layer (default: "
         "-layer itself if convolutional, else the last convolutional layer, conv5_maxpool for "
         "AlexNet)", "Layer", of="method"),
)
FLAGS = (METH, *OPTIONS)
_OPTION_NAMES = {flag.name for flag in OPTIONS}


def method_from_flags(values: Mapping[str, object], given: Collection[str]) -> Method:
    """-meth and its options -> Method. `values`: every method flag's value (defaults included);
    `given`: the flags given on the command line. UsageError for an unknown method, an option
    given to a method that does not use it, or a bad value. Layer-dependent checks (-cam_layer
    against -layer) are `jaxsal.methods.resolve`'s, at validation."""
    meth = values["meth"]
    if meth not in METHOD_NAMES:
        raise UsageError(f"-meth must be one of {', '.join(METHOD_NAMES)}, got {meth!r}")
    for name, methods in APPLIES_TO.items():
        if name in given and meth not in methods:
            raise UsageError(f"-{name} applies to -meth {' or '.join(methods)}, not to {meth}")
    if any(name in given for name in SMOOTH_OPTIONS) and values["smooth"] <= 0:
        raise UsageError("-noise and -seed are SmoothGrad options: give -smooth N (N >= 1) too")
    try:
        return Method(meth, **{flag.target: values[flag.name] for flag in OPTIONS})
    except UsageError as e:
        message = str(e)
        if message.split(" ")[0] in _OPTION_NAMES:  # "ig_steps must be ..." -> "-ig_steps must be ..."
            message = "-" + message
        raise UsageError(message) from None


def applies(option: str, meth: str) -> bool:
    """Whether the option flag `option` is used by -meth `meth` (-noise, -seed: SmoothGrad's)."""
    return meth in APPLIES_TO.get(option, SMOOTHABLE)


def methods_from_flags(names: Sequence[str], values: Mapping[str, object],
                       given: Collection[str]) -> tuple[Method, ...]:
    """Several -meth values sharing one set of option flags (dnn_saliency_check -meth
    vanilla,guided,ig): each option given must apply to at least one of them, and each method
    gets the options that apply to it (the others at their defaults), checked as
    `method_from_flags` checks one."""
    for meth in names:
        if meth not in METHOD_NAMES:
            raise UsageError(f"-meth must be a comma-separated list of {', '.join(METHOD_NAMES)}; "
                             f"got {meth!r}")
    options = [name for name in given if name in _OPTION_NAMES]
    for name in options:
        if not any(applies(name, meth) for meth in names):
            users = APPLIES_TO.get(name, SMOOTHABLE)
            raise UsageError(f"-{name} applies to -meth {' or '.join(users)}, not to "
                             f"{', '.join(names)}")
    methods = []
    for meth in names:
        own = {name for name in options if applies(name, meth)}
        own_values = {flag.name: values[flag.name] if flag.name in own else flag.default_value
                      for flag in OPTIONS}
        methods.append(method_from_flags({**own_values, "meth": meth}, own))
    return tuple(methods)
