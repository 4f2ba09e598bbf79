"""Plain-PyTorch baselines for scripts/bench.py (CPU, float32, no torchvision needed).

Two ways of computing the same saliency maps (SPEC §4-§5) as jaxsal:

* `original_way`: what DNNBrain's dnn_saliency does (`SaliencyImage.backprop` in
  dnnbrain/dnn/algo.py: `self.dnn(image); self.dnn.model.zero_grad(); self.activation.backward()`)
  -- for every image and every channel, one forward pass of a single image run to the END of the
  network (the target activation is caught with a forward hook), then one backward pass from the
  target. The original's model parameters keep `requires_grad=True` (torch's default), so that
  backward also computes every weight gradient below the target; `build(..., param_grads=True)`
  reproduces this, `param_grads=False` measures the same loop without it.
* `done_well`: one forward pass per batch, stopped at the target layer, then one
  `torch.autograd.grad` per channel (the batch shares it: images are independent in eval mode).
  No hooks; guided backprop is a ReLU written as an autograd.Function.

Both return float32 maps (K, N, 3, S, S) as numpy arrays. AlexNet is written out here,
torchvision's module for module (same state_dict keys), so a torchvision state_dict loads
unchanged. Every other network (Vgg16, Resnet50, ...) is tests/torch_nets.py's independent plain
PyTorch implementation (`build_net`, `random_net_state_dict`): same keys, every ReLU its own
module call, `forward_to(x, layer)` stopping at the target and `forward_all(x)` running to the
end. For the benchmark its guided ReLUs use this module's single-mask backward (the same rule,
one multiply fewer).
"""
from __future__ import annotations

import collections
import pathlib
import sys

import numpy as np
import torch
from torch import nn

# layer name -> (part, module index) of the module whose output is the target.
TORCH_LAYERS = {
    "conv1": ("features", 0), "conv1_relu": ("features", 1), "conv1_maxpool": ("features", 2),
    "conv2": ("features", 3), "conv2_relu": ("features", 4), "conv2_maxpool": ("features", 5),
    "conv3": ("features", 6), "conv3_relu": ("features", 7),
    "conv4": ("features", 8), "conv4_relu": ("features", 9),
    "conv5": ("features", 10), "conv5_relu": ("features", 11), "conv5_maxpool": ("features", 12),
    "fc1": ("classifier", 1), "fc1_relu": ("classifier", 2),
    "fc2": ("classifier", 4), "fc2_relu": ("classifier", 5), "fc3": ("classifier", 6),
}

SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def random_state_dict(seed: int = 0) -> "collections.OrderedDict[str, torch.Tensor]":
    """A seeded random torchvision-layout AlexNet state_dict: He-scaled weights (so activations
    neither vanish nor explode and most ReLUs are live), small random biases."""
    gen = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    for key, shape in SHAPES.items():
        if key.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


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


class GuidedReLU(nn.Module):
    def forward(self, x):
        return _GuidedReLUFn.apply(x)


class AlexNet(nn.Module):
    """torchvision.models.AlexNet, module for module; `guided` swaps every ReLU's backward rule."""

    def __init__(self, guided: bool = False):
        super().__init__()
        relu = GuidedReLU if guided else nn.ReLU  # not in place: pre-ReLU targets stay intact
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), relu(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), relu(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), relu(),
            nn.Conv2d(384, 256, 3, padding=1), relu(),
            nn.Conv2d(256, 256, 3, padding=1), relu(), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), relu(),
            nn.Dropout(), nn.Linear(4096, 4096), relu(), nn.Linear(4096, 1000),
        )

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)

    def forward_to(self, x, layer: str):
        """The activation of `layer`, computing nothing beyond it."""
        part, index = TORCH_LAYERS[layer]
        for i, module in enumerate(self.features):
            x = module(x)
            if part == "features" and i == index:
                return x
        x = torch.flatten(self.avgpool(x), 1)
        for i, module in enumerate(self.classifier):
            x = module(x)
            if i == index:
                return x
        raise KeyError(layer)

    def module(self, layer: str) -> nn.Module:
        part, index = TORCH_LAYERS[layer]
        return getattr(self, part)[index]


def build(state_dict, method: str, param_grads: bool = False) -> AlexNet:
    """The network in eval mode. `param_grads`: leave the weights' requires_grad on, as a freshly
    loaded torchvision model (and the original program) has it; off, gradients flow to the input
    only."""
    net = AlexNet(guided=method == "guided")
    net.load_state_dict(state_dict)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(param_grads)
    return net


def _torch_nets():
    """tests/torch_nets.py (the plain-PyTorch references of every non-AlexNet network)."""
    tests = str(pathlib.Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import torch_nets

    return torch_nets


def random_net_state_dict(net_name: str, seed: int = 0) -> "collections.OrderedDict[str, torch.Tensor]":
    """A seeded random torchvision-layout state_dict of any network (He-scaled weights; random
    batch-norm statistics, see tests/torch_nets.random_state_dict)."""
    if net_name == "AlexNet":
        return random_state_dict(seed)
    return _torch_nets().random_state_dict(net_name, seed)


def build_net(net_name: str, state_dict, method: str, param_grads: bool = False, **options) -> nn.Module:
    """`build` for any network: AlexNet here, the others from tests/torch_nets.py (eval mode,
    weights' requires_grad = `param_grads`; `options` go to its constructor, e.g. a ViT's
    sdpa=True)."""
    if net_name == "AlexNet":
        return build(state_dict, method, param_grads)
    tn = _torch_nets()
    net = tn.build(net_name, state_dict, guided=method == "guided", **options)
    fast = _GuidedReLUFn.apply
    for m in net.modules():
        if isinstance(m, tn.ReLU) and m.guided:
            m.forward = fast  # same rule as torch_nets' (2 mask multiplies), one multiply fewer
    for p in net.parameters():
        p.requires_grad_(param_grads)
    return net


def _target(net, a: torch.Tensor, channel: int) -> torch.Tensor:
    """Per-image target of a 1-based channel: spatial mean (conv-like), the unit (fc), or the
    mean over the patch tokens (a ViT's tokens): tests/torch_nets.channel_target."""
    return _torch_nets().channel_target(net, a, channel)


def original_way(net: AlexNet, images_nchw: torch.Tensor, layer: str, channels) -> np.ndarray:
    """DNNBrain's strategy: per image and channel, a batch-1 forward to the end of the network
    (target caught by a forward hook), `zero_grad`, and one `backward()` from the target (which
    also fills the weights' .grad when `net` was built with param_grads=True)."""
    if not isinstance(net, AlexNet):
        return _original_way_staged(net, images_nchw, layer, channels)
    caught = {}
    handle = net.module(layer).register_forward_hook(lambda m, i, o: caught.__setitem__("a", o))
    try:
        out = np.empty((len(channels),) + tuple(images_nchw.shape), np.float32)
        for n in range(images_nchw.shape[0]):
            for k, c in enumerate(channels):
                x = images_nchw[n : n + 1].clone().requires_grad_(True)
                net(x)
                net.zero_grad()
                _target(net, caught.pop("a"), c).sum().backward()
                out[k, n] = x.grad[0].numpy()
        return out
    finally:
        handle.remove()


def _original_way_staged(net, images_nchw, layer, channels) -> np.ndarray:
    """`original_way` on a tests/torch_nets.py network: the whole network runs (`forward_all` to
    its end), the target layer's output is kept, as the original's forward hook keeps it."""
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


def done_well(net: AlexNet, images_nchw: torch.Tensor, layer: str, channels, as_numpy: bool = True):
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
