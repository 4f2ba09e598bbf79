"""Running the core over many images: fixed-size batches, all local devices, overlap, OOM retry.

`jaxsal.core.compiled_saliency` is the pure jitted function; this module feeds it.
- Every batch has the same shape (the last one is padded), so a run compiles once.
- A batch is sharded along the image axis over a 1-D mesh of all local devices (weights are
  replicated); one code path for any device count.
- The next batch is dispatched before the previous one is fetched, so host work (decoding the
  next images, rendering figures) overlaps device work.
- Out of device memory, the batch size is halved and the batch recomputed, instead of crashing.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsal.core import compiled_saliency
from jaxsal.errors import UsageError
from jaxsal.net import Net
from jaxsal.reporting import Reporter
from jaxsal.request import check_batch_size

# Largest batch worth using per platform: beyond it throughput stops growing (CPU caches) while
# latency to the first figure and host memory keep growing.
_MAX_BATCH_PER_DEVICE = {"cpu": 64, "gpu": 512, "tpu": 512}


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


class _Batcher:
    """Dispatches fixed-size, padded, sharded batches; shrinks the size on out-of-memory."""

    def __init__(self, fn, params, channels0, size: int, mesh: Mesh, reporter: Reporter):
        self.fn, self.size, self.mesh, self.reporter = fn, size, mesh, reporter
        self.n_dev = mesh.devices.size
        self.images_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.params = jax.device_put(params, replicated)
        self.channels0 = jax.device_put(channels0, replicated)

    def dispatch(self, batch: np.ndarray) -> list:
        """Start computing `batch` (b <= any size) in chunks of the current size; returns
        [(device result, real count)] without waiting."""
        out = []
        for start in range(0, batch.shape[0], self.size):
            chunk = batch[start : start + self.size]
            real = chunk.shape[0]
            if real < self.size:
                pad = np.zeros((self.size - real,) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            x = jax.device_put(chunk, self.images_sharding)
            out.append((self.fn(self.params, x, self.channels0), real))
        return out

    def fetch(self, batch: np.ndarray, started: list) -> np.ndarray:
        """The maps of `batch` (K, b, ...), recomputing with smaller batches on out-of-memory."""
        while True:
            try:
                parts = [np.asarray(result)[:, :real] for result, real in started]
                return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            except Exception as error:  # noqa: BLE001 - XLA's error type varies by version
                if not is_out_of_memory(error):
                    raise
                if self.size <= self.n_dev:
                    raise UsageError(
                        "out of device memory even with one image per device; use a smaller "
                        "target layer, fewer channels, or a device with more memory") from None
                self.size = max(self.n_dev, (self.size // 2) // self.n_dev * self.n_dev)
                self.reporter.info(f"out of device memory; retrying with batch size {self.size}")
                started = self.dispatch(batch)


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
    fn = compiled_saliency(net.spec, layer, method, precision)
    size = pick_batch_size(n_images, batch_size, net, layer, len(channels))
    batcher = _Batcher(fn, net.params, np.asarray(channels, np.int32) - 1, size, device_mesh(),
                       Reporter() if reporter is None else reporter)
    pending = None
    for batch in _batches(inputs, size):
        started = (batch, batcher.dispatch(batch))
        if pending is not None:
            yield batcher.fetch(*pending)
        pending = started
    if pending is not None:
        yield batcher.fetch(*pending)


def _batches(inputs: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    chunk = []
    for x in inputs:
        chunk.append(np.asarray(x, np.float32))
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)
