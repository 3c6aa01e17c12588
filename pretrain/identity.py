"""A pre-trained model's identity: what makes two checkpoints "the same model, another seed".

Two checkpoints are seeds of one model when their resolved pre-training configurations agree on
every key that can change the trained weights. Identity is a digest of that configuration without
the run-only keys (where data and outputs lie, on which device and how verbosely a run goes; the
keys a resume may change, :data:`RUN_ONLY_KEYS`) and without the seed. Every new config key counts
as result-changing until it is added to :data:`RUN_ONLY_KEYS`, so a field nobody thought about can
only split models apart, never merge two different ones.

This module is the only place identity is computed: the evaluators stamp it into every result
record, and the tables, the leaderboard and the neighbour grid read it from there. It imports no
torch, so the report package can use it on records alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Config keys that do not change a run's result: where data and outputs lie, how fast and how
# verbosely it runs. A resume may change them (pretrain/checkpoint.py); identity leaves them out.
RUN_ONLY_KEYS = frozenset({"data_dir", "output_dir", "device", "workers", "log_every", "save_every"})
SEED_KEY = "seed"
# The same kinds of keys in the configurations foreign trainers store (DINO main_dino.py's argparse
# namespace). Their names differ from ours; what they mean does not.
FOREIGN_RUN_ONLY_KEYS = frozenset({"data_path", "output_dir", "saveckp_freq", "num_workers", "dist_url",
                                   "local_rank", "rank", "world_size", "gpu", "dist_backend", "log_every_n_steps",
                                   "checkpoint_dir", "wandb", "auto_resume", "resume_from_checkpoint"})
DIGEST_CHARS = 16  # 64 bits: enough to tell a benchmark's models apart, short enough to read in a table


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    model_id: str                 # "<source>:<digest>", e.g. "snclr:3f1c...", "dino:...", "sha256:..."
    seed: int | None              # the pre-training seed, where the configuration records one
    config: dict[str, Any]        # the configuration the identity was derived from ({} for a bare file)

    @property
    def dataset(self) -> str:
        """The pre-training data set the configuration names ("" when it names none)."""
        return pretrain_dataset(self.config)


def _canonical(config: Mapping[str, Any]) -> str:
    # Sorted keys and a fixed separator: the digest depends on the values only, not on dict order.
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=repr)


def model_config(config: Mapping[str, Any], run_only: frozenset[str] = RUN_ONLY_KEYS) -> dict[str, Any]:
    """The result-changing part of a configuration: ``config`` without run-only keys and the seed."""
    return {key: value for key, value in config.items() if key not in run_only and key != SEED_KEY}


def model_id(config: Mapping[str, Any], source: str = "snclr", run_only: frozenset[str] = RUN_ONLY_KEYS) -> str:
    """The identity of the model a configuration trains: a digest of :func:`model_config`."""
    digest = hashlib.sha256(_canonical(model_config(config, run_only)).encode("utf-8")).hexdigest()
    return f"{source}:{digest[:DIGEST_CHARS]}"


def file_identity(sha256: str) -> str:
    """The identity of a checkpoint whose configuration is unknown: the file itself."""
    return f"sha256:{sha256[:DIGEST_CHARS]}"


def _seed(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def identity_of(config: Mapping[str, Any] | None, sha256: str, source: str = "snclr") -> ModelIdentity:
    """Identity of a model trained with ``config`` (of a trainer ``source``); by file when ``config`` is None."""
    if not config:
        return ModelIdentity(file_identity(sha256), None, {})
    run_only = RUN_ONLY_KEYS if source == "snclr" else RUN_ONLY_KEYS | FOREIGN_RUN_ONLY_KEYS
    # As plain JSON (a foreign namespace may hold tuples or objects), so the record can carry it and
    # the digest of the stored copy is the digest computed here.
    config = json.loads(json.dumps(dict(config), default=repr))
    return ModelIdentity(model_id(config, source, run_only), _seed(config.get(SEED_KEY)), config)


def checkpoint_identity(obj: Any, sha256: str, source_format: str) -> ModelIdentity:
    """Identity of a loaded checkpoint ``obj`` of ``source_format`` (see evaluate.loading).

    Ours carry their resolved config; DINO stores its argparse ``args`` and solo-learn (Lightning)
    its ``hyper_parameters``; any other file is identified by its sha256, so two files never pass
    for seeds of one model unless their configurations say so.
    """
    if not isinstance(obj, dict):
        return identity_of(None, sha256)
    if source_format == "snclr" and isinstance(obj.get("config"), dict):
        return identity_of(obj["config"], sha256, "snclr")
    if source_format == "dino" and isinstance(obj.get("args"), argparse.Namespace):
        return identity_of(vars(obj["args"]), sha256, "dino")
    if source_format == "solo-learn" and isinstance(obj.get("hyper_parameters"), dict):
        return identity_of(obj["hyper_parameters"], sha256, "solo-learn")
    return identity_of(None, sha256)


def pretrain_dataset(config: Mapping[str, Any]) -> str:
    """The data set a configuration pre-trains on: ours name it (an image folder by its directory)."""
    dataset = config.get("dataset")
    if not isinstance(dataset, str):
        return ""
    if dataset == "imagefolder":
        folder = config.get("data_dir")
        return f"imagefolder:{Path(folder).name}" if isinstance(folder, str) and folder else "imagefolder"
    return dataset
