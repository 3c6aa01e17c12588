"""A val folder with fewer classes than train: its labels are mapped onto the train indices."""
from __future__ import annotations

import shutil

import torch

from classification_fixtures import write_split_tree
from evaluate.__main__ import main as evaluate_main
from evaluate.classification.cli_common import TransformedView, align_val_classes
from evaluate.report.records import read_records
from pretrain.data import IndexedImageFolder


def _drop_val_classes(data, *names: str):
    for name in names:
        shutil.rmtree(data / "val" / name)
    return data


def test_val_indices_map_to_the_train_indices_of_the_same_class_names(tmp_path):
    """Train n0..n3, val n1 and n3: ImageFolder numbers val 0, 1; they must read as train 1, 3.

    Mutation tried: the map built from the val positions (``enumerate(val_classes)`` for the train
    lookup), which makes it the identity; this test fails."""
    data = _drop_val_classes(write_split_tree(tmp_path / "data", classes=4, train_per_class=1, val_per_class=1),
                             "n00000000", "n00000002")
    train, val = IndexedImageFolder(data / "train"), IndexedImageFolder(data / "val")
    label_map = align_val_classes(train, val, str(data / "val"))
    assert label_map == {0: 1, 1: 3}
    view = TransformedView(val, lambda image: image, label_map)
    assert [view[i][1] for i in range(len(view))] == [1, 3]
    assert align_val_classes(train, train, str(data / "train")) is None


def test_knn_run_on_a_val_folder_missing_a_class_scores_by_class_name(tmp_path):
    """End to end: colour classes that kNN on random ResNet-18 features separates perfectly; with
    class n00000000 absent from val, the record still says 100% (it says 0% without the map).

    Mutation tried: ``RunContext.val_set`` built without ``self.val_label_map``; this test fails."""
    data = _drop_val_classes(write_split_tree(tmp_path / "data", classes=3, train_per_class=6, val_per_class=3),
                             "n00000000")
    torch.manual_seed(0)
    evaluate_main(["knn", "--out-dir", str(tmp_path / "run"), "--num-workers", "0", "--no-tensorboard",
                   "--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                   "--data-dir", str(data), "--image-size", "32", "--k", "3"])
    [record] = read_records(tmp_path / "run" / "results.jsonl")
    assert record.settings["num_classes"] == 3 and record.settings["val_size"] == 6
    assert record.metrics_final["knn_top1_k3"] == 100.0
