"""Every checkpoint layout in, the same strictly checked backbone out.

Each source is built from a real torchvision / timm model with random weights, renamed exactly as
that project names it, with its projector / predictor / head / queue beside the backbone.
"""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn as nn

from evaluate.loading import (BackboneLoadError, build_loaded_backbone, detect_arch,
                                       load_backbone_state_dict)
from pretrain.backbones import build_backbone


def backbone_state(arch: str, seed: int = 0, image_size: int = 224) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model, _ = build_backbone(arch, image_size)
    # Non-default BN statistics, so a loader that re-initialises them would be caught.
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_()
    return model.state_dict()


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def mlp_state(prefix: str, dims=(512, 64, 16)) -> dict:
    return prefixed(nn.Sequential(nn.Linear(dims[0], dims[1]), nn.BatchNorm1d(dims[1]), nn.ReLU(),
                                  nn.Linear(dims[1], dims[2])).state_dict(), prefix)


def assert_same_backbone(loaded, expected: dict) -> None:
    assert set(loaded.state_dict) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded.state_dict[key], value), key


@pytest.fixture(scope="module")
def r18() -> dict:
    return backbone_state("resnet18")


def test_snclr_checkpoint_from_the_real_model(tmp_path):
    from pretrain.model import SNCLR

    torch.manual_seed(0)
    model = SNCLR("resnet18", proj_hidden_dim=32, dim=16, candidate_set_size=64, k=4, neighbors="binary")
    path = tmp_path / "snclr.pth"
    torch.save({"format": "snclr-bench/pretrain/v1", "model": model.state_dict(), "optimizer": {}, "epoch": 7,
                "config": {"method": "SNCLR", "backbone": "resnet18", "epochs": 7, "neighbors": "binary", "k": 4,
                           "loss_form": "paper", "positiveness_temperature": 0.1}}, path)
    loaded = load_backbone_state_dict(path)
    assert (loaded.arch, loaded.source_format) == ("resnet18", "snclr")
    assert_same_backbone(loaded, model.backbone.state_dict())
    assert loaded.meta["method"] == "SNCLR" and loaded.meta["pretrain_epochs"] == 7
    assert loaded.meta["variant"] == {"neighbors": "binary", "k": 4, "loss_form": "paper"}
    dropped_prefixes = {k.split(".")[0] for k in loaded.dropped_keys}
    assert dropped_prefixes == {"momentum_backbone", "projector", "momentum_projector", "predictor", "candidate_set"}

    # soft positiveness: its temperature tau_w (Eq. 4) is an ablation knob of Table 4
    state = torch.load(path, weights_only=True)
    state["config"]["neighbors"] = "soft"
    torch.save(state, path)
    assert load_backbone_state_dict(path).meta["variant"] == {"neighbors": "soft", "k": 4, "loss_form": "paper",
                                                              "positiveness_temperature": 0.1}

    # the Eq. 1 ablation: K and the loss form are not part of what was trained
    state["config"]["neighbors"] = "none"
    torch.save(state, path)
    assert load_backbone_state_dict(path).meta["variant"] == {"neighbors": "none"}


def test_mocov3_resnet(tmp_path, r18):
    # MoCo v3 keeps its projector inside base_encoder.fc and a momentum copy beside it.
    state = {**prefixed(r18, "module.base_encoder."), **mlp_state("module.base_encoder.fc."),
             **prefixed(r18, "module.momentum_encoder."), **mlp_state("module.predictor.", (16, 64, 16))}
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": {}}, tmp_path / "m.pth.tar")
    loaded = load_backbone_state_dict(tmp_path / "m.pth.tar")
    assert (loaded.arch, loaded.source_format, loaded.meta["pretrain_epochs"]) == ("resnet18", "mocov3", 100)
    assert_same_backbone(loaded, r18)
    assert any(k.startswith("fc.") for k in loaded.dropped_keys)


def test_mocov3_vit_drops_the_head_projector(tmp_path):
    state = backbone_state("vit_tiny", image_size=32)
    full = {**prefixed(state, "module.base_encoder."), **mlp_state("module.base_encoder.head.", (192, 64, 16))}
    torch.save({"state_dict": full, "epoch": 300}, tmp_path / "vit.pth.tar")
    loaded = load_backbone_state_dict(tmp_path / "vit.pth.tar")
    assert (loaded.arch, loaded.image_size, loaded.source_format) == ("vit_tiny", 32, "mocov3")
    assert_same_backbone(loaded, state)


def test_mocov2_with_queue_and_key_encoder(tmp_path, r18):
    state = {**prefixed(r18, "module.encoder_q."), **mlp_state("module.encoder_q.fc.", (512, 512, 128)),
             **prefixed(r18, "module.encoder_k."), "module.queue": torch.randn(128, 4096),
             "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, tmp_path / "v2.pth.tar")
    loaded = load_backbone_state_dict(tmp_path / "v2.pth.tar")
    assert loaded.source_format == "mocov2"
    assert_same_backbone(loaded, r18)
    assert "module.queue" in loaded.dropped_keys


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_dino_teacher_with_pickled_args(tmp_path, prefix):
    teacher = backbone_state("vit_tiny", seed=1, image_size=32)
    student = backbone_state("vit_tiny", seed=2, image_size=32)
    # DINO pickles its argparse.Namespace: the loader must fall back to a full unpickle.
    torch.save({"teacher": {**prefixed(teacher, prefix), **mlp_state("head.mlp.", (192, 32, 8))},
                "student": {**prefixed(student, prefix), **mlp_state("head.mlp.", (192, 32, 8))},
                "epoch": 100, "args": argparse.Namespace(arch="vit_tiny")}, tmp_path / "dino.pth")
    loaded = load_backbone_state_dict(tmp_path / "dino.pth")
    assert (loaded.source_format, loaded.meta["method"]) == ("dino", "DINO")
    assert_same_backbone(loaded, teacher)  # the teacher is DINO's evaluated network


def test_solo_learn_lightning_checkpoint(tmp_path, r18):
    state = {**prefixed(r18, "backbone."), **mlp_state("projector."),
             "classifier.weight": torch.randn(10, 512), "classifier.bias": torch.zeros(10),
             **prefixed(r18, "momentum_backbone.")}
    torch.save({"epoch": 400, "global_step": 1, "state_dict": state, "pytorch-lightning_version": "2.0"},
               tmp_path / "solo.ckpt")
    loaded = load_backbone_state_dict(tmp_path / "solo.ckpt")
    assert loaded.source_format == "solo-learn"
    assert_same_backbone(loaded, r18)


def test_plain_torchvision_state_dict_with_fc(tmp_path):
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.resnet50(weights=None)
    torch.save(model.state_dict(), tmp_path / "r50.pth")
    loaded = load_backbone_state_dict(tmp_path / "r50.pth", arch="resnet50")
    assert (loaded.arch, loaded.source_format) == ("resnet50", "torchvision")
    assert sorted(loaded.dropped_keys) == ["fc.bias", "fc.weight"]
    # shared/reference/README.md: 265 ResNet-50 backbone tensors without fc and num_batches_tracked.
    assert sum(not k.endswith("num_batches_tracked") for k in loaded.state_dict) == 265


def test_plain_timm_vit_state_dict_with_head(tmp_path):
    state = backbone_state("vit_tiny", image_size=32)
    torch.save({**state, "head.weight": torch.randn(1000, 192), "head.bias": torch.zeros(1000)}, tmp_path / "t.pth")
    model, dim, loaded = build_loaded_backbone(tmp_path / "t.pth")
    assert (loaded.source_format, loaded.arch, dim) == ("timm", "vit_tiny", 192)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)  # ViT [CLS] feature


def test_built_backbone_produces_the_same_features_as_the_source(tmp_path, r18):
    torch.save({"state_dict": prefixed(r18, "module.base_encoder.")}, tmp_path / "m.pth")
    model, dim, _ = build_loaded_backbone(tmp_path / "m.pth")
    reference, _ = build_backbone("resnet18")
    reference.load_state_dict(r18)
    x = torch.randn(2, 3, 32, 32)
    assert dim == 512 and torch.equal(model.eval()(x), reference.eval()(x))  # ResNet global pool


def test_missing_backbone_tensor_is_refused_with_its_name(tmp_path, r18):
    state = prefixed({k: v for k, v in r18.items() if k != "layer3.1.bn2.running_var"}, "module.base_encoder.")
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    with pytest.raises(BackboneLoadError, match=r"missing.*layer3\.1\.bn2\.running_var"):
        load_backbone_state_dict(tmp_path / "m.pth")


def test_unexpected_tensor_is_refused(tmp_path, r18):
    torch.save({**r18, "layer5.0.conv1.weight": torch.randn(1)}, tmp_path / "m.pth")
    with pytest.raises(BackboneLoadError, match=r"unexpected.*layer5"):
        load_backbone_state_dict(tmp_path / "m.pth")


def test_wrong_shape_is_refused(tmp_path, r18):
    torch.save({**r18, "bn1.weight": torch.randn(65)}, tmp_path / "m.pth")
    with pytest.raises(BackboneLoadError, match=r"wrong shape.*bn1\.weight"):
        load_backbone_state_dict(tmp_path / "m.pth")


def test_checkpoint_of_another_architecture_is_refused(tmp_path, r18):
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(BackboneLoadError, match="holds a resnet18 backbone, but --arch resnet50"):
        load_backbone_state_dict(tmp_path / "r18.pth", arch="resnet50")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_unknown_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, path)
        expected = "no state dict found"
    else:
        path.write_bytes(content)
        expected = "not a readable PyTorch checkpoint"
    with pytest.raises(BackboneLoadError, match=expected):
        load_backbone_state_dict(path)


def test_state_dict_without_a_backbone_is_refused(tmp_path):
    torch.save(mlp_state("projector."), tmp_path / "head_only.pth")
    with pytest.raises(BackboneLoadError, match="cannot tell the architecture"):
        load_backbone_state_dict(tmp_path / "head_only.pth")


def test_detect_arch_for_every_resnet_depth():
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
        assert detect_arch(build_backbone(arch)[0].state_dict()) == (arch, 224)
