"""One SNCLR step against a from-scratch reference written here in plain torch.

The reference knows nothing of pretrain/model.py, losses.py or neighbors.py (the last tests call
snclr_loss directly only to hold it to the reference): it takes the network
pieces (backbone, projector, predictor and their momentum copies) as black boxes and redoes the
paper's arithmetic on them, so a bug shared by the model and its other tests cannot hide.

Tolerances. The networks run in float32 in both; the reference redoes the EMA as the paper writes
it, m * t + (1 - m) * o, where the model uses ``lerp``: each momentum weight may differ by 1-2 ulp
(<= 2 * EPS32 relative). The momentum branch amplifies that: a ResNet-18 on 16 px images ends in
1x1 maps whose train-mode BatchNorm divides by the spread of 4 samples. Measured amplification
(1-2 ulp in, out): keys 2.5e-5 absolute (unit vectors), loss 3e-6 relative with neighbours and
9e-6 without (Intel Xeon, 1 and 2 threads); 1.2e-5 on an AMD EPYC. ROUNDOFF_REL below is ~8x that,
and every bug the tests name moves the loss by >= 3.6e-4 relative, checked where it matters.

- EMA (MoCo v3): before the keys are computed, every momentum parameter becomes
  m * target + (1 - m) * online, on every call.
- Candidate set (SNCLR Eq. 3): the K written entries most cosine-similar to a key, never an entry
  of the key's own image; afterwards view 2's keys are appended, L2-normalised (as the official
  code does).
- Positiveness (Eq. 4): softmax over the K neighbours of cos(y_b, NN_bi) / tau_w.
- Loss (Eq. 2, "paper"; or the official code's form): over every key of the batch and every
  neighbour of every key; symmetrised as 2T * (ctr(q1, k2) + ctr(q2, k1)) (MoCo v3).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import positiveness, snclr_loss
from pretrain.model import SNCLR
from roundoff import EPS32, loss_roundoff

BATCH, DIM, K, TEMPERATURE = 4, 8, 3, 0.2
# Loss and gradients: the EMA's 1-2 ulp through the momentum branch gives <= 1.2e-5 relative on any
# machine measured (module docstring); 1e-4 sits ~8x above it and >3x below the smallest bug (3.6e-4).
ROUNDOFF_REL = 1e-4
# Pushed keys are unit vectors: round-off 2.5e-5 measured; the wrong view's keys are O(0.1-1) away.
KEY_ATOL = 1e-3


def _online(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.backbone.parameters(), *model.projector.parameters()]


def _target(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.momentum_backbone.parameters(), *model.momentum_projector.parameters()]


def reference_slots(keys: torch.Tensor, key_ids: torch.Tensor, memory: torch.Tensor,
                    memory_ids: torch.Tensor) -> list[list[int]]:
    """Per key, the written slots of other images, most cosine-similar first."""
    memory = F.normalize(memory.double(), dim=-1)
    ranked = []
    for key, image in zip(F.normalize(keys.double(), dim=-1), key_ids.tolist()):
        allowed = [j for j in range(len(memory)) if memory_ids[j] >= 0 and memory_ids[j] != image]
        allowed.sort(key=lambda j: -float(memory[j] @ key))
        ranked.append(allowed)
    return ranked


def reference_neighbours(keys: torch.Tensor, key_ids: torch.Tensor, memory: torch.Tensor,
                         memory_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, list[bool]]:
    """(N, k, d): per key the k most similar written entries of other images, as unit vectors; and
    per key whether C held k of them (a key with fewer brings no neighbours; its rows are zeros)."""
    memory = F.normalize(memory.double(), dim=-1)
    out, valid = [], []
    for allowed in reference_slots(keys, key_ids, memory, memory_ids):
        valid.append(len(allowed) >= k)
        out.append(memory[allowed[:k]] if len(allowed) >= k else torch.zeros(k, memory.shape[1], dtype=memory.dtype))
    return torch.stack(out), valid


def reference_contrast(z: torch.Tensor, y: torch.Tensor, keys: torch.Tensor, neighbours: torch.Tensor, *,
                       temperature: float, form: str, weighting: str, tau_w: float = 1.0, offset: int = 0,
                       valid: list[bool] | None = None, detach: bool = False) -> torch.Tensor:
    """Mean over rows b of SNCLR's loss for query z_b whose positive is keys[offset + b]; a key marked
    not ``valid`` brings no neighbours, neither to Z_b nor to its own row's numerator."""
    z, y = F.normalize(z.double(), dim=-1), F.normalize(y.double(), dim=-1)
    keys = F.normalize(keys.double(), dim=-1)
    valid = [True] * len(keys) if valid is None else valid
    losses = []
    for b in range(len(z)):
        partition = torch.exp(keys @ z[b] / temperature).sum() + sum(
            torch.exp(neighbours[j] @ z[b] / temperature).sum() for j in range(len(keys)) if valid[j])
        positive = torch.exp(keys[offset + b] @ z[b] / temperature)
        if not valid[offset + b]:
            losses.append(-torch.log(positive / partition))
            continue
        own = neighbours[offset + b]                                            # (K, d)
        if weighting == "soft":
            weights = torch.softmax(own @ y[b] / tau_w, dim=0)
            weights = weights.detach() if detach else weights
        else:
            weights = torch.ones(len(own), dtype=z.dtype)
        own_terms = torch.exp(own @ z[b] / temperature)
        if form == "paper":
            losses.append(-torch.log((positive + (weights * own_terms).sum()) / partition))
        else:
            losses.append(-(torch.log(positive / partition) + (weights * torch.log(own_terms / partition)).sum()))
    return torch.stack(losses).mean()


def reference_step(net: SNCLR, x1, x2, ids, momentum: float, *, k: int, form: str, weighting: str,
                   tau_w: float = 1.0, detach: bool = False):
    """Returns (loss, keys of view 2) of one step of ``net`` (a deep copy, mutated like the model)."""
    memory, memory_ids = net.candidate_set.features.clone(), net.candidate_set.image_ids.clone()
    with torch.no_grad():
        for target, online in zip(_target(net), _online(net)):
            target.copy_(momentum * target + (1 - momentum) * online)
        k1 = net.momentum_projector(net.momentum_backbone(x1))
        k2 = net.momentum_projector(net.momentum_backbone(x2))
    y1, y2 = net.projector(net.backbone(x1)), net.projector(net.backbone(x2))
    z1, z2 = net.predictor(y1), net.predictor(y2)
    options = dict(temperature=TEMPERATURE, form=form, weighting=weighting, tau_w=tau_w, detach=detach)
    if k == 0:
        empty = torch.zeros(len(ids), 0, DIM, dtype=torch.float64)
        (nn1, valid1), (nn2, valid2) = (empty, None), (empty, None)
    else:
        nn1, valid1 = reference_neighbours(k1, ids, memory, memory_ids, k)
        nn2, valid2 = reference_neighbours(k2, ids, memory, memory_ids, k)
    loss = 2 * TEMPERATURE * (reference_contrast(z1, y1, k2, nn2, valid=valid2, **options)
                              + reference_contrast(z2, y2, k1, nn1, valid=valid1, **options))
    return loss, k2   # view 2's keys enter the candidate set, as in the official code


def _tiny_model(neighbors: str = "soft", loss_form: str = "paper", k: int = K, tau_w: float = 1.0,
                detach: bool = False) -> SNCLR:
    torch.manual_seed(0)
    model = SNCLR("resnet18", image_size=16, proj_hidden_dim=16, dim=DIM, temperature=TEMPERATURE,
                  candidate_set_size=32, k=k, neighbors=neighbors, loss_form=loss_form,
                  positiveness_temperature=tau_w, detach_weights=detach)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():   # online and momentum weights differ, as after any training step
        for target in _target(model):
            target.add_(0.05 * torch.randn(target.shape, generator=g))
    # 20 entries of other images; _seed_own_image_entries adds the batch's own ones.
    model.candidate_set.push(torch.randn(20, DIM, generator=g), torch.arange(100, 120),
                             torch.randint(0, 3, (20,), generator=g))
    return model


def _batch():
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(BATCH, 3, 16, 16, generator=g), torch.randn(BATCH, 3, 16, 16, generator=g)
    return x1, x2, torch.arange(BATCH), torch.tensor([0, 1, 2, 0])


def after_ema(model: SNCLR, momentum: float = 0.9) -> SNCLR:
    """A copy of ``model`` whose momentum weights took the step's EMA (as the paper writes it)."""
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for target, online in zip(_target(probe), _online(probe)):
            target.copy_(momentum * target + (1 - momentum) * online)
    return probe


def _seed_own_image_entries(model: SNCLR, x1, x2, ids) -> None:
    """Put each image's own key (as the EMA will make it) into C: the best match, and forbidden."""
    probe = after_ema(model)
    with torch.no_grad():
        own = probe.momentum_projector(probe.momentum_backbone(x2))
    model.candidate_set.push(own, ids, torch.zeros_like(ids))


@pytest.mark.parametrize("form,weighting,tau_w,detach,sparse", [
    ("paper", "soft", 1.0, False, False), ("official", "soft", 1.0, False, False),
    ("paper", "binary", 1.0, False, False), ("paper", "soft", 0.05, True, False),
    ("official", "soft", 0.05, False, True)])
def test_one_snclr_step_matches_reference(form, weighting, tau_w, detach, sparse):
    """Loss, every online gradient, the momentum weights and the candidate set after one step equal
    the reference's. Also with tau_w = 0.05 and detached weights, and with a sparse C (``sparse``:
    3 entries, so keys of images 0 and 1 find fewer than K others and bring no neighbours).

    Mutations tried, each failing this test: the query may return an entry of its own image (the
    ``own`` mask in neighbors.py removed); positiveness computed from the key's neighbours of the
    other view (``found1`` for ``found2`` in the first snclr_loss call); the neighbour logits left
    out of Z_b (``log_z`` from ``key_logits`` only); the scale 2T dropped. Found by mutmut in
    model.forward: ``positiveness_temperature`` or ``detach_weights`` not passed to the loss;
    ``neighbor_mask`` dropped or None in either call; the batch's labels not pushed with its keys."""
    model = _tiny_model("binary" if weighting == "binary" else "soft", form, tau_w=tau_w, detach=detach)
    x1, x2, ids, labels = _batch()
    if sparse:   # C: one entry each of images 0, 1 and 7; with K = 3, images 0 and 1 find only 2 others
        model.candidate_set = type(model.candidate_set)(32, DIM)
        model.candidate_set.push(torch.randn(3, DIM, generator=torch.Generator().manual_seed(5)),
                                 torch.tensor([0, 1, 7]), torch.tensor([0, 1, 2]))
    else:
        _seed_own_image_entries(model, x1, x2, ids)
    reference = copy.deepcopy(model)
    before = int(model.candidate_set.filled)

    expected, pushed_keys = reference_step(reference, x1, x2, ids, 0.9, k=K, form=form, weighting=weighting,
                                           tau_w=tau_w, detach=detach)
    expected.backward()
    stats = model(x1, x2, ids, labels, momentum=0.9)
    stats.loss.backward()

    assert stats.loss.item() == pytest.approx(expected.item(), rel=ROUNDOFF_REL)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        if want.grad is None:
            assert got.grad is None, name
            continue
        # Relative to the tensor's largest gradient (measured 1.6e-5 of it); the floor covers
        # tensors whose gradient is all round-off (binary weighting leaves some near zero).
        scale = want.grad.abs().max().item()
        assert (got.grad - want.grad).abs().max().item() <= 10 * ROUNDOFF_REL * scale + 1e-6, name
    for got, want in zip(_target(model), _target(reference)):
        # lerp and m * t + (1 - m) * o round differently: at most 2 ulp of the larger operand.
        assert torch.allclose(got, want, rtol=2 * EPS32, atol=2 * EPS32 * want.abs().max().item())
    pushed = model.candidate_set
    assert pushed.filled.item() == before + BATCH and pushed.pointer.item() == before + BATCH
    assert torch.allclose(pushed.features[before:before + BATCH], F.normalize(pushed_keys, dim=-1),
                          atol=KEY_ATOL)
    assert torch.equal(pushed.image_ids[before:before + BATCH], ids)
    assert torch.equal(pushed.labels[before:before + BATCH], labels)


def test_symmetrised_loss_contrasts_each_query_with_the_other_views_key():
    """Eq. 1 step (no neighbours): loss = 2T * (InfoNCE(q1, k2) + InfoNCE(q2, k1)).

    Mutation tried: k1 and k2 exchanged in model.forward (each query against its own view's key);
    the loss then differs from the reference by far more than round-off, and this test fails."""
    model = _tiny_model("none", k=K)
    x1, x2, ids, labels = _batch()
    reference = copy.deepcopy(model)
    expected, _ = reference_step(reference, x1, x2, ids, 0.9, k=0, form="paper", weighting="soft")
    same_view = after_ema(model)
    with torch.no_grad():
        own1 = same_view.momentum_projector(same_view.momentum_backbone(x1))
        own2 = same_view.momentum_projector(same_view.momentum_backbone(x2))
    z1 = same_view.predictor(same_view.projector(same_view.backbone(x1)))
    z2 = same_view.predictor(same_view.projector(same_view.backbone(x2)))
    empty = torch.zeros(BATCH, 0, DIM, dtype=torch.float64)
    wrong = 2 * TEMPERATURE * (reference_contrast(z1, z1, own1, empty, temperature=TEMPERATURE, form="paper",
                                                  weighting="soft")
                               + reference_contrast(z2, z2, own2, empty, temperature=TEMPERATURE, form="paper",
                                                    weighting="soft"))
    # The test can tell the two pairings apart on this batch: the wrong one is >= 3x the tolerance
    # away (1e-3 absolute on a loss of 2.77 is 3.6e-4 relative), round-off 10x inside it.
    assert abs(wrong.item() - expected.item()) > 3 * ROUNDOFF_REL * abs(expected.item())

    loss = model(x1, x2, ids, labels, momentum=0.9).loss
    assert loss.item() == pytest.approx(expected.item(), rel=ROUNDOFF_REL)


def test_momentum_encoder_moves_by_one_minus_m_toward_online_on_every_step():
    """After each forward, target = m * target_before + (1 - m) * online, with m as passed that step.

    Mutations tried, each failing this test: ``lerp_(target, online, momentum)`` (the weight of the
    wrong side); the EMA skipped on steps without neighbours (``if use_neighbors:`` around it)."""
    model = _tiny_model()
    x1, x2, ids, labels = _batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for momentum, use_neighbors in ((0.9, False), (0.75, True)):
        before = [t.detach().clone() for t in _target(model)]
        online = [p.detach().clone() for p in _online(model)]
        assert any(not torch.equal(a, b) for a, b in zip(before, online))
        loss = model(x1, x2, ids, labels, momentum=momentum, use_neighbors=use_neighbors).loss
        for got, old, new in zip(_target(model), before, online):
            want = momentum * old + (1 - momentum) * new
            # Two float32 EMA formulas agree to 2 ulp of the larger operand; the wrong side's weight
            # (m for 1 - m) is off by |m - (1 - m)| * |new - old| >= 0.5 * 0.05 here.
            scale = torch.maximum(old.abs(), new.abs())
            assert ((got - want).abs() <= 4 * EPS32 * scale).all()
        # Hand-checked on one element: it moved a quarter of the way (m = 0.75) / a tenth (m = 0.9);
        # the ratio's round-off is 4 ulp of the element over the distance it moves across.
        old, new = before[0].flatten()[0], online[0].flatten()[0]
        moved = (_target(model)[0].flatten()[0] - old) / (new - old)
        bound = 4 * EPS32 * max(abs(old.item()), abs(new.item())) / abs((new - old).item())
        assert moved.item() == pytest.approx(1 - momentum, abs=bound)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not p.requires_grad for p in _target(model))
    assert math.isfinite(loss.item())


def _unit_tensors(k: int):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g),
            torch.randn(3, k, 5, generator=g))


@pytest.mark.parametrize("form", ["paper", "official"])
def test_a_single_neighbour_is_not_infonce(form):
    """K = 1 goes through Eq. 2 like any K > 0, checked against this file's reference.

    Mutation tried (found by mutmut): the InfoNCE shortcut taken for ``k == 1`` instead of ``k == 0``;
    this test fails."""
    query, attn, keys, neighbours = _unit_tensors(1)
    expected = reference_contrast(query, attn, keys, F.normalize(neighbours.double(), dim=-1), temperature=0.5,
                                  form=form, weighting="soft")
    bound = loss_roundoff(dim=5, terms=3 + 3, temperature=0.5, loss=expected.item())
    assert snclr_loss(query, attn, keys, neighbours, temperature=0.5, form=form).item() == pytest.approx(
        expected.item(), abs=bound)


def test_positiveness_temperature_defaults_to_one():
    """tau_w = 1 by default (official code): softmax of the plain cosines.

    Mutation tried (found by mutmut): default 2.0; this test fails."""
    _, attn, _, neighbours = _unit_tensors(4)
    cosines = torch.einsum("bd,bkd->bk", F.normalize(attn, dim=-1), F.normalize(neighbours, dim=-1))
    assert torch.allclose(positiveness(attn, neighbours), torch.softmax(cosines, dim=-1), atol=1e-6)


def test_loss_refuses_mismatched_inputs_with_a_message_naming_them():
    """Mutations tried (found by mutmut), each failing this test: each message replaced by None; the
    row count read from ``neighbors.shape[1]``."""
    query, attn, keys, neighbours = _unit_tensors(4)   # K = 4: no dimension of `neighbours` is 2 but its rows
    with pytest.raises(ValueError, match=r"weighting='hard'; expected one of \('soft', 'binary'\)"):
        snclr_loss(query, attn, keys, neighbours, temperature=0.2, weighting="hard")
    with pytest.raises(ValueError, match="neighbors has 2 rows but keys has 3"):
        snclr_loss(query, attn, keys, neighbours[:2], temperature=0.2)
    with pytest.raises(ValueError, match=r"form='eq9'; expected one of \('paper', 'official'\)"):
        snclr_loss(query, attn, keys, neighbours, temperature=0.2, form="eq9")


@pytest.mark.parametrize("form", ["paper", "official"])
def test_keys_without_k_neighbours_bring_none_at_any_offset(form):
    """Rows 1..2 of 4 keys (offset 1); key 2 has fewer than K real neighbours (mask False).

    Mutations tried (found by mutmut), each failing this test: the row validity read at
    ``offset - rows``; the mask ignored for the own-row weights (official form then gives inf);
    ``weights >= 0`` for ``weights > 0`` in the official form (0 * -inf gives NaN)."""
    g = torch.Generator().manual_seed(8)
    query, attn = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    keys, neighbours = torch.randn(4, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    valid = [True, True, False, True]
    expected = reference_contrast(query, attn, keys, F.normalize(neighbours.double(), dim=-1), temperature=0.5,
                                  form=form, weighting="soft", offset=1, valid=valid)
    got = snclr_loss(query, attn, keys, neighbours, temperature=0.5, form=form, offset=1,
                     neighbor_mask=torch.tensor(valid))
    bound = loss_roundoff(dim=5, terms=4 + 3 * 3, temperature=0.5, loss=expected.item())
    assert got.item() == pytest.approx(expected.item(), abs=bound)


def test_bf16_inputs_are_computed_in_fp32():
    """Under AMP the inputs come in bf16: the loss of bf16 tensors equals the fp32 loss of the very
    same (bf16-rounded) values, to fp32 round-off.

    Mutation tried (found by mutmut): ``x.to(None)`` in _at_least_fp32 (arithmetic stays bf16); this
    test fails."""
    tensors = [t.bfloat16() for t in _unit_tensors(4)]
    low = snclr_loss(*tensors, temperature=0.2)
    high = snclr_loss(*(t.float() for t in tensors), temperature=0.2)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(high.item(), rel=1e-6)
