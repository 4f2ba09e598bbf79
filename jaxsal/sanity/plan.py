"""What a sanity check asks for (`CheckRequest`), checked once into what it will do
(`CheckPlan`); no JAX.

The inputs it shares with a saliency run (network, layer, channels, stimuli, weights, batch
size, precision, output folder) are checked by `jaxsal.request` itself: a `CheckRequest` makes
the saliency `Request` of its first method and `jaxsal.request.validate` reads the stimulus list
and the weights as for `dnn_saliency`. The rest -- the other methods, the tests, the curves'
steps and baseline, top-k, the layers to randomise -- is checked here. Every mistake is one
`UsageError` before any compute.
"""
from __future__ import annotations

import dataclasses
import numbers
import pathlib
from typing import Sequence, Union

from jaxsal import request as saliency_request
from jaxsal.errors import UsageError
from jaxsal.methods import MAX_SEED, Method, as_method, resolve
from jaxsal.sanity import stages as stage_rules

TESTS = ("mprt_cascading", "mprt_independent", "deletion", "insertion")
MPRT_TESTS = {"mprt_cascading": "cascading", "mprt_independent": "independent"}
CURVE_TESTS = ("deletion", "insertion")
FILLS = ("blur", "mean")  # jaxsal.sanity.curves implements them
DEFAULT_METHODS = ("vanilla", "guided")
DEFAULT_STEPS = 20
DEFAULT_TOPK = 10.0

Names = Union[str, Sequence[str]]


def _names(value, what: str) -> tuple:
    """'a,b' or ['a', 'b'] -> ('a', 'b'); duplicates and empty lists refused."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if isinstance(value, Method) or not isinstance(value, Sequence):
        value = [value]
    names = tuple(value)
    if not names or any(n == "" for n in names):
        raise UsageError(f"{what}: give at least one, comma-separated, got {value!r}")
    keys = [n.name if isinstance(n, Method) else n for n in names]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UsageError(f"{what}: {', '.join(map(str, twice))} given more than once")
    return names


def _whole(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        bound = f"a whole number >= {low}" if high is None else f"a whole number in {low}..{high}"
        raise UsageError(f"{name} must be {bound}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class CheckRequest:
    """A sanity check as a user asks for it (`dnn_saliency_check`'s flags as Python values).

    net, layer, channels, stim, weights, batch_size, precision, out: as for a saliency run
      (`jaxsal.Request`); `out` (optional) receives `{net}_{layer}_check.csv` and the figures.
    methods: the methods compared, names or `jaxsal.methods.Method`s ('vanilla,guided' or a
      list); each at most once.
    tests: any of `TESTS` ('mprt_cascading,deletion' or a list); all by default.
    steps: steps of the deletion and insertion curves (>= 1; each removes 1/steps of the pixels).
    fill: the curves' baseline image, `blur` or `mean` (`jaxsal.sanity.curves`).
    topk: percent of the pixels compared by `topk_overlap` (0 < topk <= 100).
    rand_layers: the layers to randomise (names, or 'conv5,conv3'); None = every layer with
      parameters at or below `layer`.
    rand_seed: seed of the re-initialisation and of the random pixel order, 0..2**32-1.
    """

    net: str
    layer: str
    channels: Sequence[int]
    stim: saliency_request.PathLike
    methods: Names | Sequence[Method] = DEFAULT_METHODS
    tests: Names = TESTS
    steps: int = DEFAULT_STEPS
    fill: str = "blur"
    topk: float = DEFAULT_TOPK
    rand_layers: Names | None = None
    rand_seed: int = 0
    weights: saliency_request.PathLike | None = None
    batch_size: int | None = None
    precision: str = "highest"
    out: saliency_request.PathLike | None = None

    def __post_init__(self):
        methods = tuple(as_method(m) for m in _names(self.methods, "methods (-meth)"))
        object.__setattr__(self, "methods", methods)
        tests = _names(self.tests, "tests (-tests)")
        unknown = [t for t in tests if t not in TESTS]
        if unknown:
            raise UsageError(f"unknown test(s) {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(TESTS)}")
        object.__setattr__(self, "tests", tuple(t for t in TESTS if t in tests))
        _whole(self.steps, "steps (-steps)", 1)
        if self.fill not in FILLS:
            raise UsageError(f"fill (-fill) must be {' or '.join(FILLS)}, got {self.fill!r}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, numbers.Real) \
                or not 0 < self.topk <= 100:
            raise UsageError(f"topk (-topk) must be a percentage, 0 < topk <= 100, got "
                             f"{self.topk!r}")
        if self.rand_layers is not None:
            object.__setattr__(self, "rand_layers", _names(self.rand_layers,
                                                           "layers to randomise (-rand_layers)"))
        _whole(self.rand_seed, "rand_seed (-rand_seed)", 0, MAX_SEED)

    def saliency_request(self) -> saliency_request.Request:
        """The saliency run of the first method on the same inputs: what `jaxsal.request`
        validates. (`show` stands for 'the caller keeps the result': the check returns its
        table whether or not it writes files.)"""
        return saliency_request.Request(
            net=self.net, layer=self.layer, channels=self.channels, stim=self.stim,
            method=self.methods[0], out=self.out, show=self.out is None, weights=self.weights,
            batch_size=self.batch_size, precision=self.precision)


@dataclasses.dataclass(frozen=True)
class CheckPlan:
    """A validated check. `run`: the saliency `Plan` of the shared inputs (spec, layer,
    channels0, stimuli, weights, out, batch size, precision); `methods` resolved for the layer;
    `stages`: the layers to randomise, top-down (empty without an MPRT test); `above`: the
    layers with parameters above the target, which are not randomised."""

    run: saliency_request.Plan
    methods: tuple[Method, ...]
    tests: tuple[str, ...]
    steps: int
    fill: str
    topk: float
    stages: tuple[str, ...]
    above: tuple[str, ...]
    rand_seed: int

    @property
    def mprt_modes(self) -> tuple[str, ...]:
        return tuple(MPRT_TESTS[t] for t in self.tests if t in MPRT_TESTS)

    @property
    def curve_tests(self) -> tuple[str, ...]:
        return tuple(t for t in self.tests if t in CURVE_TESTS)

    def path(self, what: str) -> pathlib.Path | None:
        """out/{net}_{layer}_check.csv (`what`='csv') or _check_{what}.jpg; None without -out."""
        r = self.run
        if r.out is None:
            return None
        name = f"{r.net}_{r.layer}_check"
        return r.out / (f"{name}.csv" if what == "csv" else f"{name}_{what}.jpg")


def validate(request: CheckRequest) -> CheckPlan:
    """Check everything `CheckRequest` could not: the shared inputs by `jaxsal.request.validate`
    (stimuli and weights read), then the methods for the layer, the layers to randomise, the
    number of steps against the pixels. UsageError on the first problem. No JAX."""
    if not isinstance(request, CheckRequest):
        raise UsageError(f"expected a jaxsal.sanity.CheckRequest, got {type(request).__name__}")
    run = saliency_request.validate(request.saliency_request())
    spec, layer = run.spec, run.layer
    methods = (run.method,) + tuple(resolve(m, spec, layer) for m in request.methods[1:])
    mprt = any(t in MPRT_TESTS for t in request.tests)
    if request.rand_layers is not None and not mprt:
        raise UsageError("-rand_layers chooses the layers of the randomisation tests: add "
                         "mprt_cascading or mprt_independent to -tests, or leave it out")
    stages = stage_rules.select(spec, layer, request.rand_layers) if mprt else ()
    n_pixels = spec.input_size ** 2
    if request.steps > n_pixels:
        raise UsageError(f"-steps {request.steps}: at most one step per pixel ({n_pixels} for "
                         f"{spec.name})")
    return CheckPlan(run=run, methods=methods, tests=request.tests, steps=request.steps,
                     fill=request.fill, topk=float(request.topk), stages=stages,
                     above=stage_rules.above(spec, layer), rand_seed=request.rand_seed)
