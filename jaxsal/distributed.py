"""Spreading one run over several processes or hosts with JAX's multi-controller runtime.

Every process runs the same command with its own -process_id. The stimuli are cut into shards of
whole figures (`stimuli_per_shard`; a figure is a slice of 6 stimuli), dealt round-robin:
process p computes shards p, p+P, ... -- a disjoint, deterministic share in which no figure and
no shard of a zarr map store straddles two processes, and figure file names stay global, so
nothing clashes. With -maps_format zarr each process writes its own shards of the store; with
the .npz (small runs), each process writes its share to a part file in the (shared) output
folder, and after a barrier process 0 merges the parts into the one .npz file and removes them.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import pathlib

from jaxsal import arguments
from jaxsal.errors import UsageError

# Stimuli per shard at most: 10 figures. A shard is a map store's unit of writing and of resuming
# (one shard file per channel, a few tens of MB at 224x224) and a process's unit of work.
MAX_STIMULI_PER_SHARD = 60


def stimuli_per_shard(n_stimuli: int, n_processes: int, per_figure: int) -> int:
    """Stimuli per shard for a run: whole figures (of `per_figure` stimuli), at most
    MAX_STIMULI_PER_SHARD, about equal shards, at least one per process when there are enough
    figures; all the stimuli when they make one shard (then not necessarily whole figures)."""
    n_shards = max(n_processes, -(-n_stimuli // MAX_STIMULI_PER_SHARD))
    size = -(-n_stimuli // n_shards)
    size = -(-size // per_figure) * per_figure
    return max(1, n_stimuli) if size >= n_stimuli else size


def shard_ranges(n_stimuli: int, per_shard: int) -> list[range]:
    """The stimulus indices of each shard, in order."""
    return [range(s, min(s + per_shard, n_stimuli)) for s in range(0, n_stimuli, per_shard)]


def check_address(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT address (an IPv6 host in brackets: [::1]:1234), checked
    with the other flags: JAX would fail on a malformed one deep inside, after loading."""
    arguments.name("-coordinator_address", address)
    usage = (f"-coordinator_address must be HOST:PORT, e.g. 10.0.0.1:1234 or [::1]:1234 "
             f"(IPv6 in brackets), got {address!r}")
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]:")
        if not bracket or not host:
            raise UsageError(usage)
        try:
            ipaddress.IPv6Address(host.split("%")[0])  # %: a scope, e.g. [fe80::1%eth0]
        except ValueError:
            raise UsageError(f"-coordinator_address: {host!r} in brackets is not an IPv6 "
                             f"address, in {address!r}") from None
    else:
        host, colon, port = address.rpartition(":")
        if not colon or not host or ":" in host or any(c.isspace() for c in host):
            raise UsageError(usage)
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"-coordinator_address: the port must be a number in 1..65535, got "
                         f"{port!r} in {address!r}")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class Cluster:
    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None

    @property
    def is_multi(self) -> bool:
        return self.num_processes > 1

    def check(self) -> "Cluster":
        arguments.whole_number("-num_processes", self.num_processes, minimum=1)
        arguments.whole_number("-process_id", self.process_id)
        if self.coordinator_address is not None:
            check_address(self.coordinator_address)
        if not 0 <= self.process_id < self.num_processes:
            raise UsageError(f"-process_id must be in 0..{self.num_processes - 1}, got {self.process_id}")
        if self.is_multi and not self.coordinator_address:
            raise UsageError("-num_processes > 1 needs -coordinator_address HOST:PORT (process 0's "
                             "address, the same for every process)")
        return self

    def my_shards(self, n_shards: int) -> list[int]:
        """0-based indices of the shards this process computes."""
        return list(range(self.process_id, n_shards, self.num_processes))


def initialize(cluster: Cluster, timeout_s: int = 300) -> None:
    """Join the run's processes (blocks until all have joined)."""
    import jax

    try:  # CPU processes need a collectives backend for the barrier
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older/newer jax without the option
        pass
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address, num_processes=cluster.num_processes,
        process_id=cluster.process_id, initialization_timeout=timeout_s)


def barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def part_path(final: pathlib.Path, cluster: Cluster) -> pathlib.Path:
    return final.with_name(f"{final.stem}.part{cluster.process_id}-of-{cluster.num_processes}.npz")


def merge_parts(final: pathlib.Path, cluster: Cluster, shape: tuple[int, ...], meta: dict) -> pathlib.Path:
    """Process 0: gather every part's maps (with their global stimulus indices) into `final`."""
    import numpy as np

    from jaxsal.maps_io import MapWriter

    writer = MapWriter(final, shape, meta)
    parts = [part_path(final, dataclasses.replace(cluster, process_id=p))
             for p in range(cluster.num_processes)]
    try:
        seen = np.zeros(shape[1], bool)
        for part in parts:
            with np.load(part) as z:
                indices = z["indices"]
                if len(indices):
                    writer.write_at(indices, z["maps"])
                seen[indices] = True
        if not seen.all():
            raise RuntimeError(f"merged maps miss stimuli {np.flatnonzero(~seen)[:10].tolist()}")
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    for part in parts:
        part.unlink(missing_ok=True)
    return path
