"""Shared fixtures.

`torchvision_alexnet_checkpoint`: a seeded random AlexNet state_dict in torchvision's layout,
written by real `torch.save` (zip format) and named like a published file, with its own sha256
prefix. Used by the weights tests and the saliency parity tests. About 244 MB, made once.

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
    """OrderedDict of torch float32 tensors: He-scaled weights, small biases (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    for key, shape in TORCHVISION_ALEXNET_SHAPES.items():
        if key.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


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
