"""The SNCLR objective (Ge et al., ICLR 2023, Eq. 1-4) as a pure function of tensors."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

LOSS_FORMS = ("paper", "official")
WEIGHTINGS = ("soft", "binary")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # Under AMP the inputs arrive in bf16/fp16; exp/log-sum-exp over N*(K+1) candidates needs fp32.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where an enclosing autocast is off (a no-op on devices without autocast, e.g. meta)."""
    # An enclosing autocast re-casts matmul/einsum inputs to bf16 whatever .float() did: the loss moved
    # by 3e-4 relative under CPU bf16 autocast (tests/pretrain/test_losses.py).
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def positiveness(attn_query: torch.Tensor, own_neighbors: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 4 with identity projections (the paper's final choice): softmax over the K neighbours of
    cos(y_b, NN_i) / tau_w. Inputs are L2-normalised here; returns (B, K) weights summing to 1, in fp32
    or wider whatever autocast is active."""
    with autocast_disabled(attn_query.device):
        return _positiveness(attn_query, own_neighbors, temperature)


def _positiveness(attn_query: torch.Tensor, own_neighbors: torch.Tensor, temperature: float) -> torch.Tensor:
    y = F.normalize(_at_least_fp32(attn_query), dim=-1)
    neighbors = F.normalize(_at_least_fp32(own_neighbors), dim=-1)
    return torch.softmax(torch.einsum("bd,bkd->bk", y, neighbors) / temperature, dim=-1)


def snclr_loss(query: torch.Tensor, attn_query: torch.Tensor, keys: torch.Tensor, neighbors: torch.Tensor, *,
               temperature: float, offset: int = 0, form: str = "paper", weighting: str = "soft",
               positiveness_temperature: float = 1.0, detach_weights: bool = False,
               neighbor_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the B local rows of the SNCLR loss.

    query (B, d): predictor outputs z of the local rows; attn_query (B, d): projector outputs y of the
    same rows; keys (N, d): momentum keys of the global batch, row b's positive at keys[offset + b];
    neighbors (N, K, d): the K candidate-set neighbours of every key (K may be 0). All four are
    L2-normalised here, and the arithmetic is at least fp32 whatever the input dtype.

    With s = z.v / temperature over every key and every neighbour of every key, Z_b = sum of exp(s)
    over the N * (K + 1) candidates and w_bi the positiveness of row b's own neighbours (Eq. 4, or 1
    with ``weighting="binary"``):

    - ``form="paper"`` (Eq. 2): L_b = -log((exp(s_pos) + sum_i w_bi exp(s_bi)) / Z_b)
    - ``form="official"`` (ChongjianGE/SNCLR): L_b = -(log(exp(s_pos)/Z_b) + sum_i w_bi log(exp(s_bi)/Z_b))

    With K = 0 both reduce to Eq. 1, InfoNCE over the global batch. ``neighbor_mask`` (N,) marks the
    keys whose K neighbours are all real entries; a key without them contributes no neighbours, to
    its own row's numerator or to any row's Z_b (Eq. 1 for that row). Autocast is disabled inside.
    """
    with autocast_disabled(query.device):
        return _snclr_loss(query, attn_query, keys, neighbors, temperature=temperature, offset=offset, form=form,
                           weighting=weighting, positiveness_temperature=positiveness_temperature,
                           detach_weights=detach_weights, neighbor_mask=neighbor_mask)


def _snclr_loss(query, attn_query, keys, neighbors, *, temperature, offset, form, weighting,
                positiveness_temperature, detach_weights, neighbor_mask) -> torch.Tensor:
    if form not in LOSS_FORMS:
        raise ValueError(f"form={form!r}; expected one of {LOSS_FORMS}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; expected one of {WEIGHTINGS}")
    batch, num_keys, k = query.shape[0], keys.shape[0], neighbors.shape[1]
    if neighbors.shape[0] != num_keys:
        raise ValueError(f"neighbors has {neighbors.shape[0]} rows but keys has {num_keys}")
    if offset < 0 or offset + batch > num_keys:
        raise ValueError(f"offset {offset} + batch {batch} exceeds the {num_keys} keys")

    z = F.normalize(_at_least_fp32(query), dim=-1)
    keys = F.normalize(_at_least_fp32(keys), dim=-1)
    rows = torch.arange(batch, device=z.device)
    key_logits = z @ keys.T / temperature                                    # (B, N)
    positive = key_logits[rows, offset + rows]                               # (B,)
    if k == 0:
        return (torch.logsumexp(key_logits, dim=1) - positive).mean()

    neighbors = F.normalize(_at_least_fp32(neighbors), dim=-1)
    neighbor_logits = torch.einsum("bd,nkd->bnk", z, neighbors) / temperature  # (B, N, K)
    if neighbor_mask is not None:
        neighbor_logits = neighbor_logits.masked_fill(~neighbor_mask.bool()[None, :, None], float("-inf"))
    log_z = torch.logsumexp(torch.cat([key_logits, neighbor_logits.flatten(1)], dim=1), dim=1)

    own_logits = neighbor_logits[rows, offset + rows]                        # (B, K)
    if weighting == "soft":
        weights = _positiveness(attn_query, neighbors[offset + rows], positiveness_temperature)
        if detach_weights:
            weights = weights.detach()
    else:
        weights = torch.ones_like(own_logits)
    own_valid = torch.ones(batch, dtype=torch.bool, device=z.device) if neighbor_mask is None \
        else neighbor_mask.bool()[offset + rows]
    weights = weights * own_valid[:, None]
    # A row whose own key is masked has own_logits = -inf and weight 0. Those logits are replaced by a
    # finite 0 (its gradient is cut by masked_fill). Otherwise the backward of either form multiplies
    # 0 by -inf, and `--loss-form official` gave NaN gradients on the first steps of a filling set.
    own_logits = own_logits.masked_fill(~own_valid[:, None], 0.0)

    if form == "paper":
        # log(exp(s_pos) + sum_i w_i exp(s_i)); rows without neighbours get log(exp(s_pos)) exactly.
        weighted = torch.where(weights > 0, own_logits + torch.log(weights.clamp_min(1e-30)),
                               torch.full_like(own_logits, float("-inf")))
        log_numerator = torch.logsumexp(torch.cat([positive[:, None], weighted], dim=1), dim=1)
        return (log_z - log_numerator).mean()
    own_terms = weights * (own_logits - log_z[:, None])   # zero where the weight is zero
    return -((positive - log_z) + own_terms.sum(dim=1)).mean()
