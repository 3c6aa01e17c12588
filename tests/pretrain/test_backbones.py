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
