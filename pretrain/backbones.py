"""Backbone builders: torchvision ResNets (ImageNet or small-image stem) and timm ViTs with MoCo v3's changes.

Every builder returns ``(module, feature_dim)``; the module maps images (B, 3, H, W) to the
representation used downstream: the global-pooled ResNet feature (2048-d for ResNet-50) or the ViT
[CLS] token after the final norm. Parameter names stay exactly torchvision's / timm's (minus the
classifier), so checkpoints from other projects map onto them by a prefix change only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torchvision

from pretrain.errors import UserError


@dataclass(frozen=True)
class ViTSpec:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int


RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}

# The small-image ("CIFAR") stem: a 3x3 stride-1 first convolution and no max-pool, so a 32 px input
# reaches layer4 as a 4x4 map instead of torchvision's 1x1 (He et al., 2016, Sec. 4.2 use 3x3 at
# 32 px; lightly's ResNetGenerator, lightly/models/resnet.py, and solo-learn's methods/base.py swap
# torchvision's stem this way for CIFAR). Padding is 1 as in lightly; solo-learn pads by 2 (a 34 px
# map, 5x5 at layer4): the same tensor shapes but another function, so a solo-learn CIFAR checkpoint
# is refused by evaluate/loading.py rather than run through this stem. Every tensor keeps
# torchvision's name; only conv1.weight changes shape, (64, 3, 3, 3) instead of (64, 3, 7, 7).
SMALL_IMAGE_RESNETS = {"resnet18_cifar": "resnet18"}

VITS = {
    # MoCo v3 (vits.py) gives ViT-S 12 heads instead of DeiT's 6: "ViT-S with 12 heads".
    "vit_small": ViTSpec(patch_size=16, embed_dim=384, depth=12, num_heads=12),
    "vit_base": ViTSpec(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    # CPU-sized variant for the embedded 32 px data; same code path as the paper models.
    "vit_tiny": ViTSpec(patch_size=4, embed_dim=192, depth=6, num_heads=3),
}

BACKBONES = tuple(RESNETS) + tuple(SMALL_IMAGE_RESNETS) + tuple(VITS)


class UnknownBackboneError(UserError, ValueError):
    pass


def is_vit(name: str) -> bool:
    return name in VITS


def build_backbone(name: str, image_size: int = 224) -> tuple[nn.Module, int]:
    """Build backbone ``name`` (one of BACKBONES) with random weights; return (module, feature_dim)."""
    if name in RESNETS:
        model = RESNETS[name](weights=None)
        feature_dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, feature_dim
    if name in SMALL_IMAGE_RESNETS:
        return build_small_image_resnet(SMALL_IMAGE_RESNETS[name])
    if name in VITS:
        return build_mocov3_vit(VITS[name], image_size), VITS[name].embed_dim
    raise UnknownBackboneError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


def build_small_image_resnet(depth_name: str) -> tuple[nn.Module, int]:
    """torchvision ResNet ``depth_name`` with the small-image stem (see SMALL_IMAGE_RESNETS)."""
    model, feature_dim = build_backbone(depth_name)
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    # torchvision's own initialisation of every conv (ResNet.__init__), so only the shape differs.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model, feature_dim


def sincos_position_embedding(grid_size: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding with a zero slot for [CLS]: shape (1, 1 + grid^2, dim)."""
    if dim % 4:
        raise ValueError(f"embed_dim {dim} must be divisible by 4 for a 2-D sin-cos embedding")
    coords = torch.arange(grid_size, dtype=torch.float32)
    grid_h, grid_w = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = grid_w.flatten()[:, None] * omega[None, :]
    out_h = grid_h.flatten()[:, None] * omega[None, :]
    patches = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), patches], dim=0)[None]


def build_mocov3_vit(spec: ViTSpec, image_size: int) -> nn.Module:
    """timm VisionTransformer with the changes of MoCo v3 (Chen et al., 2021, Sec. 4 and vits.py).

    - fixed 2-D sin-cos position embedding (not learned);
    - the patch projection is randomly initialised and frozen ("random patch projection", Sec. 5);
    - qkv weights initialised as three separate xavier-uniform blocks, other linears xavier-uniform;
    - the representation is the [CLS] token after the final LayerNorm (head removed).
    """
    from timm.models.vision_transformer import VisionTransformer

    if image_size % spec.patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch size {spec.patch_size}")
    model = VisionTransformer(img_size=image_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                              depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=4.0, qkv_bias=True,
                              num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    grid = image_size // spec.patch_size
    model.pos_embed = nn.Parameter(sincos_position_embedding(grid, spec.embed_dim), requires_grad=False)

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if "qkv" in name:
                bound = math.sqrt(6.0 / float(module.weight.shape[0] // 3 + module.weight.shape[1]))
                nn.init.uniform_(module.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(model.cls_token, std=1e-6)

    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / float(3 * spec.patch_size ** 2 + spec.embed_dim))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    proj.weight.requires_grad = False
    proj.bias.requires_grad = False
    return model
