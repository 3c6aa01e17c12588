"""detectron2 launcher: configs, SyncBN fallback, and a real smoke run ending in a result record."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from d2_support import needs_detectron2
from evaluate.report.records import read_records
from pretrain.identity import identity_of
from pretrain.provenance import file_sha256


REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "detectron2_configs"
SMOKE_R18 = CONFIGS / "mask_rcnn_R_18_FPN_smoke.yaml"


def _cfg(name: str, *opts: str):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(list(opts))
    return cfg


@needs_detectron2
@pytest.mark.parametrize("name", ["mask_rcnn_R_50_FPN_1x_ssl.yaml", "mask_rcnn_R_50_FPN_1x_supervised.yaml"])
def test_table3_configs_are_the_protocol(name: str) -> None:
    from evaluate.detection.launcher import protocol_deviations

    cfg = _cfg(name)
    assert protocol_deviations(cfg) == []
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    # Heads keep detectron2's defaults: SyncBN only in backbone and FPN.
    assert cfg.MODEL.ROI_BOX_HEAD.NORM == "" and cfg.MODEL.ROI_MASK_HEAD.NORM == ""
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80 and cfg.MODEL.MASK_ON


@needs_detectron2
def test_smoke_configs_list_their_deviations() -> None:
    from evaluate.detection.launcher import protocol_deviations

    deviations = protocol_deviations(_cfg("mask_rcnn_R_18_FPN_smoke.yaml"))
    assert "SOLVER.MAX_ITER=20 (protocol: 90000)" in deviations
    assert "MODEL.RESNETS.DEPTH=18 (protocol: 50)" in deviations
    assert not any(d.startswith("MODEL.RESNETS.STRIDE_IN_1X1") for d in deviations)


@needs_detectron2
@pytest.mark.parametrize("key,value,listed", [
    ("MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES=3 (protocol: 80)"),
    ("MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]", "MODEL.PIXEL_MEAN=[103.53, 116.28, 123.675] (protocol: "),
    ("MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]", "MODEL.PIXEL_STD=[1.0, 1.0, 1.0] (protocol: "),
    ("INPUT.MAX_SIZE_TRAIN", "1000", "INPUT.MAX_SIZE_TRAIN=1000 (protocol: 1333)"),
    ("INPUT.MAX_SIZE_TEST", "1000", "INPUT.MAX_SIZE_TEST=1000 (protocol: 1333)"),
    ("SOLVER.WEIGHT_DECAY", "0.0005", "SOLVER.WEIGHT_DECAY=0.0005 (protocol: 0.0001)"),
    ("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.ENABLED=True (protocol: False)"),
    ("DATASETS.TRAIN", "('coco_2017_val',)", "DATASETS.TRAIN=('coco_2017_val',) (protocol: ('coco_2017_train',))"),
])
def test_every_result_affecting_override_is_a_deviation(key: str, value: str, listed: str) -> None:
    """Fails on the pre-issue-8 code, where these overrides sat only in settings (or nowhere)."""
    from evaluate.detection.launcher import protocol_deviations

    deviations = protocol_deviations(_cfg("mask_rcnn_R_50_FPN_1x_ssl.yaml", key, value))
    assert len(deviations) == 1 and deviations[0].startswith(listed), deviations


@needs_detectron2
def test_settings_are_recorded_after_detectron2_auto_scaling(tmp_path: Path) -> None:
    """REFERENCE_WORLD_SIZE 8 on one process: detectron2 trains batch 2, lr 0.0025, 720k iterations. Fails on
    the pre-issue-8 code, which recorded and compared the unscaled 16 / 0.02 / 90k."""
    from evaluate.detection.launcher import DetectionRun, build_config

    weights = tmp_path / "w.pkl"
    weights.write_bytes(pickle.dumps({"model": {}}))   # read as data before detectron2 sees it: must be a pickle
    run = DetectionRun(config_file=CONFIGS / "mask_rcnn_R_50_FPN_1x_ssl.yaml", weights=weights, coco_root=tmp_path,
                       output_dir=tmp_path / "out", opts=["SOLVER.REFERENCE_WORLD_SIZE", "8"])
    with pytest.warns(UserWarning, match="SyncBN replaced by BN"):
        cfg, deviations, _ = build_config(run, {})
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (2, 0.0025, 720000)
    assert deviations[1].startswith("SOLVER.REFERENCE_WORLD_SIZE=8 (protocol: 0): detectron2 scaled")
    assert "SOLVER.IMS_PER_BATCH=2 (protocol: 16)" in deviations
    assert "SOLVER.MAX_ITER=720000 (protocol: 90000)" in deviations


def test_eval_only_names_the_iteration_it_evaluated() -> None:
    from evaluate.detection.launcher import eval_only_deviation

    assert eval_only_deviation({"iteration": 5}, "out/model_final.pth") == (
        "--eval-only: no training in this run; evaluated out/model_final.pth at iteration 6")
    assert "without training (detection heads untrained" in eval_only_deviation({}, "w.pkl")


@needs_detectron2
def test_syncbn_becomes_bn_only_for_one_process() -> None:
    from evaluate.detection.launcher import replace_syncbn_for_single_process

    cfg = _cfg("mask_rcnn_R_50_FPN_1x_ssl.yaml")
    assert not replace_syncbn_for_single_process(cfg, world_size=8)
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == ("SyncBN", "SyncBN")
    with pytest.warns(UserWarning, match="SyncBN replaced by BN"):
        assert replace_syncbn_for_single_process(cfg, world_size=1)
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == ("BN", "BN")
    assert cfg.MODEL.ROI_BOX_HEAD.NORM == ""


@needs_detectron2
def test_metrics_come_from_coco_evaluator_results() -> None:
    from evaluate.detection.launcher import DetectionError, detection_metrics

    results = {"bbox": {"AP": 40.1, "AP50": 60.2, "AP75": 43.3, "APs": 1.0},
               "segm": {"AP": 35.4, "AP50": 57.5, "AP75": 37.6}}
    assert detection_metrics(results) == {"AP_bbox": 40.1, "AP50_bbox": 60.2, "AP75_bbox": 43.3,
                                          "AP_segm": 35.4, "AP50_segm": 57.5, "AP75_segm": 37.6}
    with pytest.raises(DetectionError, match="no predictions"):
        detection_metrics({"bbox": dict(results["bbox"], AP=math.nan), "segm": results["segm"]})
    with pytest.raises(DetectionError, match="gave no segm AP"):
        detection_metrics({"bbox": results["bbox"]})


@pytest.fixture(scope="module")
def smoke_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic COCO set and a converted ResNet-18 saved as one of our pre-training checkpoints."""
    from evaluate.detection.convert import convert_checkpoint
    from evaluate.detection.synthetic_coco import generate_synthetic_coco

    root = tmp_path_factory.mktemp("smoke")
    generate_synthetic_coco(root / "coco", train=8, val=3, size=128, seed=0)
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None).state_dict()
    checkpoint = {"format": "snclr-bench/pretrain/v1", "epoch": 2,
                  "model": {f"backbone.{k}": v for k, v in backbone.items() if not k.startswith("fc.")},
                  "config": {"backbone": "resnet18", "epochs": 2, "method": "SNCLR"}}
    torch.save(checkpoint, root / "snclr_r18.pth")
    summary, _ = convert_checkpoint(root / "snclr_r18.pth", root / "snclr_r18.pkl")
    return {"root": root, "coco": root / "coco", "source": root / "snclr_r18.pth", "weights": summary.output_path}


def _run(smoke_inputs: dict[str, Path], out: str, **kwargs):
    from evaluate.detection.launcher import DetectionRun

    return DetectionRun(config_file=SMOKE_R18, weights=kwargs.pop("weights", smoke_inputs["weights"]),
                        coco_root=smoke_inputs["coco"], output_dir=smoke_inputs["root"] / out,
                        records=kwargs.pop("records", smoke_inputs["root"] / "records.jsonl"),
                        dataset="synthetic-coco", **kwargs)


@needs_detectron2
def test_smoke_run_trains_evaluates_and_writes_a_record(smoke_inputs: dict[str, Path]) -> None:
    from evaluate.detection.launcher import run_detection

    # SyncBN asked for on one process: the launcher must fall back to BN and say so in the record.
    run = _run(smoke_inputs, "run", opts=["MODEL.RESNETS.NORM", "SyncBN", "MODEL.FPN.NORM", "SyncBN",
                                          "SOLVER.MAX_ITER", "6"])
    with pytest.warns(UserWarning, match="SyncBN replaced by BN"):
        record = run_detection(run)
    assert record is not None
    assert (record.method, record.backbone, record.dataset, record.protocol) == (
        "SNCLR", "resnet18", "synthetic-coco", "detection")
    assert record.protocol_id == "mask-rcnn_R18-FPN_bn_b2-lr0.01-6it"
    assert set(record.metrics_final) == {"AP_bbox", "AP50_bbox", "AP75_bbox", "AP_segm", "AP50_segm", "AP75_segm"}
    assert all(0.0 <= value <= 100.0 for value in record.metrics_final.values())
    assert record.metrics_final["AP50_bbox"] >= record.metrics_final["AP_bbox"] - 1e-9
    assert record.pretrain_epochs == 2
    assert record.checkpoint_sha256 == file_sha256(smoke_inputs["source"])
    # The model it belongs to, carried from the source checkpoint through the converter's sidecar.
    source_config = {"backbone": "resnet18", "epochs": 2, "method": "SNCLR"}
    assert record.pretrain_config == source_config
    assert record.model_id == identity_of(source_config, record.checkpoint_sha256).model_id
    assert record.settings["syncbn_replaced_by_bn"] is True and record.settings["world_size"] == 1
    assert record.settings["weights_sha256"] == file_sha256(smoke_inputs["weights"])
    assert record.deviations[0].startswith("SyncBN replaced by BN in backbone and FPN: world size 1")
    assert "SOLVER.MAX_ITER=6 (protocol: 90000)" in record.deviations
    assert read_records(smoke_inputs["root"] / "records.jsonl")[-1] == record

    out = smoke_inputs["root"] / "run"
    assert "NORM: BN" in (out / "config.yaml").read_text()
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert max(iterations) == 5
    # Training changed the backbone it started from (the converted weights, checked at start-up).
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    from evaluate.detection.convert import read_detectron2_weights
    initial = read_detectron2_weights(smoke_inputs["weights"])
    assert not np.array_equal(np.asarray(final["backbone.bottom_up.res2.0.conv1.weight"]),
                              initial["res2.0.conv1.weight"])

    # Resuming a finished run trains no further and evaluates the same model to the same numbers.
    resumed = run_detection(_run(smoke_inputs, "run", resume=True, opts=["SOLVER.MAX_ITER", "6"]))
    assert resumed is not None and resumed.settings["resumed"] is True
    assert resumed.metrics_final == pytest.approx(record.metrics_final)
    assert not any(d.startswith("--eval-only") for d in resumed.deviations)
    assert resumed.pretrain_complete is True and resumed.provenance["libraries"]["detectron2"]

    # --eval-only evaluates the last checkpoint and says so, with its iteration (before issue 8: silent).
    evaluated = run_detection(_run(smoke_inputs, "run", resume=True, eval_only=True, opts=["SOLVER.MAX_ITER", "6"]))
    assert evaluated is not None and evaluated.metrics_final == pytest.approx(record.metrics_final)
    assert any(d.startswith("--eval-only: no training in this run; evaluated ") and d.endswith("at iteration 6")
               for d in evaluated.deviations), evaluated.deviations
    assert not evaluated.protocol_conformant


@needs_detectron2
def test_wrong_prefix_weights_are_refused_at_start(smoke_inputs: dict[str, Path]) -> None:
    import pickle

    from evaluate.detection.launcher import DetectionError, run_detection

    with open(smoke_inputs["weights"], "rb") as handle:
        payload = pickle.load(handle)
    payload["model"] = {f"encoder.{k}": v for k, v in payload["model"].items()}
    wrong = smoke_inputs["root"] / "wrong.pkl"
    wrong.write_bytes(pickle.dumps(payload))
    sidecar = json.loads(Path(str(smoke_inputs["weights"]) + ".json").read_text())
    Path(str(wrong) + ".json").write_text(json.dumps(sidecar))
    # A sidecar copied from other weights is refused: the record would name the wrong source.
    with pytest.raises(DetectionError, match="describes other weights than .*wrong.pkl"):
        run_detection(_run(smoke_inputs, "wrong", weights=wrong, records=None))
    # With a matching sidecar, detectron2 would start from a random backbone (it only logs the
    # unmatched names); the launcher's start-up check refuses.
    Path(str(wrong) + ".json").write_text(json.dumps(dict(sidecar, weights_sha256=file_sha256(wrong))))
    with pytest.raises(DetectionError, match="100 of 100 backbone.bottom_up tensors not loaded"):
        run_detection(_run(smoke_inputs, "wrong", weights=wrong, records=None))


@needs_detectron2
def test_bad_inputs_fail_with_one_line(smoke_inputs: dict[str, Path]) -> None:
    from evaluate.detection.launcher import DetectionError, run_detection

    with pytest.raises(DetectionError, match="NUM_CLASSES is 80 but .* has 3 categories"):
        run_detection(_run(smoke_inputs, "classes", opts=["MODEL.ROI_HEADS.NUM_CLASSES", "80"]))
    with pytest.raises(DetectionError, match=r"MODEL.RESNETS .* does not fit the resnet18 weights"):
        run_detection(_run(smoke_inputs, "depth", opts=["MODEL.RESNETS.DEPTH", "50",
                                                        "MODEL.RESNETS.RES2_OUT_CHANNELS", "256"]))
    if torch.cuda.device_count() < 2:  # DefaultTrainer's DDP needs one GPU per process
        with pytest.raises(DetectionError, match="--num-gpus 2 needs that many GPUs"):
            run_detection(_run(smoke_inputs, "two", num_gpus=2))
    cli = subprocess.run([sys.executable, "-m", "evaluate.detection.launcher", "--config-file", str(SMOKE_R18),
                          "--weights", str(smoke_inputs["weights"]), "--coco-root", str(smoke_inputs["root"] / "none"),
                          "--output-dir", str(smoke_inputs["root"] / "cli")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode != 0
    last = cli.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --coco-root") and "instances_train2017.json is missing" in last


@needs_detectron2
@pytest.mark.slow
def test_cli_runs_the_r50_smoke_config(smoke_inputs: dict[str, Path], tmp_path: Path) -> None:
    from evaluate.detection.convert import convert_checkpoint

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    convert_checkpoint(tmp_path / "r50.pth", tmp_path / "r50.pkl")
    cli = subprocess.run([sys.executable, "-m", "evaluate.detection.launcher",
                          "--config-file", str(CONFIGS / "mask_rcnn_R_50_FPN_smoke.yaml"),
                          "--weights", str(tmp_path / "r50.pkl"), "--coco-root", str(smoke_inputs["coco"]),
                          "--output-dir", str(tmp_path / "out"), "--records", str(tmp_path / "records.jsonl"),
                          "--dataset", "synthetic-coco", "--method", "supervised", "SOLVER.MAX_ITER", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.strip().splitlines()[-1].startswith("supervised resnet50 on synthetic-coco: AP_bbox ")
    (record,) = read_records(tmp_path / "records.jsonl")
    assert record.protocol_id == "mask-rcnn_R50-FPN_bn_b2-lr0.01-3it"
    assert record.checkpoint_sha256 == file_sha256(tmp_path / "r50.pth")


def test_missing_detectron2_is_one_line(tmp_path: Path) -> None:
    """Without detectron2 the launcher says so in one line (an import hook makes it unfindable)."""
    hide = ("import sys\n"
            "class NoDetectron2:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'detectron2':\n"
            "            raise ModuleNotFoundError(\"No module named 'detectron2'\")\n"
            "sys.meta_path.insert(0, NoDetectron2())\n"
            "sys.argv[0] = 'evaluate.detection.launcher'\n"
            "from evaluate.detection.launcher import main\n"
            "sys.exit(main())\n")
    cli = subprocess.run([sys.executable, "-c", hide, "--config-file", str(SMOKE_R18), "--weights", "w.pkl",
                          "--coco-root", str(tmp_path), "--output-dir", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0
    (line,) = cli.stderr.strip().splitlines()
    assert line == ("error: detectron2 is not importable (No module named 'detectron2'); install it with "
                    "`bash scripts/install_detectron2.sh .venv/bin/python` (CPU machines) or from source on a "
                    "GPU cluster, see docs/detection.md")


@needs_detectron2
@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_weights_that_run_code_are_refused_before_detectron2_reads_them(
        smoke_inputs: dict[str, Path], tmp_path: Path, hidden: bool, suffix: str) -> None:
    """detectron2's checkpointer unpickles a .pkl in full. Break tried: check_weights_are_data removed
    from build_config -> detectron2 loads the .pkl and the marker appears (the .pth is refused by
    torch's own default, with no word of --trust-checkpoint)."""
    from evaluate.detection.convert import read_detectron2_weights
    from evaluate.detection.launcher import DetectionError, run_detection
    from untrusted_pickles import OFFENDING, WritesMarker, hidden_in, save_pickle, save_torch

    marker = tmp_path / "ran"
    real = {"model": read_detectron2_weights(smoke_inputs["weights"]), "__author__": "x", "matching_heuristics": True}
    payload = hidden_in(real, marker) if hidden else WritesMarker(marker)
    weights = (save_pickle if suffix == ".pkl" else save_torch)(tmp_path / f"w{suffix}", payload)
    with pytest.raises(DetectionError, match=f"^--weights .*{OFFENDING}.*--trust-checkpoint"):
        run_detection(_run(smoke_inputs, "evil", weights=weights, records=None, opts=["SOLVER.MAX_ITER", "1"]))
    assert not marker.exists()


@needs_detectron2
def test_config_file_cannot_run_code(smoke_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Break tried: merge_from_file with detectron2's default allow_unsafe=True -> the YAML tag runs and
    the marker appears."""
    from evaluate.detection.launcher import DetectionError, run_detection

    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f'_BASE_: "{SMOKE_R18}"\n'
                      f"SEED: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w')\"]\n")
    run = _run(smoke_inputs, "evil_cfg", records=None)
    with pytest.raises(DetectionError, match="evil.yaml"):
        run_detection(dataclasses.replace(run, config_file=config))
    assert not marker.exists()


# --- annotation files and record files that cannot give a result (issue 16 section 2) ------------

def _coco_copy(smoke_inputs: dict[str, Path], tmp_path: Path, split: str, text: str | None) -> Path:
    """A copy of the synthetic COCO set whose ``split`` annotation file is replaced: by ``text``, or
    (None) by the same file with its annotations removed."""
    import shutil
    coco = tmp_path / "coco"
    shutil.copytree(smoke_inputs["coco"], coco)
    path = coco / "annotations" / f"instances_{split}2017.json"
    if text is None:
        data = json.loads(path.read_text())
        data["annotations"] = []
        text = json.dumps(data)
    path.write_text(text)
    return coco


@needs_detectron2
@pytest.mark.parametrize("split, text, message", [
    ("train", None, "holds no annotations (8 images); nothing to train on"),
    ("val", None, "holds no annotations (3 images); nothing to evaluate against"),
    ("val", "", "empty file (0 bytes); expected COCO instances JSON for val"),
    ("val", "[1, 2]", "expected a COCO instances object with 'images', 'annotations' and 'categories' lists"),
])
def test_annotation_files_that_cannot_give_a_result_are_refused_before_training(
        smoke_inputs: dict[str, Path], tmp_path: Path, split: str, text: str | None, message: str) -> None:
    """Fails on the issue-16 code: a detectron2 traceback after training (zero train annotations), or
    NaN APs blamed on "the model made no predictions" (a validation file without annotations)."""
    from evaluate.detection.launcher import DetectionError, run_detection

    coco = _coco_copy(smoke_inputs, tmp_path, split, text)
    run = dataclasses.replace(_run(smoke_inputs, "x"), coco_root=coco, output_dir=tmp_path / "out",
                              records=tmp_path / "records.jsonl")
    with pytest.raises(DetectionError) as error:
        run_detection(run)
    assert str(error.value) == f"{coco / 'annotations' / f'instances_{split}2017.json'}: {message}"
    assert not (tmp_path / "out" / "model_final.pth").exists() and not (tmp_path / "records.jsonl").exists()


@needs_detectron2
def test_records_file_and_weights_path_are_checked_before_training(smoke_inputs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """Fails on the issue-16 code: a records file whose last line lacks its newline was found only after
    the run (the record glued onto the fragment); a directory given as --weights was "does not exist"."""
    from evaluate.detection.launcher import DetectionError, run_detection

    records = tmp_path / "records.jsonl"
    records.write_text('{"method": "SN')
    with pytest.raises(DetectionError, match="--records .*records.jsonl: its last line has no newline"):
        run_detection(_run(smoke_inputs, "y", records=records))
    assert not (smoke_inputs["root"] / "y").exists()
    with pytest.raises(DetectionError, match=f"--weights {tmp_path} is a directory, expected a file"):
        run_detection(_run(smoke_inputs, "z", weights=tmp_path))


def _evil_pickle(path: Path, marker: Path) -> Path:
    from untrusted_pickles import WritesMarker, save_pickle

    return save_pickle(path, WritesMarker(marker))


@needs_detectron2
@pytest.mark.timeout(300)
@pytest.mark.parametrize("where,eval_only", [("config", False), ("base", False), ("override", False),
                                             ("config", True)])
def test_config_keys_that_load_proposal_files_are_refused_before_anything_runs(
        smoke_inputs: dict[str, Path], tmp_path: Path, where: str, eval_only: bool) -> None:
    """A plain YAML (no python tag) with MODEL.LOAD_PROPOSALS made detectron2 pickle.load the proposal file,
    from a _BASE_ file too and under --eval-only (PROPOSAL_FILES_TEST): before issue 15 the marker appeared."""
    from evaluate.detection.launcher import DetectionError, run_detection

    marker = tmp_path / "ran"
    proposals = _evil_pickle(tmp_path / "proposals.pkl", marker)
    key = "PROPOSAL_FILES_TEST" if eval_only else "PROPOSAL_FILES_TRAIN"
    keys = f'MODEL:\n  LOAD_PROPOSALS: True\nDATASETS:\n  {key}: ("{proposals}",)\n'
    opts = ["SOLVER.MAX_ITER", "1"]
    if where == "base":
        (tmp_path / "base.yaml").write_text(f'_BASE_: "{SMOKE_R18}"\n{keys}')
        config = tmp_path / "config.yaml"
        config.write_text('_BASE_: "base.yaml"\n')
    elif where == "config":
        config = tmp_path / "config.yaml"
        config.write_text(f'_BASE_: "{SMOKE_R18}"\n{keys}')
    else:
        config = SMOKE_R18
        opts += ["MODEL.LOAD_PROPOSALS", "True", f"DATASETS.{key}", f'("{proposals}",)']
    run = dataclasses.replace(_run(smoke_inputs, f"proposals_{where}", records=None, opts=opts,
                                   eval_only=eval_only), config_file=config)
    with pytest.raises(DetectionError, match=r"MODEL.LOAD_PROPOSALS=True, DATASETS.PROPOSAL_FILES_.*would unpickle"):
        run_detection(run)
    assert not marker.exists()
    assert not (smoke_inputs["root"] / f"proposals_{where}" / "config.yaml").exists()   # refused before any work


@needs_detectron2
@pytest.mark.timeout(300)
@pytest.mark.parametrize("named,eval_only", [("elsewhere", False), ("in_output_dir", True), ("pth", False)])
def test_resume_reads_the_last_checkpoint_as_data(smoke_inputs: dict[str, Path], tmp_path: Path, named: str,
                                                  eval_only: bool) -> None:
    """--resume (and --resume --eval-only) used to fully unpickle whatever OUTPUT_DIR/last_checkpoint named,
    any path. Now the name must be a file in OUTPUT_DIR, and that file is read as data only."""
    from evaluate.detection.launcher import DetectionError, run_detection
    from untrusted_pickles import WritesMarker, save_torch

    marker = tmp_path / "ran"
    out = tmp_path / "out"
    out.mkdir()
    if named == "elsewhere":
        _evil_pickle(tmp_path / "evil.pkl", marker)
        (out / "last_checkpoint").write_text(str(tmp_path / "evil.pkl"))
        refusal = "names .*evil.pkl', not a file name in"
    elif named == "in_output_dir":
        _evil_pickle(out / "model_0000009.pkl", marker)
        (out / "last_checkpoint").write_text("model_0000009.pkl")
        refusal = r"^--resume .*model_0000009.pkl: refused to load: it pickles [\w.]*\bexec\b"
    else:
        save_torch(out / "model_0000009.pth", {"model": {}, "iteration": 9, "extra": WritesMarker(marker)})
        (out / "last_checkpoint").write_text("model_0000009.pth")
        refusal = r"^--resume .*model_0000009.pth: refused to load: it pickles [\w.]*\bexec\b"
    run = dataclasses.replace(_run(smoke_inputs, "unused", records=None, resume=True, eval_only=eval_only,
                                   opts=["SOLVER.MAX_ITER", "1"]), output_dir=out)
    with pytest.raises(DetectionError, match=refusal):
        run_detection(run)
    assert not marker.exists()


@needs_detectron2
@pytest.mark.timeout(300)
@pytest.mark.parametrize("weights", ["w.pkl?v=2", "http://example.invalid/w.pkl", "detectron2://ImageNetPretrained/w.pkl"])
def test_weights_must_be_a_local_path(smoke_inputs: dict[str, Path], tmp_path: Path, weights: str) -> None:
    """`--weights 'w.pkl?v=2'` checked the torch file literally so named; detectron2 stripped the query and
    unpickled the sibling w.pkl (code ran, the run exited 0 with the wrong sha256 in its record)."""
    marker = tmp_path / "ran"
    _evil_pickle(tmp_path / "w.pkl", marker)
    shutil.copy(smoke_inputs["source"], tmp_path / "w.pkl?v=2")   # a clean torch file, as the check saw it
    cli = subprocess.run([sys.executable, "-m", "evaluate.detection.launcher", "--config-file", str(SMOKE_R18),
                          "--weights", weights, "--coco-root", str(smoke_inputs["coco"]), "--output-dir",
                          str(tmp_path / "out"), "--dataset", "synthetic-coco", "--method", "x", "--eval-only",
                          "MODEL.DEVICE", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=280,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cli.returncode != 0 and not marker.exists()
    (line,) = cli.stderr.strip().splitlines()
    assert line == (f"error: --weights {weights}: expected a local file path, not a URL or a path with a query "
                    "('?'); download or rename the file first")


@needs_detectron2
@pytest.mark.timeout(300)
def test_pth_weights_holding_a_numpy_scalar_load(smoke_inputs: dict[str, Path], tmp_path: Path) -> None:
    """A .pth passing our check (an allow-listed numpy scalar beside the tensors) then failed in fvcore's own
    torch.load with a traceback, --trust-checkpoint or not. detectron2 now gets what we read."""
    from evaluate.detection.convert import read_detectron2_weights
    from evaluate.detection.launcher import run_detection

    model = {k: torch.from_numpy(v) for k, v in read_detectron2_weights(smoke_inputs["weights"]).items()}
    torch.save({"model": model, "matching_heuristics": True, "metric": np.float64(72.5)}, tmp_path / "w.pth")
    record = run_detection(_run(smoke_inputs, "pth", weights=tmp_path / "w.pth", records=None, eval_only=True,
                                method="supervised"))
    assert record is not None and record.settings["weights_sha256"] == file_sha256(tmp_path / "w.pth")
    assert any(d.startswith(f"--eval-only: evaluated {tmp_path / 'w.pth'} without training") for d in record.deviations)


@needs_detectron2
@pytest.mark.timeout(300)
def test_trusted_pkl_is_unpickled_once(smoke_inputs: dict[str, Path], tmp_path: Path) -> None:
    """With --trust-checkpoint a .pkl was unpickled in full by our check, then again by detectron2 (and a
    third time by the start-up backbone check): each a chance for its code to run."""
    from evaluate.detection.convert import read_detectron2_weights
    from evaluate.detection.launcher import run_detection
    from untrusted_pickles import CountsUnpickles, save_pickle

    marker = tmp_path / "count"
    payload = {"model": read_detectron2_weights(smoke_inputs["weights"]), "__author__": "x",
               "matching_heuristics": True, "extra": CountsUnpickles(marker)}
    weights = save_pickle(tmp_path / "w.pkl", payload)
    record = run_detection(_run(smoke_inputs, "trusted", weights=weights, records=None, eval_only=True,
                                method="supervised", trust_checkpoint=True))
    assert record is not None
    assert marker.read_text().splitlines() == ["unpickled"]


@needs_detectron2
def test_detectron2_gets_the_bytes_that_were_hashed(smoke_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Swapping the file between our check and detectron2's own read ran code. detectron2 now reads no file:
    after the read, the file on disk can be anything, and a name other than the one read is refused."""
    from detectron2.modeling import build_model

    from evaluate.detection.launcher import (DetectionError, _data_only_checkpointer_class, build_config, load_start,
                                             read_start_checkpoint)
    from untrusted_pickles import WritesMarker, save_pickle

    weights = tmp_path / "w.pkl"
    shutil.copy(smoke_inputs["weights"], weights)
    start = read_start_checkpoint(weights, trust=False)
    assert start.sha256 == file_sha256(smoke_inputs["weights"])
    marker = tmp_path / "ran"
    save_pickle(weights, WritesMarker(marker))   # swapped after the check
    cfg, _, _ = build_config(_run(smoke_inputs, "swap", weights=weights, opts=["MODEL.RESNETS.NORM", "BN",
                                                                               "MODEL.FPN.NORM", "BN"]), {})
    model = build_model(cfg)
    checkpointer = _data_only_checkpointer_class()(model)
    load_start(checkpointer, start)
    assert not marker.exists()
    loaded = model.backbone.bottom_up.state_dict()["res2.0.conv1.weight"].numpy()
    assert np.array_equal(loaded, start.payload["model"]["res2.0.conv1.weight"])
    with pytest.raises(DetectionError, match="did not read as data"):
        checkpointer.load(str(smoke_inputs["weights"]))


@needs_detectron2
@pytest.mark.timeout(300)
def test_a_pointer_dtype_in_the_weights_is_one_line_not_a_crash(smoke_inputs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """Before issue 15: SIGSEGV (exit 139, no output) through `detection --weights`."""
    from untrusted_pickles import pointer_dtype_pickle

    weights = pointer_dtype_pickle(tmp_path / "w.pkl")
    cli = subprocess.run([sys.executable, "-m", "evaluate.detection.launcher", "--config-file", str(SMOKE_R18),
                          "--weights", str(weights), "--coco-root", str(smoke_inputs["coco"]), "--output-dir",
                          str(tmp_path / "out"), "--dataset", "synthetic-coco", "--method", "x", "--eval-only"],
                         cwd=REPO, capture_output=True, text=True, timeout=280)
    assert cli.returncode == 2, (cli.returncode, cli.stderr[-1000:])
    (last,) = cli.stderr.strip().splitlines()
    assert last.startswith(f"error: --weights {weights}: refused to load: numpy dtype 'V8'"), last


@needs_detectron2
def test_several_processes_check_the_weights_once_before_starting(smoke_inputs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """With --num-gpus 2 the weights are read before any process starts, so a bad file is one line (and
    code in it never runs). Break tried: the read in run_detection removed -> the GPU-count message
    (or, on a 2-GPU machine, one traceback per process)."""
    from evaluate.detection.launcher import DetectionError, run_detection
    from untrusted_pickles import OFFENDING, WritesMarker, save_pickle

    marker = tmp_path / "ran"
    weights = save_pickle(tmp_path / "w.pkl", WritesMarker(marker))
    with pytest.raises(DetectionError, match=f"^--weights .*{OFFENDING}"):
        run_detection(_run(smoke_inputs, "two-evil", weights=weights, records=None, num_gpus=2))
    assert not marker.exists()
    with pytest.raises(DetectionError, match="^--weights .*missing.pkl"):
        run_detection(_run(smoke_inputs, "two-missing", weights=tmp_path / "missing.pkl", records=None,
                           num_gpus=2))


@needs_detectron2
def test_weights_rewritten_after_the_launcher_read_them_are_refused(smoke_inputs: dict[str, Path]) -> None:
    """Each process re-reads --weights and must find the bytes the launcher hashed. Break tried: the
    comparison in read_weights removed -> the run trains on bytes the record does not name."""
    from evaluate.detection.launcher import DetectionError, read_weights, run_detection

    run = _run(smoke_inputs, "rewritten", records=None)
    assert read_weights(dataclasses.replace(run, weights_sha256=file_sha256(smoke_inputs["weights"]))).sha256 \
        == file_sha256(smoke_inputs["weights"])
    with pytest.raises(DetectionError, match=r"changed after the launcher read it \(sha256 000000000000 then "):
        run_detection(dataclasses.replace(run, weights_sha256="0" * 64))
    assert not (smoke_inputs["root"] / "rewritten").exists()


def test_processes_that_loaded_different_bytes_are_named() -> None:
    """On several machines each reads its own copy; rank 0's hash alone would go in the record.
    Break tried: only --weights compared -> different resumed checkpoints pass."""
    from evaluate.detection.launcher import DetectionError, check_same_start_everywhere

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    check_same_start_everywhere([(a, a), (a, a), (a, a)], Path("w.pkl"))
    with pytest.raises(DetectionError, match=r"^--weights \(w.pkl\) differs between processes: ranks \[0, 2\] read "
                                             r"sha256 aaaaaaaaaaaa; ranks \[1\] read sha256 bbbbbbbbbbbb"):
        check_same_start_everywhere([(a, c), (b, c), (a, c)], Path("w.pkl"))
    with pytest.raises(DetectionError, match=r"^the checkpoint resumed from .* ranks \[1\] read sha256 cccccccccccc"):
        check_same_start_everywhere([(a, b), (a, c)], Path("w.pkl"))
