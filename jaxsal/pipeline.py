"""A saliency run as stages: `jaxsal.run(request) -> RunReport`, and the command's engine.

    validate (jaxsal.request)   Request -> Plan; every input checked, stimulus list and weights
                                read; no JAX
    Decoder        threads      each stimulus: its picture for the figure, its network input
    Core           device(s)    the jitted core over fixed-size batches (jaxsal.batching)
    FigureAssembly host         maps -> display images; a FigureJob once a figure's stimuli are in
    FigureSink     processes    figure workers draw and write; `Finish: i/n` in figure order; -show
    MapSink        host         -save_maps: batches into one .npz; multi-process: parts, merge

`Pipeline(plan)` starts the decoder threads and the figure workers (no JAX needed) so that they
overlap importing JAX and putting the weights on the device (`load_net`); `execute(net)` then
streams batches through the stages. Each stage holds its own state and its own time.

Console output is the command's: `Finish: i/n` on stdout after each figure, warnings, progress
and the maps' path on stderr. This module imports neither JAX nor numpy at import time (figure
workers, spawned, re-import the command's entry module); the stages import what they use.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import pathlib
import time
from typing import Iterator

from jaxsal.errors import UsageError
from jaxsal.reporting import Progress, Reporter
from jaxsal.request import Plan, Request, validate



# ---------------------------------------------------------------------------------------------
# What a run reports


@dataclasses.dataclass
class Timings:
    """Seconds: setup (validation, weights, figure workers, JAX import, weights to the device),
    then each stage's own time; total = the whole run."""

    decode: float = 0.0
    compute: float = 0.0
    display: float = 0.0
    render: float = 0.0
    write: float = 0.0
    setup: float = 0.0
    total: float = 0.0

    def report(self, prefix: str = "jaxsal") -> str:
        return (f"{prefix}: profile: total {self.total:.2f}s = setup {self.setup:.2f}s + run; "
                f"decode {self.decode:.2f}s (threads), compute wait {self.compute:.2f}s, "
                f"display {self.display:.2f}s, render {self.render:.2f}s (worker processes), "
                f"maps write {self.write:.2f}s")


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What a run did.

    figures: the figure files this process wrote, in figure order (none without `out`).
    maps: the .npz of the maps (`save_maps`; in a multi-process run, on process 0 only), or None.
    stimuli: how many stimuli this process computed.
    timings: where the time went (`Timings`).
    weights: the weights used, {"source", "sha256", "provenance"} as in the maps file.
    """

    figures: tuple[pathlib.Path, ...]
    maps: pathlib.Path | None
    stimuli: int
    timings: Timings
    weights: dict | None


# ---------------------------------------------------------------------------------------------
# Stage 1: decoding (threads)


def decode_threads() -> int:
    """Threads decoding stimuli: half the cores, 2 to 8. Pillow releases the GIL while it
    decodes and resizes, so next to a GPU more threads keep up with the device; on 2 cores a
    second thread matters for camera photos (BENCHMARKS.md, End to end)."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def decode(path: pathlib.Path, spec, grid: tuple[int, int]) -> tuple:
    """One stimulus: ((uint8 RGB array for its figure, native (H, W)), normalized network
    input, seconds). The figure's array is `render.display_copy` for a figure of `grid`
    (rows, columns): a large photo is kept only at the size its figure can show."""
    from jaxsal.render import display_copy
    from jaxsal.stimuli import decoded_image, preprocess

    t = time.perf_counter()
    with decoded_image(path) as image:  # the full image counts against the decoding budget
        shown = display_copy(image, *grid)
        x = preprocess(image, spec.preprocessing)
    return shown, x, time.perf_counter() - t


class Decoder:
    """Decodes this process's stimuli, in order, `AHEAD` of the device, in threads."""

    AHEAD = 128  # stimuli decoded ahead of the device: two CPU batches

    def __init__(self, plan: Plan, figures: list[tuple[int, range]]):
        self.spec, self.paths = plan.spec, plan.stimuli.paths
        self.order = [i for _, cols in figures for i in cols]
        n_rows = 1 + len(plan.channels0)
        # The grid each stimulus is drawn in, for display_copy.
        self.grids = {i: (n_rows, len(cols)) for _, cols in figures for i in cols}
        self.seconds = 0.0
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=decode_threads())
        self._futures = [self._submit(i) for i in self.order[: self.AHEAD]]

    def _submit(self, i: int):
        return self._threads.submit(decode, self.paths[i], self.spec, self.grids[i])

    def __iter__(self) -> Iterator[tuple[int, tuple, object]]:
        """(stimulus index, (display array, native size), network input), in order."""
        for pos, i in enumerate(self.order):
            shown, x, secs = self._futures[pos].result()
            self._futures[pos] = None
            if len(self._futures) < len(self.order):
                self._futures.append(self._submit(self.order[len(self._futures)]))
            self.seconds += secs
            yield i, shown, x

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Stage 2: the jitted core (device)


class Core:
    """The maps of a stream of network inputs, batch by batch (`jaxsal.batching.iter_saliency`:
    fixed-size batches over every local device, the next dispatched before the last is
    fetched). `seconds`: time spent waiting for the device."""

    def __init__(self, plan: Plan, net, reporter: Reporter):
        self.plan, self.net, self.reporter = plan, net, reporter
        self.seconds = 0.0

    def maps(self, inputs, n_images: int) -> Iterator:
        if not n_images:
            return
        from jaxsal.batching import iter_saliency  # imports JAX

        p = self.plan
        stream = iter_saliency(self.net, inputs, p.layer, p.channels, p.method, n_images=n_images,
                               batch_size=p.batch_size, precision=p.precision,
                               reporter=self.reporter)
        while True:
            t = time.perf_counter()
            maps = next(stream, None)
            self.seconds += time.perf_counter() - t
            if maps is None:
                return
            yield maps


# ---------------------------------------------------------------------------------------------
# Stage 3: figure assembly (host)


class FigureAssembly:
    """Collects, per stimulus, its picture (and -overlay underlay) and its displayed maps, and
    hands out each figure's `FigureJob` once all its stimuli are in, in figure order."""

    def __init__(self, plan: Plan, figures: list[tuple[int, range]], reporter: Reporter):
        self.plan, self.figures, self.reporter = plan, figures, reporter
        self.seconds = 0.0  # the display transform
        self._next = 0
        self._shown: dict[int, tuple] = {}  # stimulus -> (array for its figure, native size)
        self._underlays: dict[int, object] = {}  # -overlay: the picture the network saw
        self._displays: dict[int, list] = {}  # stimulus -> one displayed map per channel

    def add_stimulus(self, i: int, shown: tuple, x) -> None:
        self._shown[i] = shown
        if self.plan.overlay:
            from jaxsal.render import network_image

            p = self.plan.spec.preprocessing
            self._underlays[i] = network_image(x, p.mean, p.std, p.scale)

    def add_maps(self, indices: list[int], maps) -> None:
        """maps (K, b, ...) of stimuli `indices`; warns once per constant map."""
        from jaxsal.render import display_maps

        plan = self.plan
        t = time.perf_counter()
        images, constant = display_maps(maps, plan.mode, plan.method.info.maps_2d)
        self.seconds += time.perf_counter() - t
        for j, i in enumerate(indices):
            self._displays[i] = [images[c, j] for c in range(len(plan.channels0))]
            for c, ch in enumerate(plan.channels):
                if constant[c, j]:
                    self.reporter.warn(f"the map of channel {ch} for stimulus "
                                       f"{plan.stimuli.ids[i]!r} is constant (the channel does "
                                       f"not respond to the image); drawn black")

    def ready(self) -> Iterator[tuple[int, range, object]]:
        """(figure number k, its stimuli, FigureJob) of every next figure whose stimuli are all
        computed; forgets them."""
        from jaxsal import render

        plan = self.plan
        while self._next < len(self.figures) and all(
                i in self._displays for i in self.figures[self._next][1]):
            k, cols = self.figures[self._next]
            job = render.figure_job(
                [self._shown.pop(i) for i in cols],
                [[self._displays[i][c] for i in cols] for c in range(len(plan.channels0))],
                plan.channels, cmap=plan.cmap, vmin=plan.vmin, vmax=plan.vmax,
                underlays=[self._underlays.pop(i) for i in cols] if plan.overlay else None,
                out_path=os.fspath(render.figure_path(plan.out, plan.net, plan.layer, k))
                if plan.out else "",
            )
            for i in cols:
                del self._displays[i]
            self._next += 1
            yield k, cols, job


# ---------------------------------------------------------------------------------------------
# Stage 4: sinks


class FigureSink:
    """Figure workers (spawned processes, started at once: they import matplotlib while the
    main process imports JAX) draw and write each figure; `Finish: i/n` is printed after each,
    in figure order, and with -show each is shown then, in the main process.

    Back-pressure: at most `IN_FLIGHT_PER_WORKER` figures per worker wait or are being drawn;
    with that many pending, `submit` first waits for the oldest, so a run whose maps come faster
    than figures are drawn does not pile up figure jobs (pictures and display maps) in memory
    (the npz map writer's memory is `MapSink`'s). The wait
    costs the device nothing: the next batch is already dispatched when a batch's figures are
    submitted (`jaxsal.batching.iter_saliency`).
    """

    IN_FLIGHT_PER_WORKER = 2

    def __init__(self, plan: Plan, figures: list[tuple[int, range]], reporter: Reporter):
        from jaxsal import render

        self.plan, self.reporter = plan, reporter
        self.n_stimuli = len(plan.stimuli.paths)
        self.written: list[pathlib.Path] = []
        self.seconds = 0.0  # drawing and writing, in the workers
        self._pending: collections.deque = collections.deque()  # (future or None, cols, job)
        self._can_show: bool | None = None
        self.pool = None
        self.max_in_flight = 0
        if plan.out is not None and figures:
            workers = render.default_render_workers()
            self.max_in_flight = self.IN_FLIGHT_PER_WORKER * workers
            self.pool = render.render_pool(workers)
            n_rows = 1 + len(plan.channels0)
            for _ in range(workers):  # spawn them now: they start up while JAX is imported
                self.pool.submit(render.warm_up, n_rows, len(figures[0][1]))

    def submit(self, cols: range, job) -> None:
        from jaxsal import render

        while self.pool and len(self._pending) >= self.max_in_flight:
            self._finish_first(block=True)
        future = self.pool.submit(render.render_job, job) if self.pool else None
        self._pending.append((future, cols, job))
        self.finish(block=False)

    def finish(self, block: bool) -> None:
        """Report the leading figures that are done (all of them, waiting, with `block`)."""
        while self._pending and self._finish_first(block):
            pass

    def _finish_first(self, block: bool) -> bool:
        """Report the first pending figure if it is done (waiting for it with `block`); whether
        it was. A worker's failure to write it (`jaxsal.errors.OutputError`) is raised here."""
        future, cols, job = self._pending[0]
        if future is not None:
            if not block and not future.done():
                return False
            path, secs = future.result()
            self.seconds += secs
            self.written.append(pathlib.Path(path))
        self._pending.popleft()
        if self.plan.show:
            self._show(job)
        self.reporter.finish(cols.stop, self.n_stimuli)
        return True

    def _show(self, job) -> None:
        from jaxsal import render

        if self._can_show is None:
            self._can_show = render.can_show()
            if not self._can_show:
                self.reporter.info("cannot show figures: no display"
                                   + ("; figures are saved with -out" if self.plan.out else ""))
        if self._can_show:
            render.show_figure(job)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class MapSink:
    """-save_maps: each batch goes into a memory-mapped scratch file, packed into the .npz at
    the end (`jaxsal.maps_io.MapWriter`: whole or not at all). In a multi-process run each
    process writes a part file of its stimuli, and after a barrier process 0 merges them."""

    def __init__(self, plan: Plan, mine: list[int], reporter: Reporter):
        import numpy as np

        from jaxsal import distributed
        from jaxsal.maps_io import MapWriter, map_file_meta
        from jaxsal.methods import map_shape

        self.plan, self.final, self.reporter = plan, plan.maps_path, reporter
        self.seconds = 0.0
        k, size, n = len(plan.channels0), plan.spec.input_size, len(plan.stimuli.paths)
        self.meta = map_file_meta(plan.net, plan.layer, plan.method, plan.channels,
                                  plan.stimuli.ids, plan.weights)
        self.shape = map_shape(plan.method, k, n, size)
        shape = map_shape(plan.method, k, len(mine), size)
        if plan.cluster.is_multi:
            meta = {**self.meta, "indices": np.asarray(mine, np.int64)}
            self.writer = MapWriter(distributed.part_path(self.final, plan.cluster), shape, meta)
        else:
            self.writer = MapWriter(self.final, shape, self.meta)

    def write(self, start: int, maps) -> None:
        t = time.perf_counter()
        self.writer.write(start, maps)
        self.seconds += time.perf_counter() - t

    def commit(self) -> pathlib.Path | None:
        """Write the .npz (merging the parts on process 0); its path, None on other processes."""
        from jaxsal import distributed

        t = time.perf_counter()
        path = self.writer.commit()
        self.writer = None
        cluster = self.plan.cluster
        if cluster.is_multi:
            distributed.barrier("jaxsal_maps_parts_written")
            path = None
            if cluster.process_id == 0:
                path = distributed.merge_parts(self.final, cluster, self.shape, self.meta)
        self.seconds += time.perf_counter() - t
        if path is not None:
            self.reporter.info(f"maps saved to {path}")
        return path

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


# ---------------------------------------------------------------------------------------------
# The run


class Pipeline:
    """The stages of one run. Constructing it starts the work that needs no JAX -- decoding
    (threads) and the figure workers (processes) -- so that it overlaps importing JAX and
    loading the weights (`load_net`); `execute(net)` runs the rest. Close it (or use it as a
    context manager) to stop both.

    In a multi-process run (`jaxsal.distributed`) this process draws only its share of the
    figures (global numbers and file names) and computes their stimuli.
    """

    def __init__(self, plan: Plan, reporter: Reporter | None = None):
        from jaxsal import render

        self.plan = plan
        self.reporter = Reporter() if reporter is None else reporter
        slices = render.figure_slices(len(plan.stimuli.paths))
        # (global figure number k, global stimulus indices) of the figures this process draws
        self.figures = [(k + 1, slices[k]) for k in plan.cluster.my_figures(len(slices))]
        self.mine = [i for _, cols in self.figures for i in cols]
        self.decoder = Decoder(plan, self.figures)
        self.figure_sink = None
        try:
            self.figure_sink = FigureSink(plan, self.figures, self.reporter)
        except BaseException:
            self.close()
            raise
        self.assembly = FigureAssembly(plan, self.figures, self.reporter)

    def execute(self, net) -> RunReport:
        """Compute, draw and save; `Finish: i/n` after each figure, in order."""
        plan = self.plan
        if plan.out is not None:
            plan.out.mkdir(parents=True, exist_ok=True)
        core = Core(plan, net, self.reporter)
        map_sink = MapSink(plan, self.mine, self.reporter) if plan.save_maps else None
        maps_path = None
        try:
            progress = self.reporter.progress(len(self.mine))
            done = 0  # stimuli of `mine` computed so far
            for maps in core.maps(self._inputs(), len(self.mine)):
                b = maps.shape[1]
                if map_sink is not None:
                    map_sink.write(done, maps)
                self.assembly.add_maps(self.mine[done:done + b], maps)
                done += b
                progress.update(done)
                for _, cols, job in self.assembly.ready():
                    self.figure_sink.submit(cols, job)
            self.figure_sink.finish(block=True)
            if map_sink is not None:
                maps_path = map_sink.commit()
        finally:
            if map_sink is not None:
                map_sink.abort()
        timings = Timings(decode=self.decoder.seconds, compute=core.seconds,
                          display=self.assembly.seconds, render=self.figure_sink.seconds,
                          write=map_sink.seconds if map_sink is not None else 0.0)
        return RunReport(figures=tuple(self.figure_sink.written), maps=maps_path,
                         stimuli=len(self.mine), timings=timings,
                         weights=_weights_record(plan.weights))

    def _inputs(self):
        for i, shown, x in self.decoder:
            self.assembly.add_stimulus(i, shown, x)
            yield x

    def close(self) -> None:
        self.decoder.close()
        if self.figure_sink is not None:
            self.figure_sink.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _weights_record(weights) -> dict | None:
    if weights is None:
        return None
    from jaxsal.maps_io import weights_record

    return weights_record(weights)


def load_net(plan: Plan, reporter: Reporter | None = None):
    """Tune the CPU if JAX has not started yet, join the cluster (if any), import JAX and put
    the weights on the device(s)."""
    from jaxsal.xla_config import tune_cpu_on_first_use

    tune_cpu_on_first_use(reporter)  # before JAX's first computation, which may be the cluster's
    if plan.cluster.is_multi:  # must come before JAX's first computation
        from jaxsal import distributed

        distributed.initialize(plan.cluster)
    from jaxsal.net import net_from_weights  # imports JAX: only now that the inputs are sound

    return net_from_weights(plan.spec, plan.weights, reporter)


def _compilation_cache(reporter: Reporter):
    """jaxsal's compilation cache (`$JAXSAL_HOME/xla`), enabled; None if it cannot be used
    (said in one line: it is optional)."""
    from jaxsal import xla_config
    from jaxsal.weights import cache_dir

    try:
        folder = cache_dir() / "xla"
    except UsageError as e:
        reporter.warn(f"compilation cache off ({e}); compiling anew each run")
        return None
    return xla_config.enable_compilation_cache(folder, reporter)


def run(request: Request | Plan, *, compilation_cache: bool = False,
        started: float | None = None, reporter: Reporter | None = None) -> RunReport:
    """Run the command's whole pipeline from Python: figures (and maps) for every stimulus.

        report = jaxsal.run(jaxsal.Request(net="AlexNet", layer="conv5", channels=[60, 125],
                                           stim="examples/examples.stim.csv", out="out"))
        report.figures  # (PosixPath('out/AlexNet_conv5_fig1.jpg'), ...)

    Every input is checked first (`jaxsal.request.validate`): a mistake raises
    `jaxsal.UsageError` before any model is built; nothing is half-written. Prints what the
    command prints (`Finish: i/n` on stdout; warnings and progress on stderr).

    The figures are drawn by spawned worker processes, which import the main module again: a
    script that calls `run` at its top level needs the usual `if __name__ == "__main__":`.

    compilation_cache: keep compiled code in the jaxsal cache (`~/.cache/jaxsal/xla`) so a
      later run starts faster, as the command does; it is a setting of the whole process. A
      folder that cannot be used is one warning; entries are checked against the manifest that
      runs which finished wrote (`jaxsal.xla_config.CompilationCache`).
    started: `time.perf_counter()` at which the setup time starts (the command passes its own).
    reporter: where the run's lines go (`jaxsal.reporting.Reporter`); default: `Finish: i/n` on
      stdout, `jaxsal: ...` lines on stderr (the command passes its `dnn_saliency` one).
    """
    start = time.perf_counter() if started is None else started
    if not isinstance(request, (Request, Plan)):
        raise UsageError(f"jaxsal.run takes a jaxsal.Request, got {type(request).__name__}")
    plan = request if isinstance(request, Plan) else validate(request)
    with Pipeline(plan, reporter) as pipeline:
        net = load_net(plan, pipeline.reporter)
        cache = _compilation_cache(pipeline.reporter) if compilation_cache else None
        setup = time.perf_counter() - start
        report = pipeline.execute(net)
        if cache is not None:
            cache.seal()  # only a run that finished vouches for the entries it wrote
    report.timings.setup = setup
    report.timings.total = time.perf_counter() - start
    return report
