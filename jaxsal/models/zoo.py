"""The built-in networks: the original's seven (SPEC §8) and VGG-16 and ResNet-50."""
from jaxsal.models.alexnet import ALEXNET
from jaxsal.models.vgg import VGG11, VGG16, VGG19_BN, VGG_FACE

NETWORKS = (ALEXNET, VGG_FACE, VGG11, VGG19_BN, VGG16)
