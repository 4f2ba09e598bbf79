"""Running the core over many images: fixed-size batches, padding, overlap of host and device.

`jaxsal.saliency.compiled_saliency` is the pure jitted function; this module feeds it. Every
batch has the same shape (the last one is padded), so a run compiles once.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsal.errors import UsageError
from jaxsal.saliency import Net, check_method, check_precision, compiled_saliency


def pick_batch_size(n_images: int, batch_size: int | None) -> int:
    """The fixed batch size of a run: the requested size (or a default), no larger than needed,
    and a multiple of the local device count so the batch shards evenly."""
    n_dev = jax.local_device_count()
    if batch_size is None:
        batch_size = default_batch_size()
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    size = min(batch_size, max(n_images, 1))
    return -(-size // n_dev) * n_dev


def default_batch_size() -> int:
    """A batch size that keeps one batch's activations and gradients well inside memory."""
    return 32


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
) -> Iterator[np.ndarray]:
    """Stream maps batch by batch: yields float32 (K, b, 3, S, S) for each consecutive batch of
    `inputs` (normalized (S, S, 3) float32 arrays), b = the real images in that batch.

    The next batch is dispatched before the previous one is fetched, so host work (decoding the
    next images, rendering) overlaps device work.
    """
    check_method(method)
    check_precision(precision)
    net.check_layer(layer)
    channels = net.spec.check_channels(layer, channels)
    fn = compiled_saliency(net.spec, layer, method, precision)
    size = pick_batch_size(n_images, batch_size)
    ch0 = jnp.asarray(np.asarray(channels, np.int32) - 1)
    pending = None
    for batch in _batches(inputs, size):
        real = batch.shape[0]
        if real < size:
            batch = np.concatenate([batch, np.zeros((size - real,) + batch.shape[1:], batch.dtype)])
        result = (fn(net.params, jnp.asarray(batch), ch0), real)
        if pending is not None:
            yield np.asarray(pending[0])[:, : pending[1]]
        pending = result
    if pending is not None:
        yield np.asarray(pending[0])[:, : pending[1]]


def _batches(inputs: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    chunk = []
    for x in inputs:
        chunk.append(np.asarray(x, np.float32))
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


