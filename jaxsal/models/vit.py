"""torchvision's Vision Transformer (ViT-B/16), layers named after torchvision's modules:
conv_proj, encoder_layer0..11, encoder_ln, head.

conv_proj's output is conv-like (C, 14, 14); every encoder layer's and encoder_ln's output is
tokens (C, 197): the class token, then the 14 x 14 patches in row-major order. A channel's
target there is its mean over the 196 patch tokens -- the class token is not a place in the
image, and leaving it out makes the target the spatial mean of a channel's map, as for a
convolutional layer (docs/methods.md). head is fc (a unit).

Grad-CAM's default layer is encoder_layer10, the input of the last block, not the last block's
output: only the class token reaches the head, and LayerNorm acts on each token alone, so the
head's gradient with respect to the last block's patch tokens is zero. pytorch-grad-cam's ViT
example uses the same place (the last block's first LayerNorm).
"""
from __future__ import annotations

import dataclasses
import re

from jaxsal.models.layers import (GELU, Block, ClassTokenPool, Conv, LayerNorm, Linear,
                                  SelfAttention, TokenEmbedding)
from jaxsal.models.spec import NetSpec, Preprocessing, WeightSource, torchvision_url

LN_EPS = 1e-6  # torchvision's ViT: partial(nn.LayerNorm, eps=1e-6)


@dataclasses.dataclass(frozen=True)
class EncoderBlock(Block):
    """torchvision's EncoderBlock (pre-norm): x + attention(ln_1(x)), then + mlp(ln_2(.)), the
    MLP Linear -> GELU -> Linear (dropout is the identity in eval mode)."""

    hidden: int = 768
    heads: int = 12
    mlp_dim: int = 3072

    def forward(self, x, b):
        y = b.layer(LayerNorm("ln_1", "ln_1", eps=LN_EPS), x)
        y = b.layer(SelfAttention("self_attention", "self_attention", heads=self.heads), y)
        x = b.add(y, x)
        y = b.layer(LayerNorm("ln_2", "ln_2", eps=LN_EPS), x)
        y = b.layer(Linear("mlp_0", "mlp.0", self.mlp_dim), y)
        y = b.layer(GELU(), y)
        y = b.layer(Linear("mlp_3", "mlp.3", self.hidden), y)
        return b.add(x, y)


_LEGACY_MLP = re.compile(r"^(encoder\.layers\.encoder_layer_\d+\.mlp\.)linear_([12])\.")


def legacy_mlp_key(key: str) -> str:
    """torchvision's MLPBlock before its version 2 (pytorch/vision#6053) named its linear layers
    `mlp.linear_1`, `mlp.linear_2`; its `_load_from_state_dict` renames them `mlp.0`, `mlp.3`, as
    this does (checkpoints saved with the new names pass unchanged)."""
    return _LEGACY_MLP.sub(lambda m: f"{m[1]}{3 * (int(m[2]) - 1)}.", key)


def vit(name: str, *, image_size: int = 224, patch: int = 16, layers: int = 12,
        hidden: int = 768, heads: int = 12, mlp_dim: int = 3072, classes: int = 1000,
        files: tuple[str, ...] = (), url: str | None = None, original: str = "") -> NetSpec:
    """torchvision's `VisionTransformer(image_size, patch_size, num_layers, num_heads,
    hidden_dim, mlp_dim)` as a description."""
    stages = [Conv("conv_proj", "conv_proj", hidden, patch, patch), TokenEmbedding()]
    stages += [EncoderBlock(f"encoder_layer{i}", f"encoder.layers.encoder_layer_{i}", hidden=hidden,
                            heads=heads, mlp_dim=mlp_dim) for i in range(layers)]
    stages += [LayerNorm("encoder_ln", "encoder.ln", eps=LN_EPS), ClassTokenPool(),
               Linear("head", "heads.head", classes)]
    return NetSpec(
        name=name,
        stages=tuple(stages),
        preprocessing=Preprocessing(size=image_size),
        weights=WeightSource(files=files, url=url, original=original,
                             rename_torch_key=legacy_mlp_key),
        cam_layer=f"encoder_layer{max(layers - 2, 0)}",
    )


VIT_B16 = vit("VitB16", files=("vit_b_16-c867db91.pth",),
              url=torchvision_url("vit_b_16-c867db91.pth"),
              original="vit_b_16.pth")
