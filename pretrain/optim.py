"""Optimisers and schedules of the paper's recipes (SNCLR Appendix A, following MoCo v3)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as MoCo v3 uses it for ResNets: biases and norm parameters (ndim 1)
    get neither weight decay nor the trust-ratio adaptation."""

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(param), torch.norm(update)
                    ratio = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / update_norm,
                                        torch.ones_like(param_norm))
                    update = update.mul(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; expected lars, adamw or sgd")


def warmup_cosine_lr(progress_epochs: float, *, peak_lr: float, warmup_epochs: float, total_epochs: float,
                     start_lr: float = 1e-6) -> float:
    """Linear warm-up from ``start_lr`` to ``peak_lr``, then half-cycle cosine to 0 (per iteration).

    ``warmup_epochs=0`` (allowed) starts the cosine at the peak on step 0: the warm-up branch, which
    divides by ``warmup_epochs``, is never entered then, whichever comparison ends the warm-up."""
    if warmup_epochs > 0 and progress_epochs < warmup_epochs:
        return start_lr + (peak_lr - start_lr) * progress_epochs / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * (progress_epochs - warmup_epochs) / span))


def momentum_at(progress_epochs: float, *, base: float, total_epochs: float, cosine: bool) -> float:
    """EMA coefficient: fixed ``base``, or MoCo v3's cosine increase from ``base`` to 1."""
    if not cosine:
        return base
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress_epochs / total_epochs)) * (1.0 - base)
