"""MoCo v3's frozen random patch projection (Chen et al., 2021, Sec. 5), seen through training."""
from __future__ import annotations

import math

import torch

from pretrain.backbones import build_backbone
from pretrain.config import PretrainConfig
from pretrain.optim import build_optimizer
from pretrain.train import model_from_config


def test_vit_patch_projection_is_frozen_through_a_training_step():
    """The projection gets no gradient and keeps its values after an optimiser step over the
    parameters pretrain/train.py hands to the optimiser; every other block does train.

    Mutation tried: ``proj.weight.requires_grad = False`` removed from build_mocov3_vit; this test
    fails (the weight gets a gradient and moves)."""
    torch.manual_seed(0)
    vit, dim = build_backbone("vit_tiny", 32)
    proj = vit.patch_embed.proj
    # MoCo v3 vits.py: uniform in +-sqrt(6 / (3 * patch^2 + embed_dim)), bias 0.
    bound = math.sqrt(6.0 / (3 * 4 * 4 + dim))
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound
    before = proj.weight.detach().clone(), proj.bias.detach().clone()
    optimizer = build_optimizer("adamw", [p for p in vit.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    vit(torch.randn(2, 3, 32, 32)).pow(2).sum().backward()
    optimizer.step()
    assert proj.weight.grad is None and proj.bias.grad is None
    assert torch.equal(proj.weight, before[0]) and torch.equal(proj.bias, before[1])
    assert vit.blocks[0].attn.qkv.weight.grad is not None


def test_snclr_model_leaves_the_projection_out_of_the_optimised_parameters():
    """The SNCLR model built from a config carries the frozen projection into both encoders."""
    config = PretrainConfig(backbone="vit_tiny", image_size=32, proj_hidden_dim=16, dim=8,
                            candidate_set_size=16, k=2)
    model = model_from_config(config)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for encoder in (model.backbone, model.momentum_backbone):
        assert id(encoder.patch_embed.proj.weight) not in trainable
        assert id(encoder.patch_embed.proj.bias) not in trainable
    assert id(model.backbone.blocks[0].attn.qkv.weight) in trainable


def _layer4_map(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, ...]:
    seen = {}

    def record(module, inputs, output) -> None:
        seen["shape"] = output.shape

    handle = model.layer4.register_forward_hook(record)
    model(images)
    handle.remove()
    return tuple(seen["shape"])


def test_small_image_resnet18_keeps_a_4x4_map_at_32_px():
    """3x3 stride-1 stem, no max-pool: 32 px reaches layer4 as 4x4 (torchvision's stem: 1x1), same
    512-d pooled feature, and the same tensor names as torchvision's ResNet-18 (conv1 reshaped only).

    Mutation tried: keeping torchvision's max-pool in build_small_image_resnet gives 2x2 here."""
    torch.manual_seed(0)
    small, dim = build_backbone("resnet18_cifar")
    imagenet, imagenet_dim = build_backbone("resnet18")
    images = torch.randn(2, 3, 32, 32)
    assert dim == imagenet_dim == 512
    assert small(images).shape == (2, 512)
    assert _layer4_map(small, images) == (2, 512, 4, 4)
    assert _layer4_map(imagenet, images) == (2, 512, 1, 1)
    small_state, imagenet_state = small.state_dict(), imagenet.state_dict()
    assert list(small_state) == list(imagenet_state)
    differing = [k for k in small_state if small_state[k].shape != imagenet_state[k].shape]
    assert differing == ["conv1.weight"] and small_state["conv1.weight"].shape == (64, 3, 3, 3)
    conv = small.conv1
    assert (conv.stride, conv.padding, conv.bias) == ((1, 1), (1, 1), None)
    # torchvision's kaiming-normal (fan_out) init: std sqrt(2 / (64 * 9)) = 0.059, not PyTorch's default.
    assert abs(float(conv.weight.detach().std()) - math.sqrt(2 / (64 * 9))) < 0.01
