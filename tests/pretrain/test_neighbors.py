import pytest
import torch

from pretrain.neighbors import CandidateSet


def test_fifo_overwrites_oldest_and_counts_fill():
    c = CandidateSet(size=4, dim=2)
    c.push(torch.tensor([[1.0, 0], [0, 1], [1, 1]]), torch.tensor([10, 11, 12]))
    assert int(c.filled) == 3 and int(c.pointer) == 3
    c.push(torch.tensor([[-1.0, 0], [0, -1]]), torch.tensor([13, 14]))
    assert c.image_ids.tolist() == [14, 11, 12, 13]          # slot 0 (id 10) was the oldest
    assert int(c.filled) == 4 and int(c.pointer) == 1
    assert torch.allclose(c.features.norm(dim=1), torch.ones(4))


def test_query_top_k_by_cosine_excludes_own_image_and_empty_slots():
    c = CandidateSet(size=8, dim=2)
    c.push(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 1, 2, 3]),
           torch.tensor([5, 6, 7, 8]))
    found = c.query(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 99]), k=2)
    # key of image 0 must skip its own entry (id 0) and never see the 4 unwritten slots
    assert found.labels[0].tolist() == [6, 7]
    assert found.labels[1].tolist() == [5, 6]
    assert found.similarity[1, 0].item() == pytest.approx(1.0)
    assert found.valid.tolist() == [True, True]


def test_query_marks_rows_without_k_real_neighbors():
    c = CandidateSet(size=8, dim=2)
    c.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    found = c.query(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 5]), k=2)
    assert found.valid.tolist() == [False, True]   # image 0 has only one entry from another image


def test_chunked_query_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    a, b = CandidateSet(64, 8, chunk_rows=3), CandidateSet(64, 8, chunk_rows=1024)
    feats, ids = torch.randn(50, 8, generator=g), torch.arange(50)
    a.push(feats, ids)
    b.push(feats, ids)
    keys = torch.randn(10, 8, generator=g)
    assert torch.equal(a.query(keys, torch.arange(10), 5).neighbors, b.query(keys, torch.arange(10), 5).neighbors)


def test_k_larger_than_set_is_refused():
    with pytest.raises(ValueError, match="K=9"):
        CandidateSet(size=8, dim=2).query(torch.ones(1, 2), torch.zeros(1, dtype=torch.long), k=9)


def test_state_is_in_buffers_for_checkpoints():
    c = CandidateSet(size=4, dim=2)
    c.push(torch.ones(2, 2), torch.tensor([3, 4]))
    d = CandidateSet(size=4, dim=2)
    d.load_state_dict(c.state_dict())
    assert d.image_ids.tolist() == [3, 4, -1, -1] and int(d.pointer) == 2


def test_k0_returns_no_neighbors_without_scanning():
    c = CandidateSet(size=8, dim=2)
    found = c.query(torch.ones(3, 2), torch.arange(3), k=0)
    assert found.neighbors.shape == (3, 0, 2) and found.valid.tolist() == [False] * 3


def test_own_image_excluded_even_with_many_copies():
    """Image 7 has three (most similar) entries; its key still gets K neighbours of other images."""
    c = CandidateSet(size=16, dim=2)
    c.push(torch.tensor([[1.0, 0.0]] * 3 + [[0.9, 0.1], [0.5, 0.5], [0.0, 1.0]]), torch.tensor([7, 7, 7, 1, 2, 3]),
           torch.tensor([0, 0, 0, 1, 2, 3]))
    found = c.query(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([7, 9]), k=3)
    assert found.image_ids[0].tolist() == [1, 2, 3] and found.valid[0]
    assert found.image_ids[1].tolist() == [7, 7, 7]


def test_own_image_excluded_across_pushes_and_after_reload():
    """Image 0 pushed once per 'epoch' holds 3 entries; the bound kept from push lengths covers them,
    and a set rebuilt from a checkpoint's buffers keeps that bound."""
    c = CandidateSet(size=32, dim=2)
    near = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 7)
    for _ in range(3):
        c.push(near, torch.arange(8))
    c.push(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([20, 21]))
    assert c.copies_bound == 4
    reloaded = CandidateSet(size=32, dim=2)
    reloaded.load_state_dict(c.state_dict())
    assert reloaded.copies_bound == 3          # exact count from the buffers: image 0..7 three times each
    for candidates in (c, reloaded):
        found = candidates.query(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), k=2)
        assert found.image_ids[0].tolist() == [20, 21] and found.valid.all()


def test_overwritten_pushes_leave_the_bound():
    c = CandidateSet(size=4, dim=2)
    for step in range(5):
        c.push(torch.randn(2, 2), torch.tensor([2 * step, 2 * step + 1]))
    assert c.copies_bound == 2    # only the last two pushes are still in the set


def test_push_and_search_never_read_device_values_on_the_host():
    """On the meta device every tensor value is unknown, so any int(), .item(), bool mask indexing or
    bincount().max() raises. Fails on the code before the fix (int(bincount(written).max()) in query)."""
    c = CandidateSet(size=64, dim=8).to("meta")
    c.push(torch.randn(16, 8, device="meta"), torch.arange(16, device="meta"))
    index, similarity = c.search(torch.randn(10, 8, device="meta"), torch.arange(10, device="meta"), k=4)
    found = c.lookup(index, similarity)
    assert found.neighbors.shape == (10, 4, 8) and found.valid.shape == (10,)


def test_same_neighbours_under_bf16_autocast():
    """Fails on the code before the fix: the similarity matmul ran in bf16 and reordered near-ties."""
    g = torch.Generator().manual_seed(0)
    c = CandidateSet(size=4096, dim=64)
    c.push(torch.randn(4096, 64, generator=g), torch.arange(4096))
    keys = torch.randn(128, 64, generator=g)
    want = c.query(keys, torch.arange(10**5, 10**5 + 128), k=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = c.query(keys, torch.arange(10**5, 10**5 + 128), k=30)
    assert torch.equal(got.index, want.index) and got.similarity.dtype == torch.float32
