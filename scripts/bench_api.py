#!/usr/bin/env python
"""Benchmark: the Python API as a user runs it against PyTorch done well, each side in its own
process (BENCHMARKS.md has the results).

    python scripts/bench_api.py                         # AlexNet fc3 and conv5, guided, N=64
    python scripts/bench_api.py --quick                 # N=6, 2 timed calls: a quick check
    python scripts/bench_api.py --jaxsal /work/wt/ref   # jaxsal's side from another checkout

jaxsal's side is exactly what a user writes, with no `jaxsal.tune_cpu()` call and XLA_FLAGS as
this script was given them:

    import jaxsal
    net = jaxsal.load_net("AlexNet", weights="alexnet.pth")
    maps = jaxsal.saliency(net, images, "conv5", [1, 7], method="guided")

timed per call (images are uint8 arrays at the network's input size, so no decoding is timed;
jaxsal.saliency's preprocessing is, as the user pays it). PyTorch's side is scripts/bench.py's
(b), PyTorch done well (`torch_baselines.done_well`: one forward per batch stopped at the target,
one autograd.grad per channel) on the same images preprocessed by jaxsal, in a process that never
imports JAX: in one process with JAX, PyTorch's speed was seen to move by 2x either way. Both
sides read the same torchvision checkpoint (seeded random weights written here), so their maps
must agree (parity column). Each side is timed with scripts/bench.py's round_robin: a first call
(compiling, for jaxsal), then --repeats calls, median over the calls other processes left alone.

--rounds pairs of processes per layer, the side that goes first alternating; the ratio is the
median over rounds of jaxsal's maps/s over PyTorch's. Each child prints one `BENCH_API_SIDE
{...}` line; this process prints a table and `BENCH_JSON {...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (no JAX: its timing helpers, images, parity and machine info)
from jaxsal.xla_config import EIGEN_CONV_FLAG  # noqa: E402

SIDE_PREFIX = "BENCH_API_SIDE "
LAYERS = ("fc3", "conv5")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--net", default=bench.NET)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--method", default="guided")
    ap.add_argument("--batch", type=int, default=64, help="images per call (one batch)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per process (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of processes per layer")
    ap.add_argument("--jaxsal", default=None,
                    help="a checkout whose jaxsal the jaxsal side imports (e.g. the old main)")
    ap.add_argument("--quick", action="store_true", help="--batch 6 --repeats 2 --rounds 1")
    ap.add_argument("--side", choices=("jaxsal", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--layer", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 6, 1
        args.repeats = 2 if args.repeats is None else args.repeats
    if args.repeats is None:
        args.repeats = 5
    return args


# ---------------------------------------------------------------------------------------------
# The two sides (child processes)


def jaxsal_side(args, work: pathlib.Path, images: np.ndarray) -> dict:
    """The user's code, timed."""
    import jaxsal

    t = time.perf_counter()
    net = jaxsal.load_net(args.net, weights=str(work / "weights.pth"))
    load_s = time.perf_counter() - t
    batch = list(images)
    channels = list(bench.CHANNELS)

    def call():
        return jaxsal.saliency(net, batch, args.layer, channels, method=args.method)

    out = {"jaxsal_file": jaxsal.__file__, "load_net_s": load_s}
    return out | _timed(call, args, work, "jaxsal")


def torch_side(args, work: pathlib.Path, images: np.ndarray) -> dict:
    """PyTorch done well on the same weights and images, preprocessed by jaxsal (no JAX)."""
    import torch

    import torch_baselines
    from jaxsal.models import get_net_spec
    from jaxsal.stimuli import as_pil, preprocess

    torch.set_grad_enabled(True)
    spec = get_net_spec(args.net)
    x = np.stack([preprocess(as_pil(im), spec.preprocessing) for im in images])
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    state = torch.load(work / "weights.pth", weights_only=True)
    net = torch_baselines.build_net(args.net, state, args.method)
    channels = list(bench.CHANNELS)
    out = _timed(lambda: torch_baselines.done_well(net, nchw, args.layer, channels), args, work,
                 "torch")
    assert "jax" not in sys.modules, "the PyTorch side imported JAX"
    return out | {"torch_threads": torch.get_num_threads()}


def _timed(call, args, work: pathlib.Path, side: str) -> dict:
    t = time.perf_counter()
    maps = call()  # compiles (jaxsal); warms up (torch)
    first = time.perf_counter() - t
    np.save(work / f"maps_{side}_{args.layer}.npy", maps)
    times = bench.round_robin({side: call}, args.repeats)
    steady = bench.clean_median(times, side)
    n_maps = maps.shape[0] * maps.shape[1]
    return {"side": side, "layer": args.layer, "batch": args.batch, "maps_per_call": n_maps,
            "first_call_s": first, "seconds_per_call": steady, "maps_per_s": n_maps / steady,
            "calls_s": times[side], "foreign_cpu_share": times.foreign[side],
            "clean_calls": bench.n_clean(times, side), "repeats": args.repeats,
            "XLA_FLAGS_at_end": os.environ.get("XLA_FLAGS", "")}


def child(args) -> None:
    work = pathlib.Path(args.work)
    images = np.load(work / "images.npy")[: args.batch]
    side = jaxsal_side if args.side == "jaxsal" else torch_side
    print(SIDE_PREFIX + json.dumps(side(args, work, images), default=float), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent


def uint8_images(n: int, size: int) -> np.ndarray:
    """bench.py's photo-like images as the uint8 pictures a user would pass."""
    x = bench.photo_like_images(n, seed=1, size=size)
    return (np.clip(x * 0.229 + 0.45, 0.0, 1.0) * 255).round().astype(np.uint8)


def run_side(side: str, layer: str, args, work: pathlib.Path) -> dict:
    env = dict(os.environ)  # XLA_FLAGS and JAXSAL_XLA_TUNING as given: the user's
    if side == "jaxsal" and args.jaxsal:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.jaxsal, env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--side", side, "--work",
           str(work), "--net", args.net, "--layer", layer, "--method", args.method, "--batch",
           str(args.batch), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(SIDE_PREFIX)]
    if done.returncode or not lines:
        raise SystemExit(f"the {side} side failed on {layer} (rc {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(SIDE_PREFIX):])
    result["stderr"] = done.stderr[-1000:]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.side:
        child(args)
        return {}
    import torch

    import torch_baselines
    from jaxsal.models import get_net_spec

    layers = [layer for layer in args.layers.split(",") if layer]
    spec = get_net_spec(args.net)
    report = {"net": args.net, "method": args.method, "batch": args.batch,
              "channels": len(bench.CHANNELS), "repeats": args.repeats, "rounds": args.rounds,
              "jaxsal_checkout": args.jaxsal, "machine": bench.machine_info(),
              "XLA_FLAGS_given": os.environ.get("XLA_FLAGS", ""),
              "JAXSAL_XLA_TUNING_given": os.environ.get("JAXSAL_XLA_TUNING"),
              "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "rows": []}
    with tempfile.TemporaryDirectory(prefix="jaxsal-bench-api-") as tmp:
        work = pathlib.Path(tmp)
        torch.save(torch_baselines.random_net_state_dict(args.net, seed=0), work / "weights.pth")
        np.save(work / "images.npy", uint8_images(args.batch, spec.input_size))
        for layer in layers:
            rounds = []
            for r in range(args.rounds):
                order = ("jaxsal", "torch") if r % 2 == 0 else ("torch", "jaxsal")
                sides = {side: run_side(side, layer, args, work) for side in order}
                rounds.append(sides)
                print(f"# {layer} round {r + 1}: jaxsal {sides['jaxsal']['maps_per_s']:.2f} maps/s, "
                      f"torch {sides['torch']['maps_per_s']:.2f} maps/s", file=sys.stderr, flush=True)
            ours = np.load(work / f"maps_jaxsal_{layer}.npy")
            ref = np.load(work / f"maps_torch_{layer}.npy")
            errors = bench.relative_errors(ours, ref)
            ratios = [s["jaxsal"]["maps_per_s"] / s["torch"]["maps_per_s"] for s in rounds]
            report["rows"].append({
                "layer": layer, "ratio_jaxsal_vs_torch": statistics.median(ratios),
                "ratios": ratios,
                "jaxsal_maps_per_s": statistics.median(s["jaxsal"]["maps_per_s"] for s in rounds),
                "torch_maps_per_s": statistics.median(s["torch"]["maps_per_s"] for s in rounds),
                "jaxsal_first_call_s": statistics.median(s["jaxsal"]["first_call_s"] for s in rounds),
                "jaxsal_tuned": EIGEN_CONV_FLAG in rounds[0]["jaxsal"]["XLA_FLAGS_at_end"],
                "jaxsal_file": rounds[0]["jaxsal"]["jaxsal_file"],
                "parity": {"median_rel_err": float(np.median(errors)),
                           "max_rel_err": float(errors.max())},
                "rounds_detail": rounds})
    print_rows(report)
    print(bench.JSON_PREFIX + json.dumps(report, sort_keys=True, default=float), flush=True)
    return report


def print_rows(report: dict) -> None:
    rows = report["rows"]
    print(f"\n{report['net']} {report['method']}, N={report['batch']} x {report['channels']} "
          f"channels: jaxsal.saliency as imported (no tune_cpu() call) vs PyTorch done well, each "
          f"in its own process; maps/s, median over {report['rounds']} round(s) of "
          f"{report['repeats']} calls")
    head = (f"{'layer':6} | {'jaxsal':>8} {'torch':>8} {'ratio':>6} | {'first call s':>12} | "
            f"{'tuned':5} | parity (median, max)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['layer']:6} | {r['jaxsal_maps_per_s']:>8.2f} {r['torch_maps_per_s']:>8.2f} "
              f"{r['ratio_jaxsal_vs_torch']:>5.2f}x | {r['jaxsal_first_call_s']:>12.1f} | "
              f"{'yes' if r['jaxsal_tuned'] else 'no':5} | {r['parity']['median_rel_err']:.1e}, "
              f"{r['parity']['max_rel_err']:.1e}")
    if rows:
        print(f"jaxsal imported from {rows[0]['jaxsal_file']}; tuned: jaxsal's XLA CPU flag was in "
              f"XLA_FLAGS when the jaxsal process ended (given: "
              f"{report['XLA_FLAGS_given'] or 'none'})")


if __name__ == "__main__":
    main()
