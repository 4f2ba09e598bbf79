"""Batching, multi-device sharding, batch-size choice and out-of-memory retry (on TinyNet)."""
import io
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_net
from jaxsal import batching as runner
from jaxsal.errors import UsageError
from jaxsal.net import net_from_weights
from jaxsal.reporting import Reporter
from jaxsal.weights import Weights


def random_net(seed=0):
    """TinyNet with seeded random weights (no file involved)."""
    weights = Weights(params=tiny_net.random_params(seed=seed), source="random", sha256="0" * 64,
                      provenance={})
    return net_from_weights(tiny_net.TINY, weights)


def inputs(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 32, 32, 3)).astype(np.float32)


SHARDED_RUN = textwrap.dedent("""
    import sys, numpy as np, jax
    sys.path.insert(0, {tests!r})
    from test_batching import random_net, inputs
    from jaxsal.batching import iter_saliency
    assert jax.local_device_count() == 4, jax.local_devices()
    parts = list(iter_saliency(random_net(), inputs(5), "conv3", [3, 14], "guided",
                               n_images=5, batch_size=3))
    np.save({out!r}, np.concatenate(parts, axis=1))
    print([p.shape for p in parts])
""")


def test_four_cpu_devices_give_the_single_device_result(tmp_path):
    out = tmp_path / "sharded.npy"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = SHARDED_RUN.format(tests=os.path.dirname(__file__), out=str(out))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # batch_size 3 rounds up to 4 (a multiple of the device count): batches of 4 and 1 (+3 padding)
    assert done.stdout.strip() == "[(2, 4, 3, 32, 32), (2, 1, 3, 32, 32)]"
    sharded = np.load(out)
    single = np.concatenate(list(runner.iter_saliency(random_net(), inputs(5), "conv3", [3, 14],
                                                      "guided", n_images=5, batch_size=3)), axis=1)
    assert single.shape == sharded.shape == (2, 5, 3, 32, 32)
    scale = np.abs(single).max()
    assert scale > 0
    np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-6 * scale)


def test_batch_size_rounds_to_device_count_and_never_exceeds_need(monkeypatch):
    monkeypatch.setattr(jax, "local_device_count", lambda: 4)
    assert runner.pick_batch_size(5, 3) == 4
    assert runner.pick_batch_size(2, 64) == 4
    assert runner.pick_batch_size(64, 64) == 64
    assert runner.pick_batch_size(100, 64) == 56  # 2 x 50, rounded up to a multiple of 8
    assert runner.pick_batch_size(100, 60) == 56
    monkeypatch.setattr(jax, "local_device_count", lambda: 1)
    assert runner.pick_batch_size(7, 64) == 7      # one batch, no padding
    assert runner.pick_batch_size(65, 64) == 40    # not 64 + 1 padded to 64
    assert runner.pick_batch_size(130, 64) == 48   # 3 batches
    assert runner.pick_batch_size(120, 64) == 64
    assert runner.pick_batch_size(1000, 64) == 64
    assert runner.pick_batch_size(7, 3) == 3
    # Many runs of different sizes compile few shapes.
    assert {runner.pick_batch_size(n, 64) for n in range(65, 5000)} <= set(range(8, 65, 8))
    with pytest.raises(UsageError):
        runner.pick_batch_size(10, 0)


def test_default_batch_size_follows_device_memory(monkeypatch):
    net = random_net()
    per_image = runner.bytes_per_image(net, "fc2", 2)
    assert per_image > runner.bytes_per_image(net, "conv1", 2) > 0
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device: 10 * per_image)
    assert runner.default_batch_size(net, "fc2", 2) == 5 * jax.local_device_count()
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device: per_image)
    assert runner.default_batch_size(net, "fc2", 2) == jax.local_device_count()
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device: 10**15)
    assert runner.default_batch_size(net, "fc2", 2) == 64 * jax.local_device_count()  # CPU cap


class _FakeOOM(RuntimeError):
    pass


def test_out_of_memory_halves_the_batch_and_recomputes(monkeypatch, capsys):
    net = random_net()
    real_fn = runner.compiled_saliency(net.spec, "conv2", "vanilla", "highest")
    sizes = []

    class Deferred:
        """Raises at fetch time, as an asynchronous device error does."""

        def __init__(self, value, fail):
            self.value, self.fail = value, fail

        def __array__(self, dtype=None, copy=None):
            if self.fail:
                raise _FakeOOM("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
            return np.asarray(self.value)

    def fake_compiled(spec, layer, method, precision):
        def fn(params, x, ch0):
            sizes.append(x.shape[0])
            return Deferred(real_fn(params, x, ch0), fail=x.shape[0] > 2)
        return fn

    monkeypatch.setattr(runner, "compiled_saliency", fake_compiled)
    parts = list(runner.iter_saliency(net, inputs(7), "conv2", [4], "vanilla", n_images=7, batch_size=8))
    got = np.concatenate(parts, axis=1)
    assert got.shape == (1, 7, 3, 32, 32)
    assert sizes[0] == 7 and 3 in sizes and sizes[-1] == 1  # 7 -> 3 -> 1 image per call
    assert capsys.readouterr().err.splitlines() == [
        "jaxsal: out of device memory; retrying with batch size 3",
        "jaxsal: out of device memory; retrying with batch size 1"]
    # The line is the run's reporter's (the command's says dnn_saliency: ...).
    err = io.StringIO()
    sizes.clear()
    list(runner.iter_saliency(net, inputs(7), "conv2", [4], "vanilla", n_images=7, batch_size=8,
                              reporter=Reporter("mytool", stderr=err)))
    assert err.getvalue().startswith("mytool: out of device memory; retrying with batch size 3\n")
    expected = np.asarray(real_fn(net.params, jnp.asarray(inputs(7)), jnp.asarray([3])))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_out_of_memory_at_the_smallest_batch_is_a_clear_error(monkeypatch):
    net = random_net()

    def fake_compiled(*args):
        def fn(params, x, ch0):
            raise _FakeOOM("RESOURCE_EXHAUSTED: out of memory")
        return fn

    monkeypatch.setattr(runner, "compiled_saliency", fake_compiled)
    monkeypatch.setattr(runner._Engine, "dispatch", lambda self, batch, j: (batch.chunks, [_Raise()]))
    with pytest.raises(UsageError, match="out of device memory"):
        list(runner.iter_saliency(net, inputs(1), "conv1", [1], "vanilla", n_images=1, batch_size=1))


class _Raise:
    def __array__(self, dtype=None, copy=None):
        raise _FakeOOM("RESOURCE_EXHAUSTED: out of memory")
