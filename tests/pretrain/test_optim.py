"""LARS and the lr / momentum schedules against numbers worked out by hand from their formulas."""
from __future__ import annotations

import math

import pytest
import torch

from pretrain.optim import LARS, build_optimizer, momentum_at, warmup_cosine_lr


def _params(weight, bias, weight_grad, bias_grad):
    weight = torch.nn.Parameter(torch.tensor(weight))
    bias = torch.nn.Parameter(torch.tensor(bias))
    weight.grad, bias.grad = torch.tensor(weight_grad), torch.tensor(bias_grad)
    return weight, bias


def test_lars_first_step_by_hand():
    """Weight matrix: u = g + wd * w, scaled by eta * ||w|| / ||u||; bias: the raw gradient.

    w = [[3, 4], [0, 0]], g = [[0.5, -1], [0, 0]], wd = 0.5: u = [[2, 1], [0, 0]], ||u|| = sqrt(5),
    ||w|| = 5, eta = 0.001, so the update is 0.001 * 5 / sqrt(5) * u = 0.002236 * u; lr = 2.
    Bias b = [1, -2] with gradient [0.25, 0.5]: no decay, no ratio, b - 2 * g = [0.5, -3].

    Mutations tried, each failing this test: weight decay applied to biases (``param.ndim > 1``
    test widened to every parameter); the ratio inverted (||u|| / ||w||); decay added once more
    after the trust ratio."""
    weight, bias = _params([[3.0, 4.0], [0.0, 0.0]], [1.0, -2.0], [[0.5, -1.0], [0.0, 0.0]], [0.25, 0.5])
    optimizer = LARS([weight, bias], lr=2.0, weight_decay=0.5, momentum=0.9, trust_coefficient=0.001)
    optimizer.step()
    ratio = 0.001 * 5 / math.sqrt(5)
    expected_weight = torch.tensor([[3 - 2 * ratio * 2, 4 - 2 * ratio * 1], [0.0, 0.0]])
    assert torch.allclose(weight.detach(), expected_weight, rtol=0, atol=1e-6)
    assert torch.allclose(bias.detach(), torch.tensor([0.5, -3.0]), rtol=0, atol=1e-6)


def test_lars_momentum_accumulates_the_scaled_updates():
    """Second step with the same gradients: buffer = 0.9 * u1 + u2 (each already trust-scaled).

    Mutation tried: ``buffer.mul_(momentum)`` dropped (plain SGD step); this test fails."""
    weight, bias = _params([[3.0, 4.0], [0.0, 0.0]], [1.0, -2.0], [[0.5, -1.0], [0.0, 0.0]], [0.25, 0.5])
    optimizer = LARS([weight, bias], lr=1.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.01)
    optimizer.step()                      # u1 = 0.01 * 5 / ||g|| * g
    first = weight.detach().clone()
    optimizer.step()                      # w changed: the ratio is recomputed from the new norm
    g = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    u1 = 0.01 * 5 / g.norm() * g
    u2 = 0.01 * first.norm() / g.norm() * g
    assert torch.allclose(weight.detach(), first - (0.9 * u1 + u2), rtol=0, atol=1e-6)
    # Bias: buffer 0.9 * g + g after two steps, nothing else.
    assert torch.allclose(bias.detach(), torch.tensor([1.0 - 0.25 - 1.9 * 0.25, -2.0 - 0.5 - 1.9 * 0.5]), atol=1e-6)


def test_lars_zero_weight_takes_the_plain_update():
    """A zero weight (||w|| = 0) is not frozen by a zero ratio: the ratio falls back to 1."""
    weight, bias = _params([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [[1.0, 2.0], [3.0, 4.0]], [0.0, 0.0])
    LARS([weight, bias], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(weight.detach(), torch.tensor([[-0.1, -0.2], [-0.3, -0.4]]), atol=1e-7)


def test_batchnorm_parameters_are_exempt_in_a_real_model():
    """BN affine parameters of a ResNet block are 1-D: a LARS step moves them by -lr * grad exactly."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    block(torch.randn(2, 3, 6, 6)).pow(2).mean().backward()
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    build_optimizer("lars", block.parameters(), lr=0.5, weight_decay=0.1).step()
    for name in ("0.bias", "1.weight", "1.bias"):
        param = dict(block.named_parameters())[name]
        assert torch.allclose(param.detach(), before[name] - 0.5 * param.grad, atol=1e-7), name
    conv = block[0].weight
    update = conv.grad + 0.1 * before["0.weight"]
    expected = before["0.weight"] - 0.5 * 0.001 * before["0.weight"].norm() / update.norm() * update
    assert torch.allclose(conv.detach(), expected, atol=1e-7)


# Schedule of a 10-epoch run with 2 warm-up epochs, peak 0.8, start 0.01.
SCHEDULE = dict(peak_lr=0.8, warmup_epochs=2.0, total_epochs=10.0, start_lr=0.01)


@pytest.mark.parametrize("epoch,expected", [
    (0.0, 0.01),                                        # warm-up starts at start_lr, not at 0
    (1.0, 0.405),                                       # halfway: (0.01 + 0.8) / 2
    (2.0, 0.8),                                         # the peak, where the cosine begins
    (4.0, 0.8 * 0.5 * (1 + math.cos(math.pi / 4))),     # a quarter into the cosine: 0.68284
    (6.0, 0.4),                                         # mid-cosine: half the peak
    (10.0, 0.0),                                        # cosine ends at 0
])
def test_warmup_cosine_lr_at_known_points(epoch, expected):
    """Mutations tried, each failing one of these points: warm-up from 0 (start_lr ignored);
    cosine measured from epoch 0 instead of from the end of warm-up; a full cosine cycle (2 pi)."""
    assert warmup_cosine_lr(epoch, **SCHEDULE) == pytest.approx(expected, abs=1e-12)


def test_momentum_rises_from_base_to_one_along_a_half_cosine():
    """MoCo v3: m = 1 - (1 - base) * (1 + cos(pi * t / T)) / 2, i.e. 0.99 -> 0.995 -> 1.

    Mutation tried: the cosine's sign flipped (m falling from 1 to base); this test fails."""
    values = [momentum_at(t, base=0.99, total_epochs=100, cosine=True) for t in (0, 25, 50, 100)]
    assert values == pytest.approx([0.99, 1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.995, 1.0], abs=1e-12)
    assert values == sorted(values)
    assert momentum_at(50, base=0.99, total_epochs=100, cosine=False) == 0.99


def test_lars_defaults_are_moco_v3s():
    """MoCo v3 optimizer.py LARS: weight_decay 0, momentum 0.9, trust coefficient 0.001."""
    defaults = LARS([torch.nn.Parameter(torch.ones(2, 2))], lr=1.0).defaults
    assert (defaults["weight_decay"], defaults["momentum"], defaults["trust_coefficient"]) == (0.0, 0.9, 0.001)


def test_no_warmup_starts_the_cosine_at_the_peak():
    """--warmup-epochs 0 is allowed: step 0 gets the peak, not a 0/0 division (a mutant ending the
    warm-up with ``<=`` crashed here)."""
    schedule = dict(peak_lr=0.8, warmup_epochs=0.0, total_epochs=10.0)
    assert warmup_cosine_lr(0.0, **schedule) == 0.8
    assert warmup_cosine_lr(5.0, **schedule) == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("warmup", [1.0, 0.5])
def test_a_warmup_of_one_epoch_or_less_still_ramps(warmup):
    """The small recipes warm up for one epoch (the tests' tiny runs for one): half-way through it the
    rate is half-way to the peak. Mutation tried (found by mutmut), failing this test: the warm-up
    branch entered only for ``warmup_epochs > 1``, so a 1-epoch warm-up started at the peak."""
    schedule = dict(peak_lr=0.8, warmup_epochs=warmup, total_epochs=10.0, start_lr=0.0)
    assert warmup_cosine_lr(warmup / 2, **schedule) == pytest.approx(0.4, abs=1e-12)
    assert warmup_cosine_lr(0.0, **schedule) == 0.0


def test_warmup_starts_at_one_millionth_by_default():
    assert warmup_cosine_lr(0.0, peak_lr=0.8, warmup_epochs=2.0, total_epochs=10.0) == 1e-6


@pytest.mark.parametrize("name,kind,momentum", [("lars", LARS, 0.9), ("adamw", torch.optim.AdamW, None),
                                                ("sgd", torch.optim.SGD, 0.9)])
def test_build_optimizer_passes_lr_and_weight_decay(name, kind, momentum):
    optimizer = build_optimizer(name, [torch.nn.Parameter(torch.ones(2, 2))], lr=0.3, weight_decay=0.05)
    group = optimizer.param_groups[0]
    assert type(optimizer) is kind and (group["lr"], group["weight_decay"]) == (0.3, 0.05)
    if momentum is not None:
        assert group["momentum"] == momentum


def test_build_optimizer_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; expected lars, adamw or sgd"):
        build_optimizer("adam", [torch.nn.Parameter(torch.ones(1))], lr=0.1, weight_decay=0.0)


def test_cosine_shorter_than_an_epoch():
    """Warm-up 9.5 of 10 epochs: the cosine spans half an epoch, so 9.75 is its middle (peak / 2).

    Mutation tried (found by mutmut): the span's floor raised from 1e-12 to ~1; this test fails."""
    assert warmup_cosine_lr(9.75, peak_lr=0.8, warmup_epochs=9.5, total_epochs=10.0) == pytest.approx(0.4, abs=1e-12)
