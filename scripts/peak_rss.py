#!/usr/bin/env python
"""Peak resident memory of a command's whole process tree (the command, its figure workers,
multiprocessing's resource tracker): the largest sum of their RSS seen, sampled from /proc.

    python scripts/peak_rss.py -- dnn_saliency -net AlexNet -layer conv5 -chn 60 -stim x.stim.csv -out out
    python scripts/peak_rss.py --rows 2000 --photo examples/chelsea_cat.jpg -- dnn_saliency ... -stim {stim} ...

`--rows N --photo P` writes a .stim.csv of N rows of the same photo (no decoding cache: each row
is decoded anew) and substitutes its path for `{stim}` in the command. Prints the command's own
output, then `PEAK_RSS_JSON {...}`: peak_tree_mb (the largest sum over the tree at one sample),
peak_main_mb (the command's own peak, from the kernel's high-water mark when it can be read),
peak_processes, wall_s, returncode. Linux only (/proc). Sampling every --interval seconds can
miss a peak shorter than that.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def hwm_bytes(pid: int) -> int:
    """The kernel's peak RSS of `pid` (VmHWM), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_of(root: int, seen: set[int]) -> list[int]:
    """`root` and its descendants; processes seen before stay counted while they live (the
    resource tracker and workers outlive a parent that died)."""
    tree, out, todo = children_of(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    seen.update(out)
    return sorted(set(out) | {p for p in seen if os.path.exists(f"/proc/{p}")})


def measure(cmd: list[str], interval: float, **popen) -> dict:
    """Run `cmd` (`popen`: subprocess.Popen's options, e.g. stdout=subprocess.DEVNULL) and
    sample its tree until it ends."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    seen: set[int] = set()
    peak_tree, peak_main, most = 0, 0, 0
    while proc.poll() is None:
        pids = tree_of(proc.pid, seen)
        total = sum(rss_bytes(p) for p in pids)
        peak_tree, most = max(peak_tree, total), max(most, len(pids))
        peak_main = max(peak_main, hwm_bytes(proc.pid), rss_bytes(proc.pid))
        time.sleep(interval)
    return {"peak_tree_mb": peak_tree / 2**20, "peak_main_mb": peak_main / 2**20,
            "peak_processes": most, "wall_s": time.perf_counter() - t,
            "returncode": proc.returncode, "command": cmd}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--rows", type=int, help="write a .stim.csv of this many rows of --photo")
    ap.add_argument("--photo", help="the photo of --rows")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    with tempfile.TemporaryDirectory(prefix="jaxsal-peak-rss-") as tmp:
        if args.rows:
            photo = pathlib.Path(args.photo).resolve()
            stim = pathlib.Path(tmp) / "rows.stim.csv"
            stim.write_text(f"type=image\npath={photo.parent}\ndata=stimID\n"
                            + f"{photo.name}\n" * args.rows)
            cmd = [part.replace("{stim}", str(stim)) for part in cmd]
        result = measure(cmd, args.interval) | {"rows": args.rows}
    print("PEAK_RSS_JSON " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["returncode"] == 0 else 1)
