"""dnn_saliency: find the parts of images that drive chosen channels of a CNN layer.

The command of DNNBrain, flag for flag (`../shared/seed/dnn_saliency.md`), on jaxsal's batched,
jit-compiled core. This module only parses flags, validates every input before any compute,
and orchestrates: decode images (threads) -> saliency (device) -> figures (worker processes).
It imports JAX only once validation has passed, and never at import time: figure workers are
spawned processes that re-import the entry module.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import sys
import time
import traceback
from typing import Sequence

from absl import flags

from jaxsal import models
from jaxsal.errors import UsageError
from jaxsal.xla_config import tune_cpu
from jaxsal.method_flags import FLAG_NAMES as METHOD_FLAGS
from jaxsal.method_flags import METHOD_HELP, define_method_flags, method_from_flags
from jaxsal.method_flags import SYNOPSIS as METHOD_SYNOPSIS
from jaxsal.methods import PRECISIONS, resolve

PROG = "dnn_saliency"
MAX_CHANNELS = 5

SYNOPSIS = f"""\
usage: {PROG} [-h] -net Net -layer Layer -chn Channel [Channel ...]
                    -stim Stimulus [-meth Method] [-mode Mode] [-cmap Colormap]
                    [-vmin Vmin] [-vmax Vmax] [-show] [-out Output]
                    [-weights Weights] [-save_maps] [-batch_size N]
                    [-precision Precision] [-profile]
                    {METHOD_SYNOPSIS}
                    [-coordinator_address Host:Port -num_processes N -process_id I]

Find the saliency parts of an image that contributes to the activation of the specified channel.
"""

EXAMPLES = f"""\
examples:
  {PROG} -net AlexNet -layer conv5 -chn 60 125 -stim examples/examples.stim.csv -out out
  {PROG} -net AlexNet -layer fc3 -chn 294 23 -stim examples.stim.csv -mode gray -cmap gray -out .
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -meth guided -smooth 16 -out out
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -meth gradcam -cmap jet -overlay -out out
"""


def define_flags() -> flags.FlagValues:
    """The command's flags, on a private FlagValues (no global absl state)."""
    fv = flags.FlagValues()
    flags.DEFINE_string("net", None, f"a neural network name: {', '.join(models.names())}",
                        flag_values=fv)
    flags.DEFINE_string("layer", None, "the layer, e.g. 'conv1' (first convolution layer) or "
                        "'fc1' (first fully-connected layer)", flag_values=fv)
    flags.DEFINE_list("chn", None, "channel numbers (1-based), at most 5: -chn 294 23 or "
                      "--chn=294,23; one figure row each, in the order given", flag_values=fv)
    flags.DEFINE_string("stim", None, "a .stim.csv file which contains stimulus information",
                        flag_values=fv)
    flags.DEFINE_string("meth", "guided", METHOD_HELP, flag_values=fv)
    flags.DEFINE_string("mode", "RGB", "RGB: visualize derivatives directly; gray: keep the "
                        "maximal magnitude of the RGB channels for each pixel and show it as a "
                        "gray (colour-mapped) image. -cmap, -vmin and -vmax are only valid in gray "
                        "mode (and for -meth gradcam, whose maps are 2-D whatever the mode)",
                        flag_values=fv)
    flags.DEFINE_string("cmap", "coolwarm", "colormap for gray-mode saliency images (any "
                        "matplotlib colormap)", flag_values=fv)
    flags.DEFINE_float("vmin", None, "minimal value of the colormap, in the 0..255 units of the "
                       "normalized map, applied to all saliency images (default: each image's "
                       "own minimum)", flag_values=fv)
    flags.DEFINE_float("vmax", None, "maximal value of the colormap, in the 0..255 units of the "
                       "normalized map (default: each image's own maximum)", flag_values=fv)
    flags.DEFINE_boolean("show", False, "display stimuli and saliency images in figures",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "an output directory where the figures are saved "
                        "(created if missing)", flag_values=fv)
    flags.DEFINE_string("weights", None, "weights file: .safetensors or a torchvision .pth "
                        "checkpoint (default: $JAXSAL_WEIGHTS, the jaxsal cache, the torch hub "
                        "cache, $DNNBRAIN_DATA/models, then the bundled conv-only weights of "
                        "AlexNet and Vgg16)", flag_values=fv)
    flags.DEFINE_boolean("save_maps", False, "also save the raw signed maps as "
                         "OUT/{net}_{layer}_maps.npz (needs -out)", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "at most this many images per batch; larger runs "
                         "are split into batches of about equal size (default: chosen from the "
                         "device's memory)", flag_values=fv)
    flags.DEFINE_string("precision", "highest", "matmul/conv precision: highest (float32, "
                        "parity with PyTorch), default (fastest float32 the device offers, e.g. "
                        "TF32 on GPUs) or bfloat16", flag_values=fv)
    flags.DEFINE_boolean("profile", False, "print where the time went (decode, compute, "
                         "render, write) on stderr at the end", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "multi-process runs: HOST:PORT of process "
                        "0, the same for every process", flag_values=fv)
    flags.DEFINE_integer("num_processes", 1, "multi-process runs: how many processes share the "
                         "stimuli", flag_values=fv)
    flags.DEFINE_integer("process_id", 0, "multi-process runs: this process's number, "
                         "0..num_processes-1", flag_values=fv)
    define_method_flags(fv)
    return fv


@dataclasses.dataclass(frozen=True)
class Options:
    net: str
    layer: str
    channels: tuple[int, ...]
    stim: str
    meth: str
    mode: str
    cmap: str
    vmin: float | None
    vmax: float | None
    show: bool
    out: pathlib.Path | None
    weights: str | None
    save_maps: bool
    batch_size: int | None
    precision: str
    profile: bool
    cluster: "jaxsal.distributed.Cluster"  # noqa: F821
    method: "jaxsal.methods.Method" = None  # noqa: F821 - -meth with its options (method_flags)
    overlay: bool = False


_INT = re.compile(r"^[+-]?\d+$")
_HELP = {"-h", "--h", "-help", "--help", "-?", "--helpfull", "-helpfull", "--helpshort"}


def join_channel_values(argv: Sequence[str]) -> list[str]:
    """Turn `-chn 294 23` (argparse style, as the seed documents) into `--chn=294,23`.

    Every integer-looking token after -chn/--chn belongs to it, negative ones included, so that
    `-chn -1` reaches the range check instead of being read as a flag.
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-chn", "--chn"):
            values = []
            i += 1
            while i < len(argv) and (_INT.match(argv[i]) or "," in argv[i]):
                values.append(argv[i])
                i += 1
            if not values:
                raise UsageError("-chn needs at least one channel number, e.g. -chn 294 23")
            out.append("--chn=" + ",".join(values))
            continue
        out.append(arg)
        i += 1
    return out


def usage_text(fv: flags.FlagValues) -> str:
    lines = [SYNOPSIS, "arguments:"]
    for name in ("net", "layer", "chn", "stim", "meth", "mode", "cmap", "vmin", "vmax", "show",
                 "out", "weights", "save_maps", "batch_size", "precision", "profile",
                 "coordinator_address", "num_processes", "process_id", *METHOD_FLAGS):
        flag = fv[name]
        req = " (required)" if name in ("net", "layer", "chn", "stim") else ""
        default = "" if flag.default is None or isinstance(flag.default, bool) else f" [default: {flag.default}]"
        lines.append(f"  -{name}{req}: {flag.help}{default}")
    return "\n".join(lines) + "\n\n" + EXAMPLES


def parse_args(argv: Sequence[str]) -> Options:
    """Flags -> Options. Checks only the flags themselves (no files, no network, no JAX)."""
    fv = define_flags()
    args = list(argv[1:])
    if any(a in _HELP for a in args):
        raise _Help(usage_text(fv))
    try:
        rest = fv([PROG] + join_channel_values(args))
    except flags.Error as e:
        raise UsageError(f"{e} (see {PROG} -help)") from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument(s): {' '.join(rest[1:])} (see {PROG} -help)")
    missing = [f"-{n}" for n in ("net", "layer", "chn", "stim") if fv[n].value is None]
    if missing:
        raise UsageError(f"missing required flag(s): {', '.join(missing)}; e.g. {PROG} -net AlexNet "
                         f"-layer conv5 -chn 60 125 -stim examples.stim.csv -out out")
    channels = []
    for token in fv.chn:
        if not _INT.match(token.strip()):
            raise UsageError(f"-chn takes whole channel numbers, got {token!r}")
        channels.append(int(token))
    if len(channels) > MAX_CHANNELS:
        raise UsageError(f"at most {MAX_CHANNELS} channels at once (got {len(channels)}): run "
                         f"the command again for the others")
    method = method_from_flags(fv)
    if fv.mode not in ("RGB", "gray"):
        raise UsageError(f"-mode must be RGB or gray, got {fv.mode!r}")
    if not fv.show and fv.out is None:
        raise UsageError("nothing would be kept: give -out DIR to save the figures, or -show to "
                         "display them")
    if fv.save_maps and fv.out is None:
        raise UsageError("-save_maps needs -out DIR (the folder the .npz file is written to)")
    if fv.batch_size is not None and fv.batch_size < 1:
        raise UsageError(f"-batch_size must be at least 1, got {fv.batch_size}")
    if fv.precision not in PRECISIONS:
        raise UsageError(f"-precision must be {', '.join(PRECISIONS)}, got {fv.precision!r}")
    if fv.vmin is not None and fv.vmax is not None and fv.vmin > fv.vmax:
        raise UsageError(f"-vmin ({fv.vmin}) is larger than -vmax ({fv.vmax})")
    from jaxsal.distributed import Cluster

    cluster = Cluster(fv.num_processes, fv.process_id, fv.coordinator_address).check()
    return Options(
        net=fv.net, layer=fv.layer, channels=tuple(channels), stim=fv.stim, meth=fv.meth,
        mode=fv.mode, cmap=fv.cmap, vmin=fv.vmin, vmax=fv.vmax, show=fv.show,
        out=pathlib.Path(fv.out) if fv.out is not None else None, weights=fv.weights,
        save_maps=fv.save_maps, batch_size=fv.batch_size, precision=fv.precision,
        profile=fv.profile, cluster=cluster, method=method, overlay=fv.overlay,
    )


class _Help(Exception):
    """-help was asked for: print the text and exit 0."""


def check_out_dir(out: pathlib.Path) -> None:
    """Fail early if `out` cannot be created or written -- without creating anything yet."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"-out {out}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"-out {out}: cannot write into {probe} (permission denied)")


@dataclasses.dataclass
class Plan:
    """A validated run: everything is known to be usable before any compute starts."""

    options: Options
    spec: "jaxsal.models.NetSpec"  # noqa: F821
    stimuli: "jaxsal.stimuli.StimulusSet"  # noqa: F821
    weights: "jaxsal.weights.Weights"  # noqa: F821 - read from disk and checked, not on a device


def prepare(options: Options) -> Plan:
    """Validate everything, cheapest first; read the stimulus list and the weights. No JAX."""
    from jaxsal import render
    from jaxsal.models import get_net_spec
    from jaxsal.stimuli import read_stim_csv
    from jaxsal.weights import check_layer_weights, load_weights

    spec = get_net_spec(options.net)
    spec.check_channels(options.layer, options.channels)
    options = dataclasses.replace(options, method=resolve(options.method or options.meth, spec,
                                                          options.layer))
    if options.mode == "gray":
        render.check_cmap(options.cmap)
    elif options.cmap != "coolwarm" or options.vmin is not None or options.vmax is not None:
        render.check_cmap(options.cmap)  # still validated; matplotlib ignores it for RGB maps
    if options.out is not None:
        check_out_dir(options.out)
    if not options.stim.endswith(".stim.csv"):
        raise UsageError(f"-stim must be a .stim.csv file, got {options.stim!r}")
    stimuli = read_stim_csv(options.stim)
    weights = load_weights(spec, options.weights)
    check_layer_weights(spec, weights, options.layer)
    return Plan(options=options, spec=spec, stimuli=stimuli, weights=weights)


def load_net(plan: Plan):
    """Join the cluster (if any), import JAX and put the weights on the device(s)."""
    if plan.options.cluster.is_multi:  # must come before JAX's first computation
        from jaxsal import distributed

        distributed.initialize(plan.options.cluster)
    from jaxsal.net import net_from_weights  # imports JAX: only now that the inputs are sound

    return net_from_weights(plan.spec, plan.weights)


class Pipeline:
    """The work of a run that needs no JAX, started as soon as the inputs are valid: decoding
    the stimuli (threads) and starting the figure workers (processes, which import matplotlib).
    Both then overlap the ~1-2 s of importing JAX and loading the weights instead of following
    them. Close it (or use it as a context manager) to stop both."""

    DECODE_AHEAD = 128  # stimuli decoded ahead of the device: two CPU batches

    def __init__(self, plan: Plan):
        from jaxsal import render

        self.plan = plan
        all_slices = render.figure_slices(len(plan.stimuli.paths))
        # (global figure number k, global stimulus indices) of the figures this process draws
        shares = plan.options.cluster.my_figures(len(all_slices))
        self.figures = [(k + 1, all_slices[k]) for k in shares]
        self.mine = [i for _, cols in self.figures for i in cols]
        n_rows = 1 + len(plan.options.channels)
        # The grid each stimulus is drawn in, for display_copy.
        self.grids = {i: (n_rows, len(cols)) for _, cols in self.figures for i in cols}
        self.decoder = concurrent.futures.ThreadPoolExecutor(max_workers=decode_threads())
        self._decoding = [self._submit(i) for i in self.mine[: self.DECODE_AHEAD]]
        self.pool = None
        if plan.options.out is not None and self.figures:
            workers = render.default_render_workers()
            self.pool = render.render_pool(workers)
            for _ in range(workers):  # spawn them now: they start up while JAX is imported
                self.pool.submit(render.warm_up, n_rows, len(self.figures[0][1]))

    def _submit(self, i: int):
        return self.decoder.submit(_decode, self.plan.stimuli.paths[i], self.plan.spec,
                                   self.grids[i])

    def decoded(self):
        """(stimulus index, (display array, native size), network input, decode seconds), in
        `mine` order."""
        for pos, i in enumerate(self.mine):
            shown, x, secs = self._decoding[pos].result()
            self._decoding[pos] = None
            if len(self._decoding) < len(self.mine):
                self._decoding.append(self._submit(self.mine[len(self._decoding)]))
            yield i, shown, x, secs

    def close(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_threads() -> int:
    """Threads decoding stimuli: half the cores, 2 to 8. Pillow releases the GIL while it
    decodes and resizes, so next to a GPU more threads keep up with the device. On 2 cores a
    second thread hardly matters for photos of ordinary size but decides the pace for camera
    photos (120 of 2400 x 1800: 13.0 s with 2 threads, 14.2 s with 1)."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


class Progress:
    """`done/total stimuli, rate` on stderr once a run has taken more than a few seconds."""

    def __init__(self, total: int, stream=sys.stderr, delay: float = 3.0, every: float = 10.0):
        self.total, self.stream, self.delay, self.every = total, stream, delay, every
        self.start = time.perf_counter()
        self.last = None
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.shown = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.delay and done < self.total:
            return
        if not self.tty and self.last is not None and now - self.last < self.every and done < self.total:
            return
        if not self.shown and done >= self.total and elapsed < self.delay:
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        end = "\r" if self.tty and done < self.total else "\n"
        self.stream.write(f"{PROG}: {done}/{self.total} stimuli ({rate:.1f} stimuli/s)" + " " * 4 + end)
        self.stream.flush()
        self.last, self.shown = now, True


@dataclasses.dataclass
class Timings:
    decode: float = 0.0
    compute: float = 0.0
    display: float = 0.0
    render: float = 0.0
    write: float = 0.0
    setup: float = 0.0
    total: float = 0.0

    def report(self) -> str:
        return (f"{PROG}: profile: total {self.total:.2f}s = setup {self.setup:.2f}s + run; "
                f"decode {self.decode:.2f}s (threads), compute wait {self.compute:.2f}s, "
                f"display {self.display:.2f}s, render {self.render:.2f}s (worker processes), "
                f"maps write {self.write:.2f}s")


def _decode(path: pathlib.Path, spec, grid: tuple[int, int]) -> tuple:
    """One stimulus: ((uint8 RGB array for its figure, native (H, W)), normalized network
    input, seconds). The figure's array is `render.display_copy` for a figure of `grid`
    (rows, columns): a large photo is kept only at the size its figure can show."""
    from jaxsal.render import display_copy
    from jaxsal.stimuli import load_image, preprocess

    t = time.perf_counter()
    image = load_image(path)
    shown = display_copy(image, *grid)
    x = preprocess(image, spec.preprocessing)
    return shown, x, time.perf_counter() - t


def render_timed(job) -> tuple[str, float]:
    """render_figure in a worker, with the seconds it took (for -profile)."""
    from jaxsal.render import render_figure

    t = time.perf_counter()
    path = render_figure(job)
    return path, time.perf_counter() - t


def execute(plan: Plan, net, pipeline: Pipeline, timings: Timings) -> None:
    """Compute, render and save; `Finish: i/n` after each figure, in order.

    In a multi-process run (`-num_processes`), this process does only its share of the figures
    (see `jaxsal.distributed`) and process 0 merges the saved maps at the end.
    """
    from jaxsal import distributed, render
    from jaxsal.maps_io import MapWriter, map_file_meta
    from jaxsal.methods import map_shape
    from jaxsal.batching import iter_saliency

    o, stimuli = plan.options, plan.stimuli
    cluster = o.cluster
    spec = net.spec
    n = len(stimuli.paths)
    figures, mine, pool = pipeline.figures, pipeline.mine, pipeline.pool
    if o.out is not None:
        o.out.mkdir(parents=True, exist_ok=True)

    writer = final_maps = None
    if o.save_maps:
        final_maps = o.out / f"{o.net}_{o.layer}_maps.npz"
        shape = map_shape(o.method, len(o.channels), len(mine), spec.input_size)
        meta = map_file_meta(spec.name, o.layer, o.method, o.channels, stimuli.ids, net.weights)
        if cluster.is_multi:
            meta = {**meta, "indices": np_array_int64(mine)}
            writer = MapWriter(distributed.part_path(final_maps, cluster), shape, meta)
        else:
            writer = MapWriter(final_maps, shape, meta)

    shown: dict[int, tuple] = {}  # stimulus -> (array for its figure, native size)
    underlays: dict[int, object] = {}  # -overlay: the 224x224 picture the network saw
    can_show = None
    try:
        def inputs():
            for i, stimulus, x, secs in pipeline.decoded():
                timings.decode += secs
                shown[i] = stimulus
                if o.overlay:
                    p = spec.preprocessing
                    underlays[i] = render.network_image(x, p.mean, p.std, p.scale)
                yield x

        progress = Progress(len(mine))
        figure_futures: list = []
        pending_figs: list = []  # (position, k, cols, FigureJob) awaiting Finish
        displays: dict[int, list] = {}
        done = 0  # stimuli of `mine` computed so far
        stream = iter_saliency(net, inputs(), o.layer, o.channels, o.method, n_images=len(mine),
                               batch_size=o.batch_size, precision=o.precision) if mine else iter(())
        next_figure = 0
        while True:
            t = time.perf_counter()
            maps = next(stream, None)
            timings.compute += time.perf_counter() - t
            if maps is None:
                break
            b = maps.shape[1]
            t = time.perf_counter()
            if writer is not None:
                writer.write(done, maps)
            timings.write += time.perf_counter() - t
            t = time.perf_counter()
            images, constant = render.display_maps(maps, o.mode, o.method.info.maps_2d)
            timings.display += time.perf_counter() - t
            for j in range(b):
                i = mine[done + j]
                displays[i] = [images[c, j] for c in range(len(o.channels))]
                for c, ch in enumerate(o.channels):
                    if constant[c, j]:
                        print(f"{PROG}: warning: the map of channel {ch} for stimulus "
                              f"{stimuli.ids[i]!r} is constant (the channel does not respond "
                              f"to the image); drawn black", file=sys.stderr)
            done += b
            progress.update(done)
            # Hand every figure whose stimuli are all computed to the renderer.
            while next_figure < len(figures) and all(i in displays for i in figures[next_figure][1]):
                k, cols = figures[next_figure]
                job = render.figure_job(
                    [shown.pop(i) for i in cols],
                    [[displays[i][c] for i in cols] for c in range(len(o.channels))],
                    o.channels, cmap=o.cmap, vmin=o.vmin, vmax=o.vmax,
                    underlays=[underlays.pop(i) for i in cols] if o.overlay else None,
                    out_path=os.fspath(render.figure_path(o.out, o.net, o.layer, k)) if o.out else "",
                )
                for i in cols:
                    del displays[i]
                figure_futures.append(pool.submit(render_timed, job) if pool else None)
                pending_figs.append((next_figure, k, cols, job))
                next_figure += 1
                can_show = _finish_ready(pending_figs, figure_futures, n, o, timings, can_show,
                                         block=False)
        _finish_ready(pending_figs, figure_futures, n, o, timings, can_show, block=True)
        if writer is not None:
            t = time.perf_counter()
            path = writer.commit()
            writer = None
            if cluster.is_multi:
                distributed.barrier("jaxsal_maps_parts_written")
                if cluster.process_id == 0:
                    shape = map_shape(o.method, len(o.channels), n, spec.input_size)
                    meta = map_file_meta(spec.name, o.layer, o.method, o.channels, stimuli.ids,
                                         net.weights)
                    path = distributed.merge_parts(final_maps, cluster, shape, meta)
            timings.write += time.perf_counter() - t
            if cluster.process_id == 0:
                print(f"{PROG}: maps saved to {path}", file=sys.stderr)
    finally:
        if writer is not None:
            writer.abort()


def np_array_int64(values):
    import numpy as np

    return np.asarray(values, np.int64)


def _finish_ready(pending, futures, n, o, timings, can_show, block):
    """Print `Finish: i/n` (and -show) for leading figures that are done, in figure order."""
    from jaxsal import render

    while pending:
        position, k, cols, job = pending[0]
        future = futures[position]
        if future is not None:
            if not block and not future.done():
                break
            _, secs = future.result()
            timings.render += secs
        pending.pop(0)
        if o.show:
            if can_show is None:
                can_show = render.can_show()
                if not can_show:
                    print(f"{PROG}: cannot show figures: no display"
                          + ("; figures are saved with -out" if o.out else ""), file=sys.stderr)
            if can_show:
                render.show_figure(job)
        print(f"Finish: {cols.stop}/{n}", flush=True)
    return can_show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 usage/input error, 1 unexpected)."""
    argv = list(sys.argv if argv is None else argv)
    tune_cpu()  # before anything can import JAX (the figure workers never do)
    timings = Timings()
    start = time.perf_counter()
    try:
        options = parse_args(argv)
        global _MULTI_PROCESS
        _MULTI_PROCESS = options.cluster.is_multi
        plan = prepare(options)
        with Pipeline(plan) as pipeline:
            net = load_net(plan)
            from jaxsal.xla_config import enable_compilation_cache
            from jaxsal.weights import cache_dir

            enable_compilation_cache(cache_dir() / "xla")
            timings.setup = time.perf_counter() - start
            execute(plan, net, pipeline, timings)
    except _Help as h:
        print(str(h), end="")
        return 0
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
        traceback.print_exc()
        print(f"{PROG}: internal error (this is a bug in jaxsal, not in your input); please "
              f"report it with the traceback above", file=sys.stderr)
        return 1
    timings.total = time.perf_counter() - start
    if options.profile:
        print(timings.report(), file=sys.stderr)
    return 0


def run() -> int:
    """Console-script entry point.

    A single-process run ends with `os._exit` once its output is flushed and every file is
    closed: tearing JAX's runtime down at interpreter exit takes ~0.5 s and does nothing a
    finished run needs. Multi-process runs exit normally (jax.distributed shuts down at exit).
    """
    rc = main(sys.argv)
    if not _MULTI_PROCESS:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said
                pass
        os._exit(rc)
    return rc


_MULTI_PROCESS = False  # set by main() when this run joined a jax.distributed cluster


if __name__ == "__main__":
    sys.exit(run())
