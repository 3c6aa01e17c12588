"""The candidate set's empty state and its size guard (what a checkpoint of a fresh run holds)."""
from __future__ import annotations

import pytest
import torch

from pretrain.neighbors import CandidateSet


def test_a_fresh_set_marks_every_slot_unwritten_with_integer_bookkeeping():
    """Image ids and labels are -1 (unknown) and every counter is an integer, before and after a push.

    Mutations tried (found by mutmut), each failing this test: labels filled with +1 or -2; the
    ``filled`` counter created as a float tensor."""
    memory = CandidateSet(3, 2)
    assert memory.image_ids.tolist() == [-1, -1, -1] and memory.labels.tolist() == [-1, -1, -1]
    assert all(t.dtype == torch.long for t in (memory.image_ids, memory.labels, memory.pointer, memory.filled))
    memory.push(torch.ones(2, 2), torch.tensor([5, 6]))
    assert (memory.filled.item(), memory.pointer.item()) == (2, 2) and memory.filled.dtype == torch.long
    assert memory.labels.tolist() == [-1, -1, -1] and memory.image_ids.tolist() == [5, 6, -1]


def test_size_must_be_positive():
    """Mutations tried (found by mutmut), each failing this test: the guard at ``size < 0`` or
    ``size <= 1``; its message replaced by None."""
    with pytest.raises(ValueError, match="candidate set size must be positive, got 0"):
        CandidateSet(0, 4)
    assert CandidateSet(1, 4).features.shape == (1, 4)
