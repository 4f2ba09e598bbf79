#!/usr/bin/env python
"""Benchmark of the attribution methods: maps per second, jaxsal vs Captum, same run, same weights.

For each method, one batch of images x K channels of one layer (float32, CPU unless JAX finds an
accelerator; Captum runs on the CPU):

  jaxsal  `jaxsal.core.compiled_saliency`: all K channels x the batch in one jitted call
          (compile time reported apart, not in the rate);
  Captum  the same maps the way Captum computes them: one `attribute` call per channel over
          the batch (target = c - 1 on a model whose output is every channel's spatial mean),
          IntegratedGradients and NoiseTunnel with all steps/samples in one internal batch.

Also the cost of SmoothGrad (n = --smooth) and integrated gradients (M = --ig-steps) relative to
their base method (guided and vanilla), which should be about n and M.

Weights: a seeded random AlexNet in torchvision's layout (He-scaled; the reference zoo's,
tests/torch_nets.py), converted with jaxsal's converter
(`jaxsal.weights.conversion.from_torchvision`); the timing does not depend on the values. Images:
the bundled example photographs, repeated to fill the batch.

    python scripts/bench_methods.py                      # batch 16, conv5, 2 channels
    python scripts/bench_methods.py --batch 64 --repeats 3
    python scripts/bench_methods.py --no-captum --methods ig,smoothgrad

Prints a table, then one line `BENCH_METHODS_JSON {...}` with every number.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the reference zoo of the tests: tests/torch_nets.py

import jaxsal  # noqa: E402

ADDED_FLAGS = jaxsal.tune_cpu()  # before JAX initialises: jaxsal's CPU flags, as the CLI sets them

import numpy as np  # noqa: E402

JSON_PREFIX = "BENCH_METHODS_JSON "
CASES = ("vanilla", "guided", "deconv", "ig", "smoothgrad", "gradcam", "guided_gradcam")


def random_state_dict(seed: int = 0) -> dict:
    """AlexNet's seeded random torchvision state_dict (tests/torch_nets.py), as numpy float32."""
    import torch_nets

    return {k: v.numpy() for k, v in torch_nets.random_state_dict("AlexNet", seed).items()}


def images(n: int) -> np.ndarray:
    from jaxsal.stimuli import load_image, to_network_input

    photos = sorted(glob.glob(str(REPO / "examples" / "*.jpg")))
    x = np.stack([to_network_input(load_image(photos[i % len(photos)])) for i in range(n)])
    # Dither so that repeated photographs are not identical inputs.
    return x + np.random.default_rng(1).normal(0, 0.01, x.shape).astype(np.float32)


def method_for(case: str, args):
    from jaxsal.methods import Method

    if case == "smoothgrad":
        return Method("guided", smooth=args.smooth)
    if case == "ig":
        return Method("ig", ig_steps=args.ig_steps)
    if case in ("gradcam", "guided_gradcam"):
        return Method(case, cam_layer=args.cam_layer)
    return Method(case)


def time_calls(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def jaxsal_case(spec, params, x, layer, channels, method, repeats):
    import jax
    import jax.numpy as jnp

    from jaxsal.core import compiled_saliency

    fn = compiled_saliency(spec, layer, method, "highest")
    xs, ch0 = jnp.asarray(x), jnp.asarray(np.asarray(channels) - 1)
    t = time.perf_counter()
    jax.block_until_ready(fn(params, xs, ch0))
    first = time.perf_counter() - t
    times = time_calls(lambda: jax.block_until_ready(fn(params, xs, ch0)), repeats)
    return {"first_s": first, "times_s": times, "median_s": statistics.median(times),
            "compile_s": max(0.0, first - statistics.median(times))}


def captum_case(state_dict, x, layer, channels, case, args, repeats):
    import torch
    from captum import attr

    import torch_nets

    net = torch_nets.build("AlexNet", state_dict)

    class Targets(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, z):
            out = net.forward_to(z, layer)
            return out.mean(dim=(2, 3)) if out.ndim == 4 else out

    model = Targets()
    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    cam_module = net.module(args.cam_layer)
    size = x.shape[1]
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    black = (-mean / std).expand_as(inputs).contiguous()

    def one(t):
        if case == "vanilla":
            return attr.Saliency(model).attribute(inputs, target=t, abs=False)
        if case == "guided":
            return attr.GuidedBackprop(model).attribute(inputs, target=t)
        if case == "deconv":
            return attr.Deconvolution(model).attribute(inputs, target=t)
        if case == "ig":
            return attr.IntegratedGradients(model).attribute(
                inputs, baselines=black, target=t, n_steps=args.ig_steps, method="gausslegendre")
        if case == "smoothgrad":
            return attr.NoiseTunnel(attr.GuidedBackprop(model)).attribute(
                inputs, nt_type="smoothgrad", nt_samples=args.smooth, stdevs=0.15 * 4.5, target=t)
        if case == "gradcam":
            cam = attr.LayerGradCam(model, cam_module).attribute(inputs, target=t, relu_attributions=True)
            return attr.LayerAttribution.interpolate(cam, (size, size), "bilinear")
        if case == "guided_gradcam":
            return attr.GuidedGradCam(model, cam_module).attribute(inputs, target=t, interpolate_mode="bilinear")
        raise ValueError(case)

    def run():
        return [one(c - 1) for c in channels]

    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    times = time_calls(run, repeats)
    return {"first_s": first, "times_s": times, "median_s": statistics.median(times)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="images per call (64 in the issue; "
                    "16 keeps a 2-core CPU run to a few minutes)")
    ap.add_argument("--layer", default="conv5")
    ap.add_argument("--channels", type=int, default=2, help="K channels per call")
    ap.add_argument("--cam-layer", default="conv5")
    ap.add_argument("--smooth", type=int, default=16)
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after a warm-up call")
    ap.add_argument("--methods", default=",".join(CASES))
    ap.add_argument("--no-captum", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from jaxsal.models import get_net_spec
    from jaxsal.net import nest_params
    from jaxsal.weights.conversion import from_torchvision

    if not args.no_captum:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    spec = get_net_spec("AlexNet")
    state_dict = random_state_dict()
    params = jax.tree_util.tree_map(jnp.asarray, nest_params(from_torchvision(spec, state_dict)))
    x = images(args.batch)
    width = spec.layer(args.layer).width
    channels = [1 + (37 * i) % width for i in range(args.channels)]
    n_maps = args.batch * len(channels)
    rows = []
    for case in args.methods.split(","):
        method = method_for(case, args)
        row = {"case": case, "method": method.describe(), "maps": n_maps,
               "jaxsal": jaxsal_case(spec, params, x, args.layer, channels, method, args.repeats)}
        row["jaxsal_maps_per_s"] = n_maps / row["jaxsal"]["median_s"]
        if not args.no_captum:
            row["captum"] = captum_case(state_dict, x, args.layer, channels, case, args, args.repeats)
            row["captum_maps_per_s"] = n_maps / row["captum"]["median_s"]
        rows.append(row)
        print(f"  {case}: jaxsal {row['jaxsal_maps_per_s']:.2f} maps/s"
              + (f", Captum {row['captum_maps_per_s']:.2f} maps/s" if "captum" in row else ""),
              file=sys.stderr, flush=True)
    by_case = {r["case"]: r for r in rows}
    costs = {}
    for case, base, n in (("smoothgrad", "guided", args.smooth), ("ig", "vanilla", args.ig_steps)):
        if case in by_case and base in by_case:
            costs[case] = {"n": n, "base": base}
            for impl in ("jaxsal", "captum"):
                if impl in by_case[case]:
                    ratio = by_case[case][impl]["median_s"] / by_case[base][impl]["median_s"]
                    costs[case][impl] = ratio
    result = {
        "jaxsal_xla_flags_added": ADDED_FLAGS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]},
        "versions": {"jax": jax.__version__, "numpy": np.__version__,
                     **({"torch": __import__("torch").__version__,
                         "captum": __import__("captum").__version__} if not args.no_captum else {})},
        "args": vars(args), "channels": channels, "rows": rows, "costs": costs,
    }
    print_table(result)
    print(JSON_PREFIX + json.dumps(result))
    return result


def print_table(result: dict) -> None:
    a = result["args"]
    print(f"\nMethods: AlexNet {a['layer']}, batch {a['batch']}, {len(result['channels'])} channels "
          f"({result['machine']['jax_backend']}, {result['machine']['cpus']} CPUs); maps/s = channels x "
          f"images / median seconds per call")
    print("| method | jaxsal maps/s | Captum maps/s | jaxsal / Captum | jaxsal compile s |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        cap = r.get("captum_maps_per_s")
        print(f"| {r['method']} | {r['jaxsal_maps_per_s']:.2f} | "
              + (f"{cap:.2f} | {r['jaxsal_maps_per_s'] / cap:.2f}x" if cap else "- | -")
              + f" | {r['jaxsal']['compile_s']:.1f} |")
    for case, c in result["costs"].items():
        line = f"cost of {case} (n={c['n']}) / {c['base']}: jaxsal {c['jaxsal']:.1f}x"
        if "captum" in c:
            line += f", Captum {c['captum']:.1f}x"
        print(line)


if __name__ == "__main__":
    main()
