"""The error contract, end to end: every entry point, run as a user runs it, with bad input.

Each row is one real CLI call (``python -m MODULE ARGS`` in a fresh working folder) that must end
with exactly one line on stderr, starting ``error:`` and naming what was wrong, a non-zero exit
status, and no file created, changed or removed, in its folder or among the shared inputs. The
rows cover every ``python -m evaluate`` subcommand, ``python -m pretrain`` and
``python -m pretrain.submit``: the cases of issue 16 and, per command, a missing file, a folder
where a file is expected and a bad flag value. Every row fails before any real work, so the test
costs one interpreter start-up per row (~2-3 s of CPU each).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import write_image_tree
from d2_support import detectron2_status

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    module: str
    args: tuple[str, ...]          # "{d}": the row's own folder, "{fx}": the shared inputs
    expect: str                    # a fragment the error line must contain
    setup: Callable[[Path], None] | None = None
    detectron2: bool = False


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def _records_without_final_newline(d: Path) -> None:
    (d / "results.jsonl").write_text('{"method": "SNCLR"}\n{"method": "SNC', encoding="utf-8")


EVAL = ("--dataset", "imagefolder", "--data-dir", "{fx}/tree", "--out-dir", "{d}/run", "--num-workers", "0",
        "--no-tensorboard")
RANDOM18 = ("--checkpoint", "random", "--arch", "resnet18")
DETECT = ("--coco-root", "{fx}/coco", "--output-dir", "{d}/out")
SMOKE = str(REPO / "detectron2_configs" / "mask_rcnn_R_18_FPN_smoke.yaml")
CPU = ("--recipe", "fmnist_resnet18_cpu")
# A run that would train a few seconds, should a refusal ever go missing.
TINY = (*CPU, "--dataset", "imagefolder", "--data-dir", "{fx}/tree", "--batch-size", "4", "--train-limit", "none",
        "--epochs", "1", "--max-steps-per-epoch", "1", "--workers", "0")
STUDY_RECORDS = str(REPO / "results" / "studies" / "fmnist_table4" / "records")

CASES = [
    # python -m pretrain
    Case("pretrain-yaml-syntax", "pretrain", ("--recipe", "{d}/bad.yaml"), "bad.yaml:2:4: not valid YAML",
         _write("bad.yaml", b"epochs: [1\n  x: )\n")),
    Case("pretrain-base-is-itself", "pretrain", ("--recipe", "{d}/self.yaml"), "makes a loop",
         _write("self.yaml", b"base: self.yaml\n")),
    Case("pretrain-recipe-is-a-folder", "pretrain", ("--recipe", "{fx}/tree"), "is a folder"),
    Case("pretrain-recipe-missing", "pretrain", ("--recipe", "nope"), "unknown recipe 'nope'"),
    Case("pretrain-flag-type", "pretrain", (*CPU, "--epochs", "two"), "--epochs: invalid int value"),
    Case("pretrain-unknown-flag", "pretrain", (*CPU, "--epochz", "2"), "unrecognized arguments: --epochz"),
    Case("pretrain-k-too-large", "pretrain", (*CPU, "--k", "65", "--candidate-set-size", "64"), "k=65"),
    Case("pretrain-workers-negative", "pretrain", (*CPU, "--workers", "-1"), "workers=-1"),
    Case("pretrain-data-dir-missing", "pretrain",
         (*TINY, "--data-dir", "{d}/none", "--output-dir", "{d}/out"), "does not exist"),
    Case("pretrain-output-dir-under-a-file", "pretrain",
         (*TINY, "--output-dir", "{fx}/empty.pth/out"), "empty.pth/out"),
    Case("pretrain-resume-0-byte", "pretrain",
         (*TINY, "--output-dir", "{d}/out", "--resume", "{fx}/empty.pth"), "empty.pth"),
    # python -m pretrain.submit
    Case("submit-nodes-0", "pretrain.submit", (*CPU, "--cluster", "local", "--nodes", "0"), "--nodes 0"),
    Case("submit-flag-type", "pretrain.submit", (*CPU, "--cluster", "local", "--time", "soon"),
         "--time: invalid int value"),
    Case("submit-yaml-syntax", "pretrain.submit", ("--recipe", "{d}/bad.yaml", "--cluster", "local"),
         "bad.yaml:2:1: not valid YAML", _write("bad.yaml", b"epochs: [\n")),
    # python -m evaluate
    Case("evaluate-unknown-subcommand", "evaluate", ("lineer",), "unknown subcommand 'lineer'"),
    Case("linear-checkpoint-missing", "evaluate", ("linear", "--checkpoint", "{d}/none.pth", *EVAL), "none.pth"),
    Case("linear-flag-choice", "evaluate", ("linear", *RANDOM18, *EVAL, "--device", "tpu"), "--device"),
    Case("linear-fast-random-without-arch", "evaluate", ("linear-fast", "--checkpoint", "random", *EVAL), "--arch"),
    Case("knn-checkpoint-is-a-folder", "evaluate", ("knn", "--checkpoint", "{fx}/tree", *EVAL), "is a directory, expected a file"),
    Case("knn-k-type", "evaluate", ("knn", *RANDOM18, *EVAL, "--k", "many"), "--k: invalid int value"),
    Case("knn-num-workers-negative", "evaluate", ("knn", *RANDOM18, "--dataset", "imagefolder", "--data-dir",
                                                   "{fx}/tree", "--out-dir", "{d}/run", "--num-workers", "-1"),
         "--num-workers"),
    Case("knn-test-chunk-0", "evaluate", ("knn", *RANDOM18, *EVAL, "--test-chunk", "0"), "--test-chunk"),
    Case("knn-records-without-final-newline", "evaluate",
         ("knn", *RANDOM18, *EVAL, "--records", "{d}/results.jsonl"), "results.jsonl",
         _records_without_final_newline),
    Case("semisup-percent-choice", "evaluate", ("semisup", *RANDOM18, *EVAL, "--percent", "5"), "--percent"),
    Case("convert-input-missing", "evaluate", ("convert", "{d}/none.pth", "{d}/out.pkl"), "none.pth"),
    Case("convert-input-is-a-folder", "evaluate", ("convert", "{fx}/tree", "{d}/out.pkl"), "is a directory, expected a file"),
    Case("convert-verify-config-missing", "evaluate",
         ("convert", "{fx}/unknown_key.pth", "{d}/out.pkl", "--verify", "--config-file", "{d}/none.yaml"),
         "--config-file", detectron2=True),
    Case("detection-without-method", "evaluate",
         ("detection", "--config-file", SMOKE, "--weights", "{fx}/w.pkl", *DETECT), "pass --method",
         detectron2=True),
    Case("detection-base-loop", "evaluate",
         ("detection", "--config-file", "{d}/a.yaml", "--weights", "{fx}/w.pkl", *DETECT, "--method", "x"),
         "_BASE_ makes a loop", _write("a.yaml", b'_BASE_: "a.yaml"\n'), detectron2=True),
    Case("detection-base-url", "evaluate",
         ("detection", "--config-file", "{d}/a.yaml", "--weights", "{fx}/w.pkl", *DETECT, "--method", "x"),
         "expected a local YAML file, not a URL", _write("a.yaml", b'_BASE_: "https://example.invalid/b.yaml"\n'),
         detectron2=True),
    Case("detection-config-missing", "evaluate",
         ("detection", "--config-file", "{d}/none.yaml", "--weights", "{fx}/w.pkl", *DETECT), "none.yaml",
         detectron2=True),
    Case("detection-weights-is-a-folder", "evaluate",
         ("detection", "--config-file", SMOKE, "--weights", "{fx}/tree", *DETECT), "is a directory, expected a file", detectron2=True),
    Case("detection-num-gpus-0", "evaluate",
         ("detection", "--config-file", SMOKE, "--weights", "{fx}/w.pkl", *DETECT, "--num-gpus", "0"),
         "--num-gpus", detectron2=True),
    Case("detection-no-train-annotations", "evaluate",
         ("detection", "--config-file", SMOKE, "--weights", "{fx}/w.pkl", "--coco-root", "{fx}/coco_empty",
          "--output-dir", "{d}/out", "--method", "x", "MODEL.DEVICE", "cpu"), "annotations",
         detectron2=True),
    Case("synthetic-coco-size", "evaluate", ("synthetic-coco", "{d}/coco", "--size", "4"), "--size"),
    Case("synthetic-coco-out-under-a-file", "evaluate", ("synthetic-coco", "{fx}/empty.pth/coco"), "empty.pth"),
    Case("tables-out-under-a-file", "evaluate", ("tables", STUDY_RECORDS, "--out", "{fx}/empty.pth/tables"),
         "empty.pth"),
    Case("tables-records-missing", "evaluate", ("tables", "{d}/none"), "none"),
    Case("tables-records-not-utf8", "evaluate", ("tables", "{d}"), "results.jsonl",
         _write("results.jsonl", b'{"method": "\xff"}\n')),
    Case("neighbors-queries-0", "evaluate", ("neighbors", "{fx}/unknown_key.pth", "{d}/g.png", "--queries", "0"),
         "--queries 0"),
    Case("neighbors-config-unknown-key", "evaluate", ("neighbors", "{fx}/unknown_key.pth", "{d}/g.png"),
         "bogus_key"),
    Case("neighbors-output-unwritable", "evaluate", ("neighbors", "{fx}/unknown_key.pth", "{fx}/empty.pth/g.png",
                                                     "--queries", "0"), "--queries"),
    Case("neighbors-checkpoint-0-byte", "evaluate", ("neighbors", "{fx}/empty.pth", "{d}/g.png"), "empty.pth"),
    Case("neighbors-checkpoint-is-a-folder", "evaluate", ("neighbors", "{fx}/tree", "{d}/g.png"), "is a directory, expected a file"),
    Case("demo-flag", "evaluate", ("demo", "--quick", "--out", "{d}/demo", "--bogus"), "--bogus"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Shared, read-only inputs: a tiny image tree, a 0-byte file, a checkpoint whose config has a key
    this code does not know, detectron2 weights without a sidecar, a COCO set and one whose training
    split has no annotation."""
    from evaluate.detection.synthetic_coco import generate_synthetic_coco
    from pretrain.checkpoint import FORMAT
    from pretrain.config import PretrainConfig

    root = tmp_path_factory.mktemp("inputs")
    write_image_tree(root / "tree", classes=("a", "b"), per_class=4, size=16)
    (root / "empty.pth").write_bytes(b"")
    config = {**PretrainConfig().to_dict(), "bogus_key": 1}
    torch.save({"format": FORMAT, "model": {}, "optimizer": {}, "epoch": 1, "config": config},
               root / "unknown_key.pth")
    (root / "w.pkl").write_bytes(pickle.dumps({"model": {}}))
    generate_synthetic_coco(root / "coco", train=2, val=1, size=64, seed=0)
    generate_synthetic_coco(root / "coco_empty", train=2, val=1, size=64, seed=0)
    train_json = root / "coco_empty" / "annotations" / "instances_train2017.json"
    train_json.write_text(json.dumps({**json.loads(train_json.read_text()), "annotations": []}))
    return root


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for folder in folders for path in sorted(folder.rglob("*"))}


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_gives_one_line_a_non_zero_exit_and_no_files(case: Case, inputs: Path, tmp_path: Path) -> None:
    if case.detectron2 and detectron2_status()[0] == "missing":
        pytest.skip(detectron2_status()[1])
    if case.setup:
        case.setup(tmp_path)
    before = _snapshot(tmp_path, inputs)
    args = [arg.format(d=tmp_path, fx=inputs) for arg in case.args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCH_HOME": str(tmp_path / ".torch")}
    result = subprocess.run([sys.executable, "-m", case.module, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert case.expect in lines[0], lines[0]
    assert _snapshot(tmp_path, inputs) == before, "files were created, changed or removed"
