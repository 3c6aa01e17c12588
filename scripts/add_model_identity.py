"""Bring result records written before model identity existed up to date, in place.

    python -m scripts.add_model_identity results/studies/fmnist_table4

For a study folder laid out as ``records/<unit>.jsonl`` with the resolved pre-training configs in
``pretrain_logs/<unit>.config.yaml`` (scripts/study_fmnist_table4.py ships it so):

- every record gains ``model_id``, ``pretrain_seed`` and ``pretrain_config``, computed by the one
  identity function (pretrain/identity.py) from the unit's config; the untrained baselines get the
  identity the evaluators give them today (random init of one architecture, raw pixels);
- a record that ran with ``--limit-train`` but does not list it among its deviations (the
  evaluators of the study's code snapshot did not) gains that deviation, in today's evaluators' words.

Records already carrying a ``model_id`` are left as they are, so running it twice changes nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from evaluate.classification.cli_common import untrained_identity
from pretrain.fileio import atomic_write_text
from pretrain.identity import identity_of

log = logging.getLogger("add_model_identity")


def limit_train_deviation(value: int) -> str:
    # The words of evaluate/classification/cli_common.py's RunContext.finish.
    return f"--limit-train: {value} class-balanced images (protocol: the whole training set)"


def migrate(record: dict, config: dict | None) -> dict:
    """``record`` with identity fields and its missing ``--limit-train`` deviation."""
    record = dict(record)
    limit = record.get("settings", {}).get("limit_train")
    if limit is not None and not any(d.startswith("--limit-train:") for d in record["deviations"]):
        record["deviations"] = [*record["deviations"], limit_train_deviation(limit)]
    if not record.get("model_id"):
        if config is not None:
            identity = identity_of(config, record["checkpoint_sha256"])
        else:
            identity = untrained_identity(record["method"], record["backbone"], record["seed"])
        record.update(model_id=identity.model_id, pretrain_seed=identity.seed, pretrain_config=identity.config)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a folder with records/ and pretrain_logs/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in sorted((args.study / "records").glob("*.jsonl")):
        config_path = args.study / "pretrain_logs" / f"{path.stem}.config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if config is None and any(r["method"] not in ("random-init", "raw-pixels") for r in records):
            raise SystemExit(f"error: {path}: pre-trained records but no {config_path}")
        migrated = [migrate(record, config) for record in records]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in migrated))
        log.info("%s: %d records, model %s", path, len(migrated), migrated[0]["model_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
