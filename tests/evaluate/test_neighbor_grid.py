"""The neighbour grid of a real (tiny) pre-training run: own image never retrieved, weights sum to 1."""
import pytest
import torch

from evaluate.neighbors import main, neighbor_grid
from pretrain.__main__ import main as pretrain_main
from pretrain.data import IndexedImageFolder
from pretrain.safe_load import torch_load


@pytest.fixture(scope="module")
def tiny_checkpoint(image_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert pretrain_main(["--recipe", "fmnist_resnet18_cpu", "--dataset", "imagefolder", "--data-dir", str(image_tree),
                          "--train-limit", "none", "--batch-size", "16", "--candidate-set-size", "64", "--k", "4",
                          "--proj-hidden-dim", "32", "--dim", "16", "--neighbor-warmup-epochs", "0", "--workers", "0",
                          "--epochs", "1", "--max-steps-per-epoch", "3", "--output-dir", str(out)]) == 0
    return out / "checkpoint.pth"


def test_grid_png_and_neighbours(tiny_checkpoint, image_tree, tmp_path):
    png = tmp_path / "grid.png"
    result = neighbor_grid(tiny_checkpoint, png, queries=3, k=4, seed=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert len(result["query_ids"]) == 3 and all(len(row) == 4 for row in result["neighbor_ids"])
    for query, row in zip(result["query_ids"], result["neighbor_ids"]):
        assert query not in row                      # "samples from other images"
    for weights in result["positiveness"]:
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    # Agreement recomputed from the image tree's own labels of the returned image ids.
    targets = IndexedImageFolder(image_tree / "train").targets
    same = [targets[n] == targets[q] for q, row in zip(result["query_ids"], result["neighbor_ids"]) for n in row]
    assert result["label_agreement"] == pytest.approx(sum(same) / len(same))


def test_foreign_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main([str(bad), str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: corrupt or unreadable checkpoint") and "\n" not in err
    assert not (tmp_path / "g.png").exists()


def _with_config(checkpoint, out, **changes):
    """A copy of ``checkpoint`` whose configuration says ``changes`` (the weights stay the same)."""
    state = torch_load(checkpoint)
    state["config"] = {**state["config"], **changes}
    torch.save(state, out)
    return out


def test_grid_uses_the_runs_tau_w_and_weighting(tiny_checkpoint, tmp_path):
    """A tau_w = 0.05 run is shown its own weights, a binary run weights of 1.

    Broke on the grid that called Eq. 4 at tau_w = 1 whatever the run used: the tau_w = 0.05 weights
    came out equal to the tau_w = 1 ones, and a binary run was shown soft weights. Independent check:
    softmax(c / tau) = softmax(log(softmax(c)) / tau), so the sharp weights follow from the tau_w = 1
    ones by arithmetic alone.
    """
    soft = neighbor_grid(_with_config(tiny_checkpoint, tmp_path / "t1.pth", positiveness_temperature=1.0),
                         tmp_path / "t1.png", queries=3, k=4, seed=1)
    sharp = neighbor_grid(_with_config(tiny_checkpoint, tmp_path / "t005.pth", positiveness_temperature=0.05),
                          tmp_path / "t005.png", queries=3, k=4, seed=1)
    assert sharp["positiveness_temperature"] == 0.05 and sharp["neighbor_ids"] == soft["neighbor_ids"]
    expected = torch.softmax(torch.tensor(soft["positiveness"], dtype=torch.float64).log() / 0.05, dim=1)
    # fp32 weights: their logs carry ~1e-7 relative error, divided by tau_w = 0.05 -> ~2e-6 in the logits
    assert (torch.tensor(sharp["positiveness"], dtype=torch.float64) - expected).abs().max() < 1e-4
    assert max(max(row) for row in sharp["positiveness"]) > max(max(row) for row in soft["positiveness"])
    binary = neighbor_grid(_with_config(tiny_checkpoint, tmp_path / "b.pth", neighbors="binary"),
                           tmp_path / "b.png", queries=3, k=4, seed=1)
    assert binary["weighting"] == "binary" and binary["positiveness"] == [[1.0] * 4] * 3


def test_empty_checkpoint_is_one_line_error(tmp_path, capsys):
    """Fails on the issue-16 code: an IndexError traceback (the EOFError of a 0-byte file has no text)."""
    empty = tmp_path / "checkpoint.pth"
    empty.write_bytes(b"")
    assert main([str(empty), str(tmp_path / "g.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {empty}: empty file (0 bytes), not a checkpoint (a copy or save that never completed?)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_refusal_is_whole_and_trust_checkpoint_is_accepted(tiny_checkpoint, tmp_path, capsys):
    """Before issue 15 `neighbors` cut the refusal at 120 characters (the flag's name was lost) and had no
    --trust-checkpoint to pass."""
    import pathlib

    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    bad = tmp_path / ("a-long-folder-name-so-that-the-path-alone-takes-most-of-a-line-" * 2) / "checkpoint.pth"
    bad.parent.mkdir()
    torch.save({**state, "note": pathlib.PosixPath("/tmp")}, bad)
    assert main([str(bad), str(tmp_path / "g.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bad}: refused to load: it pickles {pathlib.PosixPath.__module__}.PosixPath, which is not a tensor "
        "or an allow-listed type and could run code; pass --trust-checkpoint only if you trust where the file came from")
    assert not (tmp_path / "g.png").exists()
    assert main([str(bad), str(tmp_path / "g.png"), "--queries", "2", "--trust-checkpoint"]) == 0
    assert (tmp_path / "g.png").is_file()
