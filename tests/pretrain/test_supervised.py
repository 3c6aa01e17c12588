"""The supervised upper bound: the same backbone, views and loop as SNCLR, trained with labels; its
checkpoint is ours and every evaluator reads it as method "supervised"."""
from __future__ import annotations

import json

import pytest
import torch

from evaluate.loading import build_loaded_backbone
from pretrain.__main__ import main
from pretrain.config import PretrainConfig
from pretrain.model import Supervised
from pretrain.data import TwoViews
from pretrain.train import augment_spec, final_checkpoint_name, model_from_config


def test_supervised_model_fits_a_labelled_batch():
    """Cross-entropy on both views drives the step's accuracy up: 16 images of 4 classes, 30 SGD steps.

    Mutation tried: the classifier's loss taken against shuffled labels; the accuracy stays at chance."""
    torch.manual_seed(0)
    model = Supervised("resnet18_cifar", num_classes=4, image_size=8)
    labels = torch.arange(16) % 4
    x = torch.randn(16, 3, 8, 8) + labels[:, None, None, None].float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        stats = model(x, x.flip(3), torch.arange(16), labels, momentum=0.99)
        optimizer.zero_grad()
        stats.loss.backward()
        optimizer.step()
    assert stats.train_top1 is not None and float(stats.train_top1) == 1.0
    assert stats.positiveness_max is None and stats.neighbor_agreement is None


def test_model_from_config_chooses_by_method():
    config = PretrainConfig(method="supervised", backbone="resnet18_cifar", image_size=32)
    assert isinstance(model_from_config(config, num_classes=10), Supervised)
    assert final_checkpoint_name(config) == "supervised_resnet18_cifar_ep100.pth"
    config.solarize_p1 = 1.0   # the views are the config's, as for SNCLR
    assert augment_spec(config).views[0].solarize_p == 1.0
    assert TwoViews(augment_spec(config)).first.transforms[4].p == 1.0


@pytest.mark.slow
def test_supervised_run_gives_a_checkpoint_every_evaluator_loads(image_tree, tmp_path):
    """End to end at smoke scale: `python -m pretrain --method supervised` writes our checkpoint format,
    logs train accuracy and no neighbour monitors, and loads as a supervised resnet18_cifar."""
    out = tmp_path / "run"
    code = main(["--recipe", "fmnist_resnet18_gpu", "--method", "supervised", "--dataset", "imagefolder",
                 "--data-dir", str(image_tree), "--train-limit", "none", "--batch-size", "16", "--epochs", "1",
                 "--workers", "0", "--log-every", "1", "--max-steps-per-epoch", "2", "--device", "cpu",
                 "--amp", "off", "--output-dir", str(out), "--image-size", "16"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("train_top1" in row and "neighbor_agreement" not in row for row in rows)
    assert all(row["neighbors_on"] == 0 for row in rows)
    model, dim, loaded = build_loaded_backbone(out / "supervised_resnet18_cifar_ep1.pth")
    assert (loaded.arch, loaded.meta["method"], dim) == ("resnet18_cifar", "supervised", 512)
    assert loaded.meta["pretrain_config"]["method"] == "supervised" and loaded.meta["model_id"]
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {k.split(".")[0] for k in state["model"]} == {"backbone", "classifier"}
    assert state["model"]["classifier.weight"].shape == (4, 512)   # the tree's 4 classes
