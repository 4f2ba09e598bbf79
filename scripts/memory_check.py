#!/usr/bin/env python
"""Peak memory of the dnn_saliency command against the number of stimuli (BENCHMARKS.md).

Runs the command once per size on N stimuli -- the bundled example photos repeated to N rows
of a .stim.csv -- with every channel of a layer and the zarr map store, and samples the resident
memory (RSS) of its whole process tree (the command AND its figure workers) every 50 ms
(scripts/peak_rss.py). The
peak should not grow with N: decoding runs a bounded distance ahead, figures are drawn and
forgotten, maps go to the store shard by shard.

    python scripts/memory_check.py                      # TinyNet conv3 (16 units), 200 vs 2000
    python scripts/memory_check.py --sizes 1000,20000   # the issue's pair (TinyNet: ~4 GB of maps)
    python scripts/memory_check.py --net AlexNet --layer conv1 --reduce float16,gray --sizes 200,1000
    python scripts/memory_check.py --stimuli small       # tiny images: the core and map writer only

TinyNet (tests/tiny_net.py, random weights) keeps the disk small: 16 units x 32x32 maps, 12 KiB
each, so 20,000 stimuli are 3.9 GB of store; AlexNet conv1's 64 units at 224x224 are 38 MB per
stimulus in float32 (6.4 MB with --reduce float16,gray). Prints a table, then one line
`MEMORY_JSON {...}` with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"
JSON_PREFIX = "MEMORY_JSON "
sys.path.insert(0, str(HERE))
import peak_rss  # noqa: E402  (the process tree's sampling)


def write_stim(folder: pathlib.Path, n: int, stimuli: str) -> pathlib.Path:
    """A .stim.csv of n rows (duplicate ids are allowed): the example photos repeated, or
    (`small`) 7 tiny noise images repeated, whose figures weigh almost nothing -- so that what
    grows is the map writer's and the core's memory, not the figure queue's."""
    source = EXAMPLES
    names = sorted(p.name for p in EXAMPLES.glob("*.jpg"))
    if stimuli == "small":
        from PIL import Image
        import numpy as np

        source = folder / "small"
        source.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        names = [f"noise{i}.png" for i in range(7)]
        for name in names:
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(source / name)
    stim = folder / f"repeat{n}_{stimuli}.stim.csv"
    rows = "".join(f"{names[i % len(names)]}\n" for i in range(n))
    stim.write_text(f"type=image\npath={source}\ndata=stimID\n{rows}")
    return stim


def command(net: str, folder: pathlib.Path) -> tuple[list[str], list[str]]:
    """(argv prefix, extra flags): TinyNet through tests/tiny_net.py with random weights, any
    other network through the installed dnn_saliency."""
    if net == "TinyNet":
        sys.path.insert(0, str(REPO / "tests"))
        import tiny_net

        weights = tiny_net.write_weights(folder / "tinynet.safetensors")
        return [sys.executable, str(REPO / "tests" / "tiny_net.py")], ["-weights", str(weights)]
    return [str(pathlib.Path(sys.executable).with_name("dnn_saliency"))], []


def measure(n: int, args, folder: pathlib.Path) -> dict:
    prefix, extra = command(args.net, folder)
    out = folder / f"out{n}"
    argv = [*prefix, "-net", args.net, "-layer", args.layer, "-chn", args.chn, "-stim",
            str(write_stim(folder, n, args.stimuli)), "-out", str(out), "-save_maps", "-maps_format", "zarr",
            *extra, *(["-maps_reduce", args.reduce] if args.reduce else [])]
    with open(folder / f"err{n}.txt", "w+") as err:
        result = peak_rss.measure(argv, 0.05, env=dict(os.environ, MPLBACKEND="Agg"),
                                  stdout=subprocess.DEVNULL, stderr=err)
        if result["returncode"] != 0:
            err.seek(0)
            raise SystemExit(f"the command failed (exit {result['returncode']}):\n{err.read()}")
    store = out / f"{args.net}_{args.layer}_maps.zarr"
    disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    if not args.keep:
        shutil.rmtree(out)
    return {"stimuli": n, "store_mb": disk / 2**20, **result}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default="TinyNet")
    ap.add_argument("--layer", default="conv3")
    ap.add_argument("--chn", default="all")
    ap.add_argument("--sizes", default="200,2000", help="comma-separated stimulus counts")
    ap.add_argument("--reduce", default="", help="-maps_reduce for the store, e.g. float16,gray")
    ap.add_argument("--stimuli", choices=("photos", "small"), default="photos",
                    help="the example photos repeated (default), or tiny noise images: figure "
                         "jobs then weigh nothing, and the peak is the core's and the writer's")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each run's output")
    args = ap.parse_args(argv)
    folder = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="jaxsal_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = [measure(int(n), args, folder) for n in args.sizes.split(",")]
    print(f"{'stimuli':>8} {'peak tree MB':>13} {'peak main MB':>13} {'processes':>10} "
          f"{'seconds':>8} {'store MB':>9}")
    for r in rows:
        print(f"{r['stimuli']:>8} {r['peak_tree_mb']:>13.0f} {r['peak_main_mb']:>13.0f} "
              f"{r['peak_processes']:>10} {r['wall_s']:>8.1f} {r['store_mb']:>9.0f}")
    report = {"rows": rows, "growth": rows[-1]["peak_tree_mb"] / rows[0]["peak_tree_mb"] - 1}
    print(f"peak tree RSS, {rows[-1]['stimuli']} vs {rows[0]['stimuli']} stimuli: "
          f"{100 * report['growth']:+.1f} %")
    print(JSON_PREFIX + json.dumps(report))
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
