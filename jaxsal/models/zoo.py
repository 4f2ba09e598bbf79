"""The built-in networks: the original's seven (SPEC §8), then VGG-16 and ResNet-50, then the
networks beyond the original (issue 18), the Vision Transformer ViT-B/16 among them."""
from jaxsal.models.alexnet import ALEXNET
from jaxsal.models.densenet import DENSENET121
from jaxsal.models.inception import GOOGLENET, INCEPTION_V3
from jaxsal.models.resnet import RESNET18, RESNET34, RESNET50, RESNET152
from jaxsal.models.vgg import VGG11, VGG16, VGG19_BN, VGG_FACE
from jaxsal.models.vit import VIT_B16

NETWORKS = (ALEXNET, VGG_FACE, VGG11, VGG19_BN, GOOGLENET, RESNET152, INCEPTION_V3, VGG16, RESNET50)

# Beyond the original's networks (issue 18): ResNet-18/34 (basic blocks), DenseNet-121.
NETWORKS += (RESNET18, RESNET34, DENSENET121)

# Transformers (issue 18): ViT-B/16.
NETWORKS += (VIT_B16,)
