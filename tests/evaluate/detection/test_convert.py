"""Converter to detectron2: names, counts, every source format, and the --verify round trip."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from evaluate.detection.convert import (EXPECTED_TENSORS, ConversionError, convert_checkpoint,
                                            torchvision_resnet_to_detectron2, verify_with_detectron2,
                                            write_detectron2_weights)
from d2_support import needs_detectron2
from pretrain.provenance import file_sha256

REPO = Path(__file__).resolve().parents[3]


def _resnet_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a swapped mean/var would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(7)
    return model.state_dict()


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    return _resnet_state("resnet50")


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def _other_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A second encoder (momentum / student) that differs from ``state`` in conv1 only.

    The other tensors share storage, which torch.save stores once, so the files stay small.
    """
    return {**state, "conv1.weight": state["conv1.weight"] + 1.0}


def _wrap(fmt: str, state: dict[str, torch.Tensor]) -> tuple[object, list[str]]:
    """``state`` wrapped the way each source saves it; returns the object and keys that must be dropped."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    other = _other_encoder(backbone)
    head = {"0.weight": torch.randn(8, 2048), "0.bias": torch.randn(8)}
    if fmt == "snclr":
        model = {**_prefixed(backbone, "backbone."), **_prefixed(other, "momentum_backbone."),
                 **_prefixed(head, "projector."), **_prefixed(head, "momentum_projector."),
                 **_prefixed(head, "predictor."), "candidate_set.embeddings": torch.randn(16, 8),
                 "candidate_set.image_ids": torch.arange(16)}
        obj = {"format": "snclr-bench/pretrain/v1", "model": model, "epoch": 3,
               "config": {"backbone": "resnet50", "epochs": 3, "method": "SNCLR"}, "optimizer": {}}
        return obj, ["momentum_backbone.conv1.weight", "projector.0.weight", "predictor.0.bias",
                     "candidate_set.embeddings"]
    if fmt == "mocov3":  # main_moco.py: projector lives in base_encoder.fc
        sd = {**_prefixed(backbone, "module.base_encoder."), **_prefixed(head, "module.base_encoder.fc."),
              **_prefixed(other, "module.momentum_encoder."), **_prefixed(head, "module.predictor.")}
        return {"state_dict": sd, "epoch": 100, "arch": "resnet50"}, [
            "module.momentum_encoder.conv1.weight", "module.predictor.0.weight"]
    if fmt == "mocov2":  # main_moco.py: MLP head in encoder_q.fc, a queue buffer
        sd = {**_prefixed(backbone, "module.encoder_q."), **_prefixed(head, "module.encoder_q.fc."),
              **_prefixed(other, "module.encoder_k."), "module.queue": torch.randn(128, 16),
              "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"state_dict": sd, "epoch": 200, "arch": "resnet50"}, ["module.encoder_k.conv1.weight", "module.queue"]
    if fmt == "dino":  # the teacher is DINO's evaluated network; the student differs
        teacher = {**_prefixed(backbone, "backbone."), **_prefixed(head, "head.mlp.")}
        student = {**_prefixed(other, "module.backbone."), **_prefixed(head, "module.head.mlp.")}
        return {"teacher": teacher, "student": student, "epoch": 100}, ["teacher.head.mlp.0.weight"]
    if fmt == "solo-learn":  # Lightning checkpoint of a solo-learn method
        sd = {**_prefixed(backbone, "backbone."), **_prefixed(head, "projector."),
              **_prefixed(other, "momentum_backbone."), "classifier.weight": torch.randn(10, 2048)}
        return {"state_dict": sd, "epoch": 400}, ["momentum_backbone.conv1.weight", "classifier.weight"]
    assert fmt == "torchvision"
    return state, ["fc.weight", "fc.bias"]


def test_mapping_renames_by_hand_checked_rules(resnet50_state: dict[str, torch.Tensor]) -> None:
    converted, dropped = torchvision_resnet_to_detectron2(resnet50_state, "resnet50")
    assert len(converted) == EXPECTED_TENSORS["resnet50"] == 265
    expected_pairs = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv1.weight": "res2.0.conv1.weight",
        "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
        "layer1.0.downsample.1.running_mean": "res2.0.shortcut.norm.running_mean",
        "layer3.5.bn2.weight": "res4.5.conv2.norm.weight",
        "layer4.2.bn3.bias": "res5.2.conv3.norm.bias",
    }
    for source, target in expected_pairs.items():
        assert np.array_equal(converted[target], resnet50_state[source].numpy()), (source, target)
        assert converted[target].dtype == np.float32
    assert "fc.weight" in dropped and "fc.bias" in dropped
    assert sum(key.endswith("num_batches_tracked") for key in dropped) == 53  # one per BN layer of ResNet-50
    with pytest.raises(ConversionError, match="'encoder.conv1.weight' is not part of a torchvision ResNet"):
        torchvision_resnet_to_detectron2({"encoder.conv1.weight": torch.zeros(1)}, "resnet50")


@needs_detectron2
@pytest.mark.parametrize("arch,depth,res2", [("resnet50", 50, 256), ("resnet18", 18, 64), ("resnet34", 34, 64),
                                             ("resnet101", 101, 256)])
def test_names_equal_detectron2_build_resnet_backbone(arch: str, depth: int, res2: int) -> None:
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    detectron2_state = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    converted, _ = torchvision_resnet_to_detectron2(_resnet_state(arch), arch)
    assert len(converted) == EXPECTED_TENSORS[arch]
    assert set(converted) == set(detectron2_state)
    assert all(converted[k].shape == tuple(v.shape) for k, v in detectron2_state.items())


@pytest.mark.parametrize("fmt", ["snclr", "mocov3", "mocov2", "dino", "solo-learn", "torchvision"])
def test_every_source_format_converts_to_the_online_encoder(
        fmt: str, resnet50_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    obj, must_drop = _wrap(fmt, resnet50_state)
    source = tmp_path / "checkpoint.pth"
    torch.save(obj, source)
    summary, model = convert_checkpoint(source, tmp_path / "out" / "r50.pkl")
    assert (summary.arch, summary.source_format, summary.tensor_count) == ("resnet50", fmt, 265)
    with open(summary.output_path, "rb") as handle:
        payload = pickle.load(handle)
    assert payload["__author__"] == "snclr-bench" and payload["matching_heuristics"] is True
    assert set(payload["model"]) == set(model) and len(model) == 265
    # conv1 is the one tensor where the momentum encoder / student differs: the right encoder was taken.
    assert np.array_equal(payload["model"]["stem.conv1.weight"], resnet50_state["conv1.weight"].numpy())
    assert np.array_equal(payload["model"]["res4.3.conv2.norm.running_var"],
                          resnet50_state["layer3.3.bn2.running_var"].numpy())
    sidecar = json.loads(summary.sidecar_path.read_text())
    assert summary.sidecar_path.name == "r50.pkl.json"
    assert sidecar["source_sha256"] == file_sha256(source)
    assert (sidecar["tensor_count"], sidecar["arch"], sidecar["source_format"]) == (265, "resnet50", fmt)
    for key in must_drop + ["layer1.0.bn1.num_batches_tracked"]:
        assert any(dropped.endswith(key) for dropped in sidecar["dropped_keys"]), key
    if fmt == "snclr":
        assert sidecar["meta"]["method"] == "SNCLR" and sidecar["meta"]["pretrain_epochs"] == 3


@needs_detectron2
def test_verify_passes_for_converted_and_fails_for_wrong_prefix(
        resnet50_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    converted, _ = torchvision_resnet_to_detectron2(resnet50_state, "resnet50")
    good = write_detectron2_weights(tmp_path / "good.pkl", converted)
    assert verify_with_detectron2(good, resnet50_state, "resnet50") == 265
    # detectron2 matches names by suffix: "module.stem..." is no suffix of "backbone.bottom_up.stem...",
    # so nothing loads and it only logs; --verify must turn that into a failure.
    wrong_prefix = write_detectron2_weights(tmp_path / "wrong.pkl", {f"module.{k}": v for k, v in converted.items()})
    with pytest.raises(ConversionError, match="265 of 265 backbone.bottom_up tensors not loaded"):
        verify_with_detectron2(wrong_prefix, resnet50_state, "resnet50")
    # Unconverted torchvision names partly suffix-match ("conv1.weight"): loaded into the wrong places.
    torchvision_names = write_detectron2_weights(
        tmp_path / "tv.pkl", {k: v.numpy() for k, v in resnet50_state.items() if not k.startswith("fc.")})
    with pytest.raises(ConversionError, match="detectron2 backbone check failed"):
        verify_with_detectron2(torchvision_names, resnet50_state, "resnet50")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluate.detection.convert", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@needs_detectron2
def test_cli_converts_and_verifies_resnet18(tmp_path: Path) -> None:
    obj, _ = _wrap("torchvision", _resnet_state("resnet18"))
    torch.save(obj, tmp_path / "r18.pth")
    run = _run_cli(str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl"), "--verify")
    assert run.returncode == 0, run.stderr
    assert "100 tensors, resnet18, torchvision, verified through detectron2" in run.stdout
    assert json.loads((tmp_path / "r18.pkl.json").read_text())["detectron2_resnets"] == {
        "DEPTH": 18, "RES2_OUT_CHANNELS": 64}


def test_cli_fails_in_one_line(tmp_path: Path) -> None:
    missing = _run_cli(str(tmp_path / "nope.pth"), str(tmp_path / "out.pkl"))
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == f"error: checkpoint {tmp_path / 'nope.pth'} does not exist"
    # A source whose backbone sits under an unknown prefix is refused before anything is written.
    torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in _resnet_state("resnet18").items()}},
               tmp_path / "prefix.pth")
    prefix = _run_cli(str(tmp_path / "prefix.pth"), str(tmp_path / "prefix.pkl"))
    assert prefix.returncode != 0 and prefix.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "prefix.pkl").exists()
    from pretrain.backbones import build_backbone
    torch.save(build_backbone("vit_tiny", 32)[0].state_dict(), tmp_path / "vit.pth")
    vit = _run_cli(str(tmp_path / "vit.pth"), str(tmp_path / "vit.pkl"))
    assert vit.returncode != 0
    assert "backbone 'vit_tiny' cannot go to detectron2" in vit.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "vit.pkl").exists()


def test_count_guard_refuses_a_lost_tensor(resnet50_state: dict[str, torch.Tensor]) -> None:
    """Break tried: the `len(converted) != EXPECTED_TENSORS[arch]` guard deleted -> this test fails.

    Every name here is a valid ResNet name, so only the count can tell that one tensor is gone.
    """
    lost = {k: v for k, v in resnet50_state.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(ConversionError, match="264 backbone tensors after conversion, expected exactly 265"):
        torchvision_resnet_to_detectron2(lost, "resnet50")
    with pytest.raises(ConversionError, match="expected exactly 100 for resnet18"):
        torchvision_resnet_to_detectron2(resnet50_state, "resnet18")


def _swapped(converted: dict[str, np.ndarray], a: str, b: str) -> dict[str, np.ndarray]:
    """``converted`` with the tensors under prefixes/names ``a`` and ``b`` exchanged (names, shapes kept)."""
    out = dict(converted)
    for key in converted:
        if key.startswith(a):
            other = b + key[len(a):]
            out[key], out[other] = converted[other], converted[key]
    return out


@needs_detectron2
@pytest.mark.parametrize("first,second", [("res3.0.conv2.", "res3.1.conv2."),
                                          ("res2.0.conv1.norm.running_mean", "res2.0.conv1.norm.running_var")])
def test_verify_compares_with_the_source_not_with_the_converted_file(
        first: str, second: str, resnet50_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """A renaming bug that keeps names and shapes (two blocks of layer2 = res3 swapped; BN mean and
    variance swapped) must fail --verify. Break tried: verify comparing detectron2's tensors with the
    converted file (the old behaviour) -> the swapped files pass and this test fails; on that code the
    good file also fails, as the source is given under torchvision names."""
    converted, _ = torchvision_resnet_to_detectron2(resnet50_state, "resnet50")
    assert verify_with_detectron2(write_detectron2_weights(tmp_path / "good.pkl", converted), resnet50_state,
                                  "resnet50") == 265
    swapped = write_detectron2_weights(tmp_path / "swapped.pkl", _swapped(converted, first, second))
    with pytest.raises(ConversionError, match="does not compute the source checkpoint's ResNet"):
        verify_with_detectron2(swapped, resnet50_state, "resnet50")


@needs_detectron2
def test_failed_verify_removes_only_what_it_wrote(resnet50_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """detectron2's MSRA convention (stride in the 1x1 conv) loads every tensor yet is another function:
    --verify fails, its staged weights are removed, and an earlier conversion (weights + the sidecar
    that describes them) is left byte for byte. Breaks tried: writing OUTPUT before verifying (the
    first order) -> the new unverified weights replace the old; unlinking OUTPUT first (issue 15's
    order) -> the earlier conversion is gone."""
    torch.save(resnet50_state, tmp_path / "r50.pth")
    config = tmp_path / "msra.yaml"
    config.write_text(f'_BASE_: "{REPO / "detectron2_configs" / "mask_rcnn_R_50_FPN_1x_ssl.yaml"}"\n'
                      "MODEL:\n  RESNETS:\n    STRIDE_IN_1X1: True\n")
    output = tmp_path / "out" / "r50.pkl"
    convert_checkpoint(tmp_path / "r50.pth", output)  # an earlier, unverified conversion
    before = {p.name: p.read_bytes() for p in output.parent.iterdir()}
    with pytest.raises(ConversionError, match=r"res3 vs layer2: relative difference"):
        convert_checkpoint(tmp_path / "r50.pth", output, verify=True, config_path=config, overwrite=True)
    assert {p.name: p.read_bytes() for p in output.parent.iterdir()} == before
    assert sorted(before) == ["r50.pkl", "r50.pkl.json"]
    summary, _ = convert_checkpoint(tmp_path / "r50.pth", output, verify=True, overwrite=True)
    assert json.loads(summary.sidecar_path.read_text())["verified"] is True
    assert sorted(p.name for p in output.parent.iterdir()) == ["r50.pkl", "r50.pkl.json"]


@needs_detectron2
def test_verify_reads_the_config_without_python_tags(tmp_path: Path) -> None:
    """detectron2's merge_from_file defaults to allow_unsafe=True, where a YAML tag can run code."""
    from untrusted_pickles import save_torch

    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"MODEL: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w')\"]\n")
    source = save_torch(tmp_path / "r18.pth", _resnet_state("resnet18"))
    with pytest.raises(ConversionError, match="not a plain YAML config"):
        convert_checkpoint(source, tmp_path / "r18.pkl", verify=True, config_path=config)
    assert not marker.exists() and not (tmp_path / "r18.pkl").exists()


@pytest.mark.parametrize("hidden", [False, True])
def test_converter_runs_no_code_from_its_inputs(hidden: bool, tmp_path: Path) -> None:
    """A .pt source and a .pkl weight file that run code when unpickled are refused, naming the type and
    --trust-checkpoint; the marker proves nothing ran. Break tried: pickle.load in read_detectron2_weights
    (the old reader) -> the marker appears."""
    from evaluate.loading import BackboneLoadError
    from evaluate.detection.convert import read_detectron2_weights
    from pretrain.safe_load import load_array_pickle
    from untrusted_pickles import OFFENDING, WritesMarker, hidden_in, save_pickle, save_torch

    marker = tmp_path / "ran"
    state = _resnet_state("resnet18")
    source = save_torch(tmp_path / "src.pth", hidden_in({"state_dict": state}, marker) if hidden
                        else WritesMarker(marker))
    with pytest.raises(BackboneLoadError, match=f"{OFFENDING}.*--trust-checkpoint"):
        convert_checkpoint(source, tmp_path / "out.pkl")
    converted, _ = torchvision_resnet_to_detectron2(state, "resnet18")
    payload = {"model": converted, "__author__": "x", "matching_heuristics": True}
    weights = save_pickle(tmp_path / "w.pkl", hidden_in(payload, marker) if hidden else WritesMarker(marker))
    with pytest.raises(ConversionError, match=f"{OFFENDING}.*--trust-checkpoint"):
        read_detectron2_weights(weights)
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()
    if hidden:  # the CLI says it in one line (one subprocess is enough: it is slow to start)
        run = _run_cli(str(source), str(tmp_path / "out.pkl"))
        assert run.returncode != 0 and "--trust-checkpoint" in run.stderr.strip().splitlines()[-1]
        assert not marker.exists()
    # The real layout beside it still reads, and the flag is what lets the hostile one through.
    assert set(read_detectron2_weights(save_pickle(tmp_path / "ok.pkl", payload))) == set(converted)
    load_array_pickle(weights, trust=True)
    assert marker.exists()


def test_small_image_resnet_is_refused_in_one_line(tmp_path: Path) -> None:
    """resnet18_cifar has no detectron2 R-FPN: one line, nothing written."""
    from pretrain.model import SNCLR
    model = SNCLR("resnet18_cifar", image_size=32, proj_hidden_dim=16, dim=8, candidate_set_size=16, k=2)
    torch.save({"format": "snclr-bench/pretrain/v1", "model": model.state_dict(), "optimizer": {}, "epoch": 1,
                "config": {"backbone": "resnet18_cifar", "epochs": 1}}, tmp_path / "cifar.pth")
    run = _run_cli(str(tmp_path / "cifar.pth"), str(tmp_path / "cifar.pkl"))
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert "backbone 'resnet18_cifar' cannot go to detectron2: its small-image stem" in last
    assert not (tmp_path / "cifar.pkl").exists() and not (tmp_path / "cifar.pkl.json").exists()


# --- files the converter writes (issue 15 section 3) -------------------------------------------

def test_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    """The issue's reproducer, `convert mine.pth mine.pth --verify --config-file typo.yaml`: on the
    issue-15 code it deleted mine.pth, then printed a traceback. Also through a symbolic link."""
    obj, _ = _wrap("torchvision", _resnet_state("resnet18"))
    mine = tmp_path / "mine.pth"
    torch.save(obj, mine)
    before = mine.read_bytes()
    run = _run_cli(str(mine), str(mine), "--verify", "--config-file", str(tmp_path / "typo.yaml"))
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [f"error: OUTPUT {mine} is INPUT {mine}; a conversion never writes "
                                               "over its source: choose another output path"]
    (tmp_path / "link.pkl").symlink_to(mine)
    with pytest.raises(ConversionError, match="is INPUT"):
        convert_checkpoint(mine, tmp_path / "link.pkl", overwrite=True)
    with pytest.raises(ConversionError, match="is INPUT"):   # the sidecar would land on the input
        convert_checkpoint(tmp_path / "x.pkl.json", tmp_path / "x.pkl", overwrite=True)
    assert mine.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["link.pkl", "mine.pth"]


def test_missing_verify_config_is_one_line_before_any_work(tmp_path: Path) -> None:
    obj, _ = _wrap("torchvision", _resnet_state("resnet18"))
    torch.save(obj, tmp_path / "r18.pth")
    run = _run_cli(str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl"), "--verify",
                   "--config-file", str(tmp_path / "typo.yaml"))
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [f"error: --config-file {tmp_path / 'typo.yaml'} does not exist"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    """On the issue-15 code an existing OUTPUT (or a lone sidecar) was replaced without a word."""
    source = tmp_path / "r18.pth"
    torch.save(_resnet_state("resnet18"), source)
    output = tmp_path / "r18.pkl"
    output.write_bytes(b"someone's weights")
    with pytest.raises(ConversionError, match=r"r18\.pkl exists; pass --overwrite"):
        convert_checkpoint(source, output)
    assert output.read_bytes() == b"someone's weights"
    output.unlink()
    sidecar = tmp_path / "r18.pkl.json"
    sidecar.write_text("{}")
    with pytest.raises(ConversionError, match=r"r18\.pkl\.json exists; pass --overwrite"):
        convert_checkpoint(source, output)
    assert not output.exists()
    summary, _ = convert_checkpoint(source, output, overwrite=True)
    assert json.loads(sidecar.read_text())["tensor_count"] == summary.tensor_count == 100


# --- check_bottom_up: the tensor-level half of --verify, each message from a crafted state -----------

@pytest.fixture(scope="module")
def bottom_up_pair() -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """(a detectron2 backbone.bottom_up state that loaded the converted weights, those weights)."""
    converted, _ = torchvision_resnet_to_detectron2(_resnet_state("resnet18"), "resnet18")
    state = {name: torch.from_numpy(array.copy()) for name, array in converted.items()}
    state["res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(0)   # dropped by the conversion on purpose
    return state, converted


def _check(state: dict, expected: dict) -> str:
    from evaluate.detection.convert import check_bottom_up

    with pytest.raises(ConversionError) as failed:
        check_bottom_up(state, expected, "w.pkl")
    return str(failed.value)


def test_check_bottom_up_passes_when_every_tensor_equals_the_file(bottom_up_pair) -> None:
    from evaluate.detection.convert import check_bottom_up

    state, converted = bottom_up_pair
    assert check_bottom_up(state, converted, "w.pkl") == EXPECTED_TENSORS["resnet18"]


@pytest.mark.parametrize("how", ["nan", "absent_from_file"])
def test_check_bottom_up_names_a_tensor_not_loaded(bottom_up_pair, how: str) -> None:
    """verify fills the model with NaN first: a tensor detectron2 did not load stays NaN. Break tried:
    the NaN / missing test removed from check_bottom_up -> this test fails."""
    state, converted = bottom_up_pair
    if how == "nan":
        state = {**state, "res3.1.conv2.weight": torch.full_like(state["res3.1.conv2.weight"], float("nan"))}
    else:
        converted = {k: v for k, v in converted.items() if k != "res3.1.conv2.weight"}
    assert _check(state, converted) == ("w.pkl: detectron2 backbone check failed: 1 of 100 backbone.bottom_up tensors "
                                        "not loaded (e.g. res3.1.conv2.weight)")


@pytest.mark.parametrize("how", ["value", "shape"])
def test_check_bottom_up_names_a_tensor_that_differs_from_the_source(bottom_up_pair, how: str) -> None:
    state, converted = bottom_up_pair
    tensor = state["res4.0.shortcut.norm.running_var"]
    state = {**state, "res4.0.shortcut.norm.running_var": tensor + 1.0 if how == "value" else tensor[:-1]}
    assert _check(state, converted) == ("w.pkl: detectron2 backbone check failed: 1 differ from the source "
                                        "(e.g. res4.0.shortcut.norm.running_var)")


def test_check_bottom_up_names_a_converted_tensor_detectron2_did_not_use(bottom_up_pair) -> None:
    state, converted = bottom_up_pair
    converted = {**converted, "res6.0.conv1.weight": np.zeros(1, dtype=np.float32)}
    assert _check(state, converted) == ("w.pkl: detectron2 backbone check failed: 1 converted tensors unused by "
                                        "detectron2 (e.g. res6.0.conv1.weight)")
