"""Shared fixtures.

`torchvision_alexnet_checkpoint`: a seeded random AlexNet state_dict in torchvision's layout,
written by real `torch.save` (zip format) and named like a published file, with its own sha256
prefix. Used by the weights tests and the saliency parity tests. About 244 MB, made once.

`tiny_weights`, `tiny_net`: TinyNet (tests/tiny_net.py) with seeded random weights, for fast
tests of the core, the command, rendering, sharding and multi-process runs.

`weights_env`: points every place the weights resolver looks at (HOME, JAXSAL_HOME, TORCH_HOME,
XDG_CACHE_HOME, JAXSAL_WEIGHTS, DNNBRAIN_DATA, JAXSAL_ALEXNET_URL) into a temporary folder, so a
test never reads or writes the real user caches.
"""
from __future__ import annotations

import collections
import hashlib
import pathlib
import types

import numpy as np
import pytest

import jaxsal

# The suite computes in the configuration the command ships: `dnn_saliency` calls
# `jaxsal.tune_cpu()` at its entry, so the tests do too, before any test initialises JAX's
# backend (afterwards it would do nothing). Some float32 parity tests depend on it: without the
# flag, XLA's default CPU convolutions round differently, and test_methods_captum.py's
# integrated-gradients case on conv5 then differs from Captum by 5.6e-4 instead of < 1e-5 (max-pool
# near-ties). Importing jaxsal itself changes nothing (tests/test_xla_config.py checks that in a
# fresh process, with XLA_FLAGS as the user had it).
jaxsal.tune_cpu()

# torchvision AlexNet state_dict keys and torch-layout shapes, written out independently of jaxsal.
TORCHVISION_ALEXNET_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def random_torchvision_alexnet(seed: int = 0):
    """OrderedDict of torch float32 tensors: He-scaled weights, small biases (seeded): the
    reference zoo's (tests/torch_nets.py)."""
    import torch_nets

    return torch_nets.random_state_dict("AlexNet", seed)


class LazyModule:
    """The module `name`, imported on first use (the test is skipped if it is not installed):
    test modules whose tests are all slow keep their heavy imports (Quantus with OpenCV and
    scikit-learn, Captum: ~2 s) out of the fast tier's collection."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if attr.startswith("_"):  # pytest's collection probes objects (`_mock_name`): not an import
            raise AttributeError(attr)
        if self._module is None:
            self._module = pytest.importorskip(self._name)
        return getattr(self._module, attr)


@pytest.fixture(scope="session")
def torchvision_alexnet_checkpoint(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """(path of `alexnet-owt-<sha256[:8]>.pth`, its state_dict as numpy float32 arrays)."""
    torch = pytest.importorskip("torch")
    state = random_torchvision_alexnet(seed=0)
    folder = tmp_path_factory.mktemp("torchvision")
    tmp = folder / "alexnet-owt.pth.partial"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"alexnet-owt-{digest[:8]}.pth"
    tmp.rename(path)
    return path, {k: v.numpy() for k, v in state.items()}


@pytest.fixture
def weights_env(tmp_path, monkeypatch):
    """Isolated weight locations; returns them (nothing is created except `home`)."""
    env = types.SimpleNamespace(
        home=tmp_path / "home",
        jaxsal_home=tmp_path / "jaxsal_home",
        torch_home=tmp_path / "torch_home",
        dnnbrain_data=tmp_path / "dnnbrain_data",
    )
    env.home.mkdir()
    env.hub = env.torch_home / "hub" / "checkpoints"
    monkeypatch.setenv("HOME", str(env.home))
    monkeypatch.setenv("JAXSAL_HOME", str(env.jaxsal_home))
    monkeypatch.setenv("TORCH_HOME", str(env.torch_home))
    for var in ("XDG_CACHE_HOME", "JAXSAL_WEIGHTS", "DNNBRAIN_DATA", "JAXSAL_ALEXNET_URL"):
        monkeypatch.delenv(var, raising=False)
    return env


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> pathlib.Path:
    """A random-weights file for TinyNet (`tests/tiny_net.py`, registered on import)."""
    import tiny_net

    return tiny_net.write_weights(tmp_path_factory.mktemp("tiny") / "tinynet.safetensors")


@pytest.fixture(scope="session")
def tiny_net(tiny_weights):
    """TinyNet with random weights, on the device."""
    import tiny_net as tiny

    from jaxsal.net import net_from_weights
    from jaxsal.weights import load_weights

    return net_from_weights(tiny.TINY, load_weights(tiny.TINY, tiny_weights))


@pytest.fixture
def dnn_saliency(tmp_path, monkeypatch, capsys):
    """The command run in this process, TinyNet registered: `run(args, cwd)` ->
    CompletedProcess(args, returncode, stdout, stderr). Skips a subprocess's ~2 s of importing
    JAX; the figure workers are real spawned processes as always. Caches are isolated; the
    persistent compilation cache is left off (it would stay on for the rest of the session).
    End-to-end runs of the installed console script are in test_cli.py."""
    import subprocess

    import tiny_net  # noqa: F401  (registers TinyNet)
    from jaxsal import xla_config

    home = tmp_path / "cli_home"
    home.mkdir()
    for var in ("JAXSAL_WEIGHTS", "DNNBRAIN_DATA", "XDG_CACHE_HOME", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("JAXSAL_HOME", str(home / "jaxsal"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(xla_config, "enable_compilation_cache", lambda folder, reporter=None: None)

    def run(args, cwd):
        from jaxsal import cli  # imported at the top of this file: see `_cli` there

        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = cli.main(["dnn_saliency", *map(str, args)])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return run


def torchvision_layout(spec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """jaxsal flat params -> the torchvision state_dict they come from (the inverse of
    `jaxsal.weights.conversion.from_torchvision`, written out here independently)."""
    state = collections.OrderedDict()
    for p in spec.params:
        w = params[p.key]
        if p.rule == "conv":  # (kH, kW, I, O) -> (O, I, kH, kW)
            w = w.transpose(3, 2, 0, 1)
        elif p.rule == "linear":  # (in, out) -> (out, in)
            w = w.T
        elif p.rule == "linear_after_flatten":  # rows in H,W,C order -> columns in C,H,W order
            c, h, wd = p.flat_from
            w = w.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * wd)
        state[p.torch_key] = np.ascontiguousarray(w)
    return state


@pytest.fixture(scope="session")
def tiny_torch_checkpoint(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """TinyNet's random weights as a torchvision-style `torch.save` file named like a published
    one, `tinynet-<sha256[:8]>.pth`: (path, its state_dict as numpy float32 arrays). Small, so the
    fast tests convert and resolve torch checkpoints without the 244 MB AlexNet one."""
    torch = pytest.importorskip("torch")
    import tiny_net

    state = torchvision_layout(tiny_net.TINY, tiny_net.random_params(seed=1))
    folder = tmp_path_factory.mktemp("tiny_torch")
    tmp = folder / "tinynet.pth.partial"
    torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items()), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"tinynet-{digest[:8]}.pth"
    tmp.rename(path)
    return path, state
