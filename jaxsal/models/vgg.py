"""The VGG family as data, like torchvision's `cfgs` + `make_layers`: Vgg11, Vgg16, Vgg19_bn
(torchvision, layer names convN / convN_bn / convN_relu / convN_maxpool, fc1..fc3) and VggFace
(the VGG-16 face network of `vgg_face_dag.pth`, with its own layer names and preprocessing)."""
from __future__ import annotations

from jaxsal.models.layers import BatchNorm, Conv, Flatten, Linear, MaxPool, ReLU
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource, torchvision_url

# torchvision's configurations: output channels of each 3x3 convolution, "M" a 2x2 max-pool.
CFGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def torchvision_vgg(cfg: str, batch_norm: bool = False) -> tuple:
    """features (convN[, convN_bn], convN_relu[, convN_maxpool]) and classifier (fc1, fc1_relu,
    fc2, fc2_relu, fc3), with torchvision's module indices. AdaptiveAvgPool2d((7, 7)) is the
    identity at 224 x 224, dropout the identity in eval mode."""
    stages, index, n = [], 0, 0
    for v in CFGS[cfg]:
        if v == "M":
            stages.append(MaxPool(f"conv{n}_maxpool", f"features.{index}", window=2, stride=2))
            index += 1
            continue
        n += 1
        stages.append(Conv(f"conv{n}", f"features.{index}", v, 3, 1, 1))
        index += 1
        if batch_norm:
            stages.append(BatchNorm(f"conv{n}_bn", f"features.{index}"))
            index += 1
        stages.append(ReLU(f"conv{n}_relu"))
        index += 1
    return (*stages, Flatten(),
            Linear("fc1", "classifier.0", 4096), ReLU("fc1_relu"),
            Linear("fc2", "classifier.3", 4096), ReLU("fc2_relu"),
            Linear("fc3", "classifier.6", 1000))


def _torchvision(name: str, cfg: str, file: str, batch_norm: bool = False, bundled=None):
    stages = torchvision_vgg(cfg, batch_norm)
    return NetSpec(
        name=name,
        stages=stages,
        preprocessing=Preprocessing(size=224),
        weights=WeightSource(files=(file,), url=torchvision_url(file),
                             original=f"{name.lower()}.pth", bundled=bundled),
        cam_layer=[s.name for s in stages if s.name and s.name.endswith("_maxpool")][-1],
    )


VGG11 = _torchvision("Vgg11", "A", "vgg11-bbd30ac9.pth")
VGG16 = _torchvision("Vgg16", "D", "vgg16-397923af.pth", bundled="vgg16_conv.safetensors")
VGG19_BN = _torchvision("Vgg19_bn", "E", "vgg19_bn-c79401a0.pth", batch_norm=True)


def _vgg_face_stages() -> tuple:
    """vgg_face_dag.pth's modules, whose names are the layer names: conv1_1, relu1_1, ...,
    pool1, ..., fc6, relu6, fc7, relu7, fc8."""
    stages = []
    for block, (count, features) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), 1):
        for i in range(1, count + 1):
            stages += [Conv(f"conv{block}_{i}", f"conv{block}_{i}", features, 3, 1, 1),
                       ReLU(f"relu{block}_{i}")]
        stages.append(MaxPool(f"pool{block}", window=2, stride=2))
    return (*stages, Flatten(),
            Linear("fc6", "fc6", 4096), ReLU("relu6"),
            Linear("fc7", "fc7", 4096), ReLU("relu7"),
            Linear("fc8", "fc8", 2622))


VGG_FACE = NetSpec(
    name="VggFace",
    stages=_vgg_face_stages(),
    # vgg_face_dag's meta: 0..255 pixels minus the mean face colour, std 1 (SPEC §8).
    preprocessing=Preprocessing(size=224, mean=(129.186279296875, 104.76238250732422, 93.59396362304688),
                                std=(1.0, 1.0, 1.0), scale=255.0),
    weights=WeightSource(
        files=("vgg_face_dag.pth",),
        url="http://www.robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.pth",
        original="vgg_face_dag.pth",
    ),
    cam_layer="pool5",
)
