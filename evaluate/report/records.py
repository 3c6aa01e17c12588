"""The result record: one JSON line per evaluation run, the only input of the table builder.

Every evaluator ends by calling :func:`write_record`; nothing else writes result files, so a crashed
run leaves no partial line that could be mistaken for a result (the line is written in one call at the
very end, after all metrics exist).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from pretrain.provenance import code_version
from evaluate.errors import RecordError

SCHEMA = "snclr-bench/result/v1"

# Protocol families. A record's ``protocol`` is one of these; ``protocol_id`` spells out the exact
# settings (mmselfsup-style, e.g. "linear_sgd-cos-90e-b1024-lr0.1").
PROTOCOL_FAMILIES = (
    "linear",         # standard linear probe (MoCo v3 main_lincls.py)
    "linear_fast",    # linear head on cached features: a labelled deviation from the protocol
    "knn",            # weighted kNN monitor (DINO eval_knn.py)
    "semisup_1pct",   # fine-tuning on 1% labels
    "semisup_10pct",  # fine-tuning on 10% labels
    "detection",      # COCO-style Mask R-CNN transfer through detectron2
)

_REQUIRED = ("method", "backbone", "dataset", "protocol", "protocol_id", "metrics_final")


@dataclasses.dataclass
class ResultRecord:
    method: str                       # "SNCLR", "MoCo v3", "random-init", ...
    backbone: str                     # "resnet50", "vit_small", ...
    dataset: str                      # "imagenet-1k", "fashion-mnist", "coco-2017", "synthetic-coco"
    protocol: str                     # one of PROTOCOL_FAMILIES
    protocol_id: str
    metrics_final: dict[str, float]   # metric name -> value at the end of the run (percent for acc/AP)
    metrics_best: dict[str, float] = dataclasses.field(default_factory=dict)  # best over epochs
    pretrain_epochs: int | None = None      # epochs the checkpoint had finished
    pretrain_epochs_planned: int | None = None  # its configured schedule (None: unknown, e.g. foreign files)
    pretrain_complete: bool | None = None    # False: a mid-epoch or early snapshot of a longer schedule
    checkpoint_path: str = ""
    checkpoint_sha256: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # resolved protocol settings
    variant: dict[str, Any] = dataclasses.field(default_factory=dict)   # pre-training ablation knobs
    deviations: list[str] = dataclasses.field(default_factory=list)     # departures from the protocol
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # library versions, argv, ...
    seed: int = 0
    code_version: str = ""
    wall_time_s: float = 0.0
    created_at: str = ""
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_FAMILIES:
            raise RecordError(f"protocol {self.protocol!r} is not one of {PROTOCOL_FAMILIES}")
        if not self.created_at:
            self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if not self.code_version:
            self.code_version = code_version()

    @property
    def protocol_conformant(self) -> bool:
        """True when the run followed its protocol exactly: no deviations, and a finished pre-training."""
        return not self.deviations and self.pretrain_complete is not False

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "protocol_conformant": self.protocol_conformant},
                          sort_keys=True)


# Libraries whose version can change a number; detectron2 ships as the sal-detectron2 wheel.
LIBRARIES = {"torch": ("torch",), "torchvision": ("torchvision",), "timm": ("timm",),
             "detectron2": ("detectron2", "sal-detectron2")}


def library_versions() -> dict[str, str | None]:
    """Installed version of each library in :data:`LIBRARIES` (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name, distributions in LIBRARIES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def working_tree_version(root: str | os.PathLike | None = None) -> str:
    """Git commit of the checkout at ``root`` (default: this one), "+dirty" when any file differs from
    it, untracked ones included.

    An untracked module can change a result as much as an edited one, so unlike the pre-training
    checkpoints' ``code_version`` nothing but .gitignore'd files is left out.
    """
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """What a record needs to be traced back: code version, libraries, Python and the command line.

    Taken when the run starts, so an edit made while it runs cannot be credited with its result.
    """
    return {"code_version": working_tree_version(), "libraries": library_versions(),
            "python": platform.python_version(), "argv": list(sys.argv if argv is None else argv)}


def write_record(path: str | os.PathLike, record: ResultRecord) -> Path:
    """Append one record as a single JSON line (one write + fsync, so a line is whole or absent).

    A write that fails part-way (a full disk) is cut back to the file's previous length, so no torn
    line is left for the table builder to trip over; the OSError then names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = memoryview((record.to_json() + "\n").encode("utf-8"))
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(descriptor, line):]
            os.fsync(descriptor)
        except OSError as error:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.ftruncate(descriptor, before)
            raise OSError(error.errno, f"cannot write the result record ({error.strerror})", str(path)) from None
    finally:
        os.close(descriptor)
    return path


def parse_record(data: Any, where: str) -> ResultRecord:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise RecordError(f"{where}: missing required field(s) {missing}")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise RecordError(f"{where}: schema {data.get('schema')!r}, expected {SCHEMA!r}")
    data = {key: value for key, value in data.items() if key != "protocol_conformant"}  # derived, recomputed
    known = {field.name for field in dataclasses.fields(ResultRecord)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown}")
    _check_values(data, where)
    try:
        return ResultRecord(**data)
    except RecordError as error:
        raise RecordError(f"{where}: {error}") from None


def _is_number(value: Any) -> bool:
    # JSON booleans parse as Python bools, which are ints; NaN and Infinity parse as floats.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(data: dict[str, Any], where: str) -> None:
    """Refuse values that would make a table cell lie: NaN, inf, booleans or text where numbers belong."""
    for field in ("metrics_final", "metrics_best"):
        metrics = data.get(field, {})
        if not isinstance(metrics, dict):
            raise RecordError(f"{where}: {field} must map metric names to numbers, got {type(metrics).__name__}")
        for name, value in metrics.items():
            if not _is_number(value):
                raise RecordError(f"{where}: {field}[{name!r}] is {value!r}; expected a finite number")
    for field in ("pretrain_epochs", "pretrain_epochs_planned"):
        value = data.get(field)
        if value is not None and not (_is_number(value) and isinstance(value, int) and value >= 0):
            raise RecordError(f"{where}: {field} is {value!r}; expected a non-negative integer or null")
    if data.get("pretrain_complete") not in (None, True, False):
        raise RecordError(f"{where}: pretrain_complete is {data['pretrain_complete']!r}; expected true, false or null")
    try:
        _dt.datetime.fromisoformat(data.get("created_at") or "2000-01-01")
    except (TypeError, ValueError):
        raise RecordError(f"{where}: created_at {data.get('created_at')!r} is not an ISO 8601 time") from None


def iter_records(path: str | os.PathLike) -> Iterator[tuple[ResultRecord, str]]:
    """Yield (record, "file:line") from a JSONL file; a malformed line raises RecordError naming both."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: not valid JSON ({error.msg})") from None
            yield parse_record(data, where), where


def read_records(path: str | os.PathLike) -> list[ResultRecord]:
    """All records of a JSONL file; a malformed line raises RecordError naming file and line."""
    return [record for record, _ in iter_records(path)]
