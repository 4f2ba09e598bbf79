"""`jaxsal.saliency`: maps for a list of images from Python, batched over the jitted core."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxsal import arguments
from jaxsal.batching import iter_saliency
from jaxsal.errors import UsageError
from jaxsal.methods import Method, as_method, check_precision, resolve
from jaxsal.net import Net
from jaxsal.stimuli import as_pil, preprocess


def saliency(
    net: Net,
    images,
    layer: str,
    channels: "Sequence[int | str] | str",
    method: str | Method = "guided",
    *,
    smooth: int = 0,
    noise: float = 0.15,
    seed: int = 0,
    baseline: str = "black",
    ig_steps: int = 32,
    ig_rule: str = "gausslegendre",
    cam_layer: str | None = None,
    batch_size: int | None = None,
    precision: str = "highest",
) -> np.ndarray:
    """Saliency maps of `channels` of `layer` for every image.

    channels: 1-based numbers, ranges or 'all', as the command's -chn (`jaxsal.channels`):
    [60, 125], "1-64", ["1-4", 60], "all". Many channels are computed in blocks (one forward per
    batch of images, the VJPs of a block of channels at once), but the result holds them all.

    images: a sequence of paths, PIL images or uint8 arrays ((H,W,3), (H,W) or (3,H,W)); each is
    EXIF-rotated, converted to RGB, resized to the net's input size (PIL bilinear, no crop) and
    normalized as the network expects, as the original program.

    method: vanilla, guided, deconv, ig, gradcam or guided_gradcam, or a `jaxsal.methods.Method`
    holding the options below (docs/methods.md):
      smooth, noise, seed: SmoothGrad over `smooth` noisy copies (0 = off) with noise standard
        deviation noise * (max - min) of each normalized image; for vanilla, guided, deconv, ig.
      baseline ('black' | 'zeros'), ig_steps, ig_rule ('gausslegendre' | 'trapezoid'):
        integrated gradients.
      cam_layer: Grad-CAM layer (default: the target if conv-like, else the net's last
        conv-like block).
    Options a method does not use are ignored.

    Returns float32 (n_channels, n_images, 3, S, S), attributions with respect to the normalized
    input (S = the net's input size); for gradcam (n_channels, n_images, S, S), non-negative.
    """
    if not isinstance(net, Net):
        raise UsageError(f"net must be a jaxsal Net (from jaxsal.load_net), got "
                         f"{type(net).__name__}")
    images = arguments.image_list("images", images)
    layer = arguments.name("layer", layer)
    batch_size = arguments.optional(arguments.at_least(1))("batch_size", batch_size)
    method = resolve(as_method(method, smooth=smooth, noise=noise, seed=seed, baseline=baseline,
                               ig_steps=ig_steps, ig_rule=ig_rule, cam_layer=cam_layer),
                     net.spec, layer)
    net.check_layer(layer)
    channels = net.spec.check_channels(layer, channels)
    check_precision(precision)
    inputs = [preprocess(as_pil(im), net.spec.preprocessing) for im in images]
    if not inputs:
        raise UsageError("no images given")
    parts = list(iter_saliency(net, inputs, layer, channels, method, n_images=len(inputs),
                               batch_size=batch_size, precision=precision))
    return np.concatenate(parts, axis=1)
