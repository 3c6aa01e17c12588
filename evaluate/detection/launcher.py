"""Mask R-CNN transfer through detectron2 (paper Table 3), ending in one result record per run.

Usage (one machine, 8 GPUs; the Table 3 run):

    python -m evaluate.detection.convert snclr_r50.pth out/snclr_r50.pkl --verify
    python -m evaluate.detection.launcher --config-file detectron2_configs/mask_rcnn_R_50_FPN_1x_ssl.yaml \\
        --weights out/snclr_r50.pkl --coco-root /data/coco --output-dir out/det/snclr_r50 \\
        --records results/records.jsonl --num-gpus 8

This wraps detectron2's ``DefaultTrainer`` and ``launch`` (as its tools/train_net.py does) and adds
what the SSL-transfer protocol needs on top:

- COCO is registered from ``--coco-root`` in the standard 2017 layout under the dataset names the
  config uses, so no DETECTRON2_DATASETS variable or symlink is needed;
- SyncBN needs several processes: with a world size of 1 the launcher switches backbone and FPN to
  plain BN, warns, and writes the switch into the record's ``deviations``;
- every setting that differs from the Table 3 recipe (MoCo / mmselfsup ``coco_R_50_FPN_1x``) is listed
  in ``deviations``, so a smoke or short run can never pass for a protocol result. Settings are
  compared and recorded *after* detectron2's ``REFERENCE_WORLD_SIZE`` auto-scaling, i.e. as trained,
  and ``--eval-only`` is a deviation naming the iteration evaluated;
- evaluation runs once, after training (and after precise BN), with COCOEvaluator using the
  official pycocotools COCOeval; AP, AP50, AP75 for bbox and segm go into the record.

Trust boundary: detectron2's checkpointer ``pickle.load``s any ``.pkl`` it is given. Here it reads no
file at all: ``--weights`` (or, with ``--resume``, the checkpoint ``OUTPUT_DIR/last_checkpoint`` names)
is read once through ``pretrain.safe_load``, its sha256 taken from those bytes, and detectron2 gets the
objects (:class:`StartCheckpoint`, ``DataOnlyCheckpointer``). Config keys that would make detectron2
unpickle further files (precomputed proposals) are refused before anything runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from evaluate.detection.convert import (DETECTRON2_RESNETS, SIDECAR_FORMAT, ConversionError, check_bottom_up,
                                        sidecar_path_for)
from evaluate.detection.d2_compat import import_detectron2
from evaluate.report.records import RecordError, ResultRecord, check_appendable, run_provenance, write_record
from pretrain.fileio import atomic_write_text, file_problem
from pretrain.safe_load import TRUST_FLAG, UntrustedFileError, printable, read_weight_file
from evaluate.errors import DetectionError
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)

DATASETS = ("coco-2017", "synthetic-coco")
# Result-record metric name -> (COCOEvaluator task, its metric name). Values are percentages.
METRICS = {"AP_bbox": ("bbox", "AP"), "AP50_bbox": ("bbox", "AP50"), "AP75_bbox": ("bbox", "AP75"),
           "AP_segm": ("segm", "AP"), "AP50_segm": ("segm", "AP50"), "AP75_segm": ("segm", "AP75")}
# The Table 3 recipe (detectron2_configs/mask_rcnn_R_50_FPN_1x_ssl.yaml); a run that differs in any
# of these records the difference as a deviation.
PROTOCOL = {
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.FPN.NORM": "SyncBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.MASK_ON": True,
    "INPUT.FORMAT": "RGB",
    "INPUT.MIN_SIZE_TRAIN": (640, 672, 704, 736, 768, 800),
    "INPUT.MIN_SIZE_TEST": 800,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.MAX_ITER": 90000,
    "TEST.PRECISE_BN.ENABLED": True,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    # torchvision's ImageNet mean / std x 255 in RGB: what every SSL pre-training fed the backbone.
    "MODEL.PIXEL_MEAN": (123.675, 116.28, 103.53),
    "MODEL.PIXEL_STD": (58.395, 57.12, 57.375),
    # detectron2 defaults, kept by mask_rcnn_R_50_FPN_1x.yaml.
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MAX_SIZE_TEST": 1333,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.AMP.ENABLED": False,
    "DATASETS.TRAIN": ("coco_2017_train",),
    "DATASETS.TEST": ("coco_2017_val",),
}
# A scheme ("http://", "detectron2://", also as Path writes it, "http:/") or a query ("?v=2"): detectron2
# would fetch the URL, or strip the query and read another file than the one named.
_NOT_A_LOCAL_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/|\?")
_SPLITS = {"train": ("annotations/instances_train2017.json", "train2017"),
           "val": ("annotations/instances_val2017.json", "val2017")}


@dataclasses.dataclass
class DetectionRun:
    """Everything one run needs; picklable, so detectron2's launch can hand it to each process."""
    config_file: Path
    weights: Path
    coco_root: Path
    output_dir: Path
    records: Path | None = None
    dataset: str = "coco-2017"
    method: str | None = None
    opts: list[str] = dataclasses.field(default_factory=list)
    resume: bool = False
    eval_only: bool = False
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    seed: int = 0
    argv: list[str] = dataclasses.field(default_factory=list)  # the command line, for the record's provenance
    trust_checkpoint: bool = False
    # Set by run_detection before it starts several processes: the sha256 of the --weights bytes it read.
    # Each process reads the file again and must find these bytes (read_weights).
    weights_sha256: str | None = None

    @property
    def world_size(self) -> int:
        return self.num_gpus * self.num_machines


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)
    return a == b


def protocol_deviations(cfg: Any) -> list[str]:
    """Every Table 3 recipe setting that ``cfg`` changes, as "KEY=value (protocol: value)"."""
    return [f"{key}={_get(cfg, key)!r} (protocol: {expected!r})" for key, expected in PROTOCOL.items()
            if not _same(_get(cfg, key), expected)]


def auto_scale(cfg: Any, world_size: int) -> tuple[Any, list[str]]:
    """Apply detectron2's ``REFERENCE_WORLD_SIZE`` auto-scaling now, as DefaultTrainer would at start.

    With a reference world size set and another one running, detectron2 rescales batch, lr, schedule
    and warm-up; the record must describe what was trained, so the scaled config is the one compared
    and recorded (DefaultTrainer then finds it already scaled and leaves it). Returns the config and
    the deviation naming the scaling (none when ``REFERENCE_WORLD_SIZE`` is 0, the protocol's value).
    """
    from detectron2.engine import DefaultTrainer

    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference == 0:
        return cfg, []
    scaled = DefaultTrainer.auto_scale_workers(cfg, world_size)
    effect = (f"detectron2 scaled IMS_PER_BATCH, BASE_LR, MAX_ITER, STEPS and WARMUP_ITERS by {world_size}/{reference}"
              if reference != world_size else "no scaling at this world size")
    return scaled, [f"SOLVER.REFERENCE_WORLD_SIZE={reference} (protocol: 0): {effect}; the recorded settings are "
                    "the scaled ones"]


def eval_only_deviation(checkpoint: dict[str, Any], source: str) -> str:
    """The deviation of an ``--eval-only`` run: no training here, and which iteration was evaluated.

    detectron2's checkpoints store the last finished iteration (0-based) under ``iteration``; the
    converted ``--weights`` have none, so their detection heads are untrained.
    """
    iteration = checkpoint.get("iteration")
    if iteration is None:
        return f"--eval-only: evaluated {source} without training (detection heads untrained, iteration 0)"
    return f"--eval-only: no training in this run; evaluated {source} at iteration {int(iteration) + 1}"


def replace_syncbn_for_single_process(cfg: Any, world_size: int) -> bool:
    """Switch SyncBN to BN in backbone and FPN when only one process runs; True if anything changed.

    SyncBN averages batch statistics over processes; with one process there is nothing to average,
    and detectron2 fails on SyncBN outside a process group. BN computes the same statistics from the
    local batch. The caller records the switch as a deviation (a batch of 2 per GPU is not 16).
    """
    if world_size != 1:
        return False
    replaced = False
    for node in (cfg.MODEL.RESNETS, cfg.MODEL.FPN):
        if node.NORM == "SyncBN":
            node.NORM = "BN"
            replaced = True
    if replaced:
        warnings.warn("world size is 1: SyncBN replaced by BN in backbone and FPN (recorded as a deviation)",
                      stacklevel=2)
    return replaced


def read_sidecar(weights: Path, weights_sha256: str) -> dict[str, Any]:
    """The conversion sidecar of ``weights`` (written by convert_to_detectron2), or {} if there is none.

    The sidecar names the sha256 of the weights it describes; one that does not match ``weights_sha256``
    (the hash of the bytes this run loads) is refused, so a record can never claim the wrong source.
    """
    path = sidecar_path_for(weights)
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DetectionError(f"{path}: not valid JSON ({error.msg})") from None
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise DetectionError(f"{path}: format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    if sidecar.get("weights_sha256") != weights_sha256:
        raise DetectionError(f"{path} describes other weights than {weights} (sha256 differs); convert again")
    return sidecar


@dataclasses.dataclass
class StartCheckpoint:
    """A checkpoint file read once, as data, for detectron2: what it holds and the sha256 of those bytes."""
    path: Path
    payload: dict[str, Any]   # in the layout detectron2's DetectionCheckpointer._load_file returns
    sha256: str
    resumed: bool = False     # a detectron2 training checkpoint (optimizer, scheduler, iteration), not --weights


def check_local_path(weights: str | os.PathLike) -> None:
    """Refuse ``--weights`` in URL or query syntax: detectron2 would fetch it, or strip ``?...`` and read
    a sibling file, so what was checked and hashed would not be what is loaded."""
    if _NOT_A_LOCAL_PATH.search(str(weights)):
        raise DetectionError(f"--weights {printable(str(weights))}: expected a local file path, not a URL or a path "
                             "with a query ('?'); download or rename the file first")


def as_detectron2_checkpoint(obj: Any, path: Path, flag: str = "--weights") -> dict[str, Any]:
    """The checkpoint dict detectron2's ``DetectionCheckpointer._load_file`` makes of a file's contents.

    A ``.pkl`` with "model" and "__author__" is detectron2's own layout (ours, MoCo's converter); any
    other ``.pkl`` is a Caffe2 / Detectron1 blob dict. A torch file without "model" is a bare state dict.
    """
    if not isinstance(obj, dict):
        raise DetectionError(f"{flag} {path}: holds a {type(obj).__name__}, not a checkpoint dict")
    if path.suffix != ".pkl":
        return dict(obj) if "model" in obj else {"model": obj}
    if "model" in obj and "__author__" in obj:
        return dict(obj)
    blobs = obj.get("blobs", obj)
    if not isinstance(blobs, dict):
        raise DetectionError(f"{flag} {path}: 'blobs' is a {type(blobs).__name__}, not a dict of arrays")
    return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


def read_start_checkpoint(path: Path, trust: bool, *, flag: str = "--weights", resumed: bool = False
                          ) -> StartCheckpoint:
    """Read ``path`` once through the data-only reader (``.pkl``: numpy arrays; else torch's
    ``weights_only``), hashing the bytes it parses; ``trust`` allows one full unpickle of a refused file."""
    try:
        obj, sha256 = read_weight_file(path, trust=trust)
    except UntrustedFileError as error:
        raise DetectionError(f"{flag} {error}") from None
    except OSError as error:
        raise DetectionError(f"{flag} {path}: cannot be read ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (EOFError, UnpicklingError, ...)
        detail = printable(str(error).splitlines()[0]) if str(error) else ""
        raise DetectionError(f"{flag} {path}: not a readable weight file ({type(error).__name__}: {detail})") from None
    payload = as_detectron2_checkpoint(obj, path, flag)
    if not isinstance(payload.get("model"), dict):
        raise DetectionError(f"{flag} {path}: its 'model' is a {type(payload.get('model')).__name__}, not a dict")
    return StartCheckpoint(path=path, payload=payload, sha256=sha256, resumed=resumed)


def read_weights(run: DetectionRun) -> StartCheckpoint:
    """``--weights`` read once in this process, as data. When the launching process has read it already
    (``run.weights_sha256``), these must be the same bytes: a file rewritten in between is refused."""
    check_local_path(run.weights)
    problem = file_problem(run.weights)
    if problem:
        raise DetectionError(f"--weights {run.weights} {problem}")
    weights = read_start_checkpoint(run.weights, run.trust_checkpoint)
    if run.weights_sha256 is not None and weights.sha256 != run.weights_sha256:
        raise DetectionError(f"--weights {run.weights} changed after the launcher read it (sha256 "
                             f"{run.weights_sha256[:12]} then {weights.sha256[:12]}); every process must load "
                             "the same bytes: run again on a file that nothing is writing")
    return weights


def check_same_start_everywhere(read_by_rank: list[tuple[str, str]], weights: Path) -> None:
    """Refuse a run whose processes loaded different bytes: ``read_by_rank[r]`` is the (--weights sha256,
    start checkpoint sha256) rank r read. On several machines each reads its own copy of the files."""
    for position, what in enumerate(("--weights", "the checkpoint resumed from")):
        groups: dict[str, list[int]] = {}
        for rank, hashes in enumerate(read_by_rank):
            groups.setdefault(hashes[position], []).append(rank)
        if len(groups) > 1:
            found = "; ".join(f"ranks {ranks} read sha256 {sha[:12]}" for sha, ranks in groups.items())
            raise DetectionError(f"{what} ({weights if position == 0 else 'OUTPUT_DIR/last_checkpoint'}) "
                                 f"differs between processes: {found}; give every machine the same file")


def resume_checkpoint_path(output_dir: Path) -> Path | None:
    """The checkpoint ``output_dir/last_checkpoint`` names (as detectron2 resolves it), or None if absent.

    detectron2 writes a bare file name there; any other name (an absolute path, a ``..``) would make a
    resume read a file from elsewhere, and is refused.
    """
    marker = output_dir / "last_checkpoint"
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8", errors="replace").strip()
    if not name or name in (".", "..") or Path(name).name != name:
        raise DetectionError(f"--resume: {marker} names {printable(name)!r}, not a file name in {output_dir} as "
                             "detectron2 writes it; refusing to resume from another place")
    path = output_dir / name
    if not path.is_file():
        raise DetectionError(f"--resume: {marker} names {name}, which does not exist in {output_dir}")
    return path


def refuse_file_reading_keys(cfg: Any, where: str) -> None:
    """Refuse config keys under which detectron2 would unpickle further files, from any ``_BASE_`` or override.

    With ``MODEL.LOAD_PROPOSALS``, detectron2's data loaders ``pickle.load`` every file in
    ``DATASETS.PROPOSAL_FILES_TRAIN`` / ``_TEST`` (and PathManager would download an ``http(s)://`` one).
    Precomputed proposals belong to Fast R-CNN; the Table 3 Mask R-CNN has an RPN making its own, so
    these keys are refused rather than routed through our reader.
    """
    named = [f"MODEL.LOAD_PROPOSALS={cfg.MODEL.LOAD_PROPOSALS!r}"] if cfg.MODEL.LOAD_PROPOSALS else []
    for key in ("DATASETS.PROPOSAL_FILES_TRAIN", "DATASETS.PROPOSAL_FILES_TEST"):
        if len(_get(cfg, key)):
            named.append(f"{key}={printable(repr(tuple(_get(cfg, key))))}")
    if named:
        raise DetectionError(f"{where}: {', '.join(named)}: detectron2 would unpickle proposal files in full, which "
                             "can run code, and precomputed proposals are not part of the Mask R-CNN protocol (its "
                             "RPN makes them); remove these keys")


def build_config(run: DetectionRun, sidecar: dict[str, Any]) -> tuple[Any, list[str], bool]:
    """Resolve the detectron2 config of ``run``; returns (frozen cfg, deviations, syncbn_replaced)."""
    from detectron2.config import get_cfg

    check_local_path(run.weights)
    for flag, path in (("--config-file", run.config_file), ("--weights", run.weights)):
        problem = file_problem(path)
        if problem:
            raise DetectionError(f"{flag} {path} {problem}")
    check_base_chain(run.config_file)
    cfg = get_cfg()
    try:
        # detectron2 defaults to allow_unsafe=True, under which a YAML tag can run code.
        cfg.merge_from_file(str(run.config_file), allow_unsafe=False)
        cfg.merge_from_list(list(run.opts))
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise DetectionError(f"{run.config_file} / overrides {run.opts}: {str(error).splitlines()[0]}") from None
    refuse_file_reading_keys(cfg, f"{run.config_file} / overrides {run.opts}" if run.opts else str(run.config_file))
    cfg.MODEL.WEIGHTS = str(run.weights)
    cfg.OUTPUT_DIR = str(run.output_dir)
    cfg.SEED = run.seed
    if len(cfg.DATASETS.TEST) != 1 or len(cfg.DATASETS.TRAIN) != 1:
        raise DetectionError(f"{run.config_file}: DATASETS.TRAIN and DATASETS.TEST must name one dataset each, "
                             f"got {cfg.DATASETS.TRAIN} and {cfg.DATASETS.TEST}")
    if sidecar:
        expected = sidecar["detectron2_resnets"]
        actual = {key: getattr(cfg.MODEL.RESNETS, key) for key in expected}
        if actual != expected:
            raise DetectionError(f"{run.config_file}: MODEL.RESNETS {actual} does not fit the {sidecar['arch']} "
                                 f"weights {run.weights} (needs {expected})")
    replaced = replace_syncbn_for_single_process(cfg, run.world_size)
    deviations = []
    if replaced:
        deviations.append("SyncBN replaced by BN in backbone and FPN: world size 1 (one process, no batch "
                          "statistics to synchronise)")
    cfg, scaling = auto_scale(cfg, run.world_size)
    deviations += scaling + protocol_deviations(cfg)
    cfg.freeze()
    return cfg, deviations, replaced


def check_coco_annotations(path: Path, split: str) -> None:
    """Refuse an annotation file that cannot give a result: empty, not COCO instances JSON, or without
    a single annotation (training would stop inside detectron2's filters; evaluation against no
    ground truth gives NaN APs, which read as "the model made no predictions"). Parsed once more
    than detectron2 does (seconds for COCO train), before any training starts."""
    if path.stat().st_size == 0:
        raise DetectionError(f"{path}: empty file (0 bytes); expected COCO instances JSON for {split}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetectionError(f"{path}: not JSON ({error}); expected COCO instances JSON for {split}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise DetectionError(f"{path}: expected a COCO instances object with 'images', 'annotations' and "
                             "'categories' lists")
    if not data["annotations"]:
        purpose = "nothing to train on" if split == "train" else "nothing to evaluate against"
        raise DetectionError(f"{path}: holds no annotations ({len(data['images'])} images); {purpose}")


def register_coco(root: Path, train_name: str, val_name: str) -> None:
    """Register COCO 2017 (standard layout under ``root``) under the names the config uses.

    Names detectron2 pre-registers (coco_2017_train, ...) point at $DETECTRON2_DATASETS; they are
    replaced, so the run reads exactly ``root``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for split, name in (("train", train_name), ("val", val_name)):
        annotations, images = (root / part for part in _SPLITS[split])
        if not annotations.is_file():
            raise DetectionError(f"--coco-root {root}: {annotations} is missing (expected the COCO 2017 layout)")
        if not images.is_dir():
            raise DetectionError(f"--coco-root {root}: image folder {images} is missing")
        check_coco_annotations(annotations, split)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(annotations), str(images))


def detection_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """COCOEvaluator results -> record metrics (AP, AP50, AP75 for bbox and segm, in percent)."""
    metrics = {}
    for name, (task, key) in METRICS.items():
        value = results.get(task, {}).get(key)
        if value is None:
            raise DetectionError(f"COCOEvaluator gave no {task} {key} (results: {sorted(results)})")
        if not math.isfinite(value):
            raise DetectionError(f"COCOEvaluator gave {task} {key} = {value}: the model made no predictions")
        metrics[name] = float(value)
    return metrics


def _settings(cfg: Any, run: DetectionRun, start: StartCheckpoint, weights_sha256: str, replaced: bool,
              resolved_config: Path) -> dict[str, Any]:
    return {
        "config_file": str(run.config_file),
        "resolved_config": str(resolved_config),
        "weights": str(run.weights),
        "weights_sha256": weights_sha256,
        "start_checkpoint": str(start.path),
        "start_checkpoint_sha256": start.sha256,
        "world_size": run.world_size,
        "num_machines": run.num_machines,
        "syncbn_replaced_by_bn": replaced,
        "backbone_norm": cfg.MODEL.RESNETS.NORM,
        "fpn_norm": cfg.MODEL.FPN.NORM,
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR,
        "steps": list(cfg.SOLVER.STEPS),
        "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
        "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        "amp": cfg.SOLVER.AMP.ENABLED,
        "reference_world_size": cfg.SOLVER.REFERENCE_WORLD_SIZE,
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "max_size_train": cfg.INPUT.MAX_SIZE_TRAIN,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "precise_bn": cfg.TEST.PRECISE_BN.ENABLED,
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        "train_dataset": cfg.DATASETS.TRAIN[0],
        "test_dataset": cfg.DATASETS.TEST[0],
        "coco_root": str(run.coco_root),
        "resumed": run.resume,
        "eval_only": run.eval_only,
        "evaluator": "detectron2 COCOEvaluator, official pycocotools COCOeval",
    }


def protocol_id(cfg: Any) -> str:
    """mmselfsup-style name of the settings, e.g. "mask-rcnn_R50-FPN_syncbn_b16-lr0.02-90000it"."""
    norm = cfg.MODEL.RESNETS.NORM.lower()
    return (f"mask-rcnn_R{cfg.MODEL.RESNETS.DEPTH}-FPN_{norm}_b{cfg.SOLVER.IMS_PER_BATCH}"
            f"-lr{cfg.SOLVER.BASE_LR:g}-{cfg.SOLVER.MAX_ITER}it")


def record_method(run: DetectionRun, sidecar: dict[str, Any]) -> str:
    """The pre-training method the record names: ``--method``, else the conversion sidecar's.
    Checked before training starts, so a run never trains for hours to fail at the record."""
    method = run.method or sidecar.get("meta", {}).get("method")
    if method:
        return method
    path = sidecar_path_for(run.weights)
    why = (f"its sidecar {path} does not name one (converted from a {sidecar.get('source_format', 'foreign')} "
           "checkpoint)" if sidecar else f"it has no sidecar {path.name}")
    raise DetectionError(f"--weights {run.weights}: the pre-training method is unknown ({why}); pass --method")


def check_base_chain(config_file: Path) -> None:
    """Refuse a ``_BASE_`` chain that loops, names a missing file or a URL before detectron2 follows it
    (it would recurse until Python's stack runs out, or fetch the URL and parse what came back).
    Paths resolve as detectron2's do: relative to the including file, ``~`` expanded."""
    seen: list[Path] = []
    path = config_file
    while True:
        if path.resolve() in seen:
            loop = " -> ".join(str(p) for p in (*seen, path.resolve()))
            raise DetectionError(f"{seen[-1]}: _BASE_ makes a loop ({loop})")
        if not path.is_file():
            where = f"{seen[-1]}: _BASE_ {path}" if seen else f"--config-file {path}"
            raise DetectionError(f"{where} is {'a folder' if path.is_dir() else 'missing'}, expected a detectron2 "
                                 "YAML file")
        seen.append(path.resolve())
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise DetectionError(f"{path}: not a valid YAML file ({str(error).splitlines()[0]})") from None
        base = data.get("_BASE_") if isinstance(data, dict) else None
        if not base:
            return
        if _NOT_A_LOCAL_PATH.search(str(base)):
            raise DetectionError(f"{path}: _BASE_ {printable(str(base))}: expected a local YAML file, not a URL or a "
                                 "path with a query ('?'); detectron2 would fetch it")
        base = os.path.expanduser(str(base))
        path = Path(base) if os.path.isabs(base) else path.parent / base


def build_record(cfg: Any, run: DetectionRun, sidecar: dict[str, Any], metrics: dict[str, float],
                 deviations: list[str], replaced: bool, resolved_config: Path, wall_time_s: float,
                 weights_sha256: str, start: StartCheckpoint, provenance: dict[str, Any] | None = None
                 ) -> ResultRecord:
    """The result record of one run; source checkpoint facts come from the conversion sidecar.

    ``weights_sha256`` is the hash of the ``--weights`` bytes this run loaded; ``start`` what detectron2
    started from (the weights, or with --resume the checkpoint resumed).
    """
    provenance = provenance or run_provenance()
    meta = sidecar.get("meta", {})
    method = record_method(run, sidecar)
    arch = sidecar.get("arch") or next(
        (name for name, spec in DETECTRON2_RESNETS.items() if spec["DEPTH"] == cfg.MODEL.RESNETS.DEPTH), "unknown")
    return ResultRecord(
        method=method, backbone=arch, dataset=run.dataset, protocol="detection", protocol_id=protocol_id(cfg),
        metrics_final=metrics, pretrain_epochs=meta.get("pretrain_epochs"),
        pretrain_epochs_planned=meta.get("pretrain_epochs_planned"), pretrain_complete=meta.get("pretrain_complete"),
        checkpoint_path=sidecar.get("source_path", str(run.weights)),
        checkpoint_sha256=sidecar.get("source_sha256") or weights_sha256,
        settings=_settings(cfg, run, start, weights_sha256, replaced, resolved_config), variant=dict(meta.get("variant") or {}),
        model_id=meta.get("model_id", ""), pretrain_seed=meta.get("pretrain_seed"),
        pretrain_config=dict(meta.get("pretrain_config") or {}),
        deviations=deviations, seed=run.seed, wall_time_s=round(wall_time_s, 1),
        provenance={**provenance, "pretrain_code_version": meta.get("pretrain_code_version")},
        code_version=provenance["code_version"])


def _write_resolved_config(cfg: Any, output_dir: Path) -> Path:
    """Write the fully resolved config beside the outputs (atomically), as STYLE.md asks of every run."""
    return atomic_write_text(output_dir / "config.yaml", cfg.dump())


def _check_initial_backbone(model: Any, weights: StartCheckpoint, sidecar: dict[str, Any]) -> None:
    """Fail unless the backbone detectron2 just initialised equals our converted weights.

    detectron2 matches names by suffix and only logs the ones it cannot match, so a wrong prefix
    would silently start from a random backbone (the bug the converter's --verify also guards against).
    Weights without our sidecar (e.g. detectron2's own Caffe2-named files) cannot be checked this way.
    """
    if not sidecar:
        log.warning("%s has no conversion sidecar: not checking that its backbone was loaded", weights.path)
        return
    bottom_up = getattr(model, "module", model).backbone.bottom_up  # DDP wraps the model with several processes
    try:
        checked = check_bottom_up(bottom_up.state_dict(), weights.payload["model"], str(weights.path))
    except ConversionError as error:
        raise DetectionError(str(error)) from None
    log.info("initial backbone check: all %d backbone.bottom_up tensors equal %s", checked, weights.path)


def _data_only_checkpointer_class() -> type:
    from detectron2.checkpoint import DetectionCheckpointer

    class DataOnlyCheckpointer(DetectionCheckpointer):
        """detectron2's checkpointer minus file reading: ``_load_file`` hands out the checkpoint the
        launcher read through pretrain.safe_load (``self.start``) and refuses any other name, so
        detectron2 can neither unpickle a file nor read one other than the one hashed."""

        start: StartCheckpoint | None = None

        def _load_file(self, filename: str) -> dict[str, Any]:
            if self.start is None or filename != str(self.start.path):
                raise DetectionError(f"detectron2 asked to read {printable(filename)}, which the launcher did not "
                                     "read as data; refusing")
            # Fresh containers: detectron2 pops and converts entries of what it is given.
            return {**self.start.payload, "model": dict(self.start.payload["model"])}

    return DataOnlyCheckpointer


def load_start(checkpointer: Any, start: StartCheckpoint) -> dict[str, Any]:
    """Load ``start`` through a DataOnlyCheckpointer, as DefaultTrainer.resume_or_load would: a resumed
    checkpoint restores every checkpointable (optimizer, scheduler, iteration), weights only the model.
    Returns what detectron2 left of the checkpoint (e.g. "iteration")."""
    checkpointer.start = start
    return checkpointer.load(str(start.path), checkpointables=None if start.resumed else [])


def _trainer_class() -> type:
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator

    checkpointer_class = _data_only_checkpointer_class()

    class Trainer(DefaultTrainer):
        """DefaultTrainer with COCOEvaluator and no evaluation hook: train_and_evaluate evaluates once, at the end."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            # The official COCOeval, not detectron2's faster re-implementation: the numbers we compare
            # against were computed with pycocotools (and the fast one needs the compiled _C).
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"),
                                 use_fast_impl=False)

        def build_hooks(self):
            # DefaultTrainer.__init__ makes its DetectionCheckpointer just before it builds the hooks; the
            # swap here gives the periodic checkpointer hook and every load the one that reads no file.
            old = self.checkpointer
            self.checkpointer = checkpointer_class(old.model, old.save_dir, save_to_disk=old.save_to_disk,
                                                   **old.checkpointables)
            return [hook for hook in super().build_hooks() if not isinstance(hook, hooks.EvalHook)]

    return Trainer


def train_and_evaluate(run: DetectionRun) -> ResultRecord | None:
    """The per-process body: train (unless --eval-only), evaluate, and on rank 0 write the record."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    started = time.time()
    provenance = run_provenance(["python -m evaluate.detection.launcher", *run.argv])
    # Every file detectron2 would unpickle is read here, once, before any work: --weights, and with
    # --resume the checkpoint last_checkpoint names. Config keys naming further ones are refused.
    weights = read_weights(run)
    sidecar = read_sidecar(run.weights, weights.sha256)
    cfg, deviations, replaced = build_config(run, sidecar)
    record_method(run, sidecar)
    resumed = resume_checkpoint_path(run.output_dir) if run.resume else None
    start = (read_start_checkpoint(resumed, run.trust_checkpoint, flag="--resume", resumed=True)
             if resumed is not None else weights)
    if comm.get_world_size() > 1:
        check_same_start_everywhere(comm.all_gather((weights.sha256, start.sha256)), run.weights)
    # The data set is checked before the loggers create OUTPUT_DIR: bad input leaves nothing behind.
    register_coco(run.coco_root, cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0])
    DatasetCatalog.get(cfg.DATASETS.TEST[0])  # loads the annotations, which sets thing_classes
    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    if len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise DetectionError(f"{run.config_file}: MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} "
                             f"but {run.coco_root} has {len(classes)} categories")
    setup_logger(str(run.output_dir), distributed_rank=comm.get_rank(), name="fvcore")
    setup_logger(str(run.output_dir), distributed_rank=comm.get_rank())
    seed_all_rng(run.seed + comm.get_rank())
    resolved = _write_resolved_config(cfg, run.output_dir) if comm.is_main_process() else run.output_dir / "config.yaml"
    for deviation in deviations:
        log.info("deviation from the Table 3 protocol: %s", deviation)

    trainer_class = _trainer_class()
    if run.eval_only:
        model = trainer_class.build_model(cfg)
        checkpoint = load_start(_data_only_checkpointer_class()(model, save_dir=cfg.OUTPUT_DIR), start)
        deviations = [*deviations, eval_only_deviation(checkpoint, str(start.path))]
    else:
        trainer = trainer_class(cfg)
        load_start(trainer.checkpointer, start)
        if start.resumed:   # the checkpoint stores the iteration that finished, as in DefaultTrainer
            trainer.start_iter = trainer.iter + 1
        else:
            _check_initial_backbone(trainer.model, weights, sidecar)
        trainer.train()
        model = trainer.model
    with torch.no_grad():
        results = trainer_class.test(cfg, model)
    if not comm.is_main_process():
        return None
    record = build_record(cfg, run, sidecar, detection_metrics(results), deviations, replaced, resolved,
                          time.time() - started, weights.sha256, start, provenance)
    if run.records is not None:
        write_record(run.records, record)
        log.info("wrote the result record to %s", run.records)
    return record


def run_detection(run: DetectionRun) -> ResultRecord | None:
    """Run one detection transfer: in this process for a world size of 1, else through detectron2's launch.

    Returns the record when run in this process (rank 0); with several processes it is only written
    to ``run.records``.
    """
    import_detectron2()
    if run.dataset not in DATASETS:
        raise DetectionError(f"--dataset {run.dataset!r} is not one of {DATASETS}")
    if run.records is not None:
        try:   # before hours of training, not after them
            check_appendable(run.records)
        except RecordError as error:
            raise DetectionError(f"--records {error}") from None
    if run.world_size == 1:
        return train_and_evaluate(run)
    # Read here first: a bad file is one line before any process starts, and each process must then find
    # the bytes read here (they read it again, since launch pickles its arguments to every process).
    run = dataclasses.replace(run, weights_sha256=read_weights(run).sha256)
    import torch
    from detectron2.engine import launch

    # detectron2's DefaultTrainer wraps the model in DDP with GPU device ids: several processes need GPUs.
    if torch.cuda.device_count() < run.num_gpus:
        raise DetectionError(f"--num-gpus {run.num_gpus} needs that many GPUs, this machine has "
                             f"{torch.cuda.device_count()} (run one process with --num-gpus 1 on CPU)")

    launch(train_and_evaluate, run.num_gpus, num_machines=run.num_machines, machine_rank=run.machine_rank,
           dist_url=run.dist_url, args=(run,))
    return None


@cli_main
def main(argv: list[str] | None = None) -> int | None:
    parser = ArgumentParser(
        prog="python -m evaluate.detection.launcher",
        description="Fine-tune Mask R-CNN (detectron2) from converted pre-trained weights on COCO 2017 and write "
                    "one result record (AP, AP50, AP75 for bbox and segm). Convert weights first with "
                    "`python -m evaluate.detection.convert`.",
        epilog="Trailing KEY VALUE pairs override the config, as in detectron2's train_net.py "
               "(e.g. SOLVER.MAX_ITER 100 MODEL.DEVICE cpu).")
    parser.add_argument("--config-file", type=Path, required=True, help="a YAML from detectron2_configs/")
    parser.add_argument("--weights", required=True,
                        help="converted detectron2 weights (.pkl), a local file (no URL, no '?query')")
    parser.add_argument("--coco-root", type=Path, required=True,
                        help="folder with annotations/instances_{train,val}2017.json, train2017/, val2017/")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints, logs and resolved config")
    parser.add_argument("--records", type=Path, default=None, help="JSONL file to append the result record to")
    parser.add_argument("--dataset", choices=DATASETS, default="coco-2017", help="dataset name in the record")
    parser.add_argument("--method", default=None,
                        help="pre-training method for the record (default: from the weights' sidecar JSON)")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights (or, with --resume, the last "
                        "checkpoint) without training")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine (default 1)")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines (default 1)")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (default 0)")
    parser.add_argument("--dist-url", default="auto",
                        help="URL of rank 0 for the process group, e.g. tcp://10.0.0.1:29500 (default: auto, one "
                             "machine only)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow --weights (and with --resume the checkpoint resumed) to be fully unpickled if "
                             "it holds more than numpy arrays/tensors and plain containers; unpickling can run "
                             "code, so only for files you trust")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise DetectionError("need --num-gpus >= 1, --num-machines >= 1 and 0 <= --machine-rank < --num-machines")
    if len(args.opts) % 2:
        raise DetectionError(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_local_path(args.weights)   # before Path(), which turns "http://" into "http:/"
    except DetectionError as error:
        raise SystemExit(f"error: {error}") from None
    run = DetectionRun(config_file=args.config_file, weights=Path(args.weights), coco_root=args.coco_root,
                       output_dir=args.output_dir, records=args.records, dataset=args.dataset, method=args.method,
                       opts=list(args.opts), resume=args.resume, eval_only=args.eval_only, num_gpus=args.num_gpus,
                       num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
                       seed=args.seed, trust_checkpoint=args.trust_checkpoint,
                       argv=list(sys.argv[1:] if argv is None else argv))
    record = run_detection(run)
    if record is not None:
        metrics = ", ".join(f"{name} {value:.1f}" for name, value in record.metrics_final.items())
        print(f"{record.method} {record.backbone} on {record.dataset}: {metrics}")


if __name__ == "__main__":
    sys.exit(main())
