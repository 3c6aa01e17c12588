"""Float32 round-off bounds for tests that hold float32 code to a float64 reference.

A tolerance must sit above the round-off of the arithmetic, on any machine and thread count, and
below the smallest real bug the test is there to catch; these bounds give the first, worst case.
"""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps   # 1.19e-7, twice the unit round-off: a 2x margin built in


def loss_roundoff(dim: int, terms: int, temperature: float, loss: float, log_ratios: float = 2) -> float:
    """Worst-case absolute float32 error of an InfoNCE / SNCLR loss value against float64.

    A cosine (normalise two dim-long vectors, one dim-long dot) is off by <= (dim + 4) * EPS32, a
    logit by that / temperature; the log-sum of ``terms`` exponentials adds <= (terms + 2) * EPS32
    relative to its value (bounded by |loss| + 1 / temperature). The loss adds up ``log_ratios``
    such logs: 2 for InfoNCE, Eq. 2 and the official form with soft weights (they sum to 1), K + 1
    for the official form with binary weights. Every bug the loss tests name moves the loss by 1e-3
    or more, far above this bound (~1e-5 for the tiny cases)."""
    one_log = (dim + 4) * EPS32 / temperature + (terms + 2) * EPS32 * (abs(loss) + 1 / temperature)
    return log_ratios * one_log
