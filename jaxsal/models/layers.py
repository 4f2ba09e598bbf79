"""The vocabulary networks are described in: primitive layers and blocks, without JAX.

A network is a sequence of *stages*. A named stage's output is a layer the user can target; an
unnamed one (name None) is glue such as a flatten. A stage is a primitive (`Conv`, `BatchNorm`,
`Linear`, `ReLU`, `MaxPool`, ...) or a `Block`, whose `forward` composes primitives and
sub-blocks. A description states each fact once; everything else is derived by running the same
`forward` over a different *backend*:

* `ShapeBackend` (here): output shapes, channel-first like the original program, so checking a
  command's layer and channels needs no JAX;
* `ParamBackend` (here): every parameter's flat key, shape, torchvision key and layout rule;
* `jaxsal.models.network.FlaxBackend`: the Flax computation itself.

A backend offers `layer(op, x)` (a primitive or block, scoped under the op's name), `act(x)`
(every ReLU: the saliency method chooses its backward rule), `add(a, b)` and `concat(xs)` (along
channels). Parameter keys are scope names joined by '.', e.g. `layer1_bottleneck0.conv1.kernel`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

# ---------------------------------------------------------------------------------------------
# Shapes: channel-first tuples, (C, H, W) or (F,). A flattened (C, H, W) remembers its origin,
# because torch flattens in C,H,W order and jaxsal in H,W,C order (`Linear` reorders its rows).


class Flat(tuple):
    """(F,) that came from flattening `chw`."""

    chw: tuple[int, int, int]

    def __new__(cls, chw):
        self = super().__new__(cls, (math.prod(chw),))
        self.chw = tuple(chw)
        return self


class Tokens(tuple):
    """(C, T): a transformer's T tokens of C channels, channel-first like the other shapes. The
    last grid[0] * grid[1] tokens are the image's patches in row-major order; the `prefix`
    tokens before them (a class token) belong to no patch."""

    grid: tuple[int, int]

    def __new__(cls, channels: int, grid: tuple[int, int], prefix: int = 0):
        self = super().__new__(cls, (channels, prefix + grid[0] * grid[1]))
        self.grid = tuple(grid)
        return self

    @property
    def prefix(self) -> int:
        return self[1] - self.grid[0] * self.grid[1]

    def with_channels(self, channels: int) -> "Tokens":
        return Tokens(channels, self.grid, self.prefix)


def _pool_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """torch's pooling/conv output size, ceil_mode included (the last window must start inside
    the input or its left padding)."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


# ---------------------------------------------------------------------------------------------
# Primitives


@dataclasses.dataclass(frozen=True)
class Op:
    """A primitive. `name`: its layer name (top level) or scope name inside a block. `torch`:
    the torchvision module path of its parameters, relative to the enclosing block."""

    name: str | None = None
    torch: str | None = None

    affine = False  # output is an affine function of the input (targets skip their VJP)
    # The nonlinearity it applies, by name (None: none, or affine). Methods whose backward rule
    # is defined for ReLU networks only read these (`jaxsal.methods.RELU_NETWORK`).
    nonlinearity = None

    def shape(self, x: tuple) -> tuple:
        return x

    def params(self, x: tuple) -> dict[str, tuple[int, ...]]:
        """{leaf: shape} of its parameters for input shape x (jaxsal layouts)."""
        return {}

    def torch_leaves(self, x: tuple) -> dict[str, tuple[str, str]]:
        """{leaf: (torch leaf, layout rule)}; rules are applied by `jaxsal.weights.conversion`."""
        return {}

    def internal_elements(self, x: tuple) -> int:
        """Elements per image of the results it computes besides its output (kept for the
        backward pass; memory estimates)."""
        return 0


@dataclasses.dataclass(frozen=True)
class Conv(Op):
    """torch Conv2d with explicit symmetric padding (never 'SAME': AlexNet's conv1 would differ).
    Kernel HWIO. A square kernel at least twice its stride, or equal to it (a ViT's patches),
    runs as a space-to-depth convolution (`space_to_depth`: same sums, a much cheaper input
    gradient)."""

    features: int = 0
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0
    bias: bool = True

    affine = True

    @property
    def kernel_hw(self) -> tuple[int, int]:
        return (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)

    @property
    def padding_hw(self) -> tuple[int, int]:
        return (self.padding,) * 2 if isinstance(self.padding, int) else tuple(self.padding)

    @property
    def space_to_depth(self) -> bool:
        (kh, kw), (ph, pw) = self.kernel_hw, self.padding_hw
        return self.stride > 1 and kh == kw and ph == pw and (kh >= 2 * self.stride or kh == self.stride)

    def shape(self, x):
        c, h, w = x
        (kh, kw), (ph, pw) = self.kernel_hw, self.padding_hw
        return (self.features, (h + 2 * ph - kh) // self.stride + 1, (w + 2 * pw - kw) // self.stride + 1)

    def params(self, x):
        kh, kw = self.kernel_hw
        out = {"kernel": (kh, kw, x[0], self.features)}
        if self.bias:
            out["bias"] = (self.features,)
        return out

    def torch_leaves(self, x):
        out = {"kernel": ("weight", "conv")}
        if self.bias:
            out["bias"] = ("bias", "copy")
        return out


@dataclasses.dataclass(frozen=True)
class BatchNorm(Op):
    """torch BatchNorm2d in inference mode (running statistics), with the module's own eps."""

    eps: float = 1e-5

    affine = True

    def params(self, x):
        c = (x[0],)
        return {"scale": c, "bias": c, "mean": c, "var": c}

    def torch_leaves(self, x):
        return {"scale": ("weight", "copy"), "bias": ("bias", "copy"),
                "mean": ("running_mean", "copy"), "var": ("running_var", "copy")}


@dataclasses.dataclass(frozen=True)
class Linear(Op):
    """torch Linear; kernel (in, out). After a flatten, its rows are in H,W,C order. On tokens
    it acts on each token's channels (a transformer's MLP)."""

    features: int = 0

    affine = True

    def shape(self, x):
        return x.with_channels(self.features) if isinstance(x, Tokens) else (self.features,)

    def params(self, x):
        return {"kernel": (x[0], self.features), "bias": (self.features,)}

    def torch_leaves(self, x):
        rule = "linear_after_flatten" if isinstance(x, Flat) else "linear"
        return {"kernel": ("weight", rule), "bias": ("bias", "copy")}


@dataclasses.dataclass(frozen=True)
class ReLU(Op):
    """A ReLU; the saliency method decides its backward rule (vanilla, guided, deconv)."""

    nonlinearity = "ReLU"


@dataclasses.dataclass(frozen=True)
class MaxPool(Op):
    """torch MaxPool2d (padding counts as -inf; `ceil` is torch's ceil_mode)."""

    window: int = 2
    stride: int = 2
    padding: int = 0
    ceil: bool = False

    nonlinearity = "max-pool"

    def shape(self, x):
        c, h, w = x
        k, s, p = self.window, self.stride, self.padding
        return (c, _pool_size(h, k, s, p, self.ceil), _pool_size(w, k, s, p, self.ceil))


@dataclasses.dataclass(frozen=True)
class AvgPool(Op):
    """torch AvgPool2d / F.avg_pool2d with count_include_pad=True (the default)."""

    window: int = 3
    stride: int = 1
    padding: int = 0
    ceil: bool = False

    affine = True

    def shape(self, x):
        return MaxPool.shape(self, x)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Op):
    """AdaptiveAvgPool2d((1, 1)): the mean of each channel, kept as (C, 1, 1) as torch does."""

    affine = True

    def shape(self, x):
        return (x[0], 1, 1)


@dataclasses.dataclass(frozen=True)
class Flatten(Op):
    """(C, H, W) -> (C*H*W,), in jaxsal's H,W,C order (see `Linear`)."""

    affine = True

    def shape(self, x):
        return Flat(x)


@dataclasses.dataclass(frozen=True)
class ChannelAffine(Op):
    """x * scale[c] + shift[c]: torchvision's `transform_input` of Googlenet and InceptionV3,
    which re-normalises an ImageNet-normalised image the way their published weights expect."""

    scale: tuple[float, ...] = ()
    shift: tuple[float, ...] = ()

    affine = True


# ---------------------------------------------------------------------------------------------
# Transformer primitives (torchvision's VisionTransformer): tokens (C, T) -> tokens, except
# where said


@dataclasses.dataclass(frozen=True)
class TokenEmbedding(Op):
    """(C, H, W) patch features -> (C, 1 + H*W) tokens: the patches in row-major order with a
    learned class token before them, plus a learned position embedding (torchvision ViT's
    `_process_input`, `class_token` and `encoder.pos_embedding`). Glue: its parameters are
    keyed at the scope it runs in (`class_token`, `pos_embedding`)."""

    affine = True

    def shape(self, x):
        c, h, w = x
        return Tokens(c, (h, w), prefix=1)

    def params(self, x):
        c, h, w = x
        return {"class_token": (1, 1, c), "pos_embedding": (1, 1 + h * w, c)}

    def torch_leaves(self, x):
        return {"class_token": ("class_token", "copy"),
                "pos_embedding": ("encoder.pos_embedding", "copy")}


@dataclasses.dataclass(frozen=True)
class LayerNorm(Op):
    """torch LayerNorm over each token's channels (biased variance), with the module's eps."""

    eps: float = 1e-5

    nonlinearity = "LayerNorm"

    def params(self, x):
        return {"scale": (x[0],), "bias": (x[0],)}

    def torch_leaves(self, x):
        return {"scale": ("weight", "copy"), "bias": ("bias", "copy")}


@dataclasses.dataclass(frozen=True)
class SelfAttention(Op):
    """torch MultiheadAttention(C, heads, batch_first=True) applied as self-attention: queries,
    keys and values from one projection (its `in_proj_weight`, rows q, k, v), softmax(q k^T /
    sqrt(C / heads)) v per head, the heads concatenated and projected (`out_proj`)."""

    heads: int = 1

    nonlinearity = "softmax attention"

    def params(self, x):  # its two projections are linear layers (in, out), as torch's
        c = x[0]
        return {"in_proj.kernel": (c, 3 * c), "in_proj.bias": (3 * c,),
                "out_proj.kernel": (c, c), "out_proj.bias": (c,)}

    def torch_leaves(self, x):
        return {"in_proj.kernel": ("in_proj_weight", "linear"), "in_proj.bias": ("in_proj_bias", "copy"),
                "out_proj.kernel": ("out_proj.weight", "linear"), "out_proj.bias": ("out_proj.bias", "copy")}

    def internal_elements(self, x):
        c, t = x
        return 4 * t * c + 2 * self.heads * t * t  # q, k, v, heads' outputs; logits, weights


@dataclasses.dataclass(frozen=True)
class GELU(Op):
    """torch GELU, the exact (erf) form: x * Phi(x)."""

    nonlinearity = "GELU"


@dataclasses.dataclass(frozen=True)
class ClassTokenPool(Op):
    """Tokens (C, T) -> (C,): the class token, which torchvision's ViT hands to its head."""

    affine = True

    def shape(self, x):
        return (x[0],)


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclasses.dataclass(frozen=True)
class Block:
    """A named composite stage (a residual bottleneck, an inception module, a conv-bn-relu).
    Subclasses define `forward(x, backend)`; its sub-layers are scoped under `name`, and their
    torch paths under `torch`."""

    name: str | None = None
    torch: str | None = None

    affine = False

    def forward(self, x, b):  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Backends that need no JAX


class ShapeBackend:
    """Runs a description on shapes."""

    def layer(self, op, x):
        return op.forward(x, self) if isinstance(op, Block) else op.shape(x)

    def act(self, x):
        return x

    def add(self, a, b):
        if tuple(a) != tuple(b):
            raise ValueError(f"cannot add shapes {a} and {b}")
        return a

    def concat(self, xs):
        if len({tuple(x[1:]) for x in xs}) != 1:
            raise ValueError(f"cannot concatenate shapes {xs} along channels")
        return (sum(x[0] for x in xs),) + tuple(xs[0][1:])


class CountingBackend(ShapeBackend):
    """Runs a description on shapes and counts the elements of every intermediate result (per
    image): what a backward pass keeps, for memory estimates. Also records the nonlinearities
    applied so far (`Op.nonlinearity`; every `act` is a ReLU), in order of first use."""

    def __init__(self):
        self.elements = 0
        self.nonlinearities: list[str] = []

    def _count(self, x):
        self.elements += math.prod(x)
        return x

    def _applies(self, nonlinearity):
        if nonlinearity and nonlinearity not in self.nonlinearities:
            self.nonlinearities.append(nonlinearity)

    def layer(self, op, x):
        out = super().layer(op, x)
        if isinstance(op, Block):
            return out
        self._applies(op.nonlinearity)
        self.elements += op.internal_elements(x)
        return self._count(out)

    def act(self, x):
        self._applies(ReLU.nonlinearity)
        return self._count(super().act(x))

    def add(self, a, b):
        return self._count(super().add(a, b))

    def concat(self, xs):
        return self._count(super().concat(xs))


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter tensor: jaxsal flat key and shape, torchvision key and layout rule, and the
    top-level layer (stage) it belongs to."""

    key: str
    shape: tuple[int, ...]
    torch_key: str
    rule: str
    stage: str
    flat_from: tuple[int, int, int] | None = None  # `linear_after_flatten`: the (C, H, W) input


class ParamBackend(ShapeBackend):
    """Runs a description on shapes and records every parameter it meets."""

    def __init__(self):
        self.found: list[Param] = []
        self._scope: list[tuple[str, str | None]] = []  # (name, torch path) of enclosing ops
        self.stage = ""

    def layer(self, op, x):
        self._scope.append((op.name, op.torch))
        try:
            if isinstance(op, Block):
                return op.forward(x, self)
            params = op.params(x)
            if params:  # an unnamed op's parameters are keyed at its enclosing scope
                key = "".join(f"{n}." for n, _ in self._scope if n)
                torch = "".join(f"{t}." for _, t in self._scope if t)
                leaves = op.torch_leaves(x)
            for leaf, shape in params.items():
                torch_leaf, rule = leaves[leaf]
                self.found.append(Param(
                    key=f"{key}{leaf}", shape=tuple(shape), torch_key=f"{torch}{torch_leaf}",
                    rule=rule, stage=self.stage,
                    flat_from=x.chw if rule == "linear_after_flatten" else None))
            return op.shape(x)
        finally:
            self._scope.pop()


def run_stages(stages: Sequence[Any], x, backend, on_stage=None):
    """Feed x through `stages` on `backend`; `on_stage(stage, output)` after each."""
    names = [stage.name for stage in stages]
    for i, stage in enumerate(stages):
        if isinstance(backend, ParamBackend):  # glue's parameters belong to the next layer
            backend.stage = next((n for n in names[i:] if n), "")
        x = backend.layer(stage, x)
        if on_stage is not None:
            on_stage(stage, x)
    return x
