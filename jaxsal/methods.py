"""The attribution methods and their options: what to compute, validated before any compute.

`METHODS` is the one table of the methods: for each name, the module of `jaxsal.core` that
computes it and the properties everyone else reads (the ReLU rule of its gradient part, whether
its maps are 2-D, whether SmoothGrad applies, which options it takes). A `Method` names a method
and its options; it is frozen and hashable, so it keys the jit cache
(`jaxsal.core.compiled_saliency`), and this module imports no JAX, so the command validates
its flags before JAX is loaded. K channels, N images, S the input size; maps are attributions
with respect to the normalized input, of shape (K, N, 3, S, S), or (K, N, S, S) for 2-D methods.
The target is the one of SPEC §4. Formulas and the comparison with Captum: docs/methods.md.
"""
from __future__ import annotations

import dataclasses
import json
import math

from jaxsal.errors import UsageError


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """implementation: the `jaxsal.core` module with `maps(spec, layer, method, precision,
    params, images, channels0)`. rule: the ReLU backward rule of its gradient part
    (`jaxsal.core.relu_rules`). maps_2d: one (S, S) map per image, drawn with -cmap whatever
    -mode. smoothable: SmoothGrad may wrap it. options: the `Method` fields it uses (SmoothGrad's
    aside). evaluations: the option that counts its gradient evaluations per image, if any."""

    implementation: str
    rule: str
    maps_2d: bool = False
    smoothable: bool = False
    options: tuple[str, ...] = ()
    evaluations: str | None = None
    description: str = ""

    @property
    def needs_cam_layer(self) -> bool:
        return "cam_layer" in self.options


METHODS = {
    "vanilla": MethodInfo("jaxsal.core.gradients", "vanilla", smoothable=True,
                          description="plain gradient"),
    "guided": MethodInfo("jaxsal.core.gradients", "guided", smoothable=True,
                         description="guided backprop"),
    "deconv": MethodInfo("jaxsal.core.gradients", "deconv", smoothable=True,
                         description="deconvnet"),
    "ig": MethodInfo("jaxsal.core.integrated_gradients", "vanilla", smoothable=True,
                     options=("baseline", "ig_steps", "ig_rule"), evaluations="ig_steps",
                     description="integrated gradients"),
    "gradcam": MethodInfo("jaxsal.core.gradcam", "vanilla", maps_2d=True, options=("cam_layer",),
                          description="Grad-CAM: one 2-D map per image, drawn with -cmap"),
    "guided_gradcam": MethodInfo("jaxsal.core.gradcam", "guided", options=("cam_layer",),
                                 description="guided backprop x Grad-CAM"),
}
METHOD_NAMES = tuple(METHODS)
GRADIENT_METHODS = tuple(name for name, info in METHODS.items() if info.smoothable)
CAM_METHODS = tuple(name for name, info in METHODS.items() if info.needs_cam_layer)
BASELINES = ("black", "zeros")
IG_RULES = ("gausslegendre", "trapezoid")
DEFAULT_NOISE = 0.15
DEFAULT_IG_STEPS = 32
MAX_SEED = 2**32 - 1
PRECISIONS = ("highest", "default", "bfloat16")


def check_precision(precision: str) -> str:
    """`highest` (float32 throughout, parity with PyTorch), `default` (the device's fastest
    float32 matmuls, e.g. TF32 on NVIDIA GPUs) or `bfloat16` (the network runs in bfloat16)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


# ---------------------------------------------------------------------------------------------
# The method and its options


@dataclasses.dataclass(frozen=True)
class Method:
    """An attribution method with its options; validated on construction (`UsageError`).

    name: one of METHOD_NAMES.
    smooth: SmoothGrad sample count n (0 = off); for vanilla, guided, deconv and ig.
    noise: SmoothGrad noise level: sigma = noise * (max - min) of each normalized input image.
    seed: SmoothGrad seed, 0 .. 2**32 - 1.
    baseline: IG baseline, 'black' (the normalized image of a black picture) or 'zeros' (zeros
      in normalized space, i.e. the ImageNet-mean picture).
    ig_steps: IG path points M (gradient evaluations per image), >= 1 (>= 2 for trapezoid).
    ig_rule: IG quadrature: 'gausslegendre' (M Gauss-Legendre nodes on [0, 1], Captum's default;
      the more accurate, see docs/methods.md) or 'trapezoid' (M evenly spaced points including
      both ends, weights h/2, h, ..., h, h/2 with h = 1/(M-1)).
    cam_layer: Grad-CAM layer (a conv-like layer at or below the target); None = the target if
      it is conv-like, else the last conv-like layer of the net.

    Options a method does not use are ignored; `canonical()` resets them, so equal methods share
    one compiled function.
    """

    name: str = "guided"
    smooth: int = 0
    noise: float = DEFAULT_NOISE
    seed: int = 0
    baseline: str = "black"
    ig_steps: int = DEFAULT_IG_STEPS
    cam_layer: str | None = None
    ig_rule: str = "gausslegendre"

    def __post_init__(self):
        if self.name not in METHOD_NAMES:
            raise UsageError(f"unknown method {self.name!r}; choose from {', '.join(METHOD_NAMES)}")
        for field in ("smooth", "seed", "ig_steps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{field} must be a whole number, got {value!r}")
        if self.smooth < 0:
            raise UsageError(f"smooth (the SmoothGrad sample count) must be 0 (off) or more, got {self.smooth}")
        if self.smooth and self.name not in GRADIENT_METHODS:
            raise UsageError(f"SmoothGrad (smooth > 0) applies to the gradient methods "
                             f"{', '.join(GRADIENT_METHODS)}, not to {self.name}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not math.isfinite(self.noise) or self.noise < 0:
            raise UsageError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.baseline not in BASELINES:
            raise UsageError(f"unknown baseline {self.baseline!r}; choose from {', '.join(BASELINES)}")
        if self.ig_rule not in IG_RULES:
            raise UsageError(f"unknown ig_rule {self.ig_rule!r}; choose from {', '.join(IG_RULES)}")
        if self.ig_steps < 1:
            raise UsageError(f"ig_steps must be at least 1, got {self.ig_steps}")
        if self.ig_steps < 2 and self.ig_rule == "trapezoid":
            raise UsageError(f"ig_steps must be at least 2 for the trapezoid rule (it needs both "
                             f"ends of the path), got {self.ig_steps}")
        if self.cam_layer is not None and not isinstance(self.cam_layer, str):
            raise UsageError(f"cam_layer must be a layer name, got {self.cam_layer!r}")

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.name]

    @property
    def is_cam(self) -> bool:
        return self.info.needs_cam_layer

    @property
    def rule(self) -> str:
        """The ReLU backward rule of the gradient part: vanilla, guided or deconv."""
        return self.info.rule

    @property
    def evaluations_per_image(self) -> int:
        """Gradient evaluations per image of one (unsmoothed) call."""
        return getattr(self, self.info.evaluations) if self.info.evaluations else 1

    @property
    def map_axes(self) -> str:
        """What the axes of the maps mean, e.g. for a saved file."""
        if self.info.maps_2d:
            return "channel, stimulus, y, x"
        return "channel, stimulus, rgb, y, x"

    def options(self) -> dict:
        """The options this method uses (name included), e.g. for metadata."""
        out: dict = {"name": self.name}
        if self.smooth:
            out.update(smooth=self.smooth, noise=self.noise, seed=self.seed)
        out.update({option: getattr(self, option) for option in self.info.options})
        return out

    def canonical(self) -> "Method":
        """The same method with every unused option at its default."""
        return Method(**self.options())

    def describe(self) -> str:
        """One line for people, e.g. "guided, SmoothGrad n=16 noise=0.15 seed=0"."""
        text = self.name
        options = [f"{o} {getattr(self, o)}" for o in self.info.options if getattr(self, o) is not None]
        if options:
            text += f" ({', '.join(options)})"
        if self.smooth:
            text += f", SmoothGrad n={self.smooth} noise={self.noise:g} seed={self.seed}"
        return text

    def to_json(self) -> str:
        return json.dumps(self.options(), sort_keys=True)


def as_method(method="guided", **options) -> Method:
    """A `Method` from a name plus keyword options, or from a `Method` (then no options differing
    from the defaults may be given: say everything in one place)."""
    if isinstance(method, Method):
        defaults = {f.name: f.default for f in dataclasses.fields(Method)}
        clash = sorted(k for k, v in options.items() if v != defaults[k])
        if clash:
            raise UsageError(f"give {', '.join(clash)} inside the Method object, not as well as it")
        return method
    if not isinstance(method, str):
        raise UsageError(f"method must be a name ({', '.join(METHOD_NAMES)}) or a Method, got {method!r}")
    return Method(method, **options)


def default_cam_layer(spec, layer: str) -> str:
    """The target itself if it is spatial (conv-like, or a transformer's tokens) and not above
    the net's CAM layer (the last conv-like block before pooling, `NetSpec.cam_layer`); that
    layer for targets above it; else the last spatial layer below the target."""
    names = spec.layer_names
    index = names.index(layer)
    if spec.layer(layer).spatial and index <= names.index(spec.cam_layer):
        return layer
    if names.index(spec.cam_layer) <= index:
        return spec.cam_layer
    for name in reversed(names[: index + 1]):
        if spec.layer(name).spatial:
            return name
    raise UsageError(f"{spec.name} has no convolutional layer at or below {layer!r} for Grad-CAM")


# The nonlinearities whose backward the guided and deconv rules define (SPEC §5): the ReLU, and
# the max-pool's ordinary routing of the gradient to each window's maximum. Below a target where
# a network applies any other (a transformer's GELU, softmax attention, LayerNorm), those rules
# are undefined: such methods are refused there, not silently run as vanilla gradients.
RELU_NETWORK = ("ReLU", "max-pool")


def check_relu_rule(method: Method, spec, layer: str) -> None:
    """UsageError if `method`'s ReLU rule (guided, deconv) is undefined for the path from the
    image to `layer` of `spec`, naming the methods that work there."""
    other = [n for n in spec.layer(layer).nonlinearities if n not in RELU_NETWORK]
    if method.rule == "vanilla" or not other:
        return
    usable = [name for name, info in METHODS.items() if info.rule == "vanilla"]
    raise UsageError(f"-meth {method.name} is defined for ReLU networks, but {spec.name} applies "
                     f"{', '.join(other)} on the way to {layer!r}; use {', '.join(usable)} (SmoothGrad: "
                     f"{', '.join(m for m in usable if METHODS[m].smoothable)})")


def resolve(method, spec, layer: str) -> Method:
    """Validate `method` (name, str or Method) for a target layer of a net; returns the canonical
    Method with the Grad-CAM layer filled in. All errors are `UsageError`s."""
    m = as_method(method).canonical()
    check_relu_rule(m, spec, layer)
    if not m.is_cam:
        return m
    if m.cam_layer is None:
        return dataclasses.replace(m, cam_layer=default_cam_layer(spec, layer))
    names = spec.layer_names
    if m.cam_layer not in names:
        raise UsageError(f"unknown -cam_layer {m.cam_layer!r} for {spec.name}; valid layers: "
                         f"{', '.join(n for n in names if spec.layer(n).spatial)}")
    if not spec.layer(m.cam_layer).spatial:
        conv = [n for n in names if spec.layer(n).spatial]
        raise UsageError(f"Grad-CAM needs a convolutional -cam_layer (a spatial map), but "
                         f"{m.cam_layer!r} is fully connected; choose from {', '.join(conv)}")
    if names.index(m.cam_layer) > names.index(layer):
        raise UsageError(f"-cam_layer {m.cam_layer!r} is above the target layer {layer!r}: "
                         f"Grad-CAM needs a layer at or below the target")
    return m


def map_shape(method: Method, n_channels: int, n_images: int, size: int) -> tuple[int, ...]:
    if method.info.maps_2d:
        return (n_channels, n_images, size, size)
    return (n_channels, n_images, 3, size, size)
