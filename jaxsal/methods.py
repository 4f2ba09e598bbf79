"""The attribution methods and their options: what to compute, validated before any compute.

A `Method` names the method and its options. It is frozen and hashable, so it keys the jit cache
(`jaxsal.saliency.compiled_saliency`), and it imports no JAX, so the CLI validates flags with it
before JAX is loaded. The computation itself is in `jaxsal.attribution`. All channels x all
images are computed in one jit-compiled call:

=================  ======================  ==================================================
method             maps                    what
=================  ======================  ==================================================
vanilla            (K, N, 3, S, S)         d target / d input
guided             (K, N, 3, S, S)         guided backpropagation (Springenberg et al. 2015)
deconv             (K, N, 3, S, S)         deconvnet rule at every ReLU: g_in = g_out 1[g_out > 0]
ig                 (K, N, 3, S, S)         integrated gradients (Sundararajan et al. 2017)
gradcam            (K, N, S, S)            Grad-CAM (Selvaraju et al. 2017), upsampled to S x S
guided_gradcam     (K, N, 3, S, S)         guided map x Grad-CAM
+ smooth = n > 0   same as the base        SmoothGrad (Smilkov et al. 2017) of any of the
                                           gradient methods (vanilla, guided, deconv, ig)
=================  ======================  ==================================================

K channels, N images, S the input size; maps are attributions with respect to the normalized
input. The target is the one of SPEC §4 (channel mean for conv-like layers, the unit for fc
layers). Formulas, conventions and the comparison with Captum: docs/methods.md.
"""
from __future__ import annotations

import dataclasses
import json
import math

from jaxsal.errors import UsageError

METHOD_NAMES = ("vanilla", "guided", "deconv", "ig", "gradcam", "guided_gradcam")
GRADIENT_METHODS = ("vanilla", "guided", "deconv", "ig")  # those SmoothGrad can smooth
CAM_METHODS = ("gradcam", "guided_gradcam")
BASELINES = ("black", "zeros")
IG_RULES = ("gausslegendre", "trapezoid")
DEFAULT_NOISE = 0.15
DEFAULT_IG_STEPS = 32
MAX_SEED = 2**32 - 1

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
    def is_cam(self) -> bool:
        return self.name in CAM_METHODS

    @property
    def rule(self) -> str:
        """The ReLU backward rule of the gradient part: vanilla, guided or deconv."""
        return {"ig": "vanilla", "gradcam": "vanilla", "guided_gradcam": "guided"}.get(self.name, self.name)

    @property
    def map_axes(self) -> str:
        """What the axes of the maps mean, e.g. for a saved file."""
        if self.name == "gradcam":
            return "channel, stimulus, y, x"
        return "channel, stimulus, rgb, y, x"

    def options(self) -> dict:
        """The options this method uses (name included), e.g. for metadata."""
        out: dict = {"name": self.name}
        if self.smooth:
            out.update(smooth=self.smooth, noise=self.noise, seed=self.seed)
        if self.name == "ig":
            out.update(baseline=self.baseline, ig_steps=self.ig_steps, ig_rule=self.ig_rule)
        if self.is_cam:
            out.update(cam_layer=self.cam_layer)
        return out

    def canonical(self) -> "Method":
        """The same method with every unused option at its default."""
        return Method(**self.options())

    def describe(self) -> str:
        """One line for people, e.g. "guided, SmoothGrad n=16 noise=0.15 seed=0"."""
        text = self.name
        if self.name == "ig":
            text += f" (baseline {self.baseline}, {self.ig_steps} steps, {self.ig_rule})"
        if self.is_cam and self.cam_layer:
            text += f" (cam_layer {self.cam_layer})"
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
    """The target itself if it is conv-like, else the last conv-like layer below it."""
    names = spec.layer_names
    for name in reversed(names[: names.index(layer) + 1]):
        if spec.layer(name).kind == "conv":
            return name
    raise UsageError(f"{spec.name} has no convolutional layer at or below {layer!r} for Grad-CAM")


def resolve(method, spec, layer: str) -> Method:
    """Validate `method` (name, str or Method) for a target layer of a net; returns the canonical
    Method with the Grad-CAM layer filled in. All errors are `UsageError`s."""
    m = as_method(method).canonical()
    spec.layer(layer)  # unknown target: the spec's own message
    if not m.is_cam:
        return m
    if m.cam_layer is None:
        return dataclasses.replace(m, cam_layer=default_cam_layer(spec, layer))
    names = spec.layer_names
    if m.cam_layer not in names:
        raise UsageError(f"unknown -cam_layer {m.cam_layer!r} for {spec.name}; valid layers: "
                         f"{', '.join(n for n in names if spec.layer(n).kind == 'conv')}")
    if spec.layer(m.cam_layer).kind != "conv":
        conv = [n for n in names if spec.layer(n).kind == "conv"]
        raise UsageError(f"Grad-CAM needs a convolutional -cam_layer (a spatial map), but "
                         f"{m.cam_layer!r} is fully connected; choose from {', '.join(conv)}")
    if names.index(m.cam_layer) > names.index(layer):
        raise UsageError(f"-cam_layer {m.cam_layer!r} is above the target layer {layer!r}: "
                         f"Grad-CAM needs a layer at or below the target")
    return m


def map_shape(method: Method, n_channels: int, n_images: int, size: int) -> tuple[int, ...]:
    if method.name == "gradcam":
        return (n_channels, n_images, size, size)
    return (n_channels, n_images, 3, size, size)
