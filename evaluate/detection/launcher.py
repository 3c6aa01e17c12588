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
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from evaluate.detection.convert import (DETECTRON2_RESNETS, SIDECAR_FORMAT, ConversionError, check_bottom_up,
                                            read_detectron2_weights, sidecar_path_for)
from evaluate.detection.d2_compat import Detectron2Unavailable, import_detectron2
from evaluate.report.records import ResultRecord, run_provenance, write_record
from pretrain.provenance import file_sha256
from pretrain.fileio import atomic_write_text
from pretrain.safe_load import TRUST_FLAG, UntrustedFileError, load_array_pickle, torch_load
from evaluate.errors import DetectionError

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
    "DATASETS.PROPOSAL_FILES_TRAIN": (),
    "DATASETS.PROPOSAL_FILES_TEST": (),
}
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


def read_sidecar(weights: Path) -> dict[str, Any]:
    """The conversion sidecar of ``weights`` (written by convert_to_detectron2), or {} if there is none.

    The sidecar names the sha256 of the weights it describes; one that does not match is refused,
    so a record can never claim the wrong source checkpoint.
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
    if sidecar.get("weights_sha256") != file_sha256(weights):
        raise DetectionError(f"{path} describes other weights than {weights} (sha256 differs); convert again")
    return sidecar


def check_weights_are_data(weights: Path, trust: bool) -> None:
    """Read ``--weights`` as data before detectron2 does: its checkpointer unpickles a ``.pkl`` in
    full (``pickle.load``), where a hostile file runs code. Other files get torch's data-only reader,
    as fvcore's ``torch.load`` does by default from torch 2.6 on."""
    try:
        if weights.suffix == ".pkl":
            load_array_pickle(weights, trust=trust)
        else:
            torch_load(weights, trust=trust)
    except UntrustedFileError as error:
        raise DetectionError(f"--weights {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (EOFError, UnpicklingError, ...)
        raise DetectionError(f"--weights {weights}: not a readable weight file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:120] if str(error) else ''})") from None


def build_config(run: DetectionRun, sidecar: dict[str, Any]) -> tuple[Any, list[str], bool]:
    """Resolve the detectron2 config of ``run``; returns (frozen cfg, deviations, syncbn_replaced)."""
    from detectron2.config import get_cfg

    if not run.config_file.is_file():
        raise DetectionError(f"--config-file {run.config_file} does not exist")
    if not run.weights.is_file():
        raise DetectionError(f"--weights {run.weights} does not exist")
    check_weights_are_data(run.weights, run.trust_checkpoint)
    cfg = get_cfg()
    try:
        # detectron2 defaults to allow_unsafe=True, under which a YAML tag can run code.
        cfg.merge_from_file(str(run.config_file), allow_unsafe=False)
        cfg.merge_from_list(list(run.opts))
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise DetectionError(f"{run.config_file} / overrides {run.opts}: {str(error).splitlines()[0]}") from None
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


def _settings(cfg: Any, run: DetectionRun, sidecar: dict[str, Any], replaced: bool, resolved_config: Path
              ) -> dict[str, Any]:
    return {
        "config_file": str(run.config_file),
        "resolved_config": str(resolved_config),
        "weights": str(run.weights),
        "weights_sha256": sidecar.get("weights_sha256") or file_sha256(run.weights),
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


def build_record(cfg: Any, run: DetectionRun, sidecar: dict[str, Any], metrics: dict[str, float],
                 deviations: list[str], replaced: bool, resolved_config: Path, wall_time_s: float,
                 provenance: dict[str, Any] | None = None) -> ResultRecord:
    """The result record of one run; source checkpoint facts come from the conversion sidecar."""
    provenance = provenance or run_provenance()
    meta = sidecar.get("meta", {})
    method = run.method or meta.get("method")
    if not method:
        raise DetectionError(f"--weights {run.weights}: the pre-training method is unknown (no sidecar "
                             f"{sidecar_path_for(run.weights).name} naming it); pass --method")
    arch = sidecar.get("arch") or next(
        (name for name, spec in DETECTRON2_RESNETS.items() if spec["DEPTH"] == cfg.MODEL.RESNETS.DEPTH), "unknown")
    return ResultRecord(
        method=method, backbone=arch, dataset=run.dataset, protocol="detection", protocol_id=protocol_id(cfg),
        metrics_final=metrics, pretrain_epochs=meta.get("pretrain_epochs"),
        pretrain_epochs_planned=meta.get("pretrain_epochs_planned"), pretrain_complete=meta.get("pretrain_complete"),
        checkpoint_path=sidecar.get("source_path", str(run.weights)),
        checkpoint_sha256=sidecar.get("source_sha256") or file_sha256(run.weights),
        settings=_settings(cfg, run, sidecar, replaced, resolved_config), variant=dict(meta.get("variant") or {}),
        deviations=deviations, seed=run.seed, wall_time_s=round(wall_time_s, 1),
        provenance={**provenance, "pretrain_code_version": meta.get("pretrain_code_version")},
        code_version=provenance["code_version"])


def _write_resolved_config(cfg: Any, output_dir: Path) -> Path:
    """Write the fully resolved config beside the outputs (atomically), as STYLE.md asks of every run."""
    return atomic_write_text(output_dir / "config.yaml", cfg.dump())


def _check_initial_backbone(model: Any, weights: Path, sidecar: dict[str, Any], trust: bool) -> None:
    """Fail unless the backbone detectron2 just initialised equals our converted weights.

    detectron2 matches names by suffix and only logs the ones it cannot match, so a wrong prefix
    would silently start from a random backbone (the bug the converter's --verify also guards against).
    Weights without our sidecar (e.g. detectron2's own Caffe2-named files) cannot be checked this way.
    """
    if not sidecar:
        log.warning("%s has no conversion sidecar: not checking that its backbone was loaded", weights)
        return
    bottom_up = getattr(model, "module", model).backbone.bottom_up  # DDP wraps the model with several processes
    try:
        checked = check_bottom_up(bottom_up.state_dict(), read_detectron2_weights(weights, trust=trust), str(weights))
    except ConversionError as error:
        raise DetectionError(str(error)) from None
    log.info("initial backbone check: all %d backbone.bottom_up tensors equal %s", checked, weights)


def _trainer_class() -> type:
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import COCOEvaluator

    class Trainer(DefaultTrainer):
        """DefaultTrainer with COCOEvaluator and no evaluation hook: train_and_evaluate evaluates once, at the end."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            # The official COCOeval, not detectron2's faster re-implementation: the numbers we compare
            # against were computed with pycocotools (and the fast one needs the compiled _C).
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"),
                                 use_fast_impl=False)

        def build_hooks(self):
            return [hook for hook in super().build_hooks() if not isinstance(hook, hooks.EvalHook)]

    return Trainer


def train_and_evaluate(run: DetectionRun) -> ResultRecord | None:
    """The per-process body: train (unless --eval-only), evaluate, and on rank 0 write the record."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    start = time.time()
    provenance = run_provenance(["python -m evaluate.detection.launcher", *run.argv])
    sidecar = read_sidecar(run.weights) if run.weights.is_file() else {}
    cfg, deviations, replaced = build_config(run, sidecar)
    setup_logger(str(run.output_dir), distributed_rank=comm.get_rank(), name="fvcore")
    setup_logger(str(run.output_dir), distributed_rank=comm.get_rank())
    seed_all_rng(run.seed + comm.get_rank())
    register_coco(run.coco_root, cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0])
    DatasetCatalog.get(cfg.DATASETS.TEST[0])  # loads the annotations, which sets thing_classes
    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    if len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise DetectionError(f"{run.config_file}: MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} "
                             f"but {run.coco_root} has {len(classes)} categories")
    resolved = _write_resolved_config(cfg, run.output_dir) if comm.is_main_process() else run.output_dir / "config.yaml"
    for deviation in deviations:
        log.info("deviation from the Table 3 protocol: %s", deviation)

    trainer_class = _trainer_class()
    if run.eval_only:
        model = trainer_class.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        source = (checkpointer.get_checkpoint_file() if run.resume and checkpointer.has_checkpoint()
                  else str(run.weights))
        checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=run.resume)
        deviations = [*deviations, eval_only_deviation(checkpoint, source)]
    else:
        trainer = trainer_class(cfg)
        trainer.resume_or_load(resume=run.resume)
        if trainer.start_iter == 0:
            _check_initial_backbone(trainer.model, run.weights, sidecar, run.trust_checkpoint)
        trainer.train()
        model = trainer.model
    with torch.no_grad():
        results = trainer_class.test(cfg, model)
    if not comm.is_main_process():
        return None
    record = build_record(cfg, run, sidecar, detection_metrics(results), deviations, replaced, resolved,
                          time.time() - start, provenance)
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
    if run.world_size == 1:
        return train_and_evaluate(run)
    import torch
    from detectron2.engine import launch

    # detectron2's DefaultTrainer wraps the model in DDP with GPU device ids: several processes need GPUs.
    if torch.cuda.device_count() < run.num_gpus:
        raise DetectionError(f"--num-gpus {run.num_gpus} needs that many GPUs, this machine has "
                             f"{torch.cuda.device_count()} (run one process with --num-gpus 1 on CPU)")

    launch(train_and_evaluate, run.num_gpus, num_machines=run.num_machines, machine_rank=run.machine_rank,
           dist_url=run.dist_url, args=(run,))
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.detection.launcher",
        description="Fine-tune Mask R-CNN (detectron2) from converted pre-trained weights on COCO 2017 and write "
                    "one result record (AP, AP50, AP75 for bbox and segm). Convert weights first with "
                    "`python -m evaluate.detection.convert`.",
        epilog="Trailing KEY VALUE pairs override the config, as in detectron2's train_net.py "
               "(e.g. SOLVER.MAX_ITER 100 MODEL.DEVICE cpu).")
    parser.add_argument("--config-file", type=Path, required=True, help="a YAML from detectron2_configs/")
    parser.add_argument("--weights", type=Path, required=True, help="converted detectron2 weights (.pkl)")
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
                        help="allow --weights to be fully unpickled if it holds more than numpy arrays/tensors "
                             "and plain containers; unpickling can run code, so only for files you trust")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise SystemExit("error: need --num-gpus >= 1, --num-machines >= 1 and 0 <= --machine-rank < --num-machines")
    if len(args.opts) % 2:
        raise SystemExit(f"error: config overrides must be KEY VALUE pairs, got {args.opts}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = DetectionRun(config_file=args.config_file, weights=args.weights, coco_root=args.coco_root,
                       output_dir=args.output_dir, records=args.records, dataset=args.dataset, method=args.method,
                       opts=list(args.opts), resume=args.resume, eval_only=args.eval_only, num_gpus=args.num_gpus,
                       num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
                       seed=args.seed, trust_checkpoint=args.trust_checkpoint,
                       argv=list(sys.argv[1:] if argv is None else argv))
    try:
        record = run_detection(run)
    except (DetectionError, Detectron2Unavailable, OSError) as error:
        raise SystemExit(f"error: {str(error).splitlines()[0]}") from None
    if record is not None:
        metrics = ", ".join(f"{name} {value:.1f}" for name, value in record.metrics_final.items())
        print(f"{record.method} {record.backbone} on {record.dataset}: {metrics}")


if __name__ == "__main__":
    main()
