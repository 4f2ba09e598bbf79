"""Plain-PyTorch baselines for scripts/bench.py (CPU, float32, no torchvision needed).

Two ways of computing the same saliency maps (SPEC §4-§5) as jaxsal:

* `original_way`: what DNNBrain's dnn_saliency does (`SaliencyImage.backprop` in
  dnnbrain/dnn/algo.py: `self.dnn(image); self.dnn.model.zero_grad(); self.activation.backward()`)
  -- for every image and every channel, one forward pass of a single image run to the END of the
  network (the target activation is kept, as the original's forward hook keeps it), then one
  backward pass from the target. The original's model parameters keep `requires_grad=True`
  (torch's default), so that backward also computes every weight gradient below the target;
  `build_net(..., param_grads=True)` reproduces this, `param_grads=False` measures the same loop
  without it.
* `done_well`: one forward pass per batch, stopped at the target layer, then one
  `torch.autograd.grad` per channel (the batch shares it: images are independent in eval mode).
  No hooks; guided backprop is a ReLU written as an autograd.Function.

Both return float32 maps (K, N, 3, S, S) as numpy arrays. The networks are the test suite's
reference zoo, tests/torch_nets.py (found by putting tests/ on sys.path below): torchvision's
architectures in plain PyTorch, module for module (same state_dict keys, so a torchvision
state_dict loads unchanged), every ReLU its own module call, `forward_to(x, layer)` stopping at
the target and `forward_all(x)` running to the end. For the benchmark their guided ReLUs use
this module's single-mask backward (the same rule, one multiply fewer).
"""
from __future__ import annotations

import collections
import pathlib
import sys

import numpy as np
import torch

# The reference zoo lives with the tests (tests/torch_nets.py); scripts import it from there.
TESTS = str(pathlib.Path(__file__).resolve().parent.parent / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
import torch_nets  # noqa: E402


class _GuidedReLUFn(torch.autograd.Function):
    """g_in = g_out * 1[x > 0] * 1[g_out > 0] (SPEC §5)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (g > 0)).to(g.dtype)


def random_net_state_dict(net_name: str, seed: int = 0) -> "collections.OrderedDict[str, torch.Tensor]":
    """A seeded random torchvision-layout state_dict of any network (He-scaled weights; random
    batch-norm statistics, see tests/torch_nets.random_state_dict)."""
    return torch_nets.random_state_dict(net_name, seed)


def build_net(net_name: str, state_dict, method: str, param_grads: bool = False,
              **options) -> torch.nn.Module:
    """The reference network in eval mode holding `state_dict`, weights' requires_grad =
    `param_grads` (on: as a freshly loaded torchvision model, and the original program, has it;
    off: gradients flow to the input only); `options` go to its constructor (a ViT's sdpa=True)."""
    net = torch_nets.build(net_name, state_dict, guided=method == "guided", **options)
    fast = _GuidedReLUFn.apply
    for m in net.modules():
        if isinstance(m, torch_nets.ReLU) and m.guided:
            m.forward = fast  # same rule as torch_nets' (2 mask multiplies), one multiply fewer
    for p in net.parameters():
        p.requires_grad_(param_grads)
    return net


def _target(net, a: torch.Tensor, channel: int) -> torch.Tensor:
    """Per-image target of a 1-based channel: spatial mean (conv-like), the unit (fc), or the
    mean over the patch tokens (a ViT's tokens): tests/torch_nets.channel_target."""
    return torch_nets.channel_target(net, a, channel)


def original_way(net, images_nchw: torch.Tensor, layer: str, channels) -> np.ndarray:
    """DNNBrain's strategy: per image and channel, a batch-1 forward to the end of the network
    (`forward_all`; the target layer's output is kept, as the original's forward hook keeps it),
    `zero_grad`, and one `backward()` from the target (which also fills the weights' .grad when
    `net` was built with param_grads=True)."""
    out = np.empty((len(channels),) + tuple(images_nchw.shape), np.float32)
    for n in range(images_nchw.shape[0]):
        for k, c in enumerate(channels):
            x = images_nchw[n : n + 1].clone().requires_grad_(True)
            caught = None
            for name, a in net.forward_all(x):
                if name == layer:
                    caught = a
            net.zero_grad()
            _target(net, caught, c).sum().backward()
            out[k, n] = x.grad[0].numpy()
    return out


def done_well(net, images_nchw: torch.Tensor, layer: str, channels, as_numpy: bool = True):
    """One forward per batch stopped at the target layer, one autograd.grad per channel.
    Returns (K, N, 3, H, W) as numpy, or as a tensor on the images' device (`as_numpy=False`)."""
    x = images_nchw.detach().requires_grad_(True)
    a = net.forward_to(x, layer)
    maps = []
    for k, c in enumerate(channels):
        (g,) = torch.autograd.grad(_target(net, a, c).sum(), x, retain_graph=k < len(channels) - 1)
        maps.append(g)
    out = torch.stack(maps)
    return out.cpu().numpy() if as_numpy else out
