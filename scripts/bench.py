#!/usr/bin/env python
"""Benchmark: saliency maps per second, PyTorch vs jaxsal, in one process on the same weights and
images (BENCHMARKS.md has the results and how to read them).

Three implementations of the same maps (CPU, float32):
  (a) orig   PyTorch the original program's way: per image and channel, a batch-1 forward run to
             the end of the network, zero_grad and one backward() -- with the weights'
             requires_grad left on, as in DNNBrain, so the backward also computes weight gradients
             (scripts/torch_baselines.py). Column "a0" is the same loop without weight gradients.
  (b) torch  PyTorch done well: one forward per batch stopped at the target layer, one
             `torch.autograd.grad` per channel, no hooks.
  (c) jax    jaxsal's jitted core (`jaxsal.core.compiled_saliency`).

Any registered network (--net, default AlexNet) on seeded random weights, the same on both sides
(converted with `jaxsal.weights.conversion.from_torchvision`); PyTorch's networks are the
reference zoo of the tests (tests/torch_nets.py, through scripts/torch_baselines.py).

Steady state is the median of --repeats timed calls after a warm-up call; the three are timed
round-robin (one call of each per round) so that load from other processes hits them alike.
Compile time is jaxsal's first call minus its steady-state call. (a) is timed on at most
--orig-images images per case (it is per image anyway) and extrapolated; the table says so.

    python scripts/bench.py                 # the full matrix: fc3, conv5 x guided, vanilla x 6, 64, 256
    python scripts/bench.py --quick         # one small case per layer, a minute or two
    python scripts/bench.py --net Vgg16 --methods guided --batches 16 --repeats 3 --orig-images 2
                                            # another network: its default layers (conv13, fc3)
    python scripts/bench.py --ablate        # the "what we tried" variants of jaxsal's core
    python scripts/bench.py --cli           # the end-to-end dnn_saliency command, cold and warm
    python scripts/bench.py --all-units     # every unit of a layer (AlexNet conv5: 256): jaxsal's
                                            # channel blocks vs 52 calls of 5 channels vs PyTorch
    python scripts/bench_api.py             # jaxsal.saliency as imported vs (b), each side in its
                                            # own process (not in this one: see its docstring)

Prints tables, then one line `BENCH_JSON {...}` with every number (machine-readable).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

ORIGINAL_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # as given to this script
import jaxsal  # noqa: E402
import jaxsal.xla_config  # noqa: E402
import numpy as np  # noqa: E402

# jaxsal's verified XLA CPU flags, set by main() before anything starts JAX
# (jaxsal.xla_config.tune_cpu), exactly as the dnn_saliency command does at its entry. Importing
# this module (scripts/bench_api.py does, for its timing helpers) sets nothing.
ADDED_FLAGS: list[str] = []

JSON_PREFIX = "BENCH_JSON "
NET = "AlexNet"
# --layers when not given: a conv-like and an fc target per network (others: the Grad-CAM layer,
# i.e. the last conv-like block, and the last layer).
DEFAULT_LAYERS = {"AlexNet": ("fc3", "conv5"), "Vgg16": ("conv13", "fc3"),
                  "Resnet50": ("layer4_bottleneck2", "fc"), "VitB16": ("encoder_layer11", "head")}
METHODS = ("guided", "vanilla")
BATCHES = (6, 64, 256)
CHANNELS = (1, 7)  # 1-based; any two channels cost the same


# ---------------------------------------------------------------------------------------------
# Machine, versions, arithmetic


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    simd = [f for f in ("avx512f", "avx2", "fma", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable, "simd": simd,
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "os": platform.platform()}


def versions() -> dict:
    import flax
    import jax
    import jaxlib
    import torch

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "jaxsal": jaxsal.__version__, "torch_threads": torch.get_num_threads(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


class _MacBackend:
    """Runs a network description (`jaxsal.models.layers`) on shapes and counts the
    multiply-accumulates of its convolutions (output C*H*W x kernel area x input channels),
    linear layers (in x out, per token on a transformer's tokens) and self-attention (its
    projections, 4 T C^2, and the two products of T x T attention weights, 2 T^2 C), blocks
    included; everything else (batch norm, layer norm, ReLU, GELU, softmax, pooling, sums,
    concatenations) counts as free. `vjp_macs`: the same for the input gradient, which costs a
    layer's forward MACs, except that both factors of the attention's products need their
    gradient (4 T^2 C)."""

    def __init__(self):
        from jaxsal.models.layers import ShapeBackend

        self._shapes = ShapeBackend()
        self.macs = self.vjp_macs = 0

    def layer(self, op, x):
        from jaxsal.models.layers import Block, Conv, Linear, SelfAttention

        if isinstance(op, Block):
            return op.forward(x, self)
        y = op.shape(x)
        macs = vjp = 0
        if isinstance(op, Conv):
            kh, kw = op.kernel_hw
            macs = vjp = math.prod(y) * kh * kw * x[0]
        elif isinstance(op, Linear):
            macs = vjp = math.prod(x[1:]) * x[0] * op.features  # x[1:]: tokens, else ()
        elif isinstance(op, SelfAttention):
            c, t = x
            macs, vjp = 4 * t * c * c + 2 * t * t * c, 4 * t * c * c + 4 * t * t * c
        self.macs += macs
        self.vjp_macs += vjp
        return y

    def act(self, x):
        return x

    def add(self, a, b):
        return self._shapes.add(a, b)

    def concat(self, xs):
        return self._shapes.concat(xs)


def layer_macs(spec, vjp: bool = False) -> list[tuple[str, int]]:
    """(layer, multiply-accumulates per image) of every named stage that has any, in network
    order, counted from the network's description (`_MacBackend`); an unnamed stage's MACs
    (none in the registered networks) go to the next named one. `vjp`: those of its input
    gradient instead."""
    from jaxsal.models.layers import run_stages

    backend = _MacBackend()
    out, before = [], [0]

    def count():
        return backend.vjp_macs if vjp else backend.macs

    def on_stage(stage, _):
        if stage.name and count() > before[0]:
            out.append((stage.name, count() - before[0]))
        if stage.name:
            before[0] = count()

    run_stages(spec.stages, spec.input_shape, backend, on_stage)
    return out


def flops_per_map(spec, layer: str, n_channels: int) -> dict:
    """FLOPs (2 x MACs) of one forward to `layer` plus one input-gradient VJP per channel, per
    map. A layer's input gradient costs as many MACs as its forward (the first conv's included:
    the map is the gradient with respect to the image; no weight gradients are needed), except
    self-attention's (`_MacBackend`).

    `standard` counts every layer up to and including the target, as PyTorch runs it.
    `executed` is what jaxsal's core computes for an affine target (raw conv/fc output): the
    target layer itself is replaced by a once-per-channel batch-1 VJP
    (`jaxsal.core.gradients.gradient_maps`).
    """
    names = list(spec.layer_names)
    macs, vjp_macs = layer_macs(spec), layer_macs(spec, vjp=True)
    upto = names.index(layer)
    fwd = sum(m for name, m in macs if names.index(name) <= upto)
    vjp = sum(m for name, m in vjp_macs if names.index(name) <= upto)
    target_layer = sum(m for name, m in macs if name == layer) if spec.layer(layer).affine else 0
    std = 2 * (fwd + n_channels * vjp) / n_channels
    ex = 2 * (fwd + n_channels * vjp - (1 + n_channels) * target_layer) / n_channels
    return {"forward_gflop_per_image": 2 * fwd / 1e9, "standard_gflop_per_map": std / 1e9,
            "executed_gflop_per_map": ex / 1e9, "per_layer_mmac": {n: m / 1e6 for n, m in macs}}


def measure_peak(size: int = 2048, repeats: int = 7) -> dict:
    """Best-of GFLOP/s of a float32 size^3 matmul: jax (XLA's dot) and torch (its BLAS)."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), np.float32)
    b = rng.standard_normal((size, size), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    times = round_robin({"jax": lambda: f(ja, jb).block_until_ready(), "torch": lambda: ta @ tb},
                        repeats, warmup=True)
    flop = 2 * size**3
    return {k: {"best_gflops": flop / min(v) / 1e9, "median_gflops": flop / statistics.median(v) / 1e9}
            for k, v in times.items()} | {"size": size}


# ---------------------------------------------------------------------------------------------
# Timing helpers


# A call is "clean" when other processes used at most this share of the machine's CPU time
# while it ran (--max-foreign). On the shared 2-core machine a busy neighbour does not slow both
# sides of a pair alike: PyTorch's OpenMP threads lose far more than XLA's (AlexNet conv5 N=6:
# c/b 1.27 idle, 2-5 with another test suite running), so ratios are taken over clean rounds.
MAX_FOREIGN = 0.10
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_counters() -> tuple[float, float] | None:
    """(CPU seconds all processes have used, CPU seconds this process has used), or None where
    /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    busy = sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4)) / _CLK_TCK
    return busy, time.process_time()


class Timings(dict):
    """{name: [seconds per call]} plus `foreign`: {name: [share of the machine's CPU time that
    other processes used during each call]} (0 where unknown)."""

    foreign: dict


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def round_robin(fns: dict, rounds: int, warmup: bool = False) -> Timings:
    """Seconds of each call, calling each function once per round in turn; with the CPU share
    other processes took during each call (`Timings.foreign`)."""
    if warmup:
        for f in fns.values():
            f()
    times = Timings({k: [] for k in fns})
    times.foreign = {k: [] for k in fns}
    cores = _usable_cores()
    for _ in range(rounds):
        for k, f in fns.items():
            c0 = _cpu_counters()
            t = time.perf_counter()
            f()
            wall = time.perf_counter() - t
            c1 = _cpu_counters()
            times[k].append(wall)
            if c0 is None or c1 is None:
                times.foreign[k].append(0.0)
            else:  # other processes' CPU seconds, less two ticks of /proc/stat's resolution
                other = (c1[0] - c0[0]) - (c1[1] - c0[1]) - 2 / _CLK_TCK
                times.foreign[k].append(max(0.0, other) / (wall * cores))
    return times


def clean_rounds(times: dict, *keys: str) -> list[int]:
    """Indices of the rounds in which every call of `keys` was clean (see MAX_FOREIGN); all
    rounds when none was, or when `times` has no record of the load."""
    n = min(len(times[k]) for k in keys)
    foreign = getattr(times, "foreign", None)
    if not foreign:
        return list(range(n))
    clean = [i for i in range(n) if all(foreign[k][i] <= MAX_FOREIGN for k in keys)]
    return clean or list(range(n))


def n_clean(times: dict, *keys: str) -> int:
    """How many rounds were clean for all `keys` (0 when none: then all rounds are used)."""
    foreign = getattr(times, "foreign", None)
    n = min(len(times[k]) for k in keys)
    if not foreign:
        return n
    return sum(all(foreign[k][i] <= MAX_FOREIGN for k in keys) for i in range(n))


def clean_median(times: dict, key: str) -> float:
    """Median seconds per call of `key` over its clean calls (all calls if none was clean)."""
    return statistics.median(times[key][i] for i in clean_rounds(times, key))


def paired_speedup(times: dict[str, list[float]], fast: str, slow: str, maps_fast: float = 1.0,
                   maps_slow: float = 1.0) -> float:
    """Median over rounds of (maps/s of `fast`) / (maps/s of `slow`), each round's two calls
    being neighbours in time: more robust to other processes' load than a ratio of medians.
    Only the rounds where both calls were clean count (all rounds if there is none)."""
    return statistics.median((maps_fast / times[fast][i]) / (maps_slow / times[slow][i])
                             for i in clean_rounds(times, fast, slow))


@functools.lru_cache(maxsize=1)
def matmul_probe(size: int = 2048):
    """(call, flop): one float32 size^3 jax matmul, timed inside each round as the machine's
    current peak, so that '% of peak' compares numbers taken under the same load."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((size, size), np.float32))
    f = jax.jit(lambda x: jnp.dot(x, x, precision="highest"))
    f(a).block_until_ready()
    return (lambda: f(a).block_until_ready()), 2 * size**3


def relative_errors(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-map relative L2 errors (maps = channel x image)."""
    k, n = ref.shape[:2]
    diff = np.linalg.norm((ours - ref).reshape(k * n, -1), axis=1)
    norm = np.linalg.norm(ref.reshape(k * n, -1), axis=1)
    return np.where(norm > 0, diff / np.where(norm > 0, norm, 1), 0.0)


# ---------------------------------------------------------------------------------------------
# Shared inputs


@dataclasses.dataclass
class Setup:
    spec: object  # jaxsal.models.NetSpec
    torch_state: dict
    params: dict  # jaxsal nested params (jax arrays)
    images: np.ndarray  # (Nmax, S, S, 3) normalized float32

    @property
    def net(self) -> str:
        return self.spec.name

    def torch_net(self, method: str, param_grads: bool = False, **options):
        """The PyTorch network; `options` go to its constructor (e.g. sdpa=True)."""
        import torch_baselines

        return torch_baselines.build_net(self.net, self.torch_state, method, param_grads, **options)

    @property
    def has_attention(self) -> bool:
        """The description has self-attention: (b) is then also timed with PyTorch's fused
        `scaled_dot_product_attention` (column torch_sdpa)."""
        from jaxsal.models.layers import SelfAttention

        return any(isinstance(op, SelfAttention) for op in _primitive_ops(self.spec))


def make_setup(n_images: int, seed: int = 0, net: str = NET) -> Setup:
    """Seeded random weights of `net` in torchvision's layout (PyTorch's side) and converted by
    jaxsal's converter (jaxsal's side), and `n_images` images at the network's input size."""
    import jax
    import jax.numpy as jnp

    import torch_baselines
    from jaxsal.models import get_net_spec
    from jaxsal.net import nest_params
    from jaxsal.weights.conversion import from_torchvision

    spec = get_net_spec(net)
    state = torch_baselines.random_net_state_dict(net, seed)
    flat = from_torchvision(spec, {k: v.numpy() for k, v in state.items()})
    params = jax.tree_util.tree_map(jnp.asarray, nest_params(flat))
    return Setup(spec, state, params, photo_like_images(n_images, seed + 1, spec.input_size))


def photo_like_images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Normalized NHWC float32 images: smooth blobs plus pixel noise, roughly what ImageNet
    normalization makes of photographs (values mostly in -2..2)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    block = -(-size // 16)
    for i in range(n):
        coarse = rng.normal(0, 1, (16, 16, 3)).astype(np.float32)
        out[i] = np.kron(coarse, np.ones((block, block, 1), np.float32))[:size, :size]
        out[i] += rng.normal(0, 0.25, (size, size, 3)).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# The main matrix


def jax_caller(fn, params, images, channels0):
    import jax.numpy as jnp

    x = jnp.asarray(images)
    ch = jnp.asarray(channels0)
    return lambda: fn(params, x, ch).block_until_ready()


def bench_case(setup: Setup, layer: str, method: str, batch: int, repeats: int, orig_images: int,
               precision: str = "highest", torch_channels_last: bool = False) -> dict:
    """One row: (a), a0, (b), (c) and the matmul probe round-robin; for a network with
    self-attention also (b) with PyTorch's fused attention ("torch_sdpa"); with
    `torch_channels_last` also (b) with the network and images in torch.channels_last
    ("torch_cl"), which oneDNN's convolutions may run faster than NCHW (`B_VARIANTS`)."""
    import torch

    import torch_baselines
    from jaxsal.core import compiled_saliency

    channels = list(CHANNELS)
    k = len(channels)
    images = setup.images[:batch]
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    net = setup.torch_net(method)
    net_orig = setup.torch_net(method, param_grads=True)
    fn = compiled_saliency(setup.spec, layer, method, precision)
    call = jax_caller(fn, setup.params, images, np.asarray(channels, np.int32) - 1)
    n_orig = min(batch, orig_images)

    t = time.perf_counter()
    call()  # compiles
    first = time.perf_counter() - t
    ours = np.asarray(fn(setup.params, images, np.asarray(channels, np.int32) - 1))
    ref = torch_baselines.done_well(net, nchw, layer, channels)  # warm-up of (b), and parity
    torch_baselines.original_way(net_orig, nchw[:1], layer, channels[:1])  # warm-up of (a)
    torch_baselines.original_way(net, nchw[:1], layer, channels[:1])
    errors = relative_errors(ours, ref)

    peak_call, peak_flop = matmul_probe()
    fns = {
        "jax": call,
        "torch": lambda: torch_baselines.done_well(net, nchw, layer, channels),
        "orig": lambda: torch_baselines.original_way(net_orig, nchw[:n_orig], layer, channels),
        "orig_no_weight_grads": lambda: torch_baselines.original_way(net, nchw[:n_orig], layer, channels),
        "matmul": peak_call,
    }
    maps = {"jax": batch * k, "torch": batch * k, "orig": n_orig * k, "orig_no_weight_grads": n_orig * k}
    variants = {}  # (b) run another way: fns key -> (network, images)
    if setup.has_attention:
        variants["torch_sdpa"] = setup.torch_net(method, sdpa=True), nchw
    if torch_channels_last:
        variants["torch_cl"] = (setup.torch_net(method).to(memory_format=torch.channels_last),
                                nchw.contiguous(memory_format=torch.channels_last))
    variant_errors = {}
    for key, (variant_net, x) in variants.items():
        fns[key] = functools.partial(torch_baselines.done_well, variant_net, x, layer, channels)
        variant_errors[key] = relative_errors(ours, fns[key]())  # and its warm-up
        maps[key] = batch * k
    times = round_robin(fns, repeats)
    steady = {key: clean_median(times, key) for key in times}
    rate = {key: maps[key] / steady[key] for key in maps}
    fl = flops_per_map(setup.spec, layer, k)
    std = fl["standard_gflop_per_map"] * 1e9
    peak_rounds = [peak_flop / t for t in times["matmul"]]
    pct = {key: statistics.median(maps[key] * std / times[key][i] / peak_rounds[i]
                                  for i in clean_rounds(times, key, "matmul"))
           for key in maps}
    extra = {}
    for key, errors_b in variant_errors.items():
        name = B_VARIANTS[key][0]
        extra |= {f"ratio_jax_vs_{name}": paired_speedup(times, "jax", key),
                  f"ratio_{name}_vs_torch": paired_speedup(times, key, "torch"),
                  f"parity_vs_{name}": {"median_rel_err": float(np.median(errors_b)),
                                        "max_rel_err": float(errors_b.max())}}
    return extra | {
        "net": setup.net, "layer": layer, "method": method, "batch": batch, "channels": k,
        "precision": precision,
        "maps_per_s": rate,
        "seconds_per_call": steady,
        "best_maps_per_s": {key: maps[key] / min(times[key]) for key in maps},
        "jax_first_call_s": first, "jax_compile_s": max(first - steady["jax"], 0.0),
        "ratio_jax_vs_torch": paired_speedup(times, "jax", "torch", maps["jax"], maps["torch"]),
        "ratio_jax_vs_orig": paired_speedup(times, "jax", "orig", maps["jax"], maps["orig"]),
        "ratio_torch_vs_orig": paired_speedup(times, "torch", "orig", maps["torch"], maps["orig"]),
        "ratio_jax_vs_orig_no_weight_grads": paired_speedup(times, "jax", "orig_no_weight_grads",
                                                            maps["jax"], maps["orig"]),
        "ratio_of_medians_jax_vs_torch": rate["jax"] / rate["torch"],
        "orig_measured_images": n_orig, "orig_extrapolated": n_orig < batch,
        "repeats": repeats,
        "parity_vs_torch": {"median_rel_err": float(np.median(errors)), "max_rel_err": float(errors.max())},
        "gflop_per_map": {"standard": fl["standard_gflop_per_map"], "executed": fl["executed_gflop_per_map"]},
        "achieved_gflops": {key: rate[key] * fl["standard_gflop_per_map"] for key in maps},
        "matmul_gflops_in_run": statistics.median(peak_rounds[i] for i in clean_rounds(times, "matmul")) / 1e9,
        "foreign_cpu_share": dict(times.foreign),
        "clean_rounds_jax_torch": n_clean(times, "jax", "torch"),
        "max_foreign": MAX_FOREIGN,
        "fraction_of_matmul_peak": pct,
    }


# (b) run another way, timed in the same rounds: fns key -> (JSON name, column, what it is).
B_VARIANTS = {
    "torch_sdpa": ("torch_sdpa", "b_sdpa", "with PyTorch's fused F.scaled_dot_product_attention"),
    "torch_cl": ("torch_channels_last", "b_cl",
                 "in channels_last (network and images in torch.channels_last)"),
}


def _print_head(title: str, head: str) -> None:
    """A table's title, its column header and a rule under it."""
    print()
    print(title)
    print(head)
    print("-" * len(head))


def _layer_width(rows: list[dict]) -> int:
    return max([6] + [len(r["layer"]) for r in rows])


def _net_of(rows: list[dict]) -> str:
    return rows[0].get("net", NET) if rows else NET


def print_cases(cases: list[dict]) -> None:
    w = _layer_width(cases)
    _print_head(
        f"{_net_of(cases)}: saliency maps per second (maps = images x channels), steady state: "
        "median of the timed calls;\nratios: median over rounds of the ratio between neighbouring calls",
        f"{'layer':{w}} {'method':8} {'N':>4} | {'(a) orig':>9} {'a0':>6} {'(b) torch':>9} {'(c) jax':>8} | "
        f"{'c/b':>5} {'c/a':>5} {'c/a0':>5} | {'compile s':>9} | {'GFLOP/s c':>9} {'matmul':>6} {'% peak':>6} | parity  | clean")
    for c in cases:
        r = c["maps_per_s"]
        orig = f"{r['orig']:.2f}" + ("*" if c["orig_extrapolated"] else " ")
        pct = f"{100 * c['fraction_of_matmul_peak']['jax']:5.0f}%"
        print(f"{c['layer']:{w}} {c['method']:8} {c['batch']:>4} | {orig:>9} {r['orig_no_weight_grads']:>6.2f} "
              f"{r['torch']:>9.2f} {r['jax']:>8.2f} | {c['ratio_jax_vs_torch']:>5.2f} {c['ratio_jax_vs_orig']:>5.1f} "
              f"{c['ratio_jax_vs_orig_no_weight_grads']:>5.1f} | {c['jax_compile_s']:>9.1f} | "
              f"{c['achieved_gflops']['jax']:>9.0f} {c['matmul_gflops_in_run']:>6.0f} {pct:>6} | "
              f"{c['parity_vs_torch']['median_rel_err']:.1e} | {c['clean_rounds_jax_torch']}/{c['repeats']}")
    for key, (name, col, what) in B_VARIANTS.items():
        rows = [c for c in cases if key in c["maps_per_s"]]
        if rows:
            print(f"(b) {what} ({col}), same rounds:")
        for c in rows:
            print(f"  {c['layer']:{w}} {c['method']:8} {c['batch']:>4} | {col} {c['maps_per_s'][key]:.2f} maps/s "
                  f"({100 * c['fraction_of_matmul_peak'][key]:.0f}% peak) | {col}/b "
                  f"{c[f'ratio_{name}_vs_torch']:.2f} | c/{col} {c[f'ratio_jax_vs_{name}']:.2f} | "
                  f"parity {c[f'parity_vs_{name}']['median_rel_err']:.1e}")
    if any(c["orig_extrapolated"] for c in cases):
        n = min(c["orig_measured_images"] for c in cases if c["orig_extrapolated"])
        print(f"* (a) and a0 timed on the first {n} images of the batch and extrapolated: the "
              "original's way is one batch-1 pass per image and channel, so its rate does not "
              "depend on N.")
    print("a0: the original's loop without weight gradients (requires_grad off on the weights).")
    print("GFLOP/s: one forward + one VJP per channel (standard count) per map. matmul: GFLOP/s of "
          "a 2048^3 float32 jax matmul timed in each round (the machine's peak under the same "
          "load); % peak: median over rounds of c's GFLOP/s over it. parity: median relative "
          "L2 error of c's maps against b's. clean: rounds in which other processes used at most "
          f"{100 * MAX_FOREIGN:.0f} % of the machine's CPU time during both (b) and (c); rates, ratios "
          "and % peak are taken over those rounds only (over all rounds when the count is 0).")


# ---------------------------------------------------------------------------------------------
# Precision variants


def bench_precisions(setup: Setup, layer: str, method: str, batch: int, repeats: int) -> list[dict]:
    from jaxsal.core import compiled_saliency
    from jaxsal.methods import PRECISIONS

    ch0 = np.asarray(CHANNELS, np.int32) - 1
    images = setup.images[:batch]
    fns, outs, first = {}, {}, {}
    for p in PRECISIONS:
        fn = compiled_saliency(setup.spec, layer, method, p)
        call = jax_caller(fn, setup.params, images, ch0)
        t = time.perf_counter()
        call()
        first[p] = time.perf_counter() - t
        outs[p] = np.asarray(fn(setup.params, images, ch0))
        fns[p] = call
    times = round_robin(fns, repeats)
    rows = []
    for p in PRECISIONS:
        err = relative_errors(outs[p], outs["highest"])
        steady = clean_median(times, p)
        rows.append({"net": setup.net, "layer": layer, "method": method, "batch": batch,
                     "precision": p, "maps_per_s": batch * len(CHANNELS) / steady,
                     "speed_vs_highest": paired_speedup(times, p, "highest"),
                     "compile_s": max(first[p] - steady, 0.0),
                     "median_rel_err_vs_highest": float(np.median(err)),
                     "max_rel_err_vs_highest": float(err.max())})
    return rows


@contextlib.contextmanager
def torch_precision(precision: str, device):
    """PyTorch's nearest equivalent of a jaxsal precision: highest = float32 with TF32 off,
    default = TF32 allowed (what 'default' lets XLA do on NVIDIA GPUs), bfloat16 = autocast."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "default"
    try:
        if precision == "bfloat16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bench_accelerator(setup: Setup, layer: str, method: str, batch: int, repeats: int,
                      torch_device: str) -> list[dict]:
    """Issue 4 section 5: jaxsal's core on JAX's default device (a GPU when there is one) against
    PyTorch batched (b) on `torch_device`, at each precision, at batch `batch`."""
    import jax
    import torch

    import torch_baselines
    from jaxsal.core import compiled_saliency
    from jaxsal.methods import PRECISIONS

    device = torch.device(torch_device)
    ch0 = np.asarray(CHANNELS, np.int32) - 1
    images = setup.images[np.arange(batch) % len(setup.images)]
    x_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    net = setup.torch_net(method).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows, outs = [], {}
    for p in PRECISIONS:
        fn = compiled_saliency(setup.spec, layer, method, p)
        call = jax_caller(fn, setup.params, images, ch0)
        t = time.perf_counter()
        call()
        first = time.perf_counter() - t
        outs[p] = np.asarray(fn(setup.params, images, ch0))

        def torch_call(p=p):
            with torch_precision(p, device):
                torch_baselines.done_well(net, x_torch, layer, list(CHANNELS), as_numpy=False)
            sync()

        with torch_precision(p, device):
            ref = torch_baselines.done_well(net, x_torch, layer, list(CHANNELS))
        parity = relative_errors(outs[p], ref)
        times = round_robin({"jax": call, "torch": torch_call}, repeats, warmup=True)
        err = relative_errors(outs[p], outs["highest"])
        steady = clean_median(times, "jax")
        rows.append({"net": setup.net, "layer": layer, "method": method, "batch": batch,
                     "precision": p, "jax_device": str(jax.devices()[0]), "torch_device": str(device),
                     "jax_maps_per_s": batch * len(CHANNELS) / steady,
                     "torch_maps_per_s": batch * len(CHANNELS) / clean_median(times, "torch"),
                     "ratio_jax_vs_torch": paired_speedup(times, "jax", "torch"),
                     "jax_compile_s": max(first - steady, 0.0),
                     "median_rel_err_vs_highest": float(np.median(err)),
                     "max_rel_err_vs_highest": float(err.max()),
                     "median_rel_err_vs_torch_same_precision": float(np.median(parity))})
    return rows


def print_accelerator(rows: list[dict]) -> None:
    w = _layer_width(rows)
    _print_head(
        f"{_net_of(rows)} accelerator rows: jaxsal on {rows[0]['jax_device']}, PyTorch (b) on {rows[0]['torch_device']}; "
        "maps/s, steady state; median relative error of jaxsal's maps against its 'highest' and "
        "against PyTorch at the same precision",
        f"{'layer':{w}} {'method':8} {'N':>5} {'precision':9} | {'jax':>9} {'torch':>9} {'jax/torch':>9} | "
        f"{'compile s':>9} | {'median err':>10} {'max err':>9} {'vs torch':>9}")
    for r in rows:
        print(f"{r['layer']:{w}} {r['method']:8} {r['batch']:>5} {r['precision']:9} | {r['jax_maps_per_s']:>9.1f} "
              f"{r['torch_maps_per_s']:>9.1f} {r['ratio_jax_vs_torch']:>9.2f} | {r['jax_compile_s']:>9.1f} | "
              f"{r['median_rel_err_vs_highest']:>10.1e} {r['max_rel_err_vs_highest']:>9.1e} "
              f"{r['median_rel_err_vs_torch_same_precision']:>9.1e}")


def print_precisions(rows: list[dict]) -> None:
    w = _layer_width(rows)
    _print_head(
        f"{_net_of(rows)} precision: speed and relative L2 error of each map against 'highest' (median / max over maps)",
        f"{'layer':{w}} {'method':8} {'N':>4} {'precision':10} | {'maps/s':>7} {'speed':>6} | {'median err':>10} {'max err':>9}")
    for r in rows:
        print(f"{r['layer']:{w}} {r['method']:8} {r['batch']:>4} {r['precision']:10} | {r['maps_per_s']:>7.2f} "
              f"{r['speed_vs_highest']:>5.2f}x | {r['median_rel_err_vs_highest']:>10.1e} {r['max_rel_err_vs_highest']:>9.1e}")


# ---------------------------------------------------------------------------------------------
# Ablation: the leads of BENCHMARKS.md's "what we tried", measured in one process


YNN_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
EIGEN_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _xla_max_pool(x, window: int = 3, stride: int = 2, padding: int = 0, ceil: bool = False):
    """The textbook pool (torch's geometry, ceil mode included): XLA's reduce-window, whose
    gradient is select-and-scatter. Stands in for `jaxsal.models.primitives.max_pool`."""
    from jax import lax

    from jaxsal.models.primitives import _pool_geometry

    lead = x.ndim - 3
    _, high_h = _pool_geometry(x.shape[-3], window, stride, padding, ceil)
    _, high_w = _pool_geometry(x.shape[-2], window, stride, padding, ceil)
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max,
                             (1,) * lead + (window, window, 1), (1,) * lead + (stride, stride, 1),
                             ((0, 0),) * lead + ((padding, high_h), (padding, high_w), (0, 0)))


def _direct_strided_conv(x, kernel, stride, padding, precision=None):
    """XLA's strided convolution; stands in for `jaxsal.models.primitives.conv_space_to_depth`."""
    from jax import lax

    return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@contextlib.contextmanager
def _patched_network(*, direct_convs: bool = False, xla_pool: bool = False):
    """Trace with the textbook primitives instead of jaxsal's (ablation only): the Flax backend
    (`jaxsal.models.network`) looks `max_pool` and `conv_space_to_depth` up at trace time."""
    from jaxsal.models import network

    saved = network.conv_space_to_depth, network.max_pool
    if direct_convs:
        network.conv_space_to_depth = _direct_strided_conv
    if xla_pool:
        network.max_pool = _xla_max_pool
    try:
        yield
    finally:
        network.conv_space_to_depth, network.max_pool = saved


def _without_affine(spec):
    """The same network with no layer marked affine, so the core never takes its affine-target
    shortcut (NetSpec derives `layers`; this copy carries its own)."""
    variant = dataclasses.replace(spec)
    variant.__dict__["layers"] = tuple(dataclasses.replace(l, affine=False) for l in spec.layers)
    return variant


def _primitive_ops(spec) -> list:
    """Every primitive op of the description (inside blocks too), in forward order."""
    from jaxsal.models.layers import Block, ShapeBackend, run_stages

    found = []

    class Recorder(ShapeBackend):
        def layer(self, op, x):
            if not isinstance(op, Block):
                found.append(op)
            return super().layer(op, x)

    run_stages(spec.stages, spec.input_shape, Recorder())
    return found


def ablation_applicable(spec, layer: str) -> dict[str, bool]:
    """Which leads can change anything for this network and target."""
    from jaxsal.models.layers import Conv, MaxPool

    names = [s.name for s in spec.stages]
    upto = spec.stages[: names.index(layer) + 1]
    ops = _primitive_ops(dataclasses.replace(spec, stages=upto, cam_layer=layer))
    return {
        "affine": spec.layer(layer).affine,
        "pool": any(isinstance(op, MaxPool) for op in ops),
        "s2d": any(isinstance(op, Conv) and op.space_to_depth for op in ops),
    }


def bench_ablation(setup: Setup, layer: str, method: str, batch: int, repeats: int) -> list[dict]:
    """jaxsal's core with each lead switched off (or on) in turn, round-robin with (b). Leads
    that cannot change anything for this network and target (no max-pool below it, no
    space-to-depth convolution, a non-affine target) are left out of the table."""
    import jax
    import jax.numpy as jnp
    import torch

    import torch_baselines
    from jaxsal.core.gradients import gradient_maps

    applicable = ablation_applicable(setup.spec, layer)
    eigen_on = jaxsal.xla_config.EIGEN_CONV_FLAG in os.environ.get("XLA_FLAGS", "")
    # (name, options, compiler options); options: affine, pool, s2d (False = lead off), precision
    variants = [("shipped", {}, None)]
    if eigen_on:
        variants.append(("- eigen convolutions (YNN convs, jaxlib default)", {}, YNN_CONV_OPTIONS))
    else:
        variants.append(("+ eigen convolutions (compile option)", {}, EIGEN_CONV_OPTIONS))
    leads = [("affine", "- affine-target shortcut"),
             ("pool", "- custom max-pool VJP (XLA select-and-scatter)"),
             ("s2d", "- space-to-depth strided convs (XLA strided conv)")]
    off = {}
    for key, name in leads:
        if applicable[key]:
            variants.append((name, {key: False}, None))
            off[key] = False
    variants += [
        ("plain port (all the leads above off)", off,
         YNN_CONV_OPTIONS if eigen_on else None),
        ("precision=default (fp32 on CPU)", {"precision": "default"}, None),
        ("single-threaded Eigen (xla_cpu_multi_thread_eigen=false)", {},
         {"xla_cpu_multi_thread_eigen": False}),
    ]
    ch0 = jnp.asarray(np.asarray(CHANNELS, np.int32) - 1)
    x = jnp.asarray(setup.images[:batch])
    fns, outs = {}, {}
    for name, opts, compiler_options in variants:
        spec = setup.spec if opts.get("affine", True) else _without_affine(setup.spec)
        precision = opts.get("precision", "highest")
        jitted = jax.jit(functools.partial(gradient_maps, spec, layer, method, precision))
        try:
            with _patched_network(direct_convs=not opts.get("s2d", True),
                                  xla_pool=not opts.get("pool", True)):
                compiled = jitted.lower(setup.params, x, ch0).compile(compiler_options=compiler_options)
        except Exception as e:  # an option this jaxlib does not know
            print(f"  ablation {name!r}: not available here ({type(e).__name__}: {str(e)[:120]})")
            continue
        outs[name] = np.asarray(compiled(setup.params, x, ch0))
        fns[name] = (lambda c: lambda: c(setup.params, x, ch0).block_until_ready())(compiled)
    net = setup.torch_net(method)
    nchw = torch.from_numpy(np.ascontiguousarray(setup.images[:batch].transpose(0, 3, 1, 2)))
    fns["(b) torch done well"] = lambda: torch_baselines.done_well(net, nchw, layer, list(CHANNELS))
    times = round_robin(fns, repeats, warmup=True)
    ref = outs["shipped"]
    rows = []
    for name, ts in times.items():
        steady = clean_median(times, name)
        err = relative_errors(outs[name], ref) if name in outs else np.zeros(1)
        rows.append({"net": setup.net, "layer": layer, "method": method, "batch": batch,
                     "variant": name,
                     "maps_per_s": batch * len(CHANNELS) / steady,
                     "ratio_vs_torch": paired_speedup(times, name, "(b) torch done well"),
                     "speed_vs_shipped": paired_speedup(times, name, "shipped"),
                     "median_rel_diff_vs_shipped": float(np.median(err)),
                     "max_rel_diff_vs_shipped": float(err.max()),
                     "clean_rounds_vs_torch": n_clean(times, name, "(b) torch done well"),
                     "rounds": repeats})
    return rows


def print_ablation(rows: list[dict]) -> None:
    w = max([20] + [len(f"{r['layer']} {r['method']} N={r['batch']}") for r in rows])
    _print_head(
        f"{_net_of(rows)} ablation (one process, round-robin): each lead switched off from the "
        "shipped core",
        f"{'case':{w}} {'variant':58} | {'maps/s':>7} {'vs (b)':>6} {'vs shipped':>10} {'clean':>5} | "
        f"rel diff vs shipped (median, max)")
    for r in rows:
        case = f"{r['layer']} {r['method']} N={r['batch']}"
        print(f"{case:{w}} {r['variant']:58} | {r['maps_per_s']:>7.2f} {r['ratio_vs_torch']:>5.2f}x "
              f"{r['speed_vs_shipped']:>9.2f}x {str(r['clean_rounds_vs_torch']) + '/' + str(r['rounds']):>5} | "
              f"{r['median_rel_diff_vs_shipped']:.1e}, "
              f"{r['max_rel_diff_vs_shipped']:.1e}")


# ---------------------------------------------------------------------------------------------
# Where the time goes: the same maps with the target moved up the network


def bench_stages(setup: Setup, layers: list[str], method: str, batch: int, repeats: int) -> list[dict]:
    """(b) and (c) for each target of `layers` (in network order), round-robin over all of them:
    the difference between neighbouring targets is the cost of the stages in between (a forward
    and one VJP per channel through them), so the per-segment ratio says where jaxsal gains or
    loses against PyTorch."""
    import torch

    import torch_baselines
    from jaxsal.core import compiled_saliency

    order = list(setup.spec.layer_names)
    layers = sorted(layers, key=order.index)
    ch0 = np.asarray(CHANNELS, np.int32) - 1
    images = setup.images[:batch]
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    net = setup.torch_net(method)
    fns = {}
    for layer in layers:
        fns[f"jax {layer}"] = jax_caller(compiled_saliency(setup.spec, layer, method, "highest"),
                                         setup.params, images, ch0)
        fns[f"torch {layer}"] = (lambda l: lambda: torch_baselines.done_well(net, nchw, l, list(CHANNELS)))(layer)
    times = round_robin(fns, repeats, warmup=True)
    med = {k: clean_median(times, k) for k in times}
    rows, prev = [], None
    for layer in layers:
        fl = flops_per_map(setup.spec, layer, len(CHANNELS))
        row = {"net": setup.net, "layer": layer, "method": method, "batch": batch,
               "jax_s": med[f"jax {layer}"], "torch_s": med[f"torch {layer}"],
               "ratio_jax_vs_torch": paired_speedup(times, f"jax {layer}", f"torch {layer}"),
               "clean_rounds": n_clean(times, f"jax {layer}", f"torch {layer}"), "rounds": repeats,
               "gflop_per_call": fl["standard_gflop_per_map"] * batch * len(CHANNELS)}
        if prev is None:
            row.update(seg_jax_s=row["jax_s"], seg_torch_s=row["torch_s"], seg_gflop=row["gflop_per_call"])
        else:
            row.update(seg_jax_s=row["jax_s"] - prev["jax_s"], seg_torch_s=row["torch_s"] - prev["torch_s"],
                       seg_gflop=row["gflop_per_call"] - prev["gflop_per_call"])
        rows.append(row)
        prev = row
    return rows


def print_stages(rows: list[dict]) -> None:
    w = _layer_width(rows)
    _print_head(
        f"{_net_of(rows)}: where the time goes, {rows[0]['method']} N={rows[0]['batch']} x {len(CHANNELS)} "
        "channels; seconds per call with the target at each layer (medians), and the segment from "
        "the previous target (differences of medians; noisy when small)",
        f"{'up to layer':{w}} | {'jax s':>7} {'torch s':>7} {'c/b':>5} {'clean':>5} | {'segment GFLOP':>13} "
        f"{'jax s':>7} {'torch s':>7} {'jax GFLOP/s':>11} {'torch GFLOP/s':>13}")
    for r in rows:
        gj = r["seg_gflop"] / r["seg_jax_s"] if r["seg_jax_s"] > 0 else float("nan")
        gt = r["seg_gflop"] / r["seg_torch_s"] if r["seg_torch_s"] > 0 else float("nan")
        clean = f"{r['clean_rounds']}/{r['rounds']}"
        print(f"{r['layer']:{w}} | {r['jax_s']:>7.3f} {r['torch_s']:>7.3f} {r['ratio_jax_vs_torch']:>5.2f} {clean:>5} | "
              f"{r['seg_gflop']:>13.1f} {r['seg_jax_s']:>7.3f} {r['seg_torch_s']:>7.3f} {gj:>11.0f} {gt:>13.0f}")


# ---------------------------------------------------------------------------------------------
# The command, end to end


CLI_STIMULI = {  # --cli-stimuli: (size for make_stimuli, description)
    "mixed": (None, "the bundled photos at 5 scales (180-500 px)"),
    "uniform": ((500, 375), "all 500 x 375, as ImageNet's"),
    "photos": ((2400, 1800), "all 2400 x 1800, as camera photos"),
}


def make_stimuli(folder: pathlib.Path, n: int, size: tuple[int, int] | None = None) -> pathlib.Path:
    """`n` stimuli made from the bundled examples/ images (resized copies, so every file is
    decoded and resized anew: to `size`, or to 60-100 % of each photo's size, i.e. mixed sizes)
    and a .stim.csv listing them."""
    from PIL import Image

    sources = sorted((REPO / "examples").glob("*.jpg"))
    if not sources:
        raise SystemExit("examples/*.jpg not found")
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        with Image.open(src) as im:
            im = im.convert("RGB")
            if size is None:
                scale = 0.6 + 0.4 * ((i // len(sources)) % 5) / 4
                im = im.resize((max(32, int(im.width * scale)), max(32, int(im.height * scale))))
            else:
                im = im.resize(size)
            name = f"stim{i:04d}_{src.stem}.jpg"
            im.save(folder / name, quality=90)
        rows.append(f"{name},{i % 1000 + 1}")
    csv = folder / "bench.stim.csv"
    csv.write_text("type=image\npath=.\ntitle=jaxsal bench stimuli\ndata=stimID,label\n" + "\n".join(rows) + "\n")
    return csv


def _run_timed(cmd: list[str], env: dict, cwd: pathlib.Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by finished child processes (and theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_cli(setup: Setup | None, n_images: int, layer: str, method: str, weights: str | None,
              batch_size: int | None, cli_repeats: int = 3, stimuli: str = "mixed") -> dict:
    """dnn_saliency on `n_images` stimuli x 2 channels with figures, cold then `cli_repeats`
    times warm, in a fresh JAXSAL_HOME (so the persistent compilation cache starts empty); after
    each run, the pure-compute time of the same maps in this process; plus start-up times.
    `stimuli`: see CLI_STIMULI."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="jaxsal-bench-cli-"))
    try:
        stim_dir = work / "stim"
        stim_dir.mkdir()
        csv = make_stimuli(stim_dir, n_images, size=CLI_STIMULI[stimuli][0])
        env = dict(os.environ)
        env["JAXSAL_HOME"] = str(work / "home")
        env["TORCH_HOME"] = str(work / "torch_home")  # no stray torch hub weights
        env.pop("JAXSAL_WEIGHTS", None)
        # The command sets its own XLA flags at its entry (tune_cpu); give it the user's, not
        # this process's.
        if ORIGINAL_XLA_FLAGS:
            env["XLA_FLAGS"] = ORIGINAL_XLA_FLAGS
        else:
            env.pop("XLA_FLAGS", None)
        py = sys.executable
        net_name = setup.net if setup is not None else NET
        result: dict = {"net": net_name, "images": n_images, "channels": len(CHANNELS),
                        "layer": layer, "method": method, "stimuli": stimuli}

        # Start-up: interpreter + imports, and the whole `-help` path.
        t_import, p = _run_timed([py, "-c", "import jaxsal.cli"], env, work)
        result["import_cli_s"] = t_import if p.returncode == 0 else None
        t_python, _ = _run_timed([py, "-c", "pass"], env, work)
        result["python_startup_s"] = t_python
        t_help, p = _run_timed([py, "-m", "jaxsal.cli", "-help"], env, work)
        result["help_s"] = t_help if p.returncode == 0 else None
        t_jax, _ = _run_timed([py, "-c", "import jax, jax.numpy"], env, work)
        result["import_jax_s"] = t_jax
        load = (f"import time, jaxsal; t = time.perf_counter(); net = jaxsal.load_net({net_name!r}"
                + (f", weights={weights!r}" if weights else "") + "); "
                "import jax; jax.block_until_ready(net.params); print(time.perf_counter() - t)")
        t_load, p = _run_timed([py, "-c", load], env, work)
        result["load_net_process_s"] = t_load if p.returncode == 0 else None
        result["load_net_s"] = float(p.stdout.split()[-1]) if p.returncode == 0 else None

        cmd = [py, "-m", "jaxsal.cli", "-net", net_name, "-layer", layer,
               "-chn", *[str(c) for c in CHANNELS], "-stim", str(csv), "-meth", method,
               "-out", str(work / "out"), "-profile"]
        if weights:
            cmd += ["-weights", weights]
        if batch_size:
            cmd += ["-batch_size", str(batch_size)]

        # Pure compute of the same maps at the command's batch size, in this process: its
        # jitted core on decoded inputs, steady state, (images / batch) batches.
        compute = None
        if setup is not None:
            from jaxsal.core import compiled_saliency

            bs = _command_batch_size(net_name, n_images, layer, batch_size)
            fn = compiled_saliency(setup.spec, layer, method, "highest")
            imgs = setup.images[:bs] if len(setup.images) >= bs else photo_like_images(bs, 7)
            call = jax_caller(fn, setup.params, imgs, np.asarray(CHANNELS, np.int32) - 1)
            call()
            n_batches = -(-n_images // bs)
            result["pure_compute_batch_size"] = bs

            def compute():
                cpu, t = time.process_time(), time.perf_counter()
                for _ in range(n_batches):
                    call()
                return time.perf_counter() - t, time.process_time() - cpu

        # A cold run (empty compilation cache), then warm runs, each followed by the pure
        # compute, so that every ratio compares neighbours in time on this noisy machine.
        runs, computes = [], []
        labels = ["first (cold compilation cache)"] + [f"warm #{i + 1}" for i in range(cli_repeats)]
        for label in labels:
            shutil.rmtree(work / "out", ignore_errors=True)
            cpu = _children_cpu_s()
            wall, p = _run_timed(cmd, env, work)
            finished = len(re.findall(r"^Finish: ", p.stdout, re.M))
            profile = [line for line in p.stderr.splitlines() if "profile" in line.lower()]
            runs.append({"run": label, "wall_s": wall, "cpu_s": _children_cpu_s() - cpu,
                         "returncode": p.returncode, "finish_lines": finished, "profile": profile,
                         "stderr_tail": p.stderr[-2000:] if p.returncode else ""})
            if compute is not None:
                wall_c, cpu_c = compute()
                computes.append({"wall_s": wall_c, "cpu_s": cpu_c})
        result["runs"] = runs
        cache = work / "home" / "xla"
        result["compilation_cache_entries"] = len(list(cache.iterdir())) if cache.is_dir() else 0
        if computes:
            result["pure_compute"] = computes
            result["pure_compute_s"] = statistics.median(c["wall_s"] for c in computes)
            warm = [(r, c) for r, c in zip(runs[1:], computes[1:]) if r["returncode"] == 0]
            if warm:
                result["ratio_cli_vs_compute_warm"] = statistics.median(
                    r["wall_s"] / c["wall_s"] for r, c in warm)
                result["ratio_cli_vs_compute_cold"] = runs[0]["wall_s"] / computes[0]["wall_s"]
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _command_batch_size(net_name: str, n_images: int, layer: str, requested: int | None) -> int:
    """The batch size the command picks for this run (`jaxsal.batching.pick_batch_size`), or 64
    if that cannot be asked (its interface is not part of this benchmark)."""
    try:
        from jaxsal import batching

        net = jaxsal.load_net(net_name)
        return int(batching.pick_batch_size(n_images, requested, net, layer, len(CHANNELS)))
    except Exception:  # noqa: BLE001
        return requested or 64


def print_cli(r: dict) -> None:
    print()
    print(f"End-to-end dnn_saliency -net {r.get('net', NET)}: {r['images']} stimuli ({r.get('stimuli', 'mixed')}) x "
          f"{r['channels']} channels, {r['layer']} "
          f"{r['method']}, figures to -out; after each run, the pure compute of the same maps "
          f"(jitted core, batch {r.get('pure_compute_batch_size', '?')}, steady state)")
    computes = r.get("pure_compute", [])
    for i, run in enumerate(r["runs"]):
        status = "ok" if run["returncode"] == 0 else f"FAILED rc={run['returncode']}"
        line = (f"  {run['run']:32} {run['wall_s']:6.1f} s wall {run['cpu_s']:6.1f} s CPU "
                f"({run['finish_lines']} Finish lines, {status})")
        if i < len(computes):
            c = computes[i]
            line += (f" | compute {c['wall_s']:5.1f} s wall {c['cpu_s']:5.1f} s CPU | "
                     f"ratio {run['wall_s'] / c['wall_s']:.2f}")
        print(line)
        for prof in run["profile"]:
            print(f"      {prof}")
        if run["returncode"]:
            print("      " + run["stderr_tail"].replace("\n", "\n      "))
    if "ratio_cli_vs_compute_warm" in r:
        print(f"  CLI / pure compute: {r['ratio_cli_vs_compute_cold']:.2f} cold, "
              f"{r['ratio_cli_vs_compute_warm']:.2f} warm (median of paired runs)")
    print(f"  persistent compilation cache entries after the runs: {r['compilation_cache_entries']}")
    print(f"  start-up: python {r['python_startup_s']:.2f} s, `import jaxsal.cli` "
          f"{_fmt(r['import_cli_s'])}, `dnn_saliency -help` {_fmt(r['help_s'])}, "
          f"`import jax` {r['import_jax_s']:.2f} s (for comparison)")
    print(f"  weights: `jaxsal.load_net({r.get('net', NET)!r})` {_fmt(r['load_net_s'])} (JAX import included), "
          f"whole process {_fmt(r['load_net_process_s'])}")


# ---------------------------------------------------------------------------------------------
# Every unit of a layer (-chn all), each side in its own process


ALL_UNITS_SIDE_PREFIX = "BENCH_SIDE_JSON "


def all_units_jax(net_name: str, layer: str, n_images: int, repeats: int) -> dict:
    """jaxsal's side: the maps of every unit of `layer` for one batch of `n_images` images,
    (1) as `-chn all` computes them (`batching.iter_blocks`: one forward, one call per channel
    block, each block fetched to the host) and (2) as today's limit of 5 channels per run did:
    one fused call (forward + 5 VJPs) per 5 channels, 52 calls for 256 units -- the compute
    only, without the 52 runs' start-up and decoding. Timed round-robin in this process."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO / "tests"))
    import tiny_net
    from jaxsal.batching import call_shape, iter_blocks
    from jaxsal.core import compiled_saliency
    from jaxsal.models import get_net_spec
    from jaxsal.net import net_from_weights
    from jaxsal.weights import Weights

    spec = get_net_spec(net_name)
    net = net_from_weights(spec, Weights(params=tiny_net.random_params(spec, seed=0),
                                         source="random", sha256="0" * 64, provenance={}))
    images = photo_like_images(n_images, 1, spec.input_size)
    k = spec.layer(layer).width
    channels = list(range(1, k + 1))
    size, block = call_shape(net, layer, k, n_images)
    first_five = {}

    def blocks():
        for result in iter_blocks(net, images, layer, channels, "guided", size=size, block=block):
            if result.channels.start == 0:
                first_five["blocks"] = result.maps[:5]

    fused = compiled_saliency(spec, layer, "guided", "highest")
    x = jax.device_put(jnp.asarray(images))
    groups = [jnp.arange(c, min(c + 5, k), dtype=jnp.int32) for c in range(0, k, 5)]

    def runs_of_five():
        for j, group in enumerate(groups):
            maps = np.asarray(fused(net.params, x, group))
            if j == 0:
                first_five["runs_of_5"] = maps

    t = time.perf_counter()
    blocks()
    runs_of_five()
    warmup = time.perf_counter() - t
    times = round_robin({"blocks": blocks, "runs_of_5": runs_of_five}, repeats)
    diff = np.abs(first_five["blocks"] - first_five["runs_of_5"]).max()
    return {"side": "jax", "units": k, "images": n_images, "channels_per_call": block,
            "images_per_call": size, "calls_of_5": len(groups), "warmup_s": warmup,
            "seconds": dict(times), "foreign_cpu_share": dict(times.foreign),
            "maps_per_s": {key: k * n_images / clean_median(times, key) for key in times},
            "max_rel_diff_first_5": float(diff / np.abs(first_five["runs_of_5"]).max())}


def all_units_torch(net_name: str, layer: str, n_images: int, repeats: int) -> dict:
    """PyTorch done well on the same maps: one forward per batch stopped at the target, one
    `torch.autograd.grad` per unit (graph retained), each map left on the host and dropped."""
    import torch

    import torch_baselines

    torch.set_grad_enabled(True)
    net = torch_baselines.build_net(net_name, torch_baselines.random_net_state_dict(net_name, 0),
                                    "guided")
    from jaxsal.models import get_net_spec

    spec = get_net_spec(net_name)
    k = spec.layer(layer).width
    images = photo_like_images(n_images, 1, spec.input_size)
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def every_unit():
        x = nchw.detach().requires_grad_(True)
        a = net.forward_to(x, layer)
        for c in range(1, k + 1):
            torch.autograd.grad(torch_baselines._target(net, a, c).sum(), x, retain_graph=c < k)

    t = time.perf_counter()
    every_unit()
    warmup = time.perf_counter() - t
    times = round_robin({"torch": every_unit}, repeats)
    return {"side": "torch", "units": k, "images": n_images, "warmup_s": warmup,
            "torch_threads": torch.get_num_threads(), "seconds": dict(times),
            "foreign_cpu_share": dict(times.foreign),
            "maps_per_s": {"torch": k * n_images / clean_median(times, "torch")}}


def bench_all_units(net_name: str, layer: str, n_images: int, repeats: int) -> dict:
    """Both sides, each in a fresh process of this script (in one process with JAX, PyTorch's
    speed was seen to move by 2x either way); jaxsal's side first."""
    sides = {}
    for side in ("jax", "torch"):
        cmd = [sys.executable, __file__, "--all-units-side", side, "--net", net_name,
               "--all-units-layer", layer, "--all-units-images", str(n_images), "--repeats",
               str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {side} side failed:\n{done.stderr[-3000:]}")
        line = next(l for l in done.stdout.splitlines() if l.startswith(ALL_UNITS_SIDE_PREFIX))
        sides[side] = json.loads(line[len(ALL_UNITS_SIDE_PREFIX):])
    rate = {**sides["jax"]["maps_per_s"], **sides["torch"]["maps_per_s"]}
    return {"net": net_name, "layer": layer, "images": n_images, "units": sides["jax"]["units"],
            "repeats": repeats, "sides": sides, "maps_per_s": rate,
            "ratio_blocks_vs_runs_of_5": rate["blocks"] / rate["runs_of_5"],
            "ratio_blocks_vs_torch": rate["blocks"] / rate["torch"]}


def print_all_units(r: dict) -> None:
    jax_side = r["sides"]["jax"]
    _print_head(f"{r['net']} {r['layer']}: every unit ({r['units']}), {r['images']} images, guided, "
                f"maps/s (median of {r['repeats']}; each side in its own process)",
                f"{'-chn all (blocks of ' + str(jax_side['channels_per_call']) + ')':>26} "
                f"{str(jax_side['calls_of_5']) + ' calls of 5':>14} {'PyTorch done well':>18} "
                f"{'blocks/5s':>10} {'blocks/torch':>13}")
    m = r["maps_per_s"]
    print(f"{m['blocks']:>26.2f} {m['runs_of_5']:>14.2f} {m['torch']:>18.2f} "
          f"{r['ratio_blocks_vs_runs_of_5']:>10.2f} {r['ratio_blocks_vs_torch']:>13.2f}")
    print(f"(first 5 channels, blocks vs calls of 5: max relative difference "
          f"{jax_side['max_rel_diff_first_5']:.1e})")


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f} s"


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--net", default=NET, help="the network (any registered name; random weights)")
    ap.add_argument("--layers", default=None,
                    help="comma-separated target layers (default: the net's conv-like and fc target, "
                         + "; ".join(f"{k}: {','.join(v)}" for k, v in DEFAULT_LAYERS.items()) + ")")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated methods (default: those of {', '.join(METHODS)} the net "
                         "has, e.g. vanilla only for a transformer)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per case (after a warm-up); default 5, --quick 2")
    ap.add_argument("--repeats-large", type=int, default=3, help="timed calls for batches above 64")
    ap.add_argument("--orig-images", type=int, default=8,
                    help="time the original's way on at most this many images per case, extrapolate")
    ap.add_argument("--precision-cases", default=None,
                    help="layer:method:batch cases for the precision table ('' to skip; default: "
                         "each default layer, guided, 64)")
    ap.add_argument("--ablate", nargs="?", const=DEFAULT_CASES, default=None,
                    help="run the ablation table on layer:method:batch cases instead of the matrix "
                         "(default: each default layer, guided, 64)")
    ap.add_argument("--cli", action="store_true", help="also time the dnn_saliency command end to end")
    ap.add_argument("--cli-only", action="store_true", help="only the command end to end")
    ap.add_argument("--cli-images", type=int, default=120)
    ap.add_argument("--cli-layer", default=None,
                    help="default: the net's conv-like default layer (AlexNet conv5 and Vgg16 conv13 "
                         "run on the bundled weights)")
    ap.add_argument("--cli-method", default=None, help="default: the first of --methods' default")
    ap.add_argument("--cli-weights", default=None, help="-weights for the command (needed for fc layers)")
    ap.add_argument("--cli-batch-size", type=int, default=None)
    ap.add_argument("--cli-repeats", type=int, default=3, help="warm runs after the cold one")
    ap.add_argument("--cli-stimuli", choices=sorted(CLI_STIMULI), default="mixed",
                    help="; ".join(f"{k}: {v[1]}" for k, v in sorted(CLI_STIMULI.items())))
    ap.add_argument("--accelerator-rows", action="store_true",
                    help="only the accelerator rows: --layers x --methods x --accel-batches x each "
                         "precision, jaxsal on JAX's default device vs PyTorch (b) on --torch-device")
    ap.add_argument("--accel-batches", default="256,1024", help="batch sizes of the accelerator rows")
    ap.add_argument("--torch-device", default="cuda", help="PyTorch device of the accelerator rows")
    ap.add_argument("--stages", default=None,
                    help="only 'where the time goes': (b) and (c) with the target at each of these "
                         "comma-separated layers, guided (--methods' first), --batches' first N")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--max-foreign", type=float, default=MAX_FOREIGN,
                    help="a call is clean when other processes took at most this share of the "
                         "machine's CPU time while it ran; ratios use clean rounds only")
    ap.add_argument("--torch-channels-last", action="store_true",
                    help="also time (b) in torch.channels_last memory format (column b_cl)")
    ap.add_argument("--quick", action="store_true",
                    help="the net's default layers (AlexNet: fc3 and conv5) guided at N=6, 2 repeats, "
                         "small precision table: a minute or two on AlexNet")
    ap.add_argument("--all-units", action="store_true",
                    help="only every unit of --all-units-layer: jaxsal's channel blocks (-chn all) "
                         "vs one call per 5 channels (today's runs) vs PyTorch done well, each "
                         "side in its own process")
    ap.add_argument("--all-units-layer", default="conv5")
    ap.add_argument("--all-units-images", type=int, default=8)
    ap.add_argument("--all-units-side", choices=("jax", "torch"), default=None,
                    help=argparse.SUPPRESS)  # one side, in the process --all-units starts
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    from jaxsal.models import get_net_spec

    spec = get_net_spec(args.net)
    defaults = default_layers(spec)
    conv_like = next((l for l in defaults if spec.layer(l).kind != "fc"), defaults[0])
    usable = [m for m in METHODS if method_applies(spec, m, defaults)]
    method = usable[0]  # guided, or vanilla where the net has no ReLU rule (a transformer)
    if args.methods is None:
        args.methods = ",".join(usable)
    if args.cli_method is None:
        args.cli_method = method
    if args.layers is None:
        args.layers = ",".join(defaults)
    if args.precision_cases is None:
        args.precision_cases = ",".join(f"{l}:{method}:64" for l in defaults)
    if args.ablate == DEFAULT_CASES:
        args.ablate = ",".join(f"{l}:{method}:64" for l in defaults)
    if args.cli_layer is None:
        args.cli_layer = conv_like
    if args.quick:
        args.methods, args.batches, args.orig_images = method, "6", 3
        args.repeats = 2 if args.repeats is None else args.repeats
        args.precision_cases = f"{conv_like}:{method}:6"
    if args.repeats is None:
        args.repeats = 5
    return args


DEFAULT_CASES = "default"


def method_applies(spec, method: str, layers) -> bool:
    """`method` is defined for every target of `layers` (guided and deconv need ReLU networks)."""
    from jaxsal.errors import UsageError
    from jaxsal.methods import resolve

    try:
        for layer in layers:
            resolve(method, spec, layer)
    except UsageError:
        return False
    return True


def default_layers(spec) -> tuple[str, ...]:
    """DEFAULT_LAYERS[net], or the net's Grad-CAM layer (its last conv-like block) and last
    layer."""
    return DEFAULT_LAYERS.get(spec.name) or (spec.cam_layer, spec.layer_names[-1])


def _cases(spec: str) -> list[tuple[str, str, int]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        layer, method, batch = item.split(":")
        out.append((layer, method, int(batch)))
    return out


def main(argv=None) -> dict:
    global MAX_FOREIGN, ADDED_FLAGS
    ADDED_FLAGS = jaxsal.tune_cpu()
    args = parse_args(argv)
    MAX_FOREIGN = args.max_foreign
    if args.all_units_side:
        side = {"jax": all_units_jax, "torch": all_units_torch}[args.all_units_side]
        result = side(args.net, args.all_units_layer, args.all_units_images, args.repeats)
        print(ALL_UNITS_SIDE_PREFIX + json.dumps(result, default=float), flush=True)
        return result
    if args.all_units:
        report = {"net": args.net, "machine": machine_info(),
                  "all_units": bench_all_units(args.net, args.all_units_layer,
                                               args.all_units_images, args.repeats)}
        if not args.json_only:
            print_all_units(report["all_units"])
        print(JSON_PREFIX + json.dumps(report, sort_keys=True, default=float), flush=True)
        return report
    quiet = args.json_only
    log = (lambda *a, **k: None) if quiet else functools.partial(print, flush=True)
    layers = [s for s in args.layers.split(",") if s]
    methods = [s for s in args.methods.split(",") if s]
    batches = [int(s) for s in args.batches.split(",") if s]
    precision_cases = _cases(args.precision_cases)
    ablate_cases = _cases(args.ablate) if args.ablate else []
    n_max = max(batches + [b for _, _, b in precision_cases + ablate_cases] + [1])
    if args.accelerator_rows:
        n_max = 64  # images are reused cyclically up to each batch size

    report = {"net": args.net, "machine": machine_info(), "versions": versions(),
              "jaxsal_xla_flags_added": ADDED_FLAGS, "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}
    import torch

    torch.set_grad_enabled(True)
    log(f"# {report['machine']['cpu']}, {report['machine']['cores']} cores; " + ", ".join(
        f"{k} {v}" for k, v in report["versions"].items()))
    setup = make_setup(n_max if not args.cli_only else 64, net=args.net)
    if not args.no_peak and not args.cli_only and not args.accelerator_rows and not args.stages:
        report["peak"] = measure_peak()
        log(f"# matmul peak (2048^3 float32, best of 7): jax {report['peak']['jax']['best_gflops']:.0f} GFLOP/s, "
            f"torch {report['peak']['torch']['best_gflops']:.0f} GFLOP/s")
    fl = {layer: flops_per_map(setup.spec, layer, len(CHANNELS)) for layer in layers}
    if args.stages:
        fl = {}
    report["flops"] = fl
    for layer, f in fl.items():
        log(f"# {args.net} {layer}: forward {f['forward_gflop_per_image']:.3f} GFLOP/image; forward + VJP per channel, "
            f"{len(CHANNELS)} channels: {f['standard_gflop_per_map']:.3f} GFLOP/map "
            f"(jaxsal executes {f['executed_gflop_per_map']:.3f})")

    if args.stages:
        stage_layers = [s for s in args.stages.split(",") if s]
        log(f"# stages {', '.join(stage_layers)} N={batches[0]} ...")
        report["stages"] = bench_stages(setup, stage_layers, methods[0], batches[0], args.repeats)
        if not quiet:
            print_stages(report["stages"])
    elif args.accelerator_rows:
        rows = []
        for batch in [int(b) for b in args.accel_batches.split(",") if b]:
            for layer in layers:
                for method in methods:
                    log(f"# accelerator {layer} {method} N={batch} ...")
                    rows += bench_accelerator(setup, layer, method, batch, args.repeats,
                                              args.torch_device)
        report["accelerator"] = rows
        if not quiet:
            print_accelerator(rows)
    elif ablate_cases:
        rows = []
        for layer, method, batch in ablate_cases:
            log(f"# ablation {layer} {method} N={batch} ...")
            rows += bench_ablation(setup, layer, method, batch, args.repeats)
        report["ablation"] = rows
        if not quiet:
            print_ablation(rows)
    elif not args.cli_only:
        cases = []
        for batch in batches:
            for layer in layers:
                for method in methods:
                    repeats = args.repeats if batch <= 64 else args.repeats_large
                    log(f"# {layer} {method} N={batch} ...")
                    cases.append(bench_case(setup, layer, method, batch, repeats, args.orig_images,
                                            torch_channels_last=args.torch_channels_last))
        report["cases"] = cases
        if not quiet:
            print_cases(cases)
        prec = []
        for layer, method, batch in precision_cases:
            log(f"# precision {layer} {method} N={batch} ...")
            prec += bench_precisions(setup, layer, method, batch, args.repeats)
        report["precision"] = prec
        if prec and not quiet:
            print_precisions(prec)
    if args.cli or args.cli_only:
        log(f"# dnn_saliency end to end, {args.cli_images} stimuli ...")
        report["cli"] = bench_cli(setup, args.cli_images, args.cli_layer, args.cli_method,
                                  args.cli_weights, args.cli_batch_size, args.cli_repeats,
                                  args.cli_stimuli)
        if not quiet:
            print_cli(report["cli"])
    report["summary"] = summarize(report)
    print(JSON_PREFIX + json.dumps(report, sort_keys=True, default=float), flush=True)
    return report


def summarize(report: dict) -> dict:
    """The headline ratios: jaxsal vs (b) and (a) per case."""
    out = {}
    for c in report.get("cases", []):
        key = f"{c['layer']}/{c['method']}/N={c['batch']}"
        out[key] = {"jax_vs_torch": round(c["ratio_jax_vs_torch"], 3),
                    "jax_vs_orig": round(c["ratio_jax_vs_orig"], 2),
                    "jax_maps_per_s": round(c["maps_per_s"]["jax"], 2)}
    cli = report.get("cli", {})
    if "ratio_cli_vs_compute_warm" in cli:
        out["cli_vs_pure_compute"] = {"cold": round(cli["ratio_cli_vs_compute_cold"], 2),
                                      "warm": round(cli["ratio_cli_vs_compute_warm"], 2)}
    return out


if __name__ == "__main__":
    main()
