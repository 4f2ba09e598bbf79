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
  (c) jax    jaxsal's jitted core (`jaxsal.saliency.compiled_saliency`).

Steady state is the median of --repeats timed calls after a warm-up call; the three are timed
round-robin (one call of each per round) so that load from other processes hits them alike.
Compile time is jaxsal's first call minus its steady-state call. (a) is timed on at most
--orig-images images per case (it is per image anyway) and extrapolated; the table says so.

    python scripts/bench.py                 # the full matrix: fc3, conv5 x guided, vanilla x 6, 64, 256
    python scripts/bench.py --quick         # one small case per layer, a minute or two
    python scripts/bench.py --ablate        # the "what we tried" variants of jaxsal's core
    python scripts/bench.py --cli           # the end-to-end dnn_saliency command, cold and warm

Prints tables, then one line `BENCH_JSON {...}` with every number (machine-readable).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
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

# jaxsal before jax: importing jaxsal sets its verified XLA flags (jaxsal/runtime.py) before JAX
# reads XLA_FLAGS, exactly as the dnn_saliency command does.
ORIGINAL_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # as given to this script
import jaxsal  # noqa: E402
import jaxsal.runtime  # noqa: E402

ADDED_FLAGS = os.environ.get("XLA_FLAGS", "")[len(ORIGINAL_XLA_FLAGS):].split()

import numpy as np  # noqa: E402

JSON_PREFIX = "BENCH_JSON "
LAYERS = ("fc3", "conv5")
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


def layer_macs(spec) -> list[tuple[str, int]]:
    """(layer, multiply-accumulates per image) of every conv and fc layer, in network order,
    from the network's own layer table (output shape x kernel size x input channels)."""
    from jaxsal.models.alexnet import CONVS, FCS

    out = []
    for name, cin, cout, k, _, _ in CONVS:
        c, h, w = spec.layer(name).shape
        out.append((name, c * h * w * k * k * cin))
    for name, fin, fout in FCS:
        out.append((name, fin * fout))
    return out


def flops_per_map(spec, layer: str, n_channels: int) -> dict:
    """FLOPs (2 x MACs) of one forward to `layer` plus one input-gradient VJP per channel, per
    map. A layer's input gradient costs as many MACs as its forward (conv1's included: the map
    is the gradient with respect to the image; no weight gradients are needed).

    `standard` counts every layer up to and including the target, as PyTorch runs it.
    `executed` is what jaxsal's core computes for an affine target (raw conv/fc output): the
    target layer itself is replaced by a once-per-channel batch-1 VJP (jaxsal/saliency.py).
    """
    names = [n for n in spec.layer_names]
    macs = layer_macs(spec)
    upto = names.index(layer)
    fwd = sum(m for name, m in macs if names.index(name) <= upto)
    target_layer = sum(m for name, m in macs if name == layer) if spec.layer(layer).affine else 0
    std = 2 * fwd * (1 + n_channels) / n_channels
    ex = 2 * (fwd - target_layer) * (1 + n_channels) / n_channels
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


def round_robin(fns: dict, rounds: int, warmup: bool = False) -> dict[str, list[float]]:
    """Seconds of each call, calling each function once per round in turn."""
    if warmup:
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def paired_speedup(times: dict[str, list[float]], fast: str, slow: str, maps_fast: float = 1.0,
                   maps_slow: float = 1.0) -> float:
    """Median over rounds of (maps/s of `fast`) / (maps/s of `slow`), each round's two calls
    being neighbours in time: more robust to other processes' load than a ratio of medians."""
    return statistics.median((maps_fast / tf) / (maps_slow / ts)
                             for tf, ts in zip(times[fast], times[slow]))


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
    spec: object
    torch_state: dict
    params: dict  # jaxsal nested params (jax arrays)
    images: np.ndarray  # (Nmax, 224, 224, 3) normalized float32


def make_setup(n_images: int, seed: int = 0) -> Setup:
    import jax
    import jax.numpy as jnp

    import torch_baselines
    from jaxsal.models import get_net_spec
    from jaxsal.models.alexnet import from_torchvision
    from jaxsal.saliency import nest_params

    spec = get_net_spec("AlexNet")
    state = torch_baselines.random_state_dict(seed)
    flat = from_torchvision({k: v.numpy() for k, v in state.items()})
    params = jax.tree_util.tree_map(jnp.asarray, nest_params(flat))
    return Setup(spec, state, params, photo_like_images(n_images, seed + 1))


def photo_like_images(n: int, seed: int) -> np.ndarray:
    """Normalized NHWC float32 images: smooth blobs plus pixel noise, roughly what ImageNet
    normalization makes of photographs (values mostly in -2..2)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 224, 224, 3), np.float32)
    for i in range(n):
        coarse = rng.normal(0, 1, (16, 16, 3)).astype(np.float32)
        out[i] = np.kron(coarse, np.ones((14, 14, 1), np.float32))
        out[i] += rng.normal(0, 0.25, (224, 224, 3)).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# The main matrix


def jax_caller(fn, params, images, channels0):
    import jax.numpy as jnp

    x = jnp.asarray(images)
    ch = jnp.asarray(channels0)
    return lambda: fn(params, x, ch).block_until_ready()


def bench_case(setup: Setup, layer: str, method: str, batch: int, repeats: int, orig_images: int,
               precision: str = "highest") -> dict:
    import torch

    import torch_baselines
    from jaxsal.saliency import compiled_saliency

    channels = list(CHANNELS)
    k = len(channels)
    images = setup.images[:batch]
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    net = torch_baselines.build(setup.torch_state, method)
    net_orig = torch_baselines.build(setup.torch_state, method, param_grads=True)
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
    times = round_robin(fns, repeats)
    steady = {key: statistics.median(v) for key, v in times.items()}
    maps = {"jax": batch * k, "torch": batch * k, "orig": n_orig * k, "orig_no_weight_grads": n_orig * k}
    rate = {key: maps[key] / steady[key] for key in maps}
    fl = flops_per_map(setup.spec, layer, k)
    std = fl["standard_gflop_per_map"] * 1e9
    peak_rounds = [peak_flop / t for t in times["matmul"]]
    pct = {key: statistics.median(maps[key] * std / t / pk for t, pk in zip(times[key], peak_rounds))
           for key in maps}
    return {
        "layer": layer, "method": method, "batch": batch, "channels": k, "precision": precision,
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
        "matmul_gflops_in_run": statistics.median(peak_rounds) / 1e9,
        "fraction_of_matmul_peak": pct,
    }


def _print_head(title: str, head: str) -> None:
    """A table's title, its column header and a rule under it."""
    print()
    print(title)
    print(head)
    print("-" * len(head))


def print_cases(cases: list[dict]) -> None:
    _print_head(
        "Saliency maps per second (maps = images x channels), steady state: median of the timed "
        "calls;\nratios: median over rounds of the ratio between neighbouring calls",
        f"{'layer':6} {'method':8} {'N':>4} | {'(a) orig':>9} {'a0':>6} {'(b) torch':>9} {'(c) jax':>8} | "
        f"{'c/b':>5} {'c/a':>5} {'c/a0':>5} | {'compile s':>9} | {'GFLOP/s c':>9} {'matmul':>6} {'% peak':>6} | parity")
    for c in cases:
        r = c["maps_per_s"]
        orig = f"{r['orig']:.2f}" + ("*" if c["orig_extrapolated"] else " ")
        pct = f"{100 * c['fraction_of_matmul_peak']['jax']:5.0f}%"
        print(f"{c['layer']:6} {c['method']:8} {c['batch']:>4} | {orig:>9} {r['orig_no_weight_grads']:>6.2f} "
              f"{r['torch']:>9.2f} {r['jax']:>8.2f} | {c['ratio_jax_vs_torch']:>5.2f} {c['ratio_jax_vs_orig']:>5.1f} "
              f"{c['ratio_jax_vs_orig_no_weight_grads']:>5.1f} | {c['jax_compile_s']:>9.1f} | "
              f"{c['achieved_gflops']['jax']:>9.0f} {c['matmul_gflops_in_run']:>6.0f} {pct:>6} | "
              f"{c['parity_vs_torch']['median_rel_err']:.1e}")
    if any(c["orig_extrapolated"] for c in cases):
        n = min(c["orig_measured_images"] for c in cases if c["orig_extrapolated"])
        print(f"* (a) and a0 timed on the first {n} images of the batch and extrapolated: the "
              "original's way is one batch-1 pass per image and channel, so its rate does not "
              "depend on N.")
    print("a0: the original's loop without weight gradients (requires_grad off on the weights).")
    print("GFLOP/s: one forward + one VJP per channel (standard count) per map. matmul: GFLOP/s of "
          "a 2048^3 float32 jax matmul timed in each round (the machine's peak under the same "
          "load); % peak: median over rounds of c's GFLOP/s over it. parity: median relative "
          "L2 error of c's maps against b's.")


# ---------------------------------------------------------------------------------------------
# Precision variants


def bench_precisions(setup: Setup, layer: str, method: str, batch: int, repeats: int) -> list[dict]:
    from jaxsal.saliency import PRECISIONS, compiled_saliency

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
        steady = statistics.median(times[p])
        rows.append({"layer": layer, "method": method, "batch": batch, "precision": p,
                     "maps_per_s": batch * len(CHANNELS) / steady,
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
    from jaxsal.saliency import PRECISIONS, compiled_saliency

    device = torch.device(torch_device)
    ch0 = np.asarray(CHANNELS, np.int32) - 1
    images = setup.images[np.arange(batch) % len(setup.images)]
    x_torch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    net = torch_baselines.build(setup.torch_state, method).to(device)

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
        steady = statistics.median(times["jax"])
        rows.append({"layer": layer, "method": method, "batch": batch, "precision": p,
                     "jax_device": str(jax.devices()[0]), "torch_device": str(device),
                     "jax_maps_per_s": batch * len(CHANNELS) / steady,
                     "torch_maps_per_s": batch * len(CHANNELS) / statistics.median(times["torch"]),
                     "ratio_jax_vs_torch": paired_speedup(times, "jax", "torch"),
                     "jax_compile_s": max(first - steady, 0.0),
                     "median_rel_err_vs_highest": float(np.median(err)),
                     "max_rel_err_vs_highest": float(err.max()),
                     "median_rel_err_vs_torch_same_precision": float(np.median(parity))})
    return rows


def print_accelerator(rows: list[dict]) -> None:
    _print_head(
        f"Accelerator rows: jaxsal on {rows[0]['jax_device']}, PyTorch (b) on {rows[0]['torch_device']}; "
        "maps/s, steady state; median relative error of jaxsal's maps against its 'highest' and "
        "against PyTorch at the same precision",
        f"{'layer':6} {'method':8} {'N':>5} {'precision':9} | {'jax':>9} {'torch':>9} {'jax/torch':>9} | "
        f"{'compile s':>9} | {'median err':>10} {'max err':>9} {'vs torch':>9}")
    for r in rows:
        print(f"{r['layer']:6} {r['method']:8} {r['batch']:>5} {r['precision']:9} | {r['jax_maps_per_s']:>9.1f} "
              f"{r['torch_maps_per_s']:>9.1f} {r['ratio_jax_vs_torch']:>9.2f} | {r['jax_compile_s']:>9.1f} | "
              f"{r['median_rel_err_vs_highest']:>10.1e} {r['max_rel_err_vs_highest']:>9.1e} "
              f"{r['median_rel_err_vs_torch_same_precision']:>9.1e}")


def print_precisions(rows: list[dict]) -> None:
    _print_head(
        "Precision: speed and relative L2 error of each map against 'highest' (median / max over maps)",
        f"{'layer':6} {'method':8} {'N':>4} {'precision':10} | {'maps/s':>7} {'speed':>6} | {'median err':>10} {'max err':>9}")
    for r in rows:
        print(f"{r['layer']:6} {r['method']:8} {r['batch']:>4} {r['precision']:10} | {r['maps_per_s']:>7.2f} "
              f"{r['speed_vs_highest']:>5.2f}x | {r['median_rel_err_vs_highest']:>10.1e} {r['max_rel_err_vs_highest']:>9.1e}")


# ---------------------------------------------------------------------------------------------
# Ablation: the leads of BENCHMARKS.md's "what we tried", measured in one process


YNN_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
EIGEN_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _xla_max_pool(x):
    """The textbook pool: XLA's reduce-window, whose gradient is select-and-scatter."""
    import flax.linen as nn

    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


def _direct_strided_conv(x, kernel, stride, padding, precision=None):
    from jax import lax

    return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@contextlib.contextmanager
def _direct_conv1():
    """Trace conv1 as XLA's strided convolution instead of space-to-depth (ablation only)."""
    from jaxsal.models import alexnet

    saved = alexnet.conv_space_to_depth
    alexnet.conv_space_to_depth = _direct_strided_conv
    try:
        yield
    finally:
        alexnet.conv_space_to_depth = saved


def _variant_spec(spec, *, pool=None, affine=True):
    from jaxsal.models.alexnet import AlexNet

    layers = spec.layers if affine else tuple(dataclasses.replace(l, affine=False) for l in spec.layers)
    build = spec.build if pool is None else (lambda **kw: AlexNet(pool=pool, **kw))
    return dataclasses.replace(spec, layers=layers, build=build)


def bench_ablation(setup: Setup, layer: str, method: str, batch: int, repeats: int) -> list[dict]:
    """jaxsal's core with each lead switched off (or on) in turn, round-robin with (b)."""
    import jax
    import jax.numpy as jnp
    import torch

    import torch_baselines
    from jaxsal.saliency import saliency_maps

    eigen_on = jaxsal.runtime.EIGEN_CONV_FLAG in os.environ.get("XLA_FLAGS", "")
    # (name, spec options, compiler options, conv1 direct?)
    variants = [("shipped", {}, None, False)]
    if eigen_on:
        variants.append(("- eigen convolutions (YNN convs, jaxlib default)", {}, YNN_CONV_OPTIONS, False))
    else:
        variants.append(("+ eigen convolutions (compile option)", {}, EIGEN_CONV_OPTIONS, False))
    variants += [
        ("- affine-target shortcut", {"affine": False}, None, False),
        ("- custom max-pool VJP (XLA select-and-scatter)", {"pool": _xla_max_pool}, None, False),
        ("- conv1 space-to-depth (XLA strided conv)", {}, None, True),
        ("plain port (all four off)", {"affine": False, "pool": _xla_max_pool},
         YNN_CONV_OPTIONS if eigen_on else None, True),
        ("precision=default (fp32 on CPU)", {"precision": "default"}, None, False),
        ("single-threaded Eigen (xla_cpu_multi_thread_eigen=false)", {},
         {"xla_cpu_multi_thread_eigen": False}, False),
    ]
    ch0 = jnp.asarray(np.asarray(CHANNELS, np.int32) - 1)
    x = jnp.asarray(setup.images[:batch])
    fns, outs = {}, {}
    for name, opts, compiler_options, direct in variants:
        opts = dict(opts)
        precision = opts.pop("precision", "highest")
        spec = _variant_spec(setup.spec, **opts)
        jitted = jax.jit(functools.partial(saliency_maps, spec, layer, method, precision))
        try:
            with _direct_conv1() if direct else contextlib.nullcontext():
                compiled = jitted.lower(setup.params, x, ch0).compile(compiler_options=compiler_options)
        except Exception as e:  # an option this jaxlib does not know
            print(f"  ablation {name!r}: not available here ({type(e).__name__}: {str(e)[:120]})")
            continue
        outs[name] = np.asarray(compiled(setup.params, x, ch0))
        fns[name] = (lambda c: lambda: c(setup.params, x, ch0).block_until_ready())(compiled)
    net = torch_baselines.build(setup.torch_state, method)
    nchw = torch.from_numpy(np.ascontiguousarray(setup.images[:batch].transpose(0, 3, 1, 2)))
    fns["(b) torch done well"] = lambda: torch_baselines.done_well(net, nchw, layer, list(CHANNELS))
    times = round_robin(fns, repeats, warmup=True)
    ref = outs["shipped"]
    rows = []
    for name, ts in times.items():
        steady = statistics.median(ts)
        err = relative_errors(outs[name], ref) if name in outs else np.zeros(1)
        rows.append({"layer": layer, "method": method, "batch": batch, "variant": name,
                     "maps_per_s": batch * len(CHANNELS) / steady,
                     "ratio_vs_torch": paired_speedup(times, name, "(b) torch done well"),
                     "speed_vs_shipped": paired_speedup(times, name, "shipped"),
                     "median_rel_diff_vs_shipped": float(np.median(err)),
                     "max_rel_diff_vs_shipped": float(err.max())})
    return rows


def print_ablation(rows: list[dict]) -> None:
    _print_head(
        "Ablation (one process, round-robin): each lead switched off from the shipped core",
        f"{'case':20} {'variant':58} | {'maps/s':>7} {'vs (b)':>6} {'vs shipped':>10} | "
        f"rel diff vs shipped (median, max)")
    for r in rows:
        case = f"{r['layer']} {r['method']} N={r['batch']}"
        print(f"{case:20} {r['variant']:58} | {r['maps_per_s']:>7.2f} {r['ratio_vs_torch']:>5.2f}x "
              f"{r['speed_vs_shipped']:>9.2f}x | {r['median_rel_diff_vs_shipped']:.1e}, "
              f"{r['max_rel_diff_vs_shipped']:.1e}")


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
        # The command sets its own XLA flags at import; give it the user's, not this process's.
        if ORIGINAL_XLA_FLAGS:
            env["XLA_FLAGS"] = ORIGINAL_XLA_FLAGS
        else:
            env.pop("XLA_FLAGS", None)
        py = sys.executable
        result: dict = {"images": n_images, "channels": len(CHANNELS), "layer": layer,
                        "method": method, "stimuli": stimuli}

        # Start-up: interpreter + imports, and the whole `-help` path.
        t_import, p = _run_timed([py, "-c", "import jaxsal.cli"], env, work)
        result["import_cli_s"] = t_import if p.returncode == 0 else None
        t_python, _ = _run_timed([py, "-c", "pass"], env, work)
        result["python_startup_s"] = t_python
        t_help, p = _run_timed([py, "-m", "jaxsal.cli", "-help"], env, work)
        result["help_s"] = t_help if p.returncode == 0 else None
        t_jax, _ = _run_timed([py, "-c", "import jax, jax.numpy"], env, work)
        result["import_jax_s"] = t_jax
        load = ("import time, jaxsal; t = time.perf_counter(); net = jaxsal.load_net('AlexNet'"
                + (f", weights={weights!r}" if weights else "") + "); "
                "import jax; jax.block_until_ready(net.params); print(time.perf_counter() - t)")
        t_load, p = _run_timed([py, "-c", load], env, work)
        result["load_net_process_s"] = t_load if p.returncode == 0 else None
        result["load_net_s"] = float(p.stdout.split()[-1]) if p.returncode == 0 else None

        cmd = [py, "-m", "jaxsal.cli", "-net", "AlexNet", "-layer", layer,
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
            from jaxsal.saliency import compiled_saliency

            bs = _command_batch_size(n_images, layer, batch_size)
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


def _command_batch_size(n_images: int, layer: str, requested: int | None) -> int:
    """The batch size the command picks for this run (its runner's rule), or 64 if that cannot
    be asked (the runner's interface is not part of this benchmark)."""
    try:
        from jaxsal import runner

        net = jaxsal.load_net("AlexNet")
        return int(runner.pick_batch_size(n_images, requested, net, layer, len(CHANNELS)))
    except Exception:  # noqa: BLE001
        return requested or 64


def print_cli(r: dict) -> None:
    print()
    print(f"End-to-end dnn_saliency: {r['images']} stimuli ({r.get('stimuli', 'mixed')}) x "
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
    print(f"  weights: `jaxsal.load_net('AlexNet')` {_fmt(r['load_net_s'])} (JAX import included), "
          f"whole process {_fmt(r['load_net_process_s'])}")


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f} s"


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma-separated target layers")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per case (after a warm-up)")
    ap.add_argument("--repeats-large", type=int, default=3, help="timed calls for batches above 64")
    ap.add_argument("--orig-images", type=int, default=8,
                    help="time the original's way on at most this many images per case, extrapolate")
    ap.add_argument("--precision-cases", default="fc3:guided:64,conv5:guided:64",
                    help="layer:method:batch cases for the precision table ('' to skip)")
    ap.add_argument("--ablate", nargs="?", const="fc3:guided:64,conv5:guided:64", default=None,
                    help="run the ablation table on layer:method:batch cases instead of the matrix")
    ap.add_argument("--cli", action="store_true", help="also time the dnn_saliency command end to end")
    ap.add_argument("--cli-only", action="store_true", help="only the command end to end")
    ap.add_argument("--cli-images", type=int, default=120)
    ap.add_argument("--cli-layer", default="conv5", help="conv5 runs on the bundled weights")
    ap.add_argument("--cli-method", default="guided")
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
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--quick", action="store_true",
                    help="fc3 and conv5 guided at N=6, 2 repeats, small precision table: a minute or two")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    if args.quick:
        args.methods, args.batches, args.repeats, args.orig_images = "guided", "6", 2, 3
        args.precision_cases = "conv5:guided:6"
    return args


def _cases(spec: str) -> list[tuple[str, str, int]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        layer, method, batch = item.split(":")
        out.append((layer, method, int(batch)))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
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

    report = {"machine": machine_info(), "versions": versions(),
              "jaxsal_xla_flags_added": ADDED_FLAGS, "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}
    import torch

    torch.set_grad_enabled(True)
    log(f"# {report['machine']['cpu']}, {report['machine']['cores']} cores; " + ", ".join(
        f"{k} {v}" for k, v in report["versions"].items()))
    setup = make_setup(n_max) if not args.cli_only else make_setup(max(64, 1))
    if not args.no_peak and not args.cli_only and not args.accelerator_rows:
        report["peak"] = measure_peak()
        log(f"# matmul peak (2048^3 float32, best of 7): jax {report['peak']['jax']['best_gflops']:.0f} GFLOP/s, "
            f"torch {report['peak']['torch']['best_gflops']:.0f} GFLOP/s")
    fl = {layer: flops_per_map(setup.spec, layer, len(CHANNELS)) for layer in layers}
    report["flops"] = fl
    for layer, f in fl.items():
        log(f"# {layer}: forward {f['forward_gflop_per_image']:.3f} GFLOP/image; forward + VJP per channel, "
            f"{len(CHANNELS)} channels: {f['standard_gflop_per_map']:.3f} GFLOP/map "
            f"(jaxsal executes {f['executed_gflop_per_map']:.3f})")

    if args.accelerator_rows:
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
                    cases.append(bench_case(setup, layer, method, batch, repeats, args.orig_images))
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
