"""The neighbour grid of a real (tiny) pre-training run: own image never retrieved, weights sum to 1."""
import pytest

from evaluate.neighbors import main, neighbor_grid
from pretrain.__main__ import main as pretrain_main
from pretrain.data import IndexedImageFolder


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
