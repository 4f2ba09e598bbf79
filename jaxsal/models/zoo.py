"""The built-in networks: the original's seven (SPEC §8), then VGG-16 and ResNet-50, then the
Vision Transformer ViT-B/16."""
from jaxsal.models.alexnet import ALEXNET
from jaxsal.models.inception import GOOGLENET, INCEPTION_V3
from jaxsal.models.resnet import RESNET50, RESNET152
from jaxsal.models.vgg import VGG11, VGG16, VGG19_BN, VGG_FACE
from jaxsal.models.vit import VIT_B16

NETWORKS = (ALEXNET, VGG_FACE, VGG11, VGG19_BN, GOOGLENET, RESNET152, INCEPTION_V3, VGG16, RESNET50)
NETWORKS += (VIT_B16,)  # transformers
