"""Self-tests of tests/torch_nets.py, the plain-PyTorch references of the bigger networks.

Facts written out here (key counts, spot-checked keys and shapes, layer output shapes) come from
torchvision's model definitions and pytorch-mcn's vgg_face_dag, not from torch_nets itself. The
fast part builds the nets on the meta device (shapes only) and runs real gradients only for the
first ReLU of the small nets at small inputs; the full-size runs are marked slow.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # checks of the references the slow parity tests use

import torch_nets  # noqa: E402
from torch_nets import NETS, layer_shapes, random_state_dict, state_dict_shapes, torch_saliency  # noqa: E402

# state_dict entry counts, num_batches_tracked included (one per BatchNorm2d):
#   Vgg11: 8 convs + 3 linears, 2 each. Vgg16: 13 + 3. VggFace: 13 + 3.
#   Vgg19_bn: 16 x (conv 2 + BN 5) + 3 x 2.
#   Googlenet: 59 BasicConv2d (3 stem + 9 x 6 + 2 aux) x 6 + aux 2 x 2 linears x 2 + fc 2.
#   InceptionV3: 96 BasicConv2d (5 + 3 x 7 + 4 + 4 x 10 + 6 + 2 x 9 + 2 aux) x 6 + 2 + 2.
#   Resnet50: stem 6 + 16 blocks x 18 + 4 downsamples x 6 + fc 2. Resnet152: 50 blocks.
KEY_COUNTS = {"Vgg11": 22, "Vgg16": 32, "Vgg19_bn": 118, "VggFace": 32, "Googlenet": 364,
              "InceptionV3": 580, "Resnet50": 320, "Resnet152": 932}

SPOT_KEYS = {
    "Vgg11": {"features.0.weight": (64, 3, 3, 3), "features.18.weight": (512, 512, 3, 3),
              "classifier.0.weight": (4096, 25088), "classifier.6.bias": (1000,)},
    "Vgg16": {"features.28.weight": (512, 512, 3, 3), "features.2.weight": (64, 64, 3, 3),
              "classifier.3.weight": (4096, 4096), "classifier.6.weight": (1000, 4096)},
    "Vgg19_bn": {"features.1.running_var": (64,), "features.49.weight": (512, 512, 3, 3),
                 "features.50.num_batches_tracked": (), "classifier.0.weight": (4096, 25088)},
    "VggFace": {"conv1_1.weight": (64, 3, 3, 3), "conv5_3.weight": (512, 512, 3, 3),
                "fc6.weight": (4096, 25088), "fc8.weight": (2622, 4096), "fc8.bias": (2622,)},
    "Googlenet": {"conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_mean": (64,),
                  "inception3a.branch2.1.conv.weight": (128, 96, 3, 3),
                  "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
                  "inception5b.branch4.1.conv.weight": (128, 832, 1, 1),
                  "aux1.conv.conv.weight": (128, 512, 1, 1), "aux2.conv.conv.weight": (128, 528, 1, 1),
                  "aux1.fc1.weight": (1024, 2048), "aux2.fc2.weight": (1000, 1024),
                  "fc.weight": (1000, 1024)},
    "InceptionV3": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
                    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
                    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
                    "Mixed_7b.branch_pool.conv.weight": (192, 1280, 1, 1),
                    "AuxLogits.conv1.conv.weight": (768, 128, 5, 5), "AuxLogits.fc.weight": (1000, 768),
                    "fc.weight": (1000, 2048)},
    "Resnet50": {"conv1.weight": (64, 3, 7, 7), "bn1.num_batches_tracked": (),
                 "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer2.0.conv2.weight": (128, 128, 3, 3), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                 "layer3.5.bn3.running_var": (1024,), "fc.weight": (1000, 2048)},
    "Resnet152": {"layer2.7.conv1.weight": (128, 512, 1, 1), "layer3.35.bn3.weight": (1024,),
                  "layer4.0.downsample.1.running_mean": (2048,), "fc.weight": (1000, 2048)},
}

SPOT_SHAPES = {
    "Vgg11": {"conv1": (64, 224, 224), "conv2_maxpool": (128, 56, 56), "conv8_maxpool": (512, 7, 7),
              "fc1": (4096,), "fc3": (1000,)},
    "Vgg16": {"conv1": (64, 224, 224), "conv7_maxpool": (256, 28, 28), "conv13": (512, 14, 14),
              "conv13_maxpool": (512, 7, 7), "fc1": (4096,), "fc3": (1000,)},
    "Vgg19_bn": {"conv1_bn": (64, 224, 224), "conv8_maxpool": (256, 28, 28),
                 "conv16_relu": (512, 14, 14), "conv16_maxpool": (512, 7, 7), "fc2_relu": (4096,)},
    "VggFace": {"relu1_1": (64, 224, 224), "pool3": (256, 28, 28), "conv5_3": (512, 14, 14),
                "pool5": (512, 7, 7), "fc6": (4096,), "fc8": (2622,)},
    "Googlenet": {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56),
                  "maxpool2": (192, 28, 28), "inception3a": (256, 28, 28), "inception3b": (480, 28, 28),
                  "maxpool3": (480, 14, 14), "inception4a": (512, 14, 14), "inception4d": (528, 14, 14),
                  "inception4e": (832, 14, 14), "maxpool4": (832, 7, 7), "inception5b": (1024, 7, 7),
                  "fc": (1000,)},
    "InceptionV3": {"conv1": (32, 149, 149), "conv2": (32, 147, 147), "conv3": (64, 147, 147),
                    "maxpool1": (64, 73, 73), "conv4": (80, 73, 73), "conv5": (192, 71, 71),
                    "maxpool2": (192, 35, 35), "inception1": (256, 35, 35), "inception3": (288, 35, 35),
                    "inception4": (768, 17, 17), "inception8": (768, 17, 17), "inception9": (1280, 8, 8),
                    "inception10": (2048, 8, 8), "inception11": (2048, 8, 8), "avgpool": (2048, 1, 1),
                    "fc": (1000,)},
    "Resnet50": {"conv": (64, 112, 112), "relu": (64, 112, 112), "maxpool": (64, 56, 56),
                 "layer1_bottleneck2": (256, 56, 56), "layer2_bottleneck0": (512, 28, 28),
                 "layer3_bottleneck5": (1024, 14, 14), "layer4_bottleneck2": (2048, 7, 7),
                 "avgpool": (2048, 1, 1), "fc": (1000,)},
    "Resnet152": {"layer2_bottleneck7": (512, 28, 28), "layer3_bottleneck35": (1024, 14, 14),
                  "layer4_bottleneck2": (2048, 7, 7), "avgpool": (2048, 1, 1), "fc": (1000,)},
}

LAYER_COUNTS = {  # len(LAYERS)
    "Vgg11": 21 + 5, "Vgg16": 13 * 2 + 5 + 5, "Vgg19_bn": 16 * 3 + 5 + 5, "VggFace": 13 * 2 + 5 + 5,
    "Googlenet": 17, "InceptionV3": 5 + 2 + 11 + 2, "Resnet50": 4 + 16 + 2, "Resnet152": 4 + 50 + 2,
}

# ReLU calls on the way to the last layer (aux heads excluded): every one must be a ReLU module
# so that the guided rule reaches it. Googlenet: 3 + 9 x 6 BasicConv2d; InceptionV3: 5 + 3 x 7 +
# 4 + 4 x 10 + 6 + 2 x 9; ResNet: 1 + 3 per bottleneck.
RELU_CALLS = {"Vgg11": 8 + 2, "Vgg16": 13 + 2, "Vgg19_bn": 16 + 2, "VggFace": 13 + 2,
              "Googlenet": 57, "InceptionV3": 94, "Resnet50": 1 + 16 * 3, "Resnet152": 1 + 50 * 3}

FIRST_RELU = {"Vgg11": "conv1_relu", "Vgg16": "conv1_relu", "Vgg19_bn": "conv1_relu",
              "VggFace": "relu1_1", "Googlenet": "conv1", "InceptionV3": "conv1", "Resnet50": "relu",
              "Resnet152": "relu"}

# Transformers. VitB16: class_token, conv_proj 2, pos_embedding, 12 blocks x (ln_1 2,
# self_attention 4, ln_2 2, mlp 4), encoder.ln 2, heads.head 2 (torchvision's vit_b_16); no ReLU.
KEY_COUNTS["VitB16"] = 1 + 2 + 1 + 12 * 12 + 2 + 2
SPOT_KEYS["VitB16"] = {"class_token": (1, 1, 768), "conv_proj.weight": (768, 3, 16, 16),
                       "encoder.pos_embedding": (1, 197, 768),
                       "encoder.layers.encoder_layer_0.self_attention.in_proj_weight": (2304, 768),
                       "encoder.layers.encoder_layer_7.self_attention.out_proj.bias": (768,),
                       "encoder.layers.encoder_layer_11.mlp.3.weight": (768, 3072),
                       "encoder.ln.weight": (768,), "heads.head.weight": (1000, 768)}
SPOT_SHAPES["VitB16"] = {"conv_proj": (768, 14, 14), "encoder_layer0": (768, 197),
                         "encoder_layer11": (768, 197), "encoder_ln": (768, 197), "head": (1000,)}
LAYER_COUNTS["VitB16"] = 1 + 12 + 2
RELU_CALLS["VitB16"] = 0

SMALL = ("Googlenet", "InceptionV3", "Resnet50")  # random_state_dict under 0.5 s

# -- AlexNet (the one reference of tests and scripts) and the networks beyond the original's
# (issue 18): ResNet-18/34, DenseNet-121 ---------------------------------------------------------
#   AlexNet: 5 convs + 3 linears, 2 each.
#   Resnet18: stem 6 + 8 basic blocks x 12 + 3 downsamples x 6 + fc 2. Resnet34: 16 blocks.
#   Densenet121: conv0 1 + norm0 5 + 58 dense layers x 12 + 3 transitions x 6 + norm5 5 + 2.
KEY_COUNTS |= {"AlexNet": 16, "Resnet18": 122, "Resnet34": 218, "Densenet121": 727}
SPOT_KEYS |= {
    "AlexNet": {"features.0.weight": (64, 3, 11, 11), "features.10.bias": (256,),
                "classifier.1.weight": (4096, 9216), "classifier.6.bias": (1000,)},
    "Resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,),
                 "fc.weight": (1000, 512)},
    "Resnet34": {"layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.bn2.weight": (512,),
                 "layer4.0.downsample.1.running_mean": (512,), "fc.weight": (1000, 512)},
    "Densenet121": {"features.conv0.weight": (64, 3, 7, 7), "features.norm0.running_var": (64,),
                    "features.denseblock1.denselayer1.norm1.weight": (64,),
                    "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
                    "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
                    "features.transition1.conv.weight": (128, 256, 1, 1),
                    "features.denseblock4.denselayer16.norm1.running_mean": (992,),
                    "features.norm5.weight": (1024,), "classifier.weight": (1000, 1024)},
}
SPOT_SHAPES |= {
    "AlexNet": {"conv1": (64, 55, 55), "conv1_maxpool": (64, 27, 27), "conv2": (192, 27, 27),
                "conv5_maxpool": (256, 6, 6), "fc1": (4096,), "fc3": (1000,)},
    "Resnet18": {"conv": (64, 112, 112), "maxpool": (64, 56, 56), "layer1_basicblock1": (64, 56, 56),
                 "layer2_basicblock0": (128, 28, 28), "layer4_basicblock1": (512, 7, 7),
                 "avgpool": (512, 1, 1), "fc": (1000,)},
    "Resnet34": {"layer3_basicblock5": (256, 14, 14), "layer4_basicblock2": (512, 7, 7), "fc": (1000,)},
    "Densenet121": {"conv0": (64, 112, 112), "pool0": (64, 56, 56), "denseblock1": (256, 56, 56),
                    "transition1": (128, 28, 28), "denseblock2": (512, 28, 28),
                    "transition2": (256, 14, 14), "denseblock3": (1024, 14, 14),
                    "transition3": (512, 7, 7), "denseblock4": (1024, 7, 7), "norm5": (1024, 7, 7),
                    "fc": (1000,)},
}
LAYER_COUNTS |= {"AlexNet": 13 + 5, "Resnet18": 4 + 8 + 2, "Resnet34": 4 + 16 + 2,
                 "Densenet121": 4 + 4 + 3 + 2}
# AlexNet 5 + 2; basic blocks: 2 each; DenseNet: relu0, 2 per dense layer, 1 per transition and
# the functional one before the classifier.
RELU_CALLS |= {"AlexNet": 7, "Resnet18": 1 + 8 * 2, "Resnet34": 1 + 16 * 2,
               "Densenet121": 1 + 58 * 2 + 3 + 1}
FIRST_RELU |= {"AlexNet": "conv1_relu", "Resnet18": "relu", "Resnet34": "relu",
               "Densenet121": "relu0"}


def _images(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_state_dict_keys_and_shapes(name):
    shapes = state_dict_shapes(name)
    assert len(shapes) == KEY_COUNTS[name]
    for key, shape in SPOT_KEYS[name].items():
        assert shapes[key][0] == shape, key
    for key, (shape, dtype) in shapes.items():
        assert dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32), key


@pytest.mark.parametrize("name", list(NETS))
def test_layers_and_shapes(name):
    net_cls = NETS[name]
    assert len(net_cls.LAYERS) == len(set(net_cls.LAYERS)) == LAYER_COUNTS[name]
    assert net_cls.INPUT_SIZE == (299 if name == "InceptionV3" else 224)
    shapes = layer_shapes(name)
    assert tuple(shapes) == net_cls.LAYERS
    for layer, shape in SPOT_SHAPES[name].items():
        assert shapes[layer] == shape, layer


def test_alexnet_keys_are_torchvisions():
    """AlexNet's state_dict keys, order and shapes are those written out in conftest.py from
    torchvision's alexnet."""
    from conftest import TORCHVISION_ALEXNET_SHAPES

    assert [(k, shape) for k, (shape, _) in state_dict_shapes("AlexNet").items()] == \
        list(TORCHVISION_ALEXNET_SHAPES.items())


@pytest.mark.parametrize("name", list(NETS))
def test_every_relu_module_is_an_nn_relu(name):
    """Captum's GuidedBackprop, Deconvolution and GuidedGradCam hook nn.ReLU modules."""
    relus = [m for m in torch_nets._meta_model(name).modules() if isinstance(m, torch_nets.ReLU)]
    assert bool(relus) == (RELU_CALLS[name] > 0)  # a ViT has none
    assert all(isinstance(m, torch.nn.ReLU) and not m.inplace for m in relus)


def test_densenet_published_key_names():
    """densenet121-a639ec97.pth's names (torchvision's `_load_state_dict` pattern)."""
    key = torch_nets.densenet_published_key
    assert key("features.denseblock1.denselayer1.norm1.weight") == "features.denseblock1.denselayer1.norm.1.weight"
    assert key("features.denseblock3.denselayer24.conv2.weight") == "features.denseblock3.denselayer24.conv.2.weight"
    assert key("features.denseblock2.denselayer3.norm2.running_var") == "features.denseblock2.denselayer3.norm.2.running_var"
    assert key("features.transition1.norm.weight") == "features.transition1.norm.weight"
    assert key("features.norm5.bias") == "features.norm5.bias"


def test_vgg19_bn_layer_order():
    layers = NETS["Vgg19_bn"].LAYERS
    assert layers[:7] == ("conv1", "conv1_bn", "conv1_relu", "conv2", "conv2_bn", "conv2_relu",
                          "conv2_maxpool")
    assert layers[-6:] == ("conv16_maxpool", "fc1", "fc1_relu", "fc2", "fc2_relu", "fc3")


@pytest.mark.parametrize("name", list(NETS))
def test_every_relu_is_a_module(name):
    """Every ReLU applied on the way to the last layer is a torch_nets.ReLU module call."""
    net = torch_nets._meta_model(name, guided=True)
    calls = []
    for m in net.modules():
        if isinstance(m, torch_nets.ReLU):
            assert m.guided
            m.register_forward_hook(lambda *_: calls.append(1))
    size = NETS[name].INPUT_SIZE
    with torch.no_grad():
        net.forward_to(torch.zeros(1, 3, size, size, device="meta"), NETS[name].LAYERS[-1])
    assert len(calls) == RELU_CALLS[name]


@pytest.mark.parametrize("name", SMALL)
def test_random_state_dict(name):
    sd = random_state_dict(name, seed=0)
    assert list(sd) == list(state_dict_shapes(name))
    for key, (shape, dtype) in state_dict_shapes(name).items():
        assert tuple(sd[key].shape) == shape and sd[key].dtype == dtype, key
    var = [v for k, v in sd.items() if k.endswith("running_var")]
    assert all(float(v.min()) >= 0.5 and float(v.max()) <= 1.5 for v in var)
    assert all(int(v) == 0 for k, v in sd.items() if k.endswith("num_batches_tracked"))
    again = random_state_dict(name, seed=0)
    other = random_state_dict(name, seed=1)
    key = next(k for k in sd if k.endswith("weight"))
    assert torch.equal(sd[key], again[key]) and not torch.equal(sd[key], other[key])


def test_googlenet_transform_input():
    """transform_input=True == feeding (x * std + mean - 0.5) / 0.5 to a transform_input=False net."""
    sd = random_state_dict("Googlenet")
    on = torch_nets.build("Googlenet", sd)
    off = torch_nets.build("Googlenet", sd, transform_input=False)
    x = torch.as_tensor(_images(1, 32))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(on.forward_to(x, "conv2"),
                                   off.forward_to((x * std + mean - 0.5) / 0.5, "conv2"))


@pytest.mark.parametrize("name", SMALL)
def test_guided_equals_vanilla_at_first_relu(name):
    """At the first ReLU only the target's own ReLU is guided, and its upstream gradient (1/HW on
    the chosen channel) is never negative: guided == vanilla. Deeper, they differ."""
    sd = random_state_dict(name)
    x = _images(1, 64)
    layer = FIRST_RELU[name]
    vanilla = torch_saliency(name, sd, x, layer, [1, 7], guided=False)
    guided = torch_saliency(name, sd, x, layer, [1, 7], guided=True)
    assert vanilla.shape == (2, 1, 3, 64, 64)
    assert np.abs(vanilla).max() > 0
    np.testing.assert_array_equal(guided, vanilla)
    deeper = {"Googlenet": "conv3", "InceptionV3": "conv3", "Resnet50": "layer1_bottleneck0"}[name]
    vanilla = torch_saliency(name, sd, x, deeper, [1], guided=False)
    guided = torch_saliency(name, sd, x, deeper, [1], guided=True)
    assert np.abs(guided).max() > 0 and not np.allclose(guided, vanilla)


@pytest.mark.slow
def test_saliency_fc_target_is_a_unit():
    """An (F,) target is the unit itself: the map of unit c equals the gradient of out[:, c-1]."""
    name = "Googlenet"
    sd = random_state_dict(name)
    x = _images(2, 64)
    maps = torch_saliency(name, sd, x, "fc", [3], guided=False)
    net = torch_nets.build(name, sd)
    xt = torch.as_tensor(x).requires_grad_(True)
    (g,) = torch.autograd.grad(net(xt)[:, 2].sum(), xt)
    np.testing.assert_allclose(maps[0], g.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Googlenet", "Resnet50"])  # tests/test_zoo.py runs them all
def test_full_size_slow(name):
    """random_state_dict keys for every net; the real forward's shapes equal the meta ones; guided
    == vanilla at the first ReLU; fc maps at full size are finite and non-zero."""
    sd = random_state_dict(name)
    assert [(k, tuple(v.shape), v.dtype) for k, v in sd.items()] == \
        [(k, s, d) for k, (s, d) in state_dict_shapes(name).items()]
    assert layer_shapes(name, device="cpu") == layer_shapes(name)
    size = NETS[name].INPUT_SIZE
    x = _images(1, size)
    layer = FIRST_RELU[name]
    np.testing.assert_array_equal(torch_saliency(name, sd, x, layer, [2], guided=True),
                                  torch_saliency(name, sd, x, layer, [2], guided=False))
    for guided in (False, True):
        maps = torch_saliency(name, sd, x, NETS[name].LAYERS[-1], [1, 5], guided=guided)
        assert maps.shape == (2, 1, 3, size, size)
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0
