"""A saliency run as stages: `jaxsal.run(request) -> RunReport`, and the command's engine.

    validate (jaxsal.request)   Request -> Plan; every input checked, stimulus list and weights
                                read; no JAX
    Decoder        threads      each stimulus: its picture for the figure, its network input
    Core           device(s)    the jitted core over fixed-size batches and channel blocks
                                (jaxsal.batching)
    FigureAssembly host         maps -> display images; a FigureJob once a figure's stimuli are in
    FigureSink     processes    figure workers draw and write; `Finish: i/n` in figure order; -show
    MapSink        host         -save_maps: into one .npz (multi-process: parts, merge), or
    StoreSink                   shard by shard into a zarr store (jaxsal.map_store; resumable)

The stimuli are cut into shards of whole figures (`jaxsal.distributed`): a multi-process run
deals them to its processes, a zarr store saves and resumes them shard by shard, and each shard
is one batch of the store's run. Figures show the first 5 channels; every channel's maps are
saved.

`Pipeline(plan)` starts the decoder threads and the figure workers (no JAX needed) so that they
overlap importing JAX and putting the weights on the device (`load_net`); `execute(net)` then
streams batches through the stages. Each stage holds its own state and its own time.

Console output goes through the run's `jaxsal.reporting.Reporter`: `Finish: i/n` on stdout after
each figure, warnings, progress and the maps' path on stderr.

Imports: everything a run needs before its inputs are checked is imported here at the top (no
JAX: numpy, Pillow, the display transform, the map writers). JAX is imported at one point,
`_device()`, called once the inputs are sound (`load_net`); zarr only by a zarr run
(`jaxsal.map_store`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import pathlib
import time
from typing import Iterator

import numpy as np

from jaxsal import distributed, render, xla_config
from jaxsal.errors import OutputError, UsageError
from jaxsal.map_store import MapStore
from jaxsal.maps_io import MapWriter, map_file_meta, weights_record
from jaxsal.methods import map_shape
from jaxsal.reporting import Reporter
from jaxsal.request import Plan, Request, validate
from jaxsal.stimuli import decoded_image, preprocess
from jaxsal.weights import cache_dir


def _device():
    """The modules that import JAX: the one point where this module imports them, called once
    the run's inputs are checked (`load_net`), so validation never waits for JAX."""
    from jaxsal import batching, net

    return batching, net



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
    maps: the .npz or zarr store of the maps (`save_maps`; in a multi-process run, on process 0
      only), or None.
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


def decode(path: pathlib.Path, spec, grid: tuple[int, int] | None) -> tuple:
    """One stimulus: ((uint8 RGB array for its figure, native (H, W)) or None, normalized
    network input, seconds). The figure's array is `render.display_copy` for a figure of `grid`
    (rows, columns): a large photo is kept only at the size its figure can show; no grid, no
    figure (a stimulus computed for its maps only)."""
    t = time.perf_counter()
    with decoded_image(path) as image:  # the full image counts against the decoding budget
        shown = render.display_copy(image, *grid) if grid is not None else None
        x = preprocess(image, spec.preprocessing)
    return shown, x, time.perf_counter() - t


class Decoder:
    """Decodes the stimuli `order`, in order, `AHEAD` of the device, in threads: for those
    drawn in `figures`, their picture too."""

    AHEAD = 128  # stimuli decoded ahead of the device: two CPU batches

    def __init__(self, plan: Plan, order: list[int], figures: list[tuple[int, range]]):
        self.spec, self.paths = plan.spec, plan.stimuli.paths
        self.order = order
        n_rows = 1 + len(plan.figure_channels)
        # The grid each drawn stimulus is drawn in, for display_copy.
        self.grids = {i: (n_rows, len(cols)) for _, cols in figures for i in cols}
        self.seconds = 0.0
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=decode_threads())
        self._futures = [self._submit(i) for i in self.order[: self.AHEAD]]

    def _submit(self, i: int):
        return self._threads.submit(decode, self.paths[i], self.spec, self.grids.get(i))

    def __iter__(self) -> Iterator[tuple[int, tuple | None, object]]:
        """(stimulus index, (display array, native size) or None if it is not drawn, network
        input), in order."""
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
    """The maps of a stream of network inputs, batch by batch and channel block by channel
    block (`jaxsal.batching.iter_blocks`: fixed-size calls over every local device, the next
    dispatched before the last is fetched). `size`, `block`: images and channels per call --
    the run's own (`call_shape`), or a resumed store's. `seconds`: time spent waiting for the
    device."""

    def __init__(self, plan: Plan, net, n_images: int, reporter: Reporter,
                 compute: dict | None = None):
        self.plan, self.net, self.reporter = plan, net, reporter
        if compute is not None:
            self.size, self.block = compute["stimuli_per_call"], compute["channels_per_call"]
        else:
            batching, _ = _device()
            self.size, self.block = batching.call_shape(net, plan.layer, len(plan.channels0),
                                                        n_images, plan.batch_size)
        self.seconds = 0.0

    @property
    def compute(self) -> dict:
        return {"stimuli_per_call": self.size, "channels_per_call": self.block}

    def blocks(self, inputs, n_images: int, batches: list[int] | None = None,
               values: bool = False) -> Iterator:
        """`jaxsal.batching.ChannelBlock`s of `n_images` inputs, in batches of `size` or of the
        given sizes; `values`: with the targets' values."""
        if not n_images:
            return
        p = self.plan
        batching, _ = _device()
        stream = batching.iter_blocks(self.net, inputs, p.layer, p.channels, p.method,
                                      size=self.size, block=self.block, precision=p.precision,
                                      values=values, batches=batches, reporter=self.reporter)
        while True:
            t = time.perf_counter()
            result = next(stream, None)
            self.seconds += time.perf_counter() - t
            if result is None:
                return
            yield result


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

    def add_stimulus(self, i: int, shown: tuple | None, x) -> None:
        if shown is None:  # computed for its maps only
            return
        self._shown[i] = shown
        if self.plan.overlay:
            p = self.plan.spec.preprocessing
            self._underlays[i] = render.network_image(x, p.mean, p.std, p.scale)

    def add_maps(self, indices: list[int], channel_start: int, maps) -> None:
        """maps (B, b, ...) of channels channel_start .. + B - 1 for stimuli `indices`; keeps
        the displayed maps of the drawn stimuli and channels; warns once per constant map."""
        plan = self.plan
        drawn = plan.figure_channels
        rows = range(channel_start, min(channel_start + maps.shape[0], len(drawn)))
        columns = [j for j, i in enumerate(indices) if i in self._shown]
        if not rows or not columns:
            return
        selected = maps[: len(rows)]  # a view; a copy only when some stimuli are not drawn
        if len(columns) < len(indices):
            selected = selected[:, columns]
        t = time.perf_counter()
        images, constant = render.display_maps(selected, plan.mode, plan.method.info.maps_2d)
        self.seconds += time.perf_counter() - t
        for col, j in enumerate(columns):
            i = indices[j]
            displays = self._displays.setdefault(i, [None] * len(drawn))
            for r, c in enumerate(rows):
                displays[c] = images[r, col]
                if constant[r, col]:
                    self.reporter.warn(f"the map of channel {drawn[c]} for stimulus "
                                       f"{plan.stimuli.ids[i]!r} is constant (the channel does "
                                       f"not respond to the image); drawn black")

    def ready(self) -> Iterator[tuple[int, range, object]]:
        """(figure number k, its stimuli, FigureJob) of every next figure whose stimuli are all
        computed; forgets them."""
        plan = self.plan
        drawn = plan.figure_channels
        while self._next < len(self.figures) and all(
                i in self._displays and all(d is not None for d in self._displays[i])
                for i in self.figures[self._next][1]):
            k, cols = self.figures[self._next]
            job = render.figure_job(
                [self._shown.pop(i) for i in cols],
                [[self._displays[i][c] for i in cols] for c in range(len(drawn))],
                drawn, cmap=plan.cmap, vmin=plan.vmin, vmax=plan.vmax,
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
    (the map writers write as they go: `MapSink`, `StoreSink`). The wait
    costs the device nothing: the next batch is already dispatched when a batch's figures are
    submitted (`jaxsal.batching.iter_blocks`).
    """

    IN_FLIGHT_PER_WORKER = 2

    def __init__(self, plan: Plan, figures: list[tuple[int, range]], reporter: Reporter):
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
            n_rows = 1 + len(plan.figure_channels)
            for _ in range(workers):  # spawn them now: they start up while JAX is imported
                self.pool.submit(render.warm_up, n_rows, len(figures[0][1]))

    def submit(self, cols: range, job) -> None:
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
    """-save_maps -maps_format npz: the maps go into a scratch file with no name as they come,
    packed into the .npz at the end (`jaxsal.maps_io.MapWriter`: whole or not at all). In a
    multi-process run each process writes a part file of its stimuli, and after a barrier
    process 0 merges them (the .npz is for small runs; large ones use the zarr store)."""

    def __init__(self, plan: Plan, mine: list[int], reporter: Reporter):
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

    def write(self, block) -> None:
        """A `jaxsal.batching.ChannelBlock` of this process's stimuli."""
        t = time.perf_counter()
        self.writer.write(block.start, block.maps, block.channels.start)
        self.seconds += time.perf_counter() - t

    def commit(self) -> pathlib.Path | None:
        """Write the .npz (merging the parts on process 0); its path, None on other processes."""
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

    def abort(self, error: BaseException | None = None) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class StoreSink:
    """-save_maps -maps_format zarr: each shard of stimuli is a batch; its channel blocks are
    written as they come, then its values and its manifest entry (`jaxsal.map_store`). Shards a
    resumed store holds are not written again (a done shard is recomputed only when one of its
    figures is missing). Every process writes its own shards; process 0 creates the store (the
    others wait at a barrier) and marks it complete at the end, after a barrier."""

    def __init__(self, plan: Plan, work: list[int], shards: list[range], reporter: Reporter,
                 compute: dict):
        self.plan, self.reporter, self.shards = plan, reporter, shards
        self.seconds = 0.0
        self.kept = plan.store.done if plan.store is not None else frozenset()
        starts = [0]
        for shard in work:
            starts.append(starts[-1] + len(shards[shard]))
        self._shard_at = dict(zip(starts, work))  # batch start (position in `mine`) -> shard
        self._values, self._scales = None, []
        cluster = plan.cluster
        t = time.perf_counter()
        if cluster.process_id == 0:
            self.store = (MapStore.open(plan.maps_path) if plan.maps_path.exists()
                          else MapStore.create(plan, compute))
        if cluster.is_multi:
            distributed.barrier("jaxsal_map_store_ready")
            if cluster.process_id != 0:
                self.store = MapStore.open(plan.maps_path, clean=False)
        self.seconds += time.perf_counter() - t

    def write(self, block) -> None:
        shard = self._shard_at[block.start]
        if shard in self.kept:
            return
        t = time.perf_counter()
        stimuli = self.shards[shard]
        scale = self.store.write_maps(stimuli, block.channels.start, block.maps)
        if block.values is not None:
            self._values = block.values
        if scale is not None:
            self._scales.append(scale)
        if block.last:
            scales = np.concatenate(self._scales) if self._scales else None
            self.store.finish_shard(shard, stimuli, self._values, scales)
            self._values, self._scales = None, []
        self.seconds += time.perf_counter() - t

    def commit(self) -> pathlib.Path | None:
        """Mark the store complete (process 0, after every process is done); its path on
        process 0, None on the others."""
        t = time.perf_counter()
        cluster = self.plan.cluster
        if cluster.is_multi:
            distributed.barrier("jaxsal_map_store_written")
        path = None
        if cluster.process_id == 0:
            path = self.store.path
            if self.store.complete():
                self.reporter.info(f"maps saved to {path}")
            else:
                self.reporter.warn(f"the map store {path} is incomplete: "
                                   f"{self._missing()}")
        self.seconds += time.perf_counter() - t
        return path

    def _missing(self) -> str:
        n = len(self.shards)
        return f"{n - len(self.store.done())} of {n} stimulus shards missing"

    def abort(self, error: BaseException | None = None) -> None:
        """After a failure: say how to continue (an OutputError says it already)."""
        if error is not None and not isinstance(error, OutputError):
            self.reporter.info(f"the map store {self.plan.maps_path} is incomplete "
                               f"({self._missing()}): run the same command with -resume to "
                               f"continue it")


# ---------------------------------------------------------------------------------------------
# The run


class Pipeline:
    """The stages of one run. Constructing it starts the work that needs no JAX -- decoding
    (threads) and the figure workers (processes) -- so that it overlaps importing JAX and
    loading the weights (`load_net`); `execute(net)` runs the rest. Close it (or use it as a
    context manager) to stop both.

    The stimuli are cut into shards (`jaxsal.distributed`); in a multi-process run this process
    computes only its shards and draws their figures (global numbers and file names). A resumed
    zarr run computes only the shards its store lacks, and the shards of figures not yet drawn.
    """

    def __init__(self, plan: Plan, reporter: Reporter | None = None):
        self.plan = plan
        self.reporter = Reporter() if reporter is None else reporter
        n = len(plan.stimuli.paths)
        per_shard = plan.stimuli_per_shard or max(1, n)  # 0 (a Plan made by hand): one shard
        self.shards = distributed.shard_ranges(n, per_shard)
        owned = plan.cluster.my_shards(len(self.shards))
        ours = set(owned)
        # (global figure number k, global stimulus indices) of the figures this process draws
        self.figures = [(k + 1, cols) for k, cols in enumerate(render.figure_slices(n))
                        if cols.start // per_shard in ours]
        kept = plan.store.done if plan.store is not None else frozenset()
        if plan.resume and plan.out is not None:
            drawn = [f for f in self.figures
                     if render.figure_path(plan.out, plan.net, plan.layer, f[0]).exists()]
            self.figures = [f for f in self.figures if f not in drawn]
            self._say_resume(kept, len(drawn))
        to_draw = {cols.start // per_shard for _, cols in self.figures}
        # The shards this process computes, in order: all of its own but those a resumed store
        # holds and whose figures are drawn.
        self.work = [s for s in owned if s not in kept or s in to_draw]
        self.mine = [i for s in self.work for i in self.shards[s]]
        if len(plan.channels) > len(plan.figure_channels):
            self.reporter.info(
                f"figures show the first {len(plan.figure_channels)} of the "
                f"{len(plan.channels)} channels; the maps of all {len(plan.channels)} are saved "
                f"to {plan.maps_path}")
        self.decoder = Decoder(plan, self.mine, self.figures)
        self.figure_sink = None
        try:
            self.figure_sink = FigureSink(plan, self.figures, self.reporter)
        except BaseException:
            self.close()
            raise
        self.assembly = FigureAssembly(plan, self.figures, self.reporter)

    def _say_resume(self, kept: frozenset, n_drawn: int) -> None:
        if self.plan.store is None:
            self.reporter.info(f"no map store to resume at {self.plan.maps_path}: starting it")
            return
        self.reporter.info(f"resuming {self.plan.maps_path}: {len(kept)} of {len(self.shards)} "
                           f"stimulus shards and {n_drawn} figures already done")

    @property
    def _store_run(self) -> bool:
        return self.plan.save_maps and self.plan.maps_format == "zarr"

    def execute(self, net) -> RunReport:
        """Compute, draw and save; `Finish: i/n` after each figure, in order."""
        plan = self.plan
        if plan.out is not None:
            plan.out.mkdir(parents=True, exist_ok=True)
        store = self._store_run
        if store:  # one batch per shard, in the call shape of the store (if resumed)
            batches = [len(self.shards[s]) for s in self.work]
            core = Core(plan, net, plan.stimuli_per_shard, self.reporter,
                        plan.store.compute if plan.store is not None else None)
        else:
            batches = None
            core = Core(plan, net, len(self.mine), self.reporter)
        map_sink = None
        maps_path = None
        try:
            if store:
                map_sink = StoreSink(plan, self.work, self.shards, self.reporter, core.compute)
            elif plan.save_maps:
                map_sink = MapSink(plan, self.mine, self.reporter)
            progress = self.reporter.progress(len(self.mine))
            n_blocks = -(-len(plan.channels0) // core.block)
            for block in core.blocks(self._inputs(), len(self.mine), batches, values=store):
                b = block.maps.shape[1]
                if map_sink is not None:
                    map_sink.write(block)
                self.assembly.add_maps(self.mine[block.start:block.start + b],
                                       block.channels.start, block.maps)
                blocks_done = -(-block.channels.stop // core.block)
                progress.update(block.start + b * blocks_done // n_blocks)
                for _, cols, job in self.assembly.ready():
                    self.figure_sink.submit(cols, job)
            self.figure_sink.finish(block=True)
            if map_sink is not None:
                maps_path = map_sink.commit()
        except BaseException as error:
            if map_sink is not None:
                map_sink.abort(error)
            raise
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
    return weights_record(weights)


def load_net(plan: Plan, reporter: Reporter | None = None):
    """Tune the CPU if JAX has not started yet, join the cluster (if any), import JAX and put
    the weights on the device(s)."""
    xla_config.tune_cpu_on_first_use(reporter)  # before JAX's first computation
    if plan.cluster.is_multi:  # must come before JAX's first computation
        distributed.initialize(plan.cluster)
    _, net = _device()
    return net.net_from_weights(plan.spec, plan.weights, reporter)


def _compilation_cache(reporter: Reporter):
    """jaxsal's compilation cache (`$JAXSAL_HOME/xla`), enabled; None if it cannot be used
    (said in one line: it is optional)."""
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
