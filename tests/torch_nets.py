"""Independent plain-PyTorch references of jaxsal's networks: the one reference zoo that the
tests and the benchmark scripts (scripts/torch_baselines.py, scripts/bench_methods.py) use.

torchvision's AlexNet, VGG-11 / VGG-16 / VGG-19-BN, GoogLeNet, Inception-v3, ResNet-18 / ResNet-34
/ ResNet-50 / ResNet-152 and DenseNet-121, and the VGG-Face net of Albanie's pytorch-mcn
conversion (`vgg_face_dag.pth`), written out module for module in plain torch -- no torchvision,
no jaxsal -- so that `state_dict()` keys, shapes and registration order are those of the
published checkpoints (DenseNet-121: today's torchvision names; its published file has older
ones, see `densenet_published_key`).

Every ReLU of a network is its own module call (also the functional ones of torchvision:
BasicConv2d's, a residual block's uses of its `relu`, DenseNet's last ReLU), so with
`guided=True` the guided rule g_in = g_out * 1[x > 0] * 1[g_out > 0] applies at every ReLU,
including those inside the target block. Every ReLU module is an `nn.ReLU`: Captum's
GuidedBackprop, Deconvolution and GuidedGradCam hook those (tests/test_methods_captum.py).

API
---
NETS[name](guided=False, **kw)    an nn.Module with LAYERS (ordered layer names), INPUT_SIZE,
                                  forward_to(x, layer), forward_all(x) (yields (layer, output)),
                                  module(layer) (the nn.Module whose output the layer is).
build(name, state_dict, guided, dtype)   an eval-mode net holding those weights.
random_state_dict(name, seed=0)   OrderedDict of random tensors with the checkpoint's keys.
torch_saliency(name, state_dict, images_nchw, layer, channels, guided, dtype)
                                  numpy (K, N, 3, S, S).
layer_shapes(name)                {layer: output shape without the batch, channel first}.
state_dict_shapes(name)           OrderedDict {key: (shape, dtype)} (no values made).

Targets (SPEC): the output of a named layer; a (C, H, W) output's 1-based channel c gives the mean
over H x W of channel c - 1, an (F,) output's gives unit c - 1. The gradient is taken w.r.t. the
network's input (for GoogLeNet / Inception-v3: before `transform_input`). Eval mode everywhere.
"""
from __future__ import annotations

import collections
import functools
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# ReLU, plain or guided
# --------------------------------------------------------------------------------------------


class GuidedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype) * (g > 0).to(g.dtype)


class ReLU(nn.ReLU):
    """nn.ReLU (not in place) or its guided-backprop version; no parameters, so no state_dict
    keys -- it can stand where torchvision calls F.relu. An nn.ReLU, so Captum's ReLU hooks
    find it."""

    def __init__(self, guided: bool = False):
        super().__init__(inplace=False)
        self.guided = guided

    def forward(self, x):
        return GuidedReLUFunction.apply(x) if self.guided else F.relu(x)


class _Staged(nn.Module):
    """A network as a chain of stages (layer name or None, callable); LAYERS = the named ones."""

    LAYERS: tuple = ()
    INPUT_SIZE: int = 224

    def _stages(self):
        raise NotImplementedError

    def forward_all(self, x):
        for name, fn in self._stages():
            x = fn(x)
            if name is not None:
                yield name, x

    def forward_to(self, x, layer):
        if layer not in self.LAYERS:
            raise KeyError(f"{type(self).__name__} has no layer {layer!r}")
        for name, out in self.forward_all(x):
            if name == layer:
                return out
        raise AssertionError(f"stage list misses {layer!r}")  # LAYERS and _stages disagree

    def forward(self, x):
        *_, (_, out) = self.forward_all(x)
        return out

    def module(self, layer):
        """The nn.Module whose output is `layer` (Captum's layer attributions hook it)."""
        for name, fn in self._stages():
            if name == layer:
                assert isinstance(fn, nn.Module), (layer, fn)
                return fn
        raise KeyError(f"{type(self).__name__} has no layer {layer!r}")

    def _check_layers(self):
        names = tuple(name for name, _ in self._stages() if name is not None)
        assert names == self.LAYERS, (names, self.LAYERS)


def _flatten(x):
    return torch.flatten(x, 1)


def _transform_input(x):
    """torchvision's `_transform_input` (GoogLeNet, Inception-v3): ImageNet normalization
    (mean, std) -> (x - 0.5) / 0.5 per channel."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return torch.cat([x[:, c:c + 1] * (std[c] / 0.5) + (mean[c] - 0.5) / 0.5 for c in range(3)], 1)


# --------------------------------------------------------------------------------------------
# AlexNet (torchvision)
# --------------------------------------------------------------------------------------------

_ALEXNET_FEATURES = ("conv1", "conv1_relu", "conv1_maxpool", "conv2", "conv2_relu", "conv2_maxpool",
                     "conv3", "conv3_relu", "conv4", "conv4_relu", "conv5", "conv5_relu",
                     "conv5_maxpool")


class AlexNet(_Staged):
    """torchvision.models.AlexNet: features (conv1 11x11/4 ... conv5, ReLUs, three max-pools),
    AdaptiveAvgPool(6, 6), classifier = Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear.
    Layer names of the original program (SPEC §8): convN pre-ReLU, fcN pre-ReLU, fc3 = logits."""

    LAYERS = _ALEXNET_FEATURES + ("fc1", "fc1_relu", "fc2", "fc2_relu", "fc3")

    def __init__(self, guided: bool = False, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), ReLU(guided), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), ReLU(guided), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), ReLU(guided),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), ReLU(guided),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), ReLU(guided), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), ReLU(guided),
            nn.Dropout(), nn.Linear(4096, 4096), ReLU(guided),
            nn.Linear(4096, num_classes),
        )
        self._check_layers()

    def _stages(self):
        yield from zip(_ALEXNET_FEATURES, self.features)
        yield None, self.avgpool
        yield None, _flatten
        yield from zip((None, "fc1", "fc1_relu", None, "fc2", "fc2_relu", "fc3"), self.classifier)


# --------------------------------------------------------------------------------------------
# VGG (torchvision)
# --------------------------------------------------------------------------------------------


def _vgg_layer_names(cfg, bn):
    names, k = [], 0
    for v in cfg:
        if v == "M":
            names.append(f"conv{k}_maxpool")
        else:
            k += 1
            names += [f"conv{k}"] + ([f"conv{k}_bn"] if bn else []) + [f"conv{k}_relu"]
    return tuple(names) + ("fc1", "fc1_relu", "fc2", "fc2_relu", "fc3")


class _VGG(_Staged):
    """torchvision.models.VGG: features (Conv[, BN], ReLU ..., MaxPool), AdaptiveAvgPool(7, 7),
    classifier = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear."""

    CFG: tuple = ()
    BN = False

    def __init__(self, guided: bool = False, num_classes: int = 1000):
        super().__init__()
        layers, c_in = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(c_in, v, kernel_size=3, padding=1))
                if self.BN:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(ReLU(guided))
                c_in = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), ReLU(guided), nn.Dropout(),
            nn.Linear(4096, 4096), ReLU(guided), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        self._check_layers()

    def _stages(self):
        feature_names = [n for n in self.LAYERS if n.startswith("conv")]
        yield from zip(feature_names, self.features)
        yield None, self.avgpool
        yield None, _flatten
        yield from zip(("fc1", "fc1_relu", None, "fc2", "fc2_relu", None, "fc3"), self.classifier)


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class Vgg11(_VGG):
    CFG, BN = _VGG11, False
    LAYERS = _vgg_layer_names(_VGG11, False)


class Vgg16(_VGG):
    CFG, BN = _VGG16, False
    LAYERS = _vgg_layer_names(_VGG16, False)


class Vgg19_bn(_VGG):  # noqa: N801 (the -net name)
    CFG, BN = _VGG19, True
    LAYERS = _vgg_layer_names(_VGG19, True)


# --------------------------------------------------------------------------------------------
# VGG-Face (pytorch-mcn's vgg_face_dag)
# --------------------------------------------------------------------------------------------

_VGGFACE_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _vggface_names():
    names = []
    for b, (_, n) in enumerate(_VGGFACE_BLOCKS, 1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names) + ("fc6", "relu6", "fc7", "relu7", "fc8")


class VggFace(_Staged):
    """Vgg_face_dag of pytorch-mcn: top-level modules conv1_1 ... pool5, fc6 (25088 -> 4096,
    flatten in C, H, W order), relu6, dropout6, fc7, relu7, dropout7, fc8 (-> 2622)."""

    LAYERS = _vggface_names()

    def __init__(self, guided: bool = False):
        super().__init__()
        c_in = 3
        for b, (c, n) in enumerate(_VGGFACE_BLOCKS, 1):
            for i in range(1, n + 1):
                setattr(self, f"conv{b}_{i}", nn.Conv2d(c_in, c, kernel_size=3, stride=1, padding=1))
                setattr(self, f"relu{b}_{i}", ReLU(guided))
                c_in = c
            setattr(self, f"pool{b}", nn.MaxPool2d(kernel_size=2, stride=2, padding=0, ceil_mode=False))
        self.fc6 = nn.Linear(25088, 4096)
        self.relu6 = ReLU(guided)
        self.dropout6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = ReLU(guided)
        self.dropout7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, 2622)
        self._check_layers()

    def _stages(self):
        for name in self.LAYERS:
            if name == "fc6":
                yield None, _flatten  # x.view(x.size(0), -1)
            yield name, getattr(self, name)
            if name in ("relu6", "relu7"):
                yield None, getattr(self, "dropout" + name[-1])


# --------------------------------------------------------------------------------------------
# BasicConv2d (GoogLeNet, Inception-v3)
# --------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Conv2d(bias=False), BatchNorm2d(eps=0.001), ReLU (torchvision's F.relu as a module)."""

    def __init__(self, c_in, c_out, guided=False, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)
        self.relu = ReLU(guided)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


# --------------------------------------------------------------------------------------------
# GoogLeNet (torchvision)
# --------------------------------------------------------------------------------------------


class Inception(nn.Module):
    def __init__(self, c_in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        self.branch1 = conv(c_in, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(conv(c_in, ch3x3red, kernel_size=1),
                                     conv(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # torchvision's "5x5" branch has a 3x3 kernel (pytorch/vision#906); the weights follow it.
        self.branch3 = nn.Sequential(conv(c_in, ch5x5red, kernel_size=1),
                                     conv(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     conv(c_in, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
    """Auxiliary head (training only; in the state_dict, never in the forward of the targets)."""

    def __init__(self, c_in, num_classes=1000, guided=False):
        super().__init__()
        self.conv = BasicConv2d(c_in, 128, guided=guided, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.7, training=self.training))


class Googlenet(_Staged):
    """torchvision.models.GoogLeNet with aux_logits=True (aux1/aux2 in the state_dict, as in
    googlenet-1378be20.pth) and transform_input (True for the published weights)."""

    LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
              "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
              "maxpool4", "inception5a", "inception5b", "fc")

    def __init__(self, guided: bool = False, transform_input: bool = True, num_classes: int = 1000):
        super().__init__()
        self.transform_input = transform_input
        conv = functools.partial(BasicConv2d, guided=guided)
        block = functools.partial(Inception, guided=guided)
        self.conv1 = conv(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv(64, 64, kernel_size=1)
        self.conv3 = conv(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = block(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = block(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = block(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = block(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = block(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = block(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = block(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = block(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = block(832, 384, 192, 384, 48, 128, 128)
        self.aux1 = GoogLeNetAux(512, num_classes, guided)
        self.aux2 = GoogLeNetAux(528, num_classes, guided)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)
        self._check_layers()

    def _stages(self):
        if self.transform_input:
            yield None, _transform_input
        for name in self.LAYERS[:-1]:
            yield name, getattr(self, name)
        yield None, self.avgpool
        yield None, _flatten
        yield None, self.dropout
        yield "fc", self.fc


# --------------------------------------------------------------------------------------------
# Inception-v3 (torchvision)
# --------------------------------------------------------------------------------------------


def _avg3(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # count_include_pad=True


def _max3s2(x):
    return F.max_pool2d(x, kernel_size=3, stride=2)


class InceptionA(nn.Module):
    def __init__(self, c_in, pool_features, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        self.branch1x1 = conv(c_in, 64, kernel_size=1)
        self.branch5x5_1 = conv(c_in, 48, kernel_size=1)
        self.branch5x5_2 = conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = conv(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = conv(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        self.branch3x3 = conv(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = conv(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, _max3s2(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in, channels_7x7, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        c7 = channels_7x7
        self.branch1x1 = conv(c_in, 192, kernel_size=1)
        self.branch7x7_1 = conv(c_in, c7, kernel_size=1)
        self.branch7x7_2 = conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = conv(c_in, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        self.branch3x3_1 = conv(c_in, 192, kernel_size=1)
        self.branch3x3_2 = conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = conv(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        return torch.cat([b3, b7, _max3s2(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, c_in, guided=False):
        super().__init__()
        conv = functools.partial(BasicConv2d, guided=guided)
        self.branch1x1 = conv(c_in, 320, kernel_size=1)
        self.branch3x3_1 = conv(c_in, 384, kernel_size=1)
        self.branch3x3_2a = conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = conv(c_in, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Inception-v3's AuxLogits (training only; in the state_dict, unused by the targets)."""

    def __init__(self, c_in, num_classes=1000, guided=False):
        super().__init__()
        self.conv0 = BasicConv2d(c_in, 128, guided=guided, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, guided=guided, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


_INCEPTION_V3_MODULES = {  # layer name -> torchvision attribute
    "conv1": "Conv2d_1a_3x3", "conv2": "Conv2d_2a_3x3", "conv3": "Conv2d_2b_3x3",
    "maxpool1": "maxpool1", "conv4": "Conv2d_3b_1x1", "conv5": "Conv2d_4a_3x3",
    "maxpool2": "maxpool2",
    "inception1": "Mixed_5b", "inception2": "Mixed_5c", "inception3": "Mixed_5d",
    "inception4": "Mixed_6a", "inception5": "Mixed_6b", "inception6": "Mixed_6c",
    "inception7": "Mixed_6d", "inception8": "Mixed_6e",
    "inception9": "Mixed_7a", "inception10": "Mixed_7b", "inception11": "Mixed_7c",
    "avgpool": "avgpool",
}


class InceptionV3(_Staged):
    """torchvision.models.Inception3 with aux_logits=True (AuxLogits in the state_dict) and
    transform_input (True for the published weights); input 299 x 299."""

    LAYERS = tuple(_INCEPTION_V3_MODULES) + ("fc",)
    INPUT_SIZE = 299

    def __init__(self, guided: bool = False, transform_input: bool = True, num_classes: int = 1000):
        super().__init__()
        self.transform_input = transform_input
        conv = functools.partial(BasicConv2d, guided=guided)
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32, guided=guided)
        self.Mixed_5c = InceptionA(256, pool_features=64, guided=guided)
        self.Mixed_5d = InceptionA(288, pool_features=64, guided=guided)
        self.Mixed_6a = InceptionB(288, guided=guided)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, guided=guided)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, guided=guided)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, guided=guided)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, guided=guided)
        self.AuxLogits = InceptionAux(768, num_classes, guided=guided)
        self.Mixed_7a = InceptionD(768, guided=guided)
        self.Mixed_7b = InceptionE(1280, guided=guided)
        self.Mixed_7c = InceptionE(2048, guided=guided)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, num_classes)
        self._check_layers()

    def _stages(self):
        if self.transform_input:
            yield None, _transform_input
        for name, attr in _INCEPTION_V3_MODULES.items():
            yield name, getattr(self, attr)
        yield None, self.dropout
        yield None, _flatten
        yield "fc", self.fc


# --------------------------------------------------------------------------------------------
# ResNet (torchvision; Bottleneck = v1.5: the stride in conv2; BasicBlock: the stride in conv1)
# --------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, guided=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = ReLU(guided)  # used three times, as in torchvision
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, guided=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = ReLU(guided)  # used twice, as in torchvision
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _resnet_layer_names(blocks, kind="bottleneck"):
    names = ["conv", "bn", "relu", "maxpool"]
    for stage, n in enumerate(blocks, 1):
        names += [f"layer{stage}_{kind}{i}" for i in range(n)]
    return tuple(names) + ("avgpool", "fc")


class _ResNet(_Staged):
    BLOCKS: tuple = ()
    BLOCK: type = Bottleneck
    KIND = "bottleneck"  # the block's part of the layer names

    def __init__(self, guided: bool = False, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = ReLU(guided)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), self.BLOCKS), 1):
            setattr(self, f"layer{stage}", self._make_layer(planes, n, 1 if stage == 1 else 2, guided))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * self.BLOCK.expansion, num_classes)
        self._check_layers()

    def _make_layer(self, planes, n, stride, guided):
        block, width = self.BLOCK, planes * self.BLOCK.expansion
        downsample = None
        if stride != 1 or self.inplanes != width:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        layers = [block(self.inplanes, planes, stride, downsample, guided)]
        self.inplanes = width
        layers += [block(self.inplanes, planes, guided=guided) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def _stages(self):
        yield from (("conv", self.conv1), ("bn", self.bn1), ("relu", self.relu), ("maxpool", self.maxpool))
        for stage in range(1, 5):
            for i, block in enumerate(getattr(self, f"layer{stage}")):
                yield f"layer{stage}_{self.KIND}{i}", block
        yield "avgpool", self.avgpool
        yield None, _flatten
        yield "fc", self.fc


class Resnet50(_ResNet):
    BLOCKS = (3, 4, 6, 3)
    LAYERS = _resnet_layer_names(BLOCKS)


class Resnet152(_ResNet):
    BLOCKS = (3, 8, 36, 3)
    LAYERS = _resnet_layer_names(BLOCKS)


class Resnet18(_ResNet):
    BLOCKS, BLOCK, KIND = (2, 2, 2, 2), BasicBlock, "basicblock"
    LAYERS = _resnet_layer_names(BLOCKS, KIND)


class Resnet34(_ResNet):
    BLOCKS, BLOCK, KIND = (3, 4, 6, 3), BasicBlock, "basicblock"
    LAYERS = _resnet_layer_names(BLOCKS, KIND)


# --------------------------------------------------------------------------------------------
# DenseNet (torchvision)
# --------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    """norm1, relu1, conv1 (1x1 to bn_size * growth), norm2, relu2, conv2 (3x3 to growth); its
    input is the list of all earlier features, concatenated here (as torchvision's)."""

    def __init__(self, c_in, growth, bn_size, guided=False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = ReLU(guided)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = ReLU(guided)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n, c_in, growth, bn_size, guided=False):
        super().__init__()
        for i in range(n):
            self[f"denselayer{i + 1}"] = _DenseLayer(c_in + i * growth, growth, bn_size, guided)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, c_in, c_out, guided=False):
        super().__init__(collections.OrderedDict([
            ("norm", nn.BatchNorm2d(c_in)), ("relu", ReLU(guided)),
            ("conv", nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class Densenet121(_Staged):
    """torchvision.models.DenseNet(32, (6, 12, 24, 16), 64): features = conv0, norm0, relu0,
    pool0, denseblock1, transition1, ..., denseblock4, norm5; then F.relu (a ReLU module here),
    adaptive average pool, flatten, classifier. Layers: the features' module names, and fc (the
    classifier)."""

    GROWTH, BLOCKS, INIT, BN_SIZE = 32, (6, 12, 24, 16), 64, 4
    LAYERS = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
              "transition2", "denseblock3", "transition3", "denseblock4", "norm5", "fc")

    def __init__(self, guided: bool = False, num_classes: int = 1000):
        super().__init__()
        modules = [("conv0", nn.Conv2d(3, self.INIT, kernel_size=7, stride=2, padding=3, bias=False)),
                   ("norm0", nn.BatchNorm2d(self.INIT)), ("relu0", ReLU(guided)),
                   ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        c = self.INIT
        for i, n in enumerate(self.BLOCKS, 1):
            modules.append((f"denseblock{i}", _DenseBlock(n, c, self.GROWTH, self.BN_SIZE, guided)))
            c += n * self.GROWTH
            if i < len(self.BLOCKS):
                modules.append((f"transition{i}", _Transition(c, c // 2, guided)))
                c //= 2
        modules.append(("norm5", nn.BatchNorm2d(c)))
        self.features = nn.Sequential(collections.OrderedDict(modules))
        self.relu = ReLU(guided)  # torchvision's F.relu after the features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(c, num_classes)
        self._check_layers()

    def _stages(self):
        yield from self.features.named_children()
        yield None, self.relu
        yield None, self.avgpool
        yield None, _flatten
        yield "fc", self.classifier


_PUBLISHED_DENSE_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def densenet_published_key(key: str) -> str:
    """Today's torchvision DenseNet key -> the older one of the published checkpoint
    (densenet121-a639ec97.pth: `denselayer1.norm.1.weight` for `denselayer1.norm1.weight`)."""
    return _PUBLISHED_DENSE_KEY.sub(r"\1.\2.\3", key)


# --------------------------------------------------------------------------------------------
# Vision Transformer (torchvision's VisionTransformer, vit_b_16)
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """nn.MultiheadAttention(dim, heads, batch_first=True) as self-attention, written out:
    q, k, v = x in_proj_weight^T + in_proj_bias (rows q, k, v), per head
    softmax(q k^T / sqrt(dim / heads)) v with matmuls, heads concatenated, out_proj. Same
    state_dict keys as nn.MultiheadAttention. `sdpa`: the per-head product by
    F.scaled_dot_product_attention instead (what torch's own MultiheadAttention runs)."""

    def __init__(self, dim, heads, sdpa=False):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        d = c // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(n, t, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (n, heads, t, d)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d), dim=-1)
            out = torch.matmul(weights, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, c))


class EncoderBlock(nn.Module):
    """torchvision's EncoderBlock: ln_1, self_attention, (dropout), + input; ln_2, mlp (Linear,
    GELU, Dropout, Linear, Dropout: keys mlp.0, mlp.3), + the first sum. LayerNorm eps 1e-6."""

    def __init__(self, heads, hidden, mlp_dim, sdpa=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = SelfAttention(hidden, heads, sdpa)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp_dim, hidden), nn.Dropout(0.0))

    def forward(self, x):
        y = x + self.dropout(self.self_attention(self.ln_1(x)))
        return y + self.mlp(self.ln_2(y))


class Encoder(nn.Module):
    def __init__(self, seq_length, layers, heads, hidden, mlp_dim, sdpa=False):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(collections.OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, hidden, mlp_dim, sdpa)) for i in range(layers)))
        self.ln = nn.LayerNorm(hidden, eps=1e-6)


class VisionTransformer(_Staged):
    """torchvision.models.VisionTransformer (no representation layer): conv_proj (patch x patch,
    stride patch), class_token, encoder (pos_embedding, layers, ln), heads.head on the class
    token. A token output (N, T, C) is yielded channel-first, (N, C, T), like the layer table;
    its first CLASS_TOKENS tokens are not patches. No ReLU, so `guided` changes nothing (jaxsal
    refuses guided backpropagation for it: docs/methods.md)."""

    INPUT_SIZE, PATCH, DEPTH, HIDDEN, HEADS, MLP_DIM, CLASSES = 224, 16, 12, 768, 12, 3072, 1000
    CLASS_TOKENS = 1

    def __init__(self, guided: bool = False, sdpa: bool = False):
        super().__init__()
        grid = self.INPUT_SIZE // self.PATCH
        self.conv_proj = nn.Conv2d(3, self.HIDDEN, kernel_size=self.PATCH, stride=self.PATCH)
        self.class_token = nn.Parameter(torch.empty(1, 1, self.HIDDEN))
        self.encoder = Encoder(grid * grid + 1, self.DEPTH, self.HEADS, self.HIDDEN, self.MLP_DIM, sdpa)
        self.heads = nn.Sequential(collections.OrderedDict(head=nn.Linear(self.HIDDEN, self.CLASSES)))
        self._check_layers()

    def _tokens(self, x):
        """torchvision's _process_input, class token and position embedding (+ dropout)."""
        n = x.shape[0]
        x = x.reshape(n, self.HIDDEN, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.encoder.dropout(x + self.encoder.pos_embedding)

    def _stages(self):
        yield "conv_proj", self.conv_proj
        yield None, self._tokens
        for i, block in enumerate(self.encoder.layers):
            yield f"encoder_layer{i}", block
        yield "encoder_ln", self.encoder.ln
        yield None, lambda x: x[:, 0]
        yield "head", self.heads.head

    def forward_all(self, x):
        for name, out in super().forward_all(x):
            yield name, out.transpose(1, 2) if out.ndim == 3 else out


def _vit_layer_names(depth):
    return ("conv_proj",) + tuple(f"encoder_layer{i}" for i in range(depth)) + ("encoder_ln", "head")


class VitB16(VisionTransformer):
    LAYERS = _vit_layer_names(12)


# --------------------------------------------------------------------------------------------
# TinyNet (tests/tiny_net.py): not a published network, so not in NETS
# --------------------------------------------------------------------------------------------


class TinyNet(_Staged):
    """tests/tiny_net.py's TinyNet, module for module (keys features.0/3/5, classifier.1/3): the
    torch side of the fast tests' network, e.g. for Quantus in test_sanity_quantus.py."""

    LAYERS = ("conv1", "conv1_relu", "conv1_maxpool", "conv2", "conv2_relu", "conv3",
              "conv3_relu", "conv3_maxpool", "fc1", "fc1_relu", "fc2")
    INPUT_SIZE = 32

    def __init__(self, guided: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, 2, 2), ReLU(guided), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 12, 3, 1, 1), ReLU(guided),
            nn.Conv2d(12, 16, 3, 1, 1), ReLU(guided), nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(16 * 3 * 3, 32), ReLU(guided),
                                        nn.Linear(32, 10))
        self._check_layers()

    def _stages(self):
        f, c = self.features, self.classifier
        return [*zip(self.LAYERS[:8], f), (None, _flatten), ("fc1", c[1]), ("fc1_relu", c[2]),
                ("fc2", c[3])]


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------

NETS = {
    "AlexNet": AlexNet,
    "Vgg11": Vgg11,
    "Vgg16": Vgg16,
    "Vgg19_bn": Vgg19_bn,
    "VggFace": VggFace,
    "Googlenet": Googlenet,
    "InceptionV3": InceptionV3,
    "Resnet50": Resnet50,
    "Resnet152": Resnet152,
    # beyond the original's networks (issue 18)
    "Resnet18": Resnet18,
    "Resnet34": Resnet34,
    "Densenet121": Densenet121,
    # transformers (issue 18)
    "VitB16": VitB16,
}


def net_class(name):
    """NETS[name]; a network class itself may stand for its name (a test's small variant)."""
    return NETS[name] if isinstance(name, str) else name


def _meta_model(name, guided=False, **kwargs):
    with torch.device("meta"):
        return net_class(name)(guided, **kwargs).eval()


@functools.lru_cache(maxsize=None)
def _state_dict_shapes(name):
    net = _meta_model(name)
    return tuple((k, tuple(v.shape), v.dtype) for k, v in net.state_dict().items())


def state_dict_shapes(name) -> "collections.OrderedDict[str, tuple]":
    """{key: (shape, dtype)} of the net's state_dict, in registration order (nothing allocated)."""
    return collections.OrderedDict((k, (shape, dtype)) for k, shape, dtype in _state_dict_shapes(name))


def random_state_dict(name, seed: int = 0) -> "collections.OrderedDict[str, torch.Tensor]":
    """The net's state_dict with seeded random values: conv / linear weights He-scaled
    N(0, 2 / fan_in), biases N(0, 0.05^2); BatchNorm weight U(0.5, 1.5), bias N(0, 0.1^2),
    running_mean N(0, 0.1^2), running_var U(0.5, 1.5), num_batches_tracked int64 0-d.
    Except the last BatchNorm of a ResNet residual branch (Bottleneck.bn3, BasicBlock.bn2):
    weight U(0.1, 0.3), as in trained ResNets -- with U(0.5, 1.5) there, BN's running statistics
    (not those of the actual activations) let the residual sum grow about 1.6x per block, to
    ~1e11 at ResNet-152's avgpool; with U(0.1, 0.3) it stays O(10). Transformers: LayerNorm
    weight U(0.5, 1.5), bias N(0, 0.1^2); attention in_proj_weight He-scaled, in_proj_bias
    N(0, 0.05^2); class_token and pos_embedding N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    net = _meta_model(name)
    kind = {}  # key -> "conv" | "linear" | "bn"
    residual_ends = {f"{n}.bn3" for n, m in net.named_modules() if isinstance(m, Bottleneck)}
    residual_ends |= {f"{n}.bn2" for n, m in net.named_modules() if isinstance(m, BasicBlock)}
    for mod_name, module in net.named_modules():
        prefix = mod_name + "." if mod_name else ""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            tag = "bn_residual_end" if mod_name in residual_ends else "bn"
        elif isinstance(module, (nn.Conv2d, nn.Linear, SelfAttention)):
            tag = "weight"  # SelfAttention: its in_proj_weight, in_proj_bias (out_proj: Linear)
        elif isinstance(module, nn.LayerNorm):
            tag = "ln"
        else:
            continue
        for key in list(module.state_dict(keep_vars=True)):
            kind[prefix + key] = tag
    state = collections.OrderedDict()
    for key, shape, dtype in _state_dict_shapes(name):
        leaf = key.rsplit(".", 1)[-1]
        if kind.get(key) in ("bn", "bn_residual_end"):
            if leaf == "num_batches_tracked":
                value = torch.tensor(0, dtype=torch.int64)
            elif leaf == "weight" and kind[key] == "bn_residual_end":
                value = torch.rand(shape, generator=gen) * 0.2 + 0.1
            elif leaf in ("weight", "running_var"):
                value = torch.rand(shape, generator=gen) + 0.5
            else:  # bias, running_mean
                value = torch.randn(shape, generator=gen) * 0.1
        elif kind.get(key) == "weight" and leaf in ("weight", "in_proj_weight"):
            fan_in = int(np.prod(shape[1:]))
            value = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif kind.get(key) == "weight" and leaf in ("bias", "in_proj_bias"):
            value = torch.randn(shape, generator=gen) * 0.05
        elif kind.get(key) == "ln":
            value = torch.rand(shape, generator=gen) + 0.5 if leaf == "weight" else torch.randn(shape, generator=gen) * 0.1
        elif leaf in ("class_token", "pos_embedding"):
            value = torch.randn(shape, generator=gen) * 0.1
        else:
            raise KeyError(f"unexpected state_dict entry {key}")
        assert value.dtype == dtype, (key, value.dtype, dtype)
        state[key] = value
    return state


def build(name, state_dict, guided=False, dtype=torch.float32, **kwargs):
    """An eval-mode reference net holding `state_dict`'s values (floating ones cast to dtype)."""
    net = _meta_model(name, guided, **kwargs)
    cast = {}
    for key, value in state_dict.items():  # torch tensors or numpy arrays
        value = torch.as_tensor(value)
        cast[key] = value.to(dtype) if value.is_floating_point() else value
    net.load_state_dict(cast, strict=True, assign=True)
    net.requires_grad_(False)
    return net.eval()


def torch_saliency(name, state_dict, images_nchw, layer, channels, guided, dtype=torch.float32):
    """Maps (K, N, 3, S, S) as numpy: for each 1-based channel, d target / d input image, where
    the target is the channel's spatial mean ((C, H, W) outputs) or the unit ((F,) outputs),
    summed over the batch (images are independent in eval mode, so each gets its own gradient)."""
    net = build(name, state_dict, guided, dtype)
    return channel_maps(net, torch.as_tensor(np.asarray(images_nchw)).to(dtype), layer, channels)


def channel_target(net, out, c):
    """(N,) per-image target of 1-based channel c of a layer output: the channel's spatial mean
    ((N, C, H, W) outputs), its mean over the patch tokens ((N, C, T) token outputs: the first
    `net.CLASS_TOKENS` tokens left out) or the unit ((N, F) outputs)."""
    a = out[:, c - 1]
    if a.ndim == 3:
        return a.mean(dim=(1, 2))
    if a.ndim == 2:
        return a[:, net.CLASS_TOKENS:].mean(dim=1)
    return a


def channel_maps(net, x, layer, channels):
    """(K, N, 3, S, S) numpy: d target / d x for each 1-based channel of `net.forward_to(x, layer)`;
    the target is `channel_target`'s."""
    x = x.requires_grad_(True)
    out = net.forward_to(x, layer)
    maps = []
    for c in channels:
        target = channel_target(net, out, c)
        (g,) = torch.autograd.grad(target.sum(), x, retain_graph=True)
        maps.append(g.detach().numpy())
    return np.stack(maps)


@functools.lru_cache(maxsize=None)
def _layer_shapes(name, device):
    if device == "meta":
        net = _meta_model(name)
    else:
        net = build(name, random_state_dict(name))
    size = net_class(name).INPUT_SIZE
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        return tuple((layer, tuple(out.shape[1:])) for layer, out in net.forward_all(x))


def layer_shapes(name, device="meta") -> dict:
    """{layer: output shape without the batch axis, channel first}, from a forward pass over zeros
    at the net's INPUT_SIZE. device="meta" propagates shapes only (instant); "cpu" really runs
    the net (with random weights)."""
    return dict(_layer_shapes(name, device))
