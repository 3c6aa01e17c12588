"""Every checkpoint layout in, the same strictly checked backbone out.

Each source is built from a real torchvision / timm model with random weights, renamed exactly as
that project names it, with its projector / predictor / head / queue beside the backbone.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io

import numpy as np
import pytest
import torch
import torch.nn as nn

from evaluate.loading import (BackboneLoadError, build_loaded_backbone, build_model, detect_arch,
                              load_backbone_state_dict)
from pretrain.backbones import build_backbone
from pretrain.identity import identity_of


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
    config = {"method": "SNCLR", "backbone": "resnet18", "epochs": 7, "neighbors": "binary", "k": 4,
              "loss_form": "paper", "positiveness_temperature": 0.1}
    assert loaded.meta["pretrain_config"] == config and loaded.meta["pretrain_seed"] is None
    assert loaded.meta["model_id"] == identity_of(config, loaded.sha256).model_id
    dropped_prefixes = {k.split(".")[0] for k in loaded.dropped_keys}
    assert dropped_prefixes == {"momentum_backbone", "projector", "momentum_projector", "predictor", "candidate_set"}

    # Another seed and output folder: the same model. Another tau_w: another model.
    state = torch.load(path, weights_only=True)
    state["config"].update(seed=3, output_dir="elsewhere")
    torch.save(state, path)
    reseeded = load_backbone_state_dict(path).meta
    assert reseeded["model_id"] == loaded.meta["model_id"] and reseeded["pretrain_seed"] == 3
    state["config"]["positiveness_temperature"] = 0.05
    torch.save(state, path)
    assert load_backbone_state_dict(path).meta["model_id"] != loaded.meta["model_id"]


def test_foreign_identity_from_stored_args_else_the_file(tmp_path, r18):
    """DINO's args give two seeds of one run one identity; a bare state dict is its own model."""
    def dino(seed: int, out_dim: int) -> dict:
        return {"teacher": prefixed(r18, "backbone."), "epoch": 100,
                "args": argparse.Namespace(arch="resnet18", out_dim=out_dim, seed=seed, output_dir=f"o{seed}")}
    torch.save(dino(0, 4096), tmp_path / "a.pth")
    torch.save(dino(1, 4096), tmp_path / "b.pth")
    torch.save(dino(0, 65536), tmp_path / "c.pth")
    a, b, c = (load_backbone_state_dict(tmp_path / f"{n}.pth").meta for n in "abc")
    assert a["model_id"].startswith("dino:") and a["model_id"] == b["model_id"] != c["model_id"]
    assert (a["pretrain_seed"], b["pretrain_seed"]) == (0, 1)
    torch.save(r18, tmp_path / "plain.pth")
    plain = load_backbone_state_dict(tmp_path / "plain.pth")
    assert plain.meta["model_id"] == f"sha256:{plain.sha256[:16]}" and plain.meta["pretrain_config"] == {}


def test_mocov3_resnet(tmp_path, r18):
    # MoCo v3 keeps its projector inside base_encoder.fc and a momentum copy beside it.
    state = {**prefixed(r18, "module.base_encoder."), **mlp_state("module.base_encoder.fc."),
             **prefixed(backbone_state("resnet18", seed=1), "module.momentum_encoder."),
             **mlp_state("module.predictor.", (16, 64, 16))}
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
    """The key encoder gets other tensors (another seed), so loading encoder_k instead of encoder_q
    fails the comparison. Break tried: prefix "module.encoder_k." for mocov2 -> this test fails."""
    key_encoder = backbone_state("resnet18", seed=1)
    state = {**prefixed(r18, "module.encoder_q."), **mlp_state("module.encoder_q.fc.", (512, 512, 128)),
             **prefixed(key_encoder, "module.encoder_k."), "module.queue": torch.randn(128, 4096),
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
    # DINO pickles its argparse.Namespace: allow-listed, so the data-only reader takes it.
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


# --- the trust boundary ---------------------------------------------------------------------------

def _real_layouts(r18: dict, vit: dict) -> dict[str, object]:
    """Each source's file with the non-tensor types it pickles (argparse.Namespace, numpy scalars,
    arrays and dtypes, plain containers), as written by the projects' own training scripts."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9).state_dict()
    dino_args = argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=65536, norm_last_layer=True,
                                   momentum_teacher=0.996, use_bn_in_head=False, teacher_temp=0.04, lr=0.0005,
                                   global_crops_scale=(0.4, 1.0), local_crops_number=8, output_dir=".", seed=0)
    return {
        # MoCo v1/v2 main_moco.py save_checkpoint
        "mocov2": {"epoch": 200, "arch": "resnet18", "state_dict": prefixed(r18, "module.encoder_q."),
                   "optimizer": optimizer},
        # MoCo v3 main_moco.py, with its GradScaler state
        "mocov3": {"epoch": 100, "arch": "resnet18", "state_dict": prefixed(r18, "module.base_encoder."),
                   "optimizer": optimizer, "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                      "growth_interval": 2000, "_growth_tracker": 17}},
        # DINO main_dino.py: args is an argparse.Namespace, dino_loss its center buffer
        "dino": {"student": prefixed(vit, "module.backbone."), "teacher": prefixed(vit, "backbone."),
                 "optimizer": optimizer, "epoch": 100, "args": dino_args, "fp16_scaler": None,
                 "dino_loss": {"center": torch.zeros(1, 8)}},
        # solo-learn: a Lightning checkpoint with callback states
        "solo-learn": {"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "2.0.2",
                       "state_dict": prefixed(r18, "backbone."), "optimizer_states": [optimizer],
                       "lr_schedulers": [{"base_lrs": [0.3], "last_epoch": 399, "_step_count": 400}],
                       "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None,
                                                                          "dirpath": "trained_models"}},
                       "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 399}}}}},
        # mmselfsup (mmcv runner): meta with numpy values from the logger and the dataset
        "mmselfsup": {"meta": {"mmcv_version": "1.4.2", "epoch": 200, "iter": 100000, "seed": np.int64(0),
                               "hook_msgs": {"best_score": np.float64(67.1)},
                               "class_weights": np.ones(3, dtype=np.float32), "dtype": np.dtype("float32")},
                      "state_dict": prefixed(r18, "backbone."), "optimizer": optimizer},
        # torchvision: a plain state dict
        "torchvision": dict(r18),
        # timm train.py checkpoint: args Namespace and a numpy metric
        "timm": {"epoch": 299, "arch": "vit_tiny", "state_dict": dict(vit), "optimizer": optimizer, "version": 2,
                 "args": argparse.Namespace(model="vit_tiny", lr=5e-4, drop_path=0.1), "metric": np.float64(72.2)},
    }


@pytest.mark.parametrize("fmt", ["mocov2", "mocov3", "dino", "solo-learn", "mmselfsup", "torchvision", "timm"])
def test_every_real_layout_loads_as_data(tmp_path, r18, fmt):
    vit = backbone_state("vit_tiny", image_size=32)
    path = tmp_path / f"{fmt}.pth"
    torch.save(_real_layouts(r18, vit)[fmt], path)
    loaded = load_backbone_state_dict(path)  # no --trust-checkpoint: only tensors and allow-listed types
    assert loaded.source_format == fmt
    assert_same_backbone(loaded, vit if fmt in ("dino", "timm") else r18)


@pytest.mark.parametrize("hidden", [False, True])
def test_code_in_a_checkpoint_never_runs(tmp_path, r18, hidden):
    """A pickle that runs code, bare or beside a real MoCo v3 state dict, is refused naming the type and
    --trust-checkpoint. Break tried: the old fallback to weights_only=False -> the marker file appears."""
    from untrusted_pickles import OFFENDING, WritesMarker, hidden_in

    marker = tmp_path / "ran"
    real = {"epoch": 100, "state_dict": prefixed(r18, "module.base_encoder.")}
    torch.save(hidden_in(real, marker) if hidden else WritesMarker(marker), tmp_path / "m.pth")
    with pytest.raises(BackboneLoadError, match=f"{OFFENDING}.*--trust-checkpoint"):
        load_backbone_state_dict(tmp_path / "m.pth")
    with pytest.raises(BackboneLoadError, match="--trust-checkpoint"):
        build_loaded_backbone(tmp_path / "m.pth")
    assert not marker.exists()
    if hidden:  # the flag is the one way through, and then the payload does run: the marker is a real probe
        loaded = load_backbone_state_dict(tmp_path / "m.pth", trust=True)
        assert marker.exists() and loaded.source_format == "mocov3"


def test_resume_state_with_code_is_refused(tmp_path):
    from evaluate.classification.run_io import load_resume_state
    from evaluate.errors import ResumeError
    from untrusted_pickles import OFFENDING, hidden_in

    marker = tmp_path / "ran"
    settings = {"epochs": 2, "checkpoint_sha256": "ab"}
    good = {"epoch": 1, "model": nn.Linear(2, 2).state_dict(), "optimizer": {}, "history": [{"top1": 50.0}],
            "settings": settings}
    torch.save(good, tmp_path / "linear_state.pt")
    assert load_resume_state(tmp_path / "linear_state.pt", settings)["epoch"] == 1
    torch.save(hidden_in(good, marker), tmp_path / "linear_state.pt")
    with pytest.raises(ResumeError, match=f"linear_state.pt.*{OFFENDING}"):
        load_resume_state(tmp_path / "linear_state.pt", settings)
    assert not marker.exists()


# --- ViT head counts: the same tensors must give the source's function ----------------------------

def _timm_vit(name: str, seed: int, **kwargs) -> nn.Module:
    """timm's model with random weights and q/k scaled up, so attention is peaked: with near-uniform
    attention a wrong head count changes the features too little to see."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, img_size=32, **kwargs).eval()
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.in_features
            block.attn.qkv.weight[:2 * dim] *= 8.0
    return model


def _timm_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def _backbone_tensors(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


@pytest.fixture(scope="module")
def timm_vit_small() -> nn.Module:
    return _timm_vit("vit_small_patch16_224", seed=0)


@pytest.mark.parametrize("fmt,heads", [("dino", 6), ("solo-learn", 6), ("timm-flag", 6), ("mocov3", 12)])
def test_vit_small_gets_its_sources_head_count(tmp_path, timm_vit_small, fmt, heads):
    """Break tried: building every ViT-S with MoCo v3's 12 heads (the old loader) -> DINO, solo-learn and
    a --vit-heads 6 plain state dict give other features than timm's 6-head ViT-S and this test fails."""
    reference = timm_vit_small if heads == 6 else _timm_vit("vit_small_patch16_224", seed=0, num_heads=12)
    state = _backbone_tensors(reference)
    obj = {"dino": {"teacher": prefixed(state, "backbone."), "args": argparse.Namespace(arch="vit_small")},
           "solo-learn": {"state_dict": prefixed(state, "backbone.")},
           "timm-flag": state,
           "mocov3": {"state_dict": prefixed(state, "module.base_encoder.")}}[fmt]
    torch.save(obj, tmp_path / "vit.pth")
    model, _, loaded = build_loaded_backbone(tmp_path / "vit.pth", vit_heads=6 if fmt == "timm-flag" else None)
    assert (loaded.arch, loaded.vit_heads, loaded.image_size) == ("vit_small", heads, 32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _timm_features(reference, images)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), expected, atol=1e-4, rtol=1e-4)
        # the test can tell: the same tensors with the other head count give other features
        other, _ = build_model(dataclasses.replace(loaded, vit_heads=18 - heads))
        other.load_state_dict(loaded.state_dict)
        assert (other.eval()(images) - expected).abs().max() > 0.1


def test_dino_head_count_comes_from_its_stored_args(tmp_path, timm_vit_small):
    state = _backbone_tensors(timm_vit_small)
    torch.save({"teacher": prefixed(state, "backbone."), "args": argparse.Namespace(arch="vit_small")},
               tmp_path / "dino.pth")
    loaded = load_backbone_state_dict(tmp_path / "dino.pth")
    assert (loaded.vit_heads, loaded.vit_heads_source) == (6, "DINO args.arch")
    torch.save({"teacher": prefixed(state, "backbone."), "args": argparse.Namespace(arch="vit_base")},
               tmp_path / "dino.pth")
    with pytest.raises(BackboneLoadError, match="DINO args.arch is 'vit_base' but the tensors are a vit_small"):
        load_backbone_state_dict(tmp_path / "dino.pth")


def test_dino_teacher_without_args_falls_back_to_dinos_six_heads(tmp_path, timm_vit_small):
    """A DINO checkpoint with no args.arch (e.g. the teacher alone) takes the format's table entry. Break
    tried (a mutant that survived the suite): that entry set to 12 -> this test fails, in heads and features."""
    state = _backbone_tensors(timm_vit_small)
    torch.save({"teacher": prefixed(state, "backbone.")}, tmp_path / "dino.pth")
    model, _, loaded = build_loaded_backbone(tmp_path / "dino.pth")
    assert (loaded.source_format, loaded.vit_heads, loaded.vit_heads_source) == ("dino", 6, "dino format")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), _timm_features(timm_vit_small, images), atol=1e-4, rtol=1e-4)


def test_plain_vit_small_needs_vit_heads(tmp_path, timm_vit_small):
    torch.save(_backbone_tensors(timm_vit_small), tmp_path / "vit.pth")
    with pytest.raises(BackboneLoadError, match="does not say its head count; pass --vit-heads 6"):
        load_backbone_state_dict(tmp_path / "vit.pth")
    with pytest.raises(BackboneLoadError, match="--vit-heads 5 does not divide the vit_small embedding width 384"):
        load_backbone_state_dict(tmp_path / "vit.pth", vit_heads=5)
    loaded = load_backbone_state_dict(tmp_path / "vit.pth", vit_heads=12)  # the flag wins over every source
    assert (loaded.vit_heads, loaded.vit_heads_source) == (12, "--vit-heads")


def test_vit_heads_is_refused_for_a_resnet(tmp_path, r18):
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(BackboneLoadError, match="--vit-heads applies to ViT backbones, this one is a resnet18"):
        load_backbone_state_dict(tmp_path / "r18.pth", vit_heads=6)
    assert load_backbone_state_dict(tmp_path / "r18.pth").vit_heads is None


def test_vit_base_has_12_heads_in_every_source(tmp_path):
    reference = _timm_vit("vit_base_patch16_224", seed=2)
    torch.save(_backbone_tensors(reference), tmp_path / "vitb.pth")
    model, dim, loaded = build_loaded_backbone(tmp_path / "vitb.pth")
    assert (loaded.arch, loaded.vit_heads, dim) == ("vit_base", 12, 768)
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), _timm_features(reference, images), atol=1e-4, rtol=1e-4)


# --- the evaluator CLIs --------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("subcommand", ["linear", "linear-fast", "knn", "semisup"])
def test_every_evaluator_refuses_a_checkpoint_that_runs_code(tmp_path, r18, subcommand):
    """The refusal reaches the user as one line naming the type and the flag; the marker proves nothing ran.

    The refusal comes before any evaluation work: --data-dir names no data and --out-dir is never made.
    Should the gate regress, the run stops at the missing data (and the timeout bounds it) instead of
    evaluating for up to 40 minutes before failing.
    """
    from evaluate.__main__ import main as evaluate_main
    from untrusted_pickles import hidden_in

    marker = tmp_path / "ran"
    torch.save(hidden_in({"state_dict": prefixed(r18, "module.encoder_q.")}, marker), tmp_path / "m.pth")
    extra = ["--percent", "1"] if subcommand == "semisup" else []
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        evaluate_main([subcommand, "--checkpoint", str(tmp_path / "m.pth"), "--out-dir", str(tmp_path / "run"),
                       "--data-dir", str(tmp_path / "no-data"), "--num-workers", "0", "--no-tensorboard", *extra])
    (message,) = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and "--trust-checkpoint" in message, message
    assert "exec" in message and not marker.exists()
    assert not (tmp_path / "run").exists()


def test_cli_records_the_head_count_and_takes_vit_heads(tmp_path):
    """--vit-heads reaches the loader, and the record says which head count was used and why."""
    from evaluate.__main__ import main as evaluate_main
    from evaluate.report.records import read_records
    from conftest import write_image_tree

    data = write_image_tree(tmp_path / "data", classes=("a", "b"), per_class=4)
    torch.save(backbone_state("vit_tiny", image_size=32), tmp_path / "vit.pth")
    evaluate_main(["knn", "--checkpoint", str(tmp_path / "vit.pth"), "--vit-heads", "6", "--dataset", "imagefolder",
                   "--data-dir", str(data), "--image-size", "32", "--k", "2", "--out-dir", str(tmp_path / "run"),
                   "--num-workers", "0", "--no-tensorboard"])
    [record] = read_records(tmp_path / "run" / "results.jsonl")
    assert (record.settings["vit_heads"], record.settings["vit_heads_source"]) == (6, "--vit-heads")


def _snclr_file(path, backbone: str, config_backbone: str | None = None) -> dict:
    from pretrain.model import SNCLR

    torch.manual_seed(0)
    model = SNCLR(backbone, image_size=32, proj_hidden_dim=32, dim=16, candidate_set_size=64, k=4)
    torch.save({"format": "snclr-bench/pretrain/v1", "model": model.state_dict(), "optimizer": {}, "epoch": 1,
                "config": {"method": "SNCLR", "backbone": config_backbone or backbone, "epochs": 1,
                           "image_size": 32}}, path)
    return model.backbone.state_dict()


def test_small_image_resnet_round_trip(tmp_path):
    """Our resnet18_cifar checkpoint loads as resnet18_cifar (3x3 conv1 tells it from resnet18), and the
    built backbone computes what the trained one did."""
    expected = _snclr_file(tmp_path / "cifar.pth", "resnet18_cifar")
    assert detect_arch(expected)[0] == "resnet18_cifar"
    model, dim, loaded = build_loaded_backbone(tmp_path / "cifar.pth")
    assert (loaded.arch, dim, loaded.meta["arch"]) == ("resnet18_cifar", 512, "resnet18_cifar")
    assert_same_backbone(loaded, expected)
    source, _ = build_backbone("resnet18_cifar")
    source.load_state_dict(expected)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(images), source.eval()(images))
    with pytest.raises(BackboneLoadError, match="holds a resnet18_cifar backbone, but --arch resnet18"):
        load_backbone_state_dict(tmp_path / "cifar.pth", "resnet18")


def test_small_image_resnet_whose_config_disagrees_or_whose_padding_is_unknown_is_refused(tmp_path):
    """A config naming resnet18 over 3x3-stem tensors, and a solo-learn CIFAR checkpoint (stem padded by 2,
    a different function with the same shapes), are refused with one line."""
    _snclr_file(tmp_path / "mislabelled.pth", "resnet18_cifar", config_backbone="resnet18")
    with pytest.raises(BackboneLoadError, match="config names backbone 'resnet18' but the tensors are a resnet18_cifar"):
        load_backbone_state_dict(tmp_path / "mislabelled.pth")
    torch.save({"state_dict": prefixed(backbone_state("resnet18_cifar"), "backbone.")}, tmp_path / "solo.ckpt")
    with pytest.raises(BackboneLoadError, match="does not record its stem padding"):
        load_backbone_state_dict(tmp_path / "solo.ckpt")
    odd = dict(backbone_state("resnet18"))
    odd["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(BackboneLoadError, match="5x5 first convolution"):
        detect_arch(odd)
