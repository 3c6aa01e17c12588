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


def test_a_reloaded_set_searches_as_the_original_did():
    """Resume rebuilds the host-side bookkeeping from the buffers: the reloaded set finds the same
    slots with the same similarities, image id 0 included, and keeps the bound on one image's copies.

    Mutations tried (found by mutmut), each failing this test: written slots taken as ``image_ids > 0``
    or ``>= 1`` (image 0's entries vanish after a resume); their bias set to 1.0 instead of 0.0 (every
    similarity shifted by 1); the copies bound forced on an empty set (``bincount`` of nothing) or set
    to 1 there; the bound's push dropped when it holds copies."""
    torch.manual_seed(0)
    keys = torch.randn(5, 4)
    ids = torch.tensor([0, 1, 2, 0, 3])   # image 0 twice: its copies bound is 2
    original = CandidateSet(8, 4)
    original.push(keys, ids)
    reloaded = CandidateSet(8, 4)
    reloaded.load_state_dict(original.state_dict())
    assert reloaded.copies_bound == original.copies_bound == 2
    queries = torch.cat([keys[:1] + 0.01, torch.randn(3, 4)])
    for query_ids in (torch.tensor([9, 9, 9, 9]), torch.tensor([0, 1, 2, 3])):
        index, similarity = reloaded.search(queries, query_ids, k=3)
        want_index, want_similarity = original.search(queries, query_ids, k=3)
        assert torch.equal(index, want_index) and torch.equal(similarity, want_similarity)
    assert reloaded.image_ids[reloaded.search(queries[:1], torch.tensor([9]), k=1)[0][0]].tolist() == [0]

    empty = CandidateSet(8, 4)
    empty.load_state_dict(CandidateSet(8, 4).state_dict())
    assert empty.copies_bound == 0 and list(empty._pushes) == []


def test_the_empty_slot_bias_is_rebuilt_not_saved():
    """``slot_bias`` is derived from ``image_ids`` on load, so a checkpoint holds only the five real
    buffers and older checkpoints (without it) load strictly.

    Mutations tried (found by mutmut), each failing this test: ``persistent=False`` dropped, set to
    None or to True."""
    assert sorted(CandidateSet(4, 2).state_dict()) == ["features", "filled", "image_ids", "labels", "pointer"]
