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
import logging
import math
import os
import platform
import re
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from pretrain.identity import identity_of
from pretrain.provenance import code_version
from evaluate.errors import RecordError

logger = logging.getLogger(__name__)

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

_REQUIRED = ("method", "backbone", "dataset", "protocol", "protocol_id", "metrics_final", "created_at")


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
    variant: dict[str, Any] = dataclasses.field(default_factory=dict)   # legacy: knobs of records older than pretrain_config
    deviations: list[str] = dataclasses.field(default_factory=list)     # departures from the protocol
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # library versions, argv, ...
    seed: int = 0
    code_version: str = ""
    wall_time_s: float = 0.0
    created_at: str = ""
    # Which model was evaluated (pretrain/identity.py): its identity, its pre-training seed and the
    # configuration both were derived from. Records written before they existed get the identity of
    # their checkpoint file, so they never pass for seeds of one model by name alone.
    model_id: str = ""
    pretrain_seed: int | None = None
    pretrain_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_FAMILIES:
            raise RecordError(f"protocol {self.protocol!r} is not one of {PROTOCOL_FAMILIES}")
        if not self.created_at:  # a new record; one read from a file must carry its own (parse_record)
            self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if not self.model_id:
            self.model_id = identity_of(self.pretrain_config or None, self.checkpoint_sha256).model_id
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


def check_appendable(path: str | os.PathLike) -> None:
    """Refuse, before an evaluation starts, a record file that :func:`write_record` could not extend
    cleanly: a symbolic link (the record would land in whatever file it names), something that is
    not a regular file, or a file whose last line lacks its newline (the new record would be glued
    onto that fragment, and the table builder would then refuse the file). Nothing is repaired: a
    fragment may be the start of someone's record, so the user decides what to keep."""
    path = Path(path)
    if path.is_symlink():
        raise RecordError(f"{path} is a symbolic link; refusing to append a record through it (remove the "
                          "link or choose another output folder)")
    if not path.exists():
        return
    if not path.is_file():
        raise RecordError(f"{path} is {'a directory' if path.is_dir() else 'not a regular file'}; "
                          "expected a result-record file (JSON lines)")
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n":
            raise RecordError(f"{path}: its last line has no newline (cut short or hand-edited); complete or "
                              "remove that line, then run again: a record appended now would be glued onto it")


def write_record(path: str | os.PathLike, record: ResultRecord) -> Path:
    """Append one record as a single JSON line (one write + fsync, so a line is whole or absent).

    A write that fails part-way (a full disk) is cut back to the file's previous length, so no torn
    line is left for the table builder to trip over; the OSError then names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = memoryview((record.to_json() + "\n").encode("utf-8"))
    check_appendable(path)
    # O_NOFOLLOW: a link planted after the check above is refused too (ELOOP).
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
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
    """A record from one parsed JSON line; every field is checked, a failure is one RecordError line."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise RecordError(f"{where}: missing required field(s) {missing}")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise RecordError(f"{where}: schema {data.get('schema')!r}, expected {SCHEMA!r}")
    known = {field.name for field in dataclasses.fields(ResultRecord)} | {"protocol_conformant"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown}")
    for field, (valid, expected) in _FIELDS.items():
        if field in data and not valid(data[field]):
            raise RecordError(f"{where}: {field} is {_shown(data[field])}; expected {expected}")
    _check_metrics(data, where)
    # protocol_conformant is derived from deviations and pretrain_complete: recomputed, never read
    return ResultRecord(**{key: value for key, value in data.items() if key != "protocol_conformant"})


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    # JSON booleans parse as Python bools, which are ints; NaN and Infinity parse as floats.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    # Names become table cells, Markdown/LaTeX text and (the data set) folder names: one visible line.
    return isinstance(value, str) and bool(value.strip()) and not any(unicodedata.category(c) == "Cc" for c in value)


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int)) or _is_number(value)


SHA256 = re.compile(r"[0-9a-f]{64}")
# field -> (check, what was expected); metrics have their own check (_check_metrics).
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "method": (_is_name, "a non-empty one-line string"),
    "backbone": (_is_name, "a non-empty one-line string"),
    "dataset": (_is_name, "a non-empty one-line string"),
    "protocol": (lambda v: v in PROTOCOL_FAMILIES, f"one of {list(PROTOCOL_FAMILIES)}"),
    "protocol_id": (_is_name, "a non-empty one-line string"),
    "pretrain_epochs": (lambda v: v is None or (_is_int(v) and v >= 0), "a non-negative integer or null"),
    "pretrain_epochs_planned": (lambda v: v is None or (_is_int(v) and v >= 0), "a non-negative integer or null"),
    "pretrain_complete": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "checkpoint_path": (lambda v: isinstance(v, str), "a string"),
    "checkpoint_sha256": (lambda v: v == "" or (isinstance(v, str) and SHA256.fullmatch(v) is not None),
                          "64 lower-case hex digits, or \"\" when unknown"),
    "settings": (lambda v: isinstance(v, dict), "a JSON object"),
    "variant": (lambda v: isinstance(v, dict) and all(_is_scalar(x) for x in v.values()),
                "a JSON object of knob -> string, number, boolean or null"),
    "deviations": (lambda v: isinstance(v, list) and all(_is_name(x) for x in v),
                   "a list of non-empty one-line strings"),
    "provenance": (lambda v: isinstance(v, dict), "a JSON object"),
    "seed": (_is_int, "an integer (a string such as \"0\" would count as a second seed)"),
    "code_version": (lambda v: isinstance(v, str), "a string"),
    "wall_time_s": (lambda v: _is_number(v) and v >= 0, "a non-negative number of seconds"),
    "created_at": (_is_time, "an ISO 8601 time such as \"2024-01-01T00:00:00+00:00\""),
    "protocol_conformant": (lambda v: isinstance(v, bool), "true or false"),
    "model_id": (lambda v: isinstance(v, str), "a string"),
    "pretrain_seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "pretrain_config": (lambda v: isinstance(v, dict), "a JSON object"),
}
# Pairs that must satisfy top-1 <= top-5: a swapped pair or one fraction among percentages breaks it.
_TOP5 = re.compile(r"(.*)top5(.*)")


def _check_metrics(data: dict[str, Any], where: str) -> None:
    """Metrics are percentages (accuracy, AP): finite numbers in [0, 100], top-1 never above top-5."""
    for field in ("metrics_final", "metrics_best"):
        metrics = data.get(field, {})
        if not isinstance(metrics, dict):
            raise RecordError(f"{where}: {field} must map metric names to numbers, got {type(metrics).__name__}")
        for name, value in metrics.items():
            if not _is_number(value):
                raise RecordError(f"{where}: {field}[{name!r}] is {_shown(value)}; expected a finite number")
            if not 0 <= value <= 100:
                raise RecordError(f"{where}: {field}[{name!r}] is {value!r}; expected a percentage in [0, 100]")
        for name, top5 in metrics.items():
            match = _TOP5.fullmatch(name)
            top1 = metrics.get(f"{match[1]}top1{match[2]}") if match else None
            if top1 is not None and top1 > top5:
                raise RecordError(f"{where}: {field} {match[1]}top1{match[2]} {top1!r} is above {name} {top5!r}; "
                                  f"top-1 cannot exceed top-5 (a fraction among percentages?)")
    if not data["metrics_final"]:
        raise RecordError(f"{where}: metrics_final is empty; a record holds at least one result")


def check_percent_scale(entries: Iterable[tuple[ResultRecord, str]]) -> None:
    """Refuse a classification record whose accuracies all lie in [0, 1) where other records of its
    data set and protocol report the same accuracy above 1: it holds fractions (0.735) where
    percentages (73.5) belong.

    One record alone cannot tell a fraction from a poor percentage (0.7% top-1 on ImageNet is a
    possible random-init result), so the scale is judged against its neighbours in the table.
    Detection AP is left out: a short or smoke run's AP of 0.5 is a real number.
    """
    entries = [(record, where) for record, where in entries if record.protocol != "detection"]
    above: dict[tuple[str, str, str], str] = {}
    for record, where in entries:
        for name, value in record.metrics_final.items():
            if value > 1:
                above.setdefault((record.dataset, record.protocol, name), where)
    for record, where in entries:
        values = record.metrics_final
        if any(values.values()) and max(values.values()) < 1:
            for name, value in values.items():
                other = above.get((record.dataset, record.protocol, name))
                if other is not None and value > 0:
                    raise RecordError(f"{where}: metrics_final[{name!r}] is {value!r} while {other} reports "
                                      f"{name} above 1 for {record.dataset} {record.protocol}; records hold "
                                      f"percentages (73.5), not fractions (0.735)")


def iter_records(path: str | os.PathLike) -> Iterator[tuple[ResultRecord, str]]:
    """Yield (record, "file:line") from a JSONL file; a malformed line raises RecordError naming both."""
    with _open_record_file(path) as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RecordError(f"{where}: not UTF-8 text (byte {error.start} of the line is "
                                  f"{raw[error.start:error.start + 1]!r}); records are JSON in UTF-8") from None
            if number == 1 and line.startswith(BOM):
                raise RecordError(f"{where}: the file starts with a byte-order mark (U+FEFF); save it as UTF-8 "
                                  f"without BOM")
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: not valid JSON ({error.msg} at column {error.colno}; a truncated "
                                  f"line?)") from None
            yield parse_record(data, where), where


def _open_record_file(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as error:  # unreadable (permissions), or a folder named *.jsonl
        raise RecordError(f"{path}: cannot read the record file ({error.strerror})") from None


def read_records(path: str | os.PathLike) -> list[ResultRecord]:
    """All records of a JSONL file; a malformed line raises RecordError naming file and line."""
    return [record for record, _ in iter_records(path)]


def read_record_files(files: Iterable[Path]) -> dict[Path, list[tuple[ResultRecord, str]]]:
    """The records of each file, checked one by one and then against each other (check_percent_scale)."""
    records = {path: list(iter_records(path)) for path in files}
    check_percent_scale(entry for entries in records.values() for entry in entries)
    return records


# ------------------------------------------------------------------------------ finding record files

BOM = "\ufeff"
# What a record line begins with (to_json sorts keys) or holds, even when cut short.
_RECORD_HINTS = ('{"backbone"', '"metrics_final"', '"protocol_id"', '"snclr-bench/result/')


def find_record_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into record files.

    A directory is searched recursively, following symbolic links (a link that leads back into a
    folder already searched is not entered again): every ``results.jsonl`` is a record file, and any
    other ``*.jsonl`` is one if its first line is a record, because run directories also hold JSONL
    training logs (``metrics.jsonl``). A ``*.jsonl`` whose first line looks like a record but does not
    parse (a byte-order mark, a truncated line) stops the build; any other one that is not JSON is
    skipped with a warning. A file named explicitly is always read.
    """
    found: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = [p for p in _jsonl_files(path) if p.name == "results.jsonl" or _holds_records(p)]
            if not matches:
                raise FileNotFoundError(f"{path}: no result records found (expected results.jsonl or *.jsonl "
                                        f"files with schema {SCHEMA!r})")
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for match in matches:
            found.setdefault(match.resolve(), match)  # a file reached twice is read once
    return list(found.values())


def _jsonl_files(root: Path) -> list[Path]:
    """Every ``*.jsonl`` file under ``root``, symbolic links followed, each folder entered once."""
    entered: set[tuple[int, int]] = set()
    files = []
    def unreadable(error: OSError) -> None:
        logger.warning("%s: not searched (%s)", error.filename, error.strerror)

    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in entered:
            logger.debug("%s: already searched (a link loop or a second link to it); not entered again", folder)
            subfolders.clear()
            continue
        entered.add((info.st_dev, info.st_ino))
        files += [Path(folder, name) for name in names if name.endswith(".jsonl")]
    return sorted(path for path in files if path.is_file())


def _holds_records(path: Path) -> bool:
    with _open_record_file(path) as handle:
        number, first = next(((n, line) for n, line in enumerate(handle, start=1) if line.strip()), (1, b""))
    text = first.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if any(hint in text for hint in _RECORD_HINTS):
            problem = "starts with a byte-order mark (U+FEFF)" if text.startswith(BOM) else "is not valid JSON (truncated?)"
            raise RecordError(f"{path}:{number}: a result record that {problem}; fix or remove the file") from None
        logger.warning("%s: skipped, its first line is not JSON (neither a result record nor a JSONL log)", path)
        return False
    if not isinstance(data, dict):
        return False
    # A hand-written record may leave out the schema (it defaults to the current one).
    return str(data.get("schema", "")).startswith("snclr-bench/result/") or {"method", "metrics_final"} <= set(data)
