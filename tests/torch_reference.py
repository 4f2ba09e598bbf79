"""An independent PyTorch implementation of the saliency maps, for parity tests only.

torchvision's AlexNet layout written out in plain torch (no torchvision needed), the original
program's layer names mapped to module indices, the target of SPEC §4, and guided backprop as a
torch.autograd.Function (the one of tests/torch_nets.py) -- no code shared with jaxsal.
"""
import torch
from torch import nn

from torch_nets import ReLU, channel_maps  # plain, or guided: g_in = g_out * 1[x > 0] * 1[g_out > 0]

# layer name -> (part, index) of the module whose output is the target, torchvision numbering.
TORCH_LAYERS = {
    "conv1": ("features", 0), "conv1_relu": ("features", 1), "conv1_maxpool": ("features", 2),
    "conv2": ("features", 3), "conv2_relu": ("features", 4), "conv2_maxpool": ("features", 5),
    "conv3": ("features", 6), "conv3_relu": ("features", 7),
    "conv4": ("features", 8), "conv4_relu": ("features", 9),
    "conv5": ("features", 10), "conv5_relu": ("features", 11), "conv5_maxpool": ("features", 12),
    "fc1": ("classifier", 1), "fc1_relu": ("classifier", 2),
    "fc2": ("classifier", 4), "fc2_relu": ("classifier", 5), "fc3": ("classifier", 6),
}


class TorchAlexNet(nn.Module):
    """torchvision.models.AlexNet, module for module (same state_dict keys)."""

    def __init__(self, guided: bool = False):
        super().__init__()
        # nn.ReLU modules when plain: Captum's GuidedBackprop and Deconvolution hook those.
        relu = (lambda: ReLU(guided=True)) if guided else (lambda: nn.ReLU(inplace=False))
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

    def forward_to(self, x, layer):
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


def random_state_dict(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return TorchAlexNet().state_dict()


def torch_saliency(state_dict, images_nchw, layer, channels, guided, dtype=torch.float32):
    """Maps (K, N, 3, H, W) as numpy: for each 1-based channel, d target / d image, where the
    target is the channel's spatial mean (conv) or the unit (fc), summed over the batch (images
    are independent in eval mode, so each image gets its own gradient)."""
    net = TorchAlexNet(guided=guided).to(dtype)
    net.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()})
    net.eval()
    return channel_maps(net, torch.as_tensor(images_nchw).to(dtype), layer, channels)
