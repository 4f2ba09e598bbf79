"""Running the core over many images and channels: fixed-size batches, channel blocks, all local
devices, overlap, OOM retry.

`jaxsal.core.compiled_saliency` (and, for many channels, `jaxsal.core.compiled_blocks`) are the
pure jitted functions; this module feeds them.
- Every batch has the same shape (the last one is padded), so a run compiles once.
- Channels are computed in blocks of a fixed size (the last one padded), chosen from the
  device's memory: one forward per batch, then each block's VJPs (`iter_blocks`). A run whose
  channels fit in one block makes one call per batch, as before.
- A batch is sharded along the image axis over a 1-D mesh of all local devices (weights are
  replicated); one code path for any device count.
- The next batch is dispatched before the previous one is fetched, so host work (decoding the
  next images, rendering figures) overlaps device work.
- Out of device memory, the batch size is halved and the batch recomputed, instead of crashing.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsal.core import compiled_blocks, compiled_saliency
from jaxsal.errors import UsageError
from jaxsal.net import Net
from jaxsal.reporting import Reporter
from jaxsal.request import check_batch_size

# Largest batch worth using per platform: beyond it throughput stops growing (CPU caches) while
# latency to the first figure and host memory keep growing.
_MAX_BATCH_PER_DEVICE = {"cpu": 64, "gpu": 512, "tpu": 512}
# Largest channel block per platform. On CPUs throughput is flat in the block size (each block's
# VJPs are already one large batched convolution per layer) while memory grows with it, so the
# block stays small; accelerators need larger calls to be kept busy (not measured yet).
_MAX_BLOCK = {"cpu": 8, "gpu": 64, "tpu": 64}


def device_mesh() -> Mesh:
    """A 1-D mesh named 'batch' over every local device."""
    return Mesh(np.asarray(jax.local_devices()), ("batch",))


def bytes_per_image(net: Net, layer: str, n_channels: int, dtype_bytes: int = 4) -> int:
    """Rough device memory of one image in one call: the activations kept for the backward pass
    up to `layer` (every intermediate result, block internals included), plus one
    cotangent/gradient set per channel, plus the input and its maps, times 2 for XLA's
    temporaries. Deliberately pessimistic."""
    activations = net.spec.layer(layer).activations
    s = net.spec.input_size
    image = 3 * s * s
    return 2 * dtype_bytes * (activations * (1 + n_channels) + image * (1 + 2 * n_channels))


def device_memory_bytes(device) -> int | None:
    """Memory available to `device`: the allocator's limit on accelerators, free RAM on a CPU."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def default_batch_size(net: Net, layer: str, n_channels: int) -> int:
    """Images per device batch that fit in half of the device's free memory, capped where
    throughput stops improving; times the number of local devices."""
    device = jax.local_devices()[0]
    cap = _MAX_BATCH_PER_DEVICE.get(device.platform, 64)
    memory = device_memory_bytes(device)
    if memory is not None:
        cap = max(1, min(cap, memory // 2 // bytes_per_image(net, layer, n_channels)))
    return cap * jax.local_device_count()


def max_block() -> int:
    return _MAX_BLOCK.get(jax.local_devices()[0].platform, 8)


def channel_block_size(net: Net, layer: str, n_channels: int, images_per_call: int) -> int:
    """Channels per call: as many as fit, with `images_per_call` images, in half of the
    device's free memory (`bytes_per_image` grows linearly with them), at most `max_block()`
    and `n_channels`, at least 1."""
    block = min(n_channels, max_block())
    memory = device_memory_bytes(jax.local_devices()[0])
    if memory is not None:
        per_device = max(1, images_per_call // jax.local_device_count())
        fixed = bytes_per_image(net, layer, 0)
        per_channel = bytes_per_image(net, layer, 1) - fixed
        block = min(block, (memory // 2 // per_device - fixed) // per_channel)
    return max(1, block)


def call_shape(net: Net, layer: str, n_channels: int, n_images: int,
               batch_size: int | None = None) -> tuple[int, int]:
    """(images per call, channels per call) of a run of `n_images` (or of units of that many):
    the batch as `pick_batch_size` chooses it for one channel block, then the block that fits
    with it (`channel_block_size`)."""
    size = pick_batch_size(n_images, batch_size, net, layer, min(n_channels, max_block()))
    return size, channel_block_size(net, layer, n_channels, size)


def pick_batch_size(n_images: int, batch_size: int | None, net: Net | None = None,
                    layer: str | None = None, n_channels: int = 1) -> int:
    """The fixed batch size of a run, a multiple of the local device count so it shards evenly.

    All the images in one batch if they fit in the requested size (or the one chosen from the
    device memory); otherwise batches of about equal size, rounded up to a multiple of 1/8 of
    that size: 65 images at 64 per batch run as 2 x 40, not 64 + 64 with 63 of padding, while
    large runs share at most 8 batch shapes, i.e. compilations kept in the persistent cache.
    """
    n_dev = jax.local_device_count()
    if batch_size is None:
        batch_size = default_batch_size(net, layer, n_channels) if net is not None else 32
    batch_size = check_batch_size(batch_size)
    n_images = max(n_images, 1)
    if n_images <= batch_size:
        size = n_images
    else:
        step = max(1, batch_size // 8)
        equal = -(-n_images // -(-n_images // batch_size))
        size = min(batch_size, -(-equal // step) * step)
    return -(-size // n_dev) * n_dev


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


@dataclasses.dataclass(frozen=True)
class ChannelBlock:
    """The maps of one block of channels for one batch of stimuli.

    start: the batch's first stimulus, counted from the start of the input stream; its
      `maps.shape[1]` stimuli follow. channels: positions in the requested channel list.
    maps: float32 (len(channels), b, 3, S, S), or (len(channels), b, S, S) for 2-D methods.
    values: (K, b) float32, the targets' values of all K channels on these stimuli -- with the
      first block of a batch, when asked for; else None. last: the batch's last block.
    """

    start: int
    channels: range
    maps: np.ndarray
    values: np.ndarray | None
    last: bool


@dataclasses.dataclass
class _Chunk:
    x: object  # device images (size, S, S, 3), padded
    real: int
    state: object = None  # compiled_blocks' forward state
    values: object = None  # (K, size) device array


@dataclasses.dataclass
class _Batch:
    images: np.ndarray
    chunks: list


class _Engine:
    """Dispatches fixed-size, padded, sharded calls of the core: per batch the forward(s), then
    one call per channel block; shrinks the images per call on out-of-memory."""

    def __init__(self, net: Net, layer: str, method, precision: str, channels0: np.ndarray,
                 size: int, block: int, values: bool, mesh: Mesh, reporter: Reporter):
        self.size, self.mesh, self.reporter = size, mesh, reporter
        self.n_dev = mesh.devices.size
        self.images_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.params = jax.device_put(net.params, replicated)
        k = len(channels0)
        block = min(block, k)
        # Channel blocks of one size: the last is padded by repeating its channels (np.resize).
        starts = range(0, k, block)
        self.ranges = [range(s, min(s + block, k)) for s in starts]
        self.blocks = [jax.device_put(np.resize(channels0[r.start:r.stop], block), replicated)
                       for r in self.ranges]
        self.channels0 = jax.device_put(channels0, replicated)
        self.values = values
        self.fused = len(self.ranges) == 1 and not values
        if self.fused:  # one call per batch, as for a few channels
            self.fn = compiled_saliency(net.spec, layer, method, precision)
        else:
            self.forward, self.backward = compiled_blocks(net.spec, layer, method, precision)

    def start(self, images: np.ndarray) -> _Batch:
        """Dispatch the forward(s) of a batch (any number of images, in calls of the current
        size), without waiting."""
        chunks = []
        for s in range(0, images.shape[0], self.size):
            part = images[s : s + self.size]
            real = part.shape[0]
            if real < self.size:
                pad = np.zeros((self.size - real,) + part.shape[1:], part.dtype)
                part = np.concatenate([part, pad])
            chunk = _Chunk(jax.device_put(part, self.images_sharding), real)
            if not self.fused:
                chunk.state, chunk.values = self.forward(self.params, chunk.x, self.channels0)
            chunks.append(chunk)
        return _Batch(images, chunks)

    def dispatch(self, batch: _Batch, j: int) -> tuple[list, list]:
        """Start block j of a started batch: (the chunks it uses, device results)."""
        if self.fused:
            return batch.chunks, [self.fn(self.params, c.x, self.channels0) for c in batch.chunks]
        return batch.chunks, [self.backward(self.params, c.x, c.state, self.blocks[j])
                              for c in batch.chunks]

    def fetch(self, batch: _Batch, j: int, dispatched: tuple[list, list]) -> tuple:
        """(maps (len(block j), b, ...), values (K, b) or None) of block j, recomputing the
        batch with fewer images per call on out-of-memory."""
        while True:
            chunks, results = dispatched
            if chunks is not batch.chunks:  # dispatched before the batch was restarted smaller
                chunks, results = dispatched = self.dispatch(batch, j)
            try:
                n = len(self.ranges[j])
                maps = _concat([np.asarray(r)[:n, : c.real] for r, c in zip(results, chunks)])
                values = None
                if self.values and j == 0:
                    values = _concat([np.asarray(c.values)[:, : c.real] for c in chunks])
                return maps, values
            except Exception as error:  # noqa: BLE001 - XLA's error type varies by version
                if not is_out_of_memory(error):
                    raise
                if self.size <= self.n_dev:
                    raise UsageError(
                        "out of device memory even with one image per device; use a smaller "
                        "target layer, fewer channels, or a device with more memory") from None
                self.size = max(self.n_dev, (self.size // 2) // self.n_dev * self.n_dev)
                self.reporter.info(f"out of device memory; retrying with batch size {self.size}")
                batch.chunks = self.start(batch.images).chunks
                dispatched = self.dispatch(batch, j)


def _concat(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def iter_blocks(
    net: Net,
    inputs: Iterable[np.ndarray],
    layer: str,
    channels: Sequence[int],
    method="guided",
    *,
    size: int,
    block: int,
    precision: str = "highest",
    values: bool = False,
    batches: Iterable[int] | None = None,
    reporter: Reporter | None = None,
) -> Iterator[ChannelBlock]:
    """Stream maps block by block: for each batch of `inputs` (normalized (S, S, 3) float32
    arrays), its channel blocks in channel order (`ChannelBlock`).

    size, block: images and channels per call (`call_shape`); every call has that shape (the
    last batch and the last block are padded), so a run compiles once. batches: how many
    inputs each batch takes (default: `size`); a larger batch is computed in several calls
    whose forward results are all kept while its blocks are computed. values: also return the
    targets' values (with each batch's first block). The next block (or batch) is dispatched
    before the last one is fetched, so host work overlaps device work. The arguments are checked
    by the caller (`jaxsal.saliency`, `jaxsal.request.validate`). `reporter` gets the
    out-of-memory retry line (default: `jaxsal: ...` on stderr).
    """
    engine = _Engine(net, layer, method, precision, np.asarray(channels, np.int32) - 1, size,
                     block, values, device_mesh(), Reporter() if reporter is None else reporter)
    n_blocks = len(engine.ranges)
    pending = None
    start = 0
    for images in _batches(inputs, size if batches is None else batches):
        batch = engine.start(images)
        for j in range(n_blocks):
            started = (start, batch, j, engine.dispatch(batch, j))
            if pending is not None:
                yield _finish(engine, n_blocks, *pending)
            pending = started
        start += images.shape[0]
    if pending is not None:
        yield _finish(engine, n_blocks, *pending)


def _finish(engine: _Engine, n_blocks: int, start: int, batch: _Batch, j: int,
            dispatched) -> ChannelBlock:
    maps, values = engine.fetch(batch, j, dispatched)
    return ChannelBlock(start, engine.ranges[j], maps, values, j == n_blocks - 1)


def iter_saliency(
    net: Net,
    inputs: Iterable[np.ndarray],
    layer: str,
    channels: Sequence[int],
    method: str = "guided",
    *,
    n_images: int,
    batch_size: int | None = None,
    precision: str = "highest",
    reporter: Reporter | None = None,
) -> Iterator[np.ndarray]:
    """Stream maps batch by batch: yields float32 (K, b, ...) maps for each consecutive batch of
    `inputs` (normalized (S, S, 3) float32 arrays), b = the real images in that batch. The
    arguments are checked by the caller (`jaxsal.saliency`, `jaxsal.request.validate`).
    `reporter` gets the out-of-memory retry line (default: `jaxsal: ...` on stderr)."""
    size, block = call_shape(net, layer, len(channels), n_images, batch_size)
    parts = []
    for result in iter_blocks(net, inputs, layer, channels, method, size=size, block=block,
                              precision=precision, reporter=reporter):
        parts.append(result.maps)
        if result.last:
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)
            parts = []


def _batches(inputs: Iterable[np.ndarray], sizes: int | Iterable[int]) -> Iterator[np.ndarray]:
    """Consecutive batches of `inputs`: of `sizes` each (an int), or of the given sizes in turn
    (the last batch may be short)."""
    sizes = itertools.repeat(sizes) if isinstance(sizes, int) else iter(sizes)
    want = next(sizes, None)
    chunk = []
    for x in inputs:
        chunk.append(np.asarray(x, np.float32))
        if len(chunk) == want:
            yield np.stack(chunk)
            chunk, want = [], next(sizes, None)
    if chunk:
        yield np.stack(chunk)
