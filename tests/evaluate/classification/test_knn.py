"""Weighted kNN: a case checkable by hand, chunking that changes nothing, and the guard on k."""
from __future__ import annotations

import contextlib
import io
import subprocess

import pytest
import torch
import torch.nn.functional as F

from classification_fixtures import PYTHON, REPO, write_image_folder, write_split_tree
from evaluate.__main__ import main as evaluate_main
from evaluate.classification.knn import KNNSettings, knn_classify, knn_hits
from evaluate.report.records import read_records
from pretrain.backbones import build_backbone


def brute_force(train, train_labels, test, test_labels, k, temperature, num_classes):
    """The DINO formula written out with the full similarity matrix."""
    sims = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top_sims, top_idx = sims.topk(k, dim=1)
    one_hot = F.one_hot(train_labels[top_idx], num_classes).float()
    votes = (one_hot * (top_sims / temperature).exp()[..., None]).sum(dim=1)
    ranked = votes.topk(5, dim=1).indices
    top1 = 100.0 * (ranked[:, 0] == test_labels).float().mean().item()
    top5 = 100.0 * (ranked == test_labels[:, None]).any(dim=1).float().mean().item()
    return top1, top5


def test_weights_decide_against_the_majority():
    # One very close neighbour of class 0 against two distant neighbours of class 1 (k=3, T=0.07):
    # votes class 0: exp(1/0.07) ~ 1.6e6; class 1: 2 * exp(0.6/0.07) ~ 1.06e4 -> class 0 wins.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, labels, test, torch.tensor([0]), ks=(3,), num_classes=2)["knn_top1_k3"] == 100.0
    # With a huge temperature the weights flatten and the 2-vs-1 majority wins instead.
    flat = knn_classify(train, labels, test, torch.tensor([0]), ks=(3,), temperature=1e6, num_classes=2)
    assert flat["knn_top1_k3"] == 0.0
    # The switch sits where exp(1 / T) = 2 exp(0.6 / T), T = 0.4 / ln 2 = 0.577: exp(s / T) weights
    # give class 0 at T = 0.5 (7.39 vs 6.64) and class 1 at T = 0.7 (4.17 vs 4.71).
    for temperature, top1 in ((0.5, 100.0), (0.7, 0.0)):
        result = knn_classify(train, labels, test, torch.tensor([0]), ks=(3,), temperature=temperature, num_classes=2)
        assert result["knn_top1_k3"] == top1, temperature


def test_cosine_ignores_feature_scale():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    test = torch.tensor([[100.0, 1.0], [0.01, 3.0]])
    assert knn_classify(train, labels, test, torch.tensor([0, 1]), ks=(1,))["knn_top1_k1"] == 100.0


@pytest.mark.parametrize("test_chunk,train_chunk", [(1, 7), (13, 50), (1000, 1000), (64, 3)])
def test_chunking_matches_the_full_similarity_matrix(test_chunk, train_chunk):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=generator)
    train_labels = torch.randint(0, 10, (300,), generator=generator)
    test_labels = torch.randint(0, 10, (120,), generator=generator)
    train = centres[train_labels] + 1.5 * torch.randn(300, 32, generator=generator)
    test = centres[test_labels] + 1.5 * torch.randn(120, 32, generator=generator)
    result = knn_classify(train, train_labels, test, test_labels, ks=(5, 20), num_classes=10,
                          test_chunk=test_chunk, train_chunk=train_chunk)
    for k in (5, 20):
        top1, top5 = brute_force(train, train_labels, test, test_labels, k, 0.07, 10)
        assert result[f"knn_top1_k{k}"] == pytest.approx(top1)
        assert result[f"knn_top5_k{k}"] == pytest.approx(top5)
    # Seeded clusters: 101 of the 120 test points right at k = 20 (chance would be about 12).
    assert result["knn_top1_k20"] == pytest.approx(100.0 * 101 / 120)


def test_k_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match=r"k=\[200\]"):
        knn_classify(torch.randn(50, 4), torch.zeros(50, dtype=torch.long), torch.randn(3, 4),
                     torch.zeros(3, dtype=torch.long), ks=(20, 200))


def test_defaults_are_dino_and_named_by_the_protocol_id():
    settings = KNNSettings()
    assert (settings.ks, settings.temperature) == ((20, 200), 0.07)
    assert settings.protocol_id() == "knn_cos-k20-200-T0.07"


# --- the CLI: bad input ends in one line, a non-zero exit and no record ------------------------
# The record-writing run goes through a real subprocess; the refusals call the same entry point
# in-process (the error line on stderr, SystemExit(2)) to keep the suite fast.

def run_knn_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "evaluate", "knn", "--out-dir", str(tmp_path / "run"),
                           "--num-workers", "0", "--no-tensorboard", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(tmp_path, args: list[str], *fragments: str) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        evaluate_main(["knn", "--out-dir", str(tmp_path / "run"), "--num-workers", "0", "--no-tensorboard",
                       "--k", "2", *args])
    (message,) = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and "Traceback" not in stderr.getvalue(), stderr.getvalue()
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_cli_knn_writes_a_record_on_an_image_folder(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=6, val_per_class=3)
    proc = run_knn_cli(tmp_path, "--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                       "--data-dir", str(data), "--image-size", "32", "--k", "3", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = read_records(tmp_path / "run" / "results.jsonl")
    assert record.protocol == "knn" and set(record.metrics_final) == {"knn_top1_k3", "knn_top1_k5"}
    assert record.settings["ks"] == [3, 5] and record.settings["temperature"] == 0.07
    assert (tmp_path / "run" / "feature_cache").is_dir()  # default: OUT_DIR/feature_cache


def test_cli_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    assert_one_line_error(tmp_path, ["--checkpoint", str(bad)], str(bad), "not a readable PyTorch checkpoint")


def test_cli_refuses_a_checkpoint_of_another_architecture(tmp_path):
    torch.save(build_backbone("resnet18")[0].state_dict(), tmp_path / "r18.pth")
    assert_one_line_error(tmp_path, ["--checkpoint", str(tmp_path / "r18.pth"), "--arch", "resnet50"],
                          "resnet18", "resnet50")


def test_cli_refuses_random_init_without_arch(tmp_path):
    assert_one_line_error(tmp_path, ["--checkpoint", "random"], "--arch")


def test_cli_refuses_an_empty_class_directory(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=2, val_per_class=2)
    (data / "train" / "n00000009").mkdir()
    assert_one_line_error(tmp_path, ["--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                                     "--data-dir", str(data)], "n00000009", "no images")


def test_cli_refuses_val_classes_the_train_set_lacks(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=2, val_per_class=2)
    write_image_folder(tmp_path / "extra", classes=4, per_class=1)
    (tmp_path / "extra" / "n00000003").rename(data / "val" / "n00000003")
    assert_one_line_error(tmp_path, ["--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                                     "--data-dir", str(data)], "n00000003", "not in the train set")


def test_cli_refuses_k_above_the_training_set_size(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    assert_one_line_error(tmp_path, ["--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                                     "--data-dir", str(data), "--image-size", "32", "--k", "20"], "k=[20]")


def test_hit_counts_of_rank_shards_add_up_to_the_whole_set():
    """What each DDP rank computes: its rank-strided share of the test rows. Fails on the pre-issue-8 code,
    where every rank computed the whole 50k x 1.28M similarity (no knn_hits to split)."""
    generator = torch.Generator().manual_seed(1)
    train = F.normalize(torch.randn(200, 16, generator=generator), dim=1)
    labels = torch.randint(0, 7, (200,), generator=generator)
    test = F.normalize(torch.randn(61, 16, generator=generator), dim=1)
    targets = torch.randint(0, 7, (61,), generator=generator)
    options = dict(ks=(3, 10), temperature=0.07, num_classes=7, test_chunk=8, train_chunk=50)
    whole = knn_hits(train, labels, test, targets, **options)
    world = 3
    shards = sum(knn_hits(train, labels, test[r::world], targets[r::world], **options) for r in range(world))
    assert torch.equal(shards, whole) and whole.sum() > 0


def test_the_similarities_run_on_the_given_device():
    generator = torch.Generator().manual_seed(2)
    train, test = torch.randn(40, 8, generator=generator), torch.randn(9, 8, generator=generator)
    labels, targets = torch.arange(40) % 4, torch.arange(9) % 4
    on_cpu = knn_classify(train, labels, test, targets, ks=(5,), device="cpu")
    assert on_cpu == knn_classify(train, labels, test, targets, ks=(5,))
    if torch.cuda.is_available():
        assert knn_classify(train, labels, test, targets, ks=(5,), device="cuda") == on_cpu


@pytest.mark.parametrize("temperature", [0.0, -0.07])
def test_a_non_positive_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        knn_classify(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), torch.randn(2, 2),
                     torch.zeros(2, dtype=torch.long), ks=(2,), temperature=temperature)


def test_default_interpolation_is_dinos_bicubic():
    assert KNNSettings().interpolation == "bicubic"
