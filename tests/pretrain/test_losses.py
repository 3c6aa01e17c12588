"""snclr_loss against a direct loop-by-loop computation of Eq. 1, 2 and 4 on tiny tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import positiveness, snclr_loss
from roundoff import loss_roundoff

# `tiny`: 4 keys with 2 neighbours each, 3-dimensional; the float64 reference below holds the
# float32 loss to the worst-case round-off of that arithmetic (roundoff.py), not to a guess.
TINY_TERMS, TINY_DIM = 4 + 4 * 2, 3


def _unit(t):
    return F.normalize(t.double(), dim=-1)


def reference(query, attn, keys, neighbors, *, temperature, offset=0, form="paper", weighting="soft", tau_w=1.0):
    """Eq. 2 / the official form written out with Python floats, no vectorisation."""
    z, y, keys, neighbors = _unit(query), _unit(attn), _unit(keys), _unit(neighbors)
    n, k = neighbors.shape[:2]
    losses = []
    for b in range(z.shape[0]):
        def s(v):
            return float(z[b] @ v) / temperature
        z_b = sum(math.exp(s(keys[j])) for j in range(n)) + sum(
            math.exp(s(neighbors[j, i])) for j in range(n) for i in range(k))
        own = neighbors[offset + b]
        if weighting == "soft":
            raw = [math.exp(float(y[b] @ own[i]) / tau_w) for i in range(k)]
            w = [r / sum(raw) for r in raw]
        else:
            w = [1.0] * k
        pos = s(keys[offset + b])
        if form == "paper":
            losses.append(-math.log((math.exp(pos) + sum(w[i] * math.exp(s(own[i])) for i in range(k))) / z_b))
        else:
            losses.append(-(math.log(math.exp(pos) / z_b) + sum(w[i] * math.log(math.exp(s(own[i])) / z_b)
                                                                for i in range(k))))
    return sum(losses) / len(losses)


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(4, 3, generator=g),
            torch.randn(4, 2, 3, generator=g))


@pytest.mark.parametrize("form", ["paper", "official"])
@pytest.mark.parametrize("weighting", ["soft", "binary"])
@pytest.mark.parametrize("offset", [0, 2])
def test_matches_hand_computation(tiny, form, weighting, offset):
    q, y, keys, nbrs = tiny
    got = snclr_loss(q, y, keys, nbrs, temperature=0.2, offset=offset, form=form, weighting=weighting)
    want = reference(q, y, keys, nbrs, temperature=0.2, offset=offset, form=form, weighting=weighting)
    ratios = 1 + 2 if form == "official" and weighting == "binary" else 2
    bound = loss_roundoff(TINY_DIM, TINY_TERMS, 0.2, want, log_ratios=ratios)
    assert got.item() == pytest.approx(want, abs=bound)


def test_positiveness_temperature(tiny):
    q, y, keys, nbrs = tiny
    got = snclr_loss(q, y, keys, nbrs, temperature=0.5, positiveness_temperature=0.1)
    want = reference(q, y, keys, nbrs, temperature=0.5, tau_w=0.1)
    # tau_w = 0.1 multiplies the weights' cosine error by 10: one more log's worth, with T = 0.1.
    bound = loss_roundoff(TINY_DIM, TINY_TERMS, 0.5, want) + loss_roundoff(TINY_DIM, 2, 0.1, 0, log_ratios=1)
    assert got.item() == pytest.approx(want, abs=bound)


def test_positiveness_is_softmax_of_cosines():
    y = torch.tensor([[1.0, 0.0]])
    nbrs = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])   # cosines 1 and 0
    w = positiveness(y, nbrs, temperature=1.0)
    e = math.e
    assert w[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])


@pytest.mark.parametrize("form", ["paper", "official"])
def test_k0_is_infonce(tiny, form):
    """With K = 0 the loss is Eq. 1: cross-entropy over the global batch with the positive at offset+b."""
    q, y, keys, _ = tiny
    got = snclr_loss(q, y, keys, keys.new_zeros(4, 0, 3), temperature=0.2, offset=2, form=form)
    logits = F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T / 0.2
    want = F.cross_entropy(logits, torch.tensor([2, 3]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_masked_keys_contribute_nothing(tiny):
    """A key without K real neighbours: its neighbours leave every Z_b and its own row is Eq. 1."""
    q, y, keys, nbrs = tiny
    mask = torch.tensor([False, True, True, True])
    got = snclr_loss(q, y, keys, nbrs, temperature=0.2, neighbor_mask=mask)
    z, k, nb = _unit(q), _unit(keys), _unit(nbrs)
    rows = []
    for b in range(2):
        s_keys = [float(z[b] @ k[j]) / 0.2 for j in range(4)]
        s_nb = [float(z[b] @ nb[j, i]) / 0.2 for j in range(1, 4) for i in range(2)]
        log_z = math.log(sum(map(math.exp, s_keys + s_nb)))
        if b == 0:
            rows.append(log_z - s_keys[0])
        else:
            w = torch.softmax(_unit(y)[b] @ nb[b].T, 0).tolist()
            num = math.exp(s_keys[b]) + sum(w[i] * math.exp(float(z[b] @ nb[b, i]) / 0.2) for i in range(2))
            rows.append(log_z - math.log(num))
    assert got.item() == pytest.approx(sum(rows) / 2, abs=loss_roundoff(TINY_DIM, TINY_TERMS, 0.2, sum(rows) / 2))


def test_gradients_flow_and_pass_gradcheck(tiny):
    q, y, keys, nbrs = (t.double().requires_grad_() for t in tiny)
    got = snclr_loss(q, y, keys, nbrs, temperature=0.2)
    got.backward()
    assert q.grad.abs().sum() > 0 and y.grad.abs().sum() > 0, "soft weights must pass gradient to y"
    assert torch.autograd.gradcheck(lambda a, b: snclr_loss(a, b, keys.detach(), nbrs.detach(), temperature=0.2),
                                    (q.detach().requires_grad_(), y.detach().requires_grad_()))


def test_detach_weights_stops_gradient_to_attn_query(tiny):
    q, y, keys, nbrs = tiny
    q, y = q.clone().requires_grad_(), y.clone().requires_grad_()
    snclr_loss(q, y, keys, nbrs, temperature=0.2, detach_weights=True).backward()
    assert q.grad.abs().sum() > 0
    assert y.grad is None or torch.count_nonzero(y.grad) == 0


def test_bad_arguments(tiny):
    q, y, keys, nbrs = tiny
    with pytest.raises(ValueError, match="form"):
        snclr_loss(q, y, keys, nbrs, temperature=0.2, form="other")
    with pytest.raises(ValueError, match="offset"):
        snclr_loss(q, y, keys, nbrs, temperature=0.2, offset=3)


@pytest.mark.parametrize("form", ["paper", "official"])
@pytest.mark.parametrize("weighting", ["soft", "binary"])
@pytest.mark.parametrize("detach", [False, True])
def test_backward_finite_with_masked_rows(tiny, form, weighting, detach):
    """Rows whose key lacks K real neighbours (a candidate set still filling) keep finite gradients.

    Fails on the code before the fix (official, soft, not detached: the other cases pass no gradient
    through w): the backward of torch.where(w > 0, w * (s - log Z), 0) took w = 0 and s = -inf and
    gave 0 * (-inf) = NaN."""
    q, y, keys, nbrs = (t.clone().requires_grad_() for t in tiny)
    mask = torch.tensor([False, True, False, True])   # row 0's own key (offset 0) is masked
    loss = snclr_loss(q, y, keys, nbrs, temperature=0.2, form=form, weighting=weighting, detach_weights=detach,
                      neighbor_mask=mask)
    loss.backward()
    assert torch.isfinite(loss)
    for name, tensor in [("query", q), ("attn_query", y), ("keys", keys), ("neighbors", nbrs)]:
        assert tensor.grad is None or torch.isfinite(tensor.grad).all(), name
    assert q.grad.abs().sum() > 0


def test_all_rows_masked_is_infonce_with_finite_gradients(tiny):
    q, y, keys, nbrs = (t.clone().requires_grad_() for t in tiny)
    masked = snclr_loss(q, y, keys, nbrs, temperature=0.2, form="official",
                        neighbor_mask=torch.zeros(4, dtype=torch.bool))
    masked.backward()
    plain = snclr_loss(q, y, keys, nbrs[:, :0], temperature=0.2)
    assert masked.item() == pytest.approx(plain.item(), rel=1e-6)
    assert all(torch.isfinite(t.grad).all() for t in (q, keys))


@pytest.mark.parametrize("form", ["paper", "official"])
def test_fp32_under_bf16_autocast(form):
    """The loss ignores an enclosing bf16 autocast: equal to the fp32 loss to 1e-5.

    Fails on the code before the fix (einsum/matmul inside autocast ran in bf16: ~1e-3 relative)."""
    g = torch.Generator().manual_seed(3)
    q, y = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    keys, nbrs = torch.randn(64, 64, generator=g), torch.randn(64, 8, 64, generator=g)
    want = snclr_loss(q, y, keys, nbrs, temperature=0.2, offset=32, form=form)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = snclr_loss(q, y, keys, nbrs, temperature=0.2, offset=32, form=form)
        weights = positiveness(y, nbrs[:32])
    assert got.dtype == torch.float32 and weights.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(weights, positiveness(y, nbrs[:32]), rtol=1e-5, atol=1e-7)
