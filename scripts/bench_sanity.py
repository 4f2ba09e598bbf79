#!/usr/bin/env python
"""Benchmark: the sanity checks end to end, jaxsal vs Quantus 0.6.0 driving the same model in
PyTorch, on this machine's CPU, each side in its own process (BENCHMARKS.md, "Sanity checks").

The workload (issue 17): AlexNet conv5 with the bundled ImageNet conv weights, 2 channels, 64
stimuli (resized copies of the example photos, as scripts/bench.py --cli makes them), for vanilla
and guided backprop: the cascading model-parameter randomisation over every layer at or below
conv5 (conv5, conv4, ..., conv1), and deletion curves in 16 steps with the `mean` baseline, plus
the random pixel order's curve.

* jaxsal: `jaxsal.check(...)` from the .stim.csv -- validation, decoding, compute, the table (no
  figures) -- cold (the first call, compilation included) and warm (a second call).
* Quantus: the same .stim.csv decoded and preprocessed as jaxsal does, then per method and
  channel: the explanations once (a torch gradient of the unit, reduced over RGB as jaxsal's
  |map|), `quantus.MPRT(layer_order="top_down")` and `quantus.PixelFlipping` with them; and
  PixelFlipping in the random order. The model is torchvision's AlexNet cut after conv5
  (tests/torch_nets.py's, the same weights) with the channel means as its outputs, so MPRT
  re-initialises exactly conv5 ... conv1. PixelFlipping steps in features: a step of whole
  pixels is 3 * 224^2 / 16 features, which does not divide 224^2 as Quantus asserts it must, so
  the benchmark lifts that one assertion (the loop itself runs ceil(3 * 224^2 / step) = 16
  steps); `perturb_baseline=0.0` is jaxsal's `mean` fill (zeros in normalised space).

Each side runs in a child process of its own (in one process with JAX, PyTorch's speed was seen
to move by 2x; the Quantus side never imports JAX): this process writes the stimuli, the
weights in torchvision's layout and the random pixel order to a temporary folder, then runs
`--side jaxsal` and `--side quantus`, which write their numbers there. Both sides' numbers are
printed next to each other: the deletion curves must agree (same weights,
same orders up to equal values); the MPRT medians only roughly (each draws its own random
weights). Then one line `BENCH_JSON {...}`.

    python scripts/bench_sanity.py                       # the issue's case (minutes)
    python scripts/bench_sanity.py --stimuli 4 --channels 60   # a small check of the script
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import types

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (HERE, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402

JSON_PREFIX = "BENCH_JSON "
LAYER = "conv5"
STIM = "bench.stim.csv"  # what bench.make_stimuli writes


def torch_unit_model(method: str, state: dict):
    """AlexNet up to conv5 (torch), outputs (N, 256): each channel's spatial mean."""
    import torch

    import torch_nets

    net = torch_nets.AlexNet(guided=method == "guided")
    features = net.features[:11]  # conv1 ... conv5
    features.load_state_dict({k.removeprefix("features."): torch.as_tensor(v)
                              for k, v in state.items() if k.startswith("features.")})

    class Unit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features

        def forward(self, x):
            return self.features(x).mean(dim=(2, 3))

    return Unit().eval()


def explain(model, inputs, targets, **kwargs):
    """Quantus's explain_func: |d unit / d input| summed over RGB, (N, S, S)."""
    import torch

    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
    unit = model(x)[torch.arange(len(x)), torch.as_tensor(np.asarray(targets)).long()]
    (grad,) = torch.autograd.grad(unit.sum(), x)
    return grad.abs().sum(dim=1).numpy()


def run_quantus(work: pathlib.Path, channels, methods, steps: int, seed: int) -> dict:
    """The Quantus side, timed from the .stim.csv; returns seconds and its numbers. Reads the
    weights (torchvision layout) and the random pixel order the parent wrote to `work`."""
    import quantus
    import quantus.metrics.faithfulness.pixel_flipping as pixel_flipping

    from jaxsal.models import get_net_spec
    from jaxsal.stimuli import load_image, preprocess, read_stim_csv

    spec = get_net_spec("AlexNet")
    with np.load(work / "state.npz") as f:
        state = {k: f[k] for k in f.files}
    order = np.load(work / "random_order.npy")
    stim = work / STIM
    pixel_flipping.asserts.assert_features_in_step = lambda **kwargs: None  # see the docstring
    size = spec.input_size
    n_pixels = size * size
    t0, c0 = time.perf_counter(), time.process_time()
    stimuli = read_stim_csv(stim)
    x = np.stack([preprocess(load_image(p), spec.preprocessing) for p in stimuli.paths])
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    n = len(x)
    out = {"mprt": {}, "deletion": {}}
    flip = dict(features_in_step=3 * n_pixels // steps, abs=False, normalise=False,
                perturb_baseline=0.0, disable_warnings=True)
    for method in methods:
        model = torch_unit_model(method, state)
        for channel in channels:
            y = np.full(n, channel - 1)
            a = explain(model, x, y)[:, None]  # (N, 1, S, S)
            mprt = quantus.MPRT(layer_order="top_down", seed=seed, disable_warnings=True)
            scores = mprt(model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=explain,
                          channel_first=True, device="cpu", batch_size=n)
            out["mprt"][(method, channel)] = {k: v for k, v in scores.items() if k != "original"}
            curve = quantus.PixelFlipping(**flip)(
                model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True,
                softmax=False, device="cpu", batch_size=n)
            out["deletion"][(method, channel)] = np.asarray(curve)  # (N, steps)
    model = torch_unit_model("vanilla", state)
    a_random = -(3 * order[:, None, :] + np.arange(3)[None, :, None]).reshape(n, 3, size, size)
    for channel in channels:
        curve = quantus.PixelFlipping(**flip)(
            model=model, x_batch=x, y_batch=np.full(n, channel - 1), a_batch=a_random.astype(float),
            channel_first=True, softmax=False, device="cpu", batch_size=n)
        out["deletion"][("random", channel)] = np.asarray(curve)
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    return out


def run_jaxsal(stim: pathlib.Path, channels, methods, steps: int, seed: int):
    """(wall seconds, process CPU seconds, the table) of one `jaxsal.check` from the .stim.csv."""
    import jaxsal

    t0, c0 = time.perf_counter(), time.process_time()
    frame = jaxsal.check("AlexNet", LAYER, channels, stim, methods,
                         tests="mprt_cascading,deletion", steps=steps, fill="mean",
                         rand_seed=seed)
    return time.perf_counter() - t0, time.process_time() - c0, frame


def compare(frame, quantus_out, channels, methods) -> dict:
    """Max |deletion curve difference| (relative to the curve's range) and MPRT medians, side by
    side."""
    rows = {}
    dele = frame[(frame["test"] == "deletion") & (frame["metric"] == "activation")]
    worst = 0.0
    for (method, channel), theirs in quantus_out["deletion"].items():
        mine = dele[(dele["method"] == method) & (dele["channel"] == channel)]
        mine = mine.pivot_table(index="stim_id", columns="step", values="value", sort=False)
        mine = mine.to_numpy()[:, 1:]  # step 0: the image itself
        worst = max(worst, float(np.abs(mine - theirs).max() / np.ptp(theirs)))
    mprt = frame[(frame["test"] == "mprt_cascading") & (frame["metric"] == "spearman_abs")]
    for method in methods:
        ours = mprt[mprt["method"] == method].groupby("step", sort=False)["value"].median()
        theirs = {}
        for channel in channels:
            for module, scores in quantus_out["mprt"][(method, channel)].items():
                theirs.setdefault(module, []).extend(scores)
        rows[method] = {"jaxsal": ours.round(3).to_dict(),
                        "quantus": {k: round(float(np.median(v)), 3) for k, v in theirs.items()}}
    return {"deletion_max_rel_diff": worst, "mprt_median_spearman_abs": rows}


def prepare(work: pathlib.Path, n_stimuli: int, seed: int) -> None:
    """What both sides read: the stimuli, the weights as jaxsal resolves them (conv layers at
    least) in torchvision's layout, and jaxsal's random pixel order (so both remove the same
    pixels)."""
    from bench import make_stimuli
    from conftest import torchvision_layout
    from jaxsal.models import get_net_spec
    from jaxsal.sanity.curves import random_positions
    from jaxsal.stimuli import read_stim_csv
    from jaxsal.weights import load_weights

    stim = make_stimuli(work, n_stimuli, size=None)  # work / STIM
    spec = get_net_spec("AlexNet")
    flat = load_weights(spec).params
    conv = types.SimpleNamespace(params=[p for p in spec.params if p.key in flat])
    np.savez(work / "state.npz", **torchvision_layout(conv, flat))
    n = len(read_stim_csv(stim).paths)
    size = spec.input_size
    np.save(work / "random_order.npy", random_positions(seed, range(n), size * size))


def side_main(args, channels, methods) -> None:
    """A child: one side, its numbers written to the work folder."""
    work = pathlib.Path(args.work)
    if args.side == "jaxsal":
        import jaxsal

        jaxsal.tune_cpu()  # as the command does, before anything starts JAX
        stim = work / STIM
        cold, cold_cpu, _ = run_jaxsal(stim, channels, methods, args.steps, args.seed)
        warm, warm_cpu, frame = run_jaxsal(stim, channels, methods, args.steps, args.seed)
        frame.to_csv(work / "jaxsal.csv", index=False)
        numbers = {"jaxsal_cold_s": cold, "jaxsal_warm_s": warm, "jaxsal_cold_cpu_s": cold_cpu,
                   "jaxsal_warm_cpu_s": warm_cpu}
    else:
        import torch

        theirs = run_quantus(work, channels, methods, args.steps, args.seed)
        assert "jax" not in sys.modules, "the Quantus side imported JAX"
        numbers = {"quantus_s": theirs["seconds"], "quantus_cpu_s": theirs["cpu_seconds"],
                   "torch_threads": torch.get_num_threads(),
                   "mprt": [[m, c, {k: list(map(float, v)) for k, v in scores.items()}]
                            for (m, c), scores in theirs["mprt"].items()],
                   "deletion": [[m, c, np.asarray(v).tolist()]
                                for (m, c), v in theirs["deletion"].items()]}
    (work / f"{args.side}.json").write_text(json.dumps(numbers))


def run_child(side: str, work: pathlib.Path, args) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--side", side, "--work",
           str(work), "--channels", args.channels, "--methods", args.methods, "--steps",
           str(args.steps), "--seed", str(args.seed)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {side} side failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((work / f"{side}.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stimuli", type=int, default=64)
    parser.add_argument("--channels", default="60,125")
    parser.add_argument("--methods", default="vanilla,guided")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-quantus", action="store_true")
    parser.add_argument("--side", choices=("jaxsal", "quantus"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    channels = [int(c) for c in args.channels.split(",")]
    methods = args.methods.split(",")
    if (224 * 224) % args.steps:
        parser.error("--steps must divide 224*224 (whole pixels per step on both sides)")
    if args.side:
        side_main(args, channels, methods)
        return 0

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        prepare(work, args.stimuli, args.seed)
        result = {"stimuli": args.stimuli, "channels": channels, "methods": methods,
                  "steps": args.steps}
        result |= run_child("jaxsal", work, args)
        cold, cold_cpu = result["jaxsal_cold_s"], result["jaxsal_cold_cpu_s"]
        warm, warm_cpu = result["jaxsal_warm_s"], result["jaxsal_warm_cpu_s"]
        if not args.skip_quantus:
            theirs = run_child("quantus", work, args)
            frame = pd.read_csv(work / "jaxsal.csv", dtype={"stim_id": str, "step": str})
            quantus_out = {"mprt": {(m, c): v for m, c, v in theirs.pop("mprt")},
                           "deletion": {(m, c): np.asarray(v) for m, c, v in theirs.pop("deletion")}}
            result |= theirs
            result.update(compare(frame, quantus_out, channels, methods))
        result |= {"load_average": os.getloadavg(),
                   "machine": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    print(f"sanity checks, AlexNet {LAYER}: {args.stimuli} stimuli x {len(channels)} channels x "
          f"{len(methods)} methods; cascading MPRT conv5..conv1 + deletion ({args.steps} steps, "
          f"mean baseline) + random order; each side in its own process")
    print(f"  (wall s, and CPU s of the process: steadier on a shared machine; load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  jaxsal  cold {cold:8.1f} s  {cold_cpu:8.1f} CPU-s   warm {warm:8.1f} s  "
          f"{warm_cpu:8.1f} CPU-s   ({warm / args.stimuli:.3f} s per stimulus warm)")
    if "quantus_s" in result:
        q, qc = result["quantus_s"], result["quantus_cpu_s"]
        print(f"  Quantus      {q:8.1f} s  {qc:8.1f} CPU-s   ({q / args.stimuli:.3f} s per "
              f"stimulus)")
        print(f"  Quantus / jaxsal: wall {q / cold:.1f}x cold, {q / warm:.1f}x warm; "
              f"CPU {qc / cold_cpu:.1f}x cold, {qc / warm_cpu:.1f}x warm")
        print(f"  deletion curves: max |jaxsal - Quantus| / range = "
              f"{result['deletion_max_rel_diff']:.1e}")
        for method, sides in result["mprt_median_spearman_abs"].items():
            print(f"  median Spearman(|map|), {method}: jaxsal {sides['jaxsal']}")
            print(f"  {' ' * (25 + len(method))}Quantus {sides['quantus']}")
    print(JSON_PREFIX + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
