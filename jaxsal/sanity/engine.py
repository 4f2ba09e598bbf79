"""The sanity checks over a plan's stimuli, on the device: fixed-size batches, numpy results.

Per batch of stimuli (every batch the same size, the last one padded, so each function below
compiles once per run) and per method:

1. the maps of the trained network (`jaxsal.core.compiled_saliency`, inlined in one jitted
   function that also reduces and ranks them: `similarity.map_stats`);
2. randomisation tests: the same jitted function under each randomised parameter set
   (`randomise.parameter_sets`) -- the parameters are an argument, so every stage of both tests
   shares one compilation -- and the similarities to the trained maps, computed on the device:
   only (K, B, 4) numbers come back per stage;
3. deletion and insertion: the trained maps' pixel order (from their `MapStats`) and the unit's
   value for every step's masked input (`curves.masked_targets`), a fixed number of steps per
   call; the random order once per stimulus, for all channels.

`run` returns a `Results` of numpy arrays; `jaxsal.sanity.frame` makes the table of them.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxsal.batching import device_mesh, pick_batch_size
from jaxsal.core import compiled_saliency
from jaxsal.methods import Method
from jaxsal.models import NetSpec
from jaxsal.net import Net
from jaxsal.reporting import Reporter
from jaxsal.sanity import curves, randomise
from jaxsal.sanity.plan import CheckPlan
from jaxsal.sanity.similarity import (SIMILARITIES, map_stats, reduce_maps, similarities,
                                      topk_count)
from jaxsal.stimuli import load_image, preprocess

RANDOM = "random"  # the method name of the random pixel order's rows
CURVE_IMAGES = 64  # masked inputs per forward pass, at least one step of one batch


@dataclasses.dataclass
class Results:
    """What a check measured, as arrays (K channels, N stimuli, L randomised stages top-down,
    T = steps + 1 points per curve).

    similarity: {(mode, method): (L, K, N, len(SIMILARITIES))}, mode cascading / independent.
    curves: {(test, method or RANDOM): (T, K, N)} the unit's raw value at each step.
    fractions: (T,) the fraction of pixels removed or inserted at each step, t / steps.
    grid: {method: (1 + L, S, S)} |map| of the first stimulus and channel, trained then after
      each cascading stage (empty without the cascading test).
    picture: (S, S, 3) the first stimulus's normalised network input.
    """

    stages: tuple[str, ...]
    similarity: dict
    curves: dict
    fractions: np.ndarray
    grid: dict
    picture: np.ndarray


@functools.lru_cache(maxsize=32)
def _stats_fn(spec: NetSpec, layer: str, method: Method, precision: str):
    """Jitted (params, images, channels0) -> `MapStats` (K, B, ...) of the method's maps under
    any parameters (`compiled_saliency`, inlined), reduced and ranked on the device."""
    saliency = compiled_saliency(spec, layer, method, precision)

    def fn(params, images, channels0):
        maps = saliency(params, images, channels0).astype(jnp.float32)
        return map_stats(*reduce_maps(maps, method.info.maps_2d))

    return jax.jit(fn)


_similarities = jax.jit(similarities, static_argnums=2)


@functools.lru_cache(maxsize=8)
def _curve_fn(spec: NetSpec, layer: str, precision: str):
    return jax.jit(functools.partial(curves.masked_targets, spec, layer, precision))


_baselines = jax.jit(curves.baseline_images, static_argnums=1)


def curve_values(spec: NetSpec, layer: str, precision: str, params, images, baselines,
                 positions, counts: np.ndarray, insert: bool, channels0) -> np.ndarray:
    """(T, R, B, K): the unit values of every step (`counts`, T) of R pixel orders, computed a
    fixed number of steps per call (the last call's steps padded by repeating the last)."""
    per_call = max(1, CURVE_IMAGES // (positions.shape[0] * positions.shape[1]))
    n = counts.shape[0]
    padded = np.concatenate([counts, np.repeat(counts[-1:], -n % per_call)])
    fn = _curve_fn(spec, layer, precision)
    parts = [fn(params, images, baselines, positions, jnp.asarray(padded[i:i + per_call]),
                jnp.asarray(insert), channels0) for i in range(0, len(padded), per_call)]
    return np.concatenate([np.asarray(p) for p in parts])[:n]


class _Ticker:
    """Progress in stimuli done, each batch's stimuli counted out over its units of work (the
    trained maps, each parameter set, each curve): one batch can take minutes."""

    def __init__(self, progress, units: int):
        self.progress, self.units = progress, units
        self.start = self.real = self.done = 0

    def batch(self, start: int, real: int) -> None:
        self.start, self.real, self.done = start, real, 0

    def tick(self) -> None:
        self.done += 1
        self.progress.update(self.start + self.real * self.done // self.units)


def _decode(plan: CheckPlan, indices) -> np.ndarray:
    spec, paths = plan.run.spec, plan.run.stimuli.paths
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(lambda i: preprocess(load_image(paths[i]),
                                                            spec.preprocessing), indices)))


def run(plan: CheckPlan, net: Net, reporter: Reporter | None = None,
        draws: dict[str, dict] | None = None) -> Results:
    """Every test of `plan` on every stimulus; progress on `reporter`'s stderr. `draws`: the
    re-initialised parameters {stage: {flat key: array}} (default: `randomise.draw_on_device`;
    another tool's values, to compare with it on the same randomised networks)."""
    p = plan.run
    spec, layer, precision = p.spec, p.layer, p.precision
    reporter = reporter or Reporter()
    n, k_channels, n_pixels = len(p.stimuli), len(p.channels0), spec.input_size ** 2
    steps, k = plan.steps, topk_count(n_pixels, plan.topk)
    counts = curves.step_counts(n_pixels, steps)
    channels0 = jnp.asarray(p.channels0, jnp.int32)
    params = net.params
    if draws is None:
        draws = randomise.draw_on_device(spec, plan.stages, plan.rand_seed)
    sets = {mode: randomise.parameter_sets(params, plan.stages, draws, mode)
            for mode in plan.mprt_modes}
    names = [m.name for m in plan.methods]
    similarity = {(mode, m): np.full((len(plan.stages), k_channels, n, len(SIMILARITIES)), np.nan,
                                     np.float32) for mode in plan.mprt_modes for m in names}
    curve_rows = {(t, m): np.full((steps + 1, k_channels, n), np.nan, np.float32)
                  for t in plan.curve_tests for m in names + [RANDOM]}
    grid: dict[str, np.ndarray] = {}

    size = pick_batch_size(n, p.batch_size, net, layer, k_channels)
    sharding = NamedSharding(device_mesh(), PartitionSpec("batch"))
    units = (len(plan.methods) * (1 + len(plan.stages) * len(plan.mprt_modes)
                                  + len(plan.curve_tests)) + len(plan.curve_tests))
    ticker = _Ticker(reporter.progress(n), units)
    picture = None
    for start in range(0, n, size):
        indices = list(range(start, min(n, start + size)))
        real = len(indices)
        x = _decode(plan, indices)
        if picture is None:
            picture = x[0]
        x = np.concatenate([x, np.zeros((size - real,) + x.shape[1:], x.dtype)])
        x = jax.device_put(x, sharding)
        cols = slice(start, start + real)
        ticker.batch(start, real)
        baselines = _baselines(x, plan.fill) if plan.curve_tests else None
        for method in plan.methods:
            stats_fn = _stats_fn(spec, layer, method, precision)
            trained = stats_fn(params, x, channels0)
            first = [np.asarray(trained.magnitude)[0, 0]] if start == 0 else None
            ticker.tick()
            for mode in plan.mprt_modes:
                for i, (_, stage_params) in enumerate(sets[mode]):
                    randomised = stats_fn(stage_params, x, channels0)
                    sims = _similarities(trained, randomised, k)
                    similarity[(mode, method.name)][i, :, cols] = np.asarray(sims)[:, :real]
                    if first is not None and mode == randomise.CASCADING:
                        first.append(np.asarray(randomised.magnitude)[0, 0])
                    ticker.tick()
            if first is not None and randomise.CASCADING in plan.mprt_modes:
                grid[method.name] = np.stack(first)
            positions = trained.positions
            for test in plan.curve_tests:
                values = curve_values(spec, layer, precision, params, x, baselines, positions,
                                      counts, test == "insertion", channels0)  # (T, K, B, K)
                diagonal = np.diagonal(values, axis1=1, axis2=3)  # (T, B, K): order k, unit k
                curve_rows[(test, method.name)][:, :, cols] = diagonal[:, :real].transpose(0, 2, 1)
                ticker.tick()
        if plan.curve_tests:
            stimulus = indices + [n] * (size - real)  # padding: any seed
            positions = jax.device_put(  # (1, B, P): one order per stimulus, for every channel
                curves.random_positions(plan.rand_seed, stimulus, n_pixels)[None])
            for test in plan.curve_tests:
                values = curve_values(spec, layer, precision, params, x, baselines, positions,
                                      counts, test == "insertion", channels0)  # (T, 1, B, K)
                curve_rows[(test, RANDOM)][:, :, cols] = values[:, 0, :real].transpose(0, 2, 1)
                ticker.tick()
    return Results(stages=plan.stages, similarity=similarity, curves=curve_rows,
                   fractions=np.arange(steps + 1) / steps, grid=grid, picture=picture)
