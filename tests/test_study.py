"""The shipped Table 4 study (results/studies/fmnist_table4): its README's table is what the table
builder makes of its records, byte for byte, and its records are what the README says they are.

Break tried: editing one number in a shipped record (the README table no longer matches), and
dropping the seed aggregation key in the builder (cells lose their ``(n)``): both fail here.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "studies" / "fmnist_table4"
BEGIN, END = "<!-- table4:begin -->", "<!-- table4:end -->"


def table4_block(markdown: str) -> str:
    """From the Table 4 caption to the end of its footnotes."""
    start = markdown.index("**Table 4")
    rest = markdown[start:]
    following = re.search(r"\n\*\*Table \d|\n## ", rest[1:])
    return (rest[: following.start() + 1] if following else rest).strip()


def test_readme_table_is_what_the_builder_makes_of_the_records() -> None:
    readme = (STUDY / "README.md").read_text(encoding="utf-8")
    shipped = readme[readme.index(BEGIN) + len(BEGIN): readme.index(END)].strip()
    built = subprocess.run([sys.executable, "-m", "evaluate", "tables", str(STUDY)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert table4_block(built.stdout) == shipped


def test_every_variant_has_at_least_two_seeds_and_all_five_protocols() -> None:
    runs: dict[str, set[tuple[int, str]]] = {}
    for path in sorted((STUDY / "records").glob("*.jsonl")):
        variant, _, seed = path.stem.rpartition("_s")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert record["dataset"] == "fashion-mnist"
            assert record["backbone"] == ("raw-pixels" if variant == "raw-pixels" else "resnet18")
            runs.setdefault(variant, set()).add((int(seed), record["protocol"]))
    pretrained = {name: seen for name, seen in runs.items() if name not in ("random", "raw-pixels")}
    assert {"none", "binary", "soft"} <= set(pretrained)
    for name, seen in pretrained.items():
        seeds = {seed for seed, _ in seen}
        assert len(seeds) >= 2, f"{name}: seeds {sorted(seeds)}"
        for seed in seeds:
            assert {p for s, p in seen if s == seed} == {"linear_fast", "knn", "linear", "semisup_1pct",
                                                        "semisup_10pct"}, f"{name} seed {seed}"


@pytest.mark.parametrize("variant", ["none", "binary", "soft"])
def test_records_carry_the_variant_they_are_filed_under(variant: str) -> None:
    files = sorted((STUDY / "records").glob(f"{variant}_s*.jsonl"))
    assert files, f"no {variant} records under {STUDY / 'records'}"
    for path in files:
        for line in path.read_text().splitlines():
            assert json.loads(line)["variant"]["neighbors"] == variant
