"""Linear probe: MoCo's two checks, learning on separable data, resume after a crash, the CLI."""
from __future__ import annotations

import argparse
import json
import subprocess

import pytest
import torch

from classification_fixtures import PYTHON, REPO, TinyBackbone, colour_blobs, write_split_tree
from pretrain.metrics_log import MetricsLog
from evaluate.classification import linear, run_io
from evaluate.classification.linear import (LinearClassifier, LinearSettings, ProtocolCheckError, check_backbone_unchanged,
                             check_only_head_missing, linear_probe, linear_probe_fast, new_linear_head)
from evaluate.report.records import read_records

CPU = torch.device("cpu")


def test_lr_scaling_and_protocol_ids_follow_moco_v3():
    """MoCo v3 main_lincls.py: ``-b 1024``, ``--lr 0.1``, lr = lr x batch / 256 (ViT: README ``--lr=3``).

    Fails on the code before issue 8, whose default batch was 4096 (attributed to MoCo v3).
    """
    resnet, vit = linear.paper_settings("resnet50"), linear.paper_settings("vit_small")
    assert (resnet.epochs, resnet.batch_size, resnet.base_lr, resnet.lr) == (90, 1024, 0.1, 0.4)
    assert vit.lr == pytest.approx(12.0)  # 3 x 1024 / 256
    assert resnet.protocol_id() == "linear_sgd-cos-90e-b1024-lr0.1"
    assert LinearSettings(crops=4).protocol_id(fast=True) == "linear-fast_4crops_sgd-cos-90e-b1024-lr0.1"


def test_a_batch_other_than_1024_is_a_deviation():
    """Fails on the pre-issue-8 code: 4096 was the 'paper' batch, so --batch-size 1024 was a deviation."""
    args = argparse.Namespace(epochs=None, batch_size=4096, base_lr=None, min_scale=None, crops=None)
    settings, deviations = linear.resolve_settings("resnet50", "imagefolder", args)
    assert settings.lr == pytest.approx(1.6)
    assert deviations == ["batch_size: 1024 (paper) -> 4096 (flag)"]
    args.batch_size = 1024
    assert linear.resolve_settings("resnet50", "imagefolder", args)[1] == []


def test_head_init_is_normal_001_with_zero_bias():
    torch.manual_seed(0)
    head = new_linear_head(2048, 1000)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.01)
    assert torch.count_nonzero(head.bias) == 0


def test_only_head_missing_check_passes_and_catches_a_missing_tensor():
    backbone = TinyBackbone()
    classifier = LinearClassifier(backbone, new_linear_head(8, 3))
    check_only_head_missing(classifier, backbone.state_dict())
    partial = {k: v for k, v in backbone.state_dict().items() if k != "bn.running_var"}
    with pytest.raises(ProtocolCheckError, match="bn.running_var"):
        check_only_head_missing(classifier, partial)


def test_unchanged_check_catches_a_moved_bn_running_stat():
    backbone = TinyBackbone()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    check_backbone_unchanged(backbone, reference)
    with torch.no_grad():
        backbone.bn.running_mean[0] += 1e-3
    with pytest.raises(ProtocolCheckError, match="bn.running_mean"):
        check_backbone_unchanged(backbone, reference)


def test_unchanged_check_catches_a_backbone_left_in_train_mode():
    # A forward pass in train mode updates BN running stats even with gradients off: the classic bug.
    backbone = TinyBackbone()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        backbone.train()(torch.randn(4, 3, 8, 8))
    with pytest.raises(ProtocolCheckError):
        check_backbone_unchanged(backbone, reference)


def test_linear_probe_learns_and_keeps_the_backbone_frozen(tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    settings = LinearSettings(epochs=8, batch_size=16, base_lr=8.0)
    result = linear_probe(backbone, 8, colour_blobs(96), colour_blobs(48, seed=1), checkpoint_state=before,
                          num_classes=3, settings=settings, device=CPU, out_dir=tmp_path, num_workers=0,
                          tensorboard=False)
    assert result["final"]["top1"] > 80.0  # chance is 33%
    tops = [entry["val_top1"] for entry in result["history"]]
    assert result["final"]["top1"] == tops[-1]
    assert result["best"]["top1"] == max(tops) and result["best_epoch"] == 1 + tops.index(max(tops))
    assert list(result["final"]) == ["top1"]  # 3 classes: top-5 would be trivially 100%
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    lines = [json.loads(line) for line in (tmp_path / "linear_metrics.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == list(range(1, 9))
    assert lines[0]["lr"] == pytest.approx(8.0 * 16 / 256)  # cosine starts at the scaled lr


def test_check_one_compares_with_the_checkpoint_file_not_the_backbone_itself():
    """Break tried: check 1 loading the backbone's own state back into itself (the old check) -> the
    corrupted, added and missing checkpoint tensors below all pass and this test fails."""
    backbone = TinyBackbone()
    classifier = LinearClassifier(backbone, new_linear_head(8, 3))
    checkpoint = {k: v.clone() for k, v in backbone.state_dict().items()}
    check_only_head_missing(classifier, checkpoint)
    corrupt = {**checkpoint, "conv.weight": checkpoint["conv.weight"].clone()}
    corrupt["conv.weight"][0, 0, 0, 0] += 1e-3
    with pytest.raises(ProtocolCheckError, match=r"1 different \(e\.g\. \['conv\.weight'\]\)"):
        check_only_head_missing(classifier, corrupt)
    with pytest.raises(ProtocolCheckError, match=r"1 checkpoint tensor\(s\) missing \(e\.g\. \['proj\.weight'\]\)"):
        check_only_head_missing(classifier, {**checkpoint, "proj.weight": torch.zeros(2)})


def test_unchanged_check_refuses_added_and_removed_tensors():
    backbone = TinyBackbone()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ProtocolCheckError, match=r"removed \['extra'\]"):
        check_backbone_unchanged(backbone, {**reference, "extra": torch.zeros(1)})
    backbone.register_buffer("added", torch.zeros(1))
    with pytest.raises(ProtocolCheckError, match=r"added \['added'\]"):
        check_backbone_unchanged(backbone, reference)


def _probe(backbone, checkpoint, out_dir, epochs=2):
    return linear_probe(backbone, 8, colour_blobs(32), colour_blobs(12, seed=1), checkpoint_state=checkpoint,
                        num_classes=3, settings=LinearSettings(epochs=epochs, batch_size=16, base_lr=1.0),
                        device=CPU, out_dir=out_dir, num_workers=0, tensorboard=False)


@pytest.mark.parametrize("broken", ["missing tensor", "corrupt tensor"])
def test_linear_probe_stops_on_a_checkpoint_that_breaks_check_one(tmp_path, broken):
    """End to end: linear_probe with a checkpoint whose backbone the classifier does not hold stops
    before training. Break tried: the check_only_head_missing call deleted from linear_probe -> the
    probe trains and this test fails."""
    backbone = TinyBackbone()
    checkpoint = {k: v.clone() for k, v in backbone.state_dict().items()}
    if broken == "missing tensor":
        del checkpoint["bn.running_var"]
    else:
        checkpoint["bn.running_mean"] += 0.5
    # check 2 would also object after the first epoch; the run must stop at check 1, before training
    with pytest.raises(ProtocolCheckError, match="does not hold the checkpoint's backbone.*bn.running_"):
        _probe(backbone, checkpoint, tmp_path)
    assert not (tmp_path / "linear_state.pt").exists()


class StuckInTrainMode(TinyBackbone):
    """A backbone that ignores eval(): its BN keeps updating running statistics (a real bug pattern)."""

    def train(self, mode: bool = True):
        return super().train(True)


def test_linear_probe_stops_when_the_backbone_changes_during_training(tmp_path):
    """End to end: BN statistics that move during the probe stop the run after the first epoch.
    Break tried: the check_backbone_unchanged call deleted from linear_probe -> both epochs run and
    this test fails."""
    backbone = StuckInTrainMode()
    checkpoint = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ProtocolCheckError, match=r"changed during linear training.*bn\.running_mean"):
        _probe(backbone, checkpoint, tmp_path)
    assert not (tmp_path / "linear_state.pt").exists()  # stopped before epoch 1 was saved


def _fast_inputs():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    labels = torch.arange(200) % 4
    features = centres[labels] + torch.randn(200, 16)
    return features[:160], labels[:160], features[160:], labels[160:]


def test_fast_probe_learns_from_cached_crops(tmp_path):
    train, train_labels, val, val_labels = _fast_inputs()
    crops = torch.stack([train, train + 0.1 * torch.randn_like(train)])
    result = linear_probe_fast(crops, train_labels, val, val_labels, num_classes=4,
                               settings=LinearSettings(epochs=5, batch_size=32), device=CPU, out_dir=tmp_path,
                               tensorboard=True)
    assert result["final"]["top1"] > 90.0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # TensorBoard curves beside the JSONL


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    train, train_labels, val, val_labels = _fast_inputs()
    settings = LinearSettings(epochs=4, batch_size=32, base_lr=0.5)
    kwargs = dict(num_classes=4, settings=settings, device=CPU, tensorboard=False, identity={"run": "a"})
    straight = linear_probe_fast(train, train_labels, val, val_labels, out_dir=tmp_path / "a", **kwargs)

    original = MetricsLog.write

    def crash_in_epoch_3(self, entry):
        if entry["epoch"] == 3:
            raise KeyboardInterrupt("simulated crash")
        original(self, entry)

    monkeypatch.setattr(MetricsLog, "write", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        linear_probe_fast(train, train_labels, val, val_labels, out_dir=tmp_path / "b", **kwargs)
    monkeypatch.setattr(MetricsLog, "write", original)
    assert torch.load(tmp_path / "b" / "linear_fast_state.pt", weights_only=True)["epoch"] == 2
    resumed = linear_probe_fast(train, train_labels, val, val_labels, out_dir=tmp_path / "b", **kwargs)
    assert resumed["final"] == straight["final"]
    assert [h["val_top1"] for h in resumed["history"]] == [h["val_top1"] for h in straight["history"]]
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "linear_fast_metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4]

    with pytest.raises(run_io.ResumeError, match="other settings"):
        linear_probe_fast(train, train_labels, val, val_labels, out_dir=tmp_path / "b",
                          **{**kwargs, "identity": {"run": "b"}})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "evaluate", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_linear_on_an_image_folder_writes_one_record(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=8, val_per_class=4)
    out = tmp_path / "run"
    proc = run_cli("linear", "--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
                   "--data-dir", str(data), "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                   "--num-workers", "0", "--out-dir", str(out), "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = read_records(out / "results.jsonl")
    assert (record.method, record.backbone, record.protocol, record.dataset) == ("random-init", "resnet18",
                                                                                 "linear", "data")
    assert record.protocol_id == "linear_sgd-cos-2e-b8-lr0.1"
    assert set(record.metrics_final) == {"top1"} and set(record.metrics_best) == {"top1"}
    assert record.settings["lr"] == pytest.approx(0.1 * 8 / 256) and record.settings["image_size"] == 32
    assert any(d.startswith("epochs: 90 (paper) -> 2") for d in record.deviations)
    assert len(record.checkpoint_sha256) == 64 and record.code_version


def test_cli_refuses_a_resume_state_of_another_run(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=4, val_per_class=2)
    out = tmp_path / "run"
    common = ["linear-fast", "--checkpoint", "random", "--arch", "resnet18", "--dataset", "imagefolder",
              "--data-dir", str(data), "--image-size", "32", "--batch-size", "4", "--num-workers", "0",
              "--out-dir", str(out), "--no-tensorboard"]
    assert run_cli(*common, "--epochs", "1").returncode == 0
    proc = run_cli(*common, "--epochs", "2", "--seed", "1")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "resume state" in proc.stderr
    assert len(read_records(out / "results.jsonl")) == 1


def test_eval_every_validates_on_schedule_and_always_last(tmp_path):
    train, train_labels, val, val_labels = _fast_inputs()
    result = linear_probe_fast(train, train_labels, val, val_labels, num_classes=4,
                               settings=LinearSettings(epochs=5, batch_size=32), device=CPU, out_dir=tmp_path,
                               tensorboard=False, eval_every=2)
    assert [h["epoch"] for h in result["history"] if "val_top1" in h] == [2, 4, 5]
    assert result["best_epoch"] in (2, 4, 5) and result["final"]["top1"] == result["history"][-1]["val_top1"]
