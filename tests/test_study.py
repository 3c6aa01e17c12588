"""The shipped Table 4 studies: the CPU tier (results/studies/fmnist_table4), whose README's table is
what the table builder makes of its records, byte for byte, and whose records are what the README says
they are; and the GPU tier (results/studies/fmnist_table4_gpu, issue 19), checked the same way once it
is shipped, with the same checks run now on the CPU smoke tier of its driver.

Break tried: editing one number in a shipped record (the README table no longer matches), and
dropping the seed aggregation key in the builder (cells lose their ``(n)``): both fail here.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_table1a_bolds_each_probe_apart_and_records_carry_their_identity() -> None:
    """Table 1a ranks the fast cached-feature probe and the standard probe apart (it once bolded the
    fast probe's 80.72 against the standard probe's rows); each variant's two seeds share one model_id."""
    built = subprocess.run([sys.executable, "-m", "evaluate", "tables", str(STUDY)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    part = built.stdout[built.stdout.index("**Table 1a"):]
    part = part[:part.index("\n**Table", 1)]
    bold = [line.split("|")[3].strip() for line in part.splitlines() if line.startswith("|") and "**" in line]
    assert sorted(bold) == ["measured", "measured (linear_fast)"]
    for variant in ("none", "binary", "soft", "soft_tau0.05", "random"):
        ids = {json.loads(line)["model_id"] for path in (STUDY / "records").glob(f"{variant}_s[0-9].jsonl")
               for line in path.read_text().splitlines()}
        assert len(ids) == 1, (variant, ids)


# ---------------------------------------------------------------------------------------------------
# The GPU tier (issue 19): results/studies/fmnist_table4_gpu, written by scripts/gpu_study.sh on a CUDA
# machine. The same checks run on the CPU smoke tier's output, so they are exercised before it ships.
GPU_STUDY = ROOT / "results" / "studies" / "fmnist_table4_gpu"
GPU_PROTOCOLS = {"linear_fast", "knn", "linear"}
sys.path.insert(0, str(ROOT / "scripts"))


def check_gpu_study(folder: Path, min_seeds: int, full_data: bool,
                    variants: tuple[str, ...] = ("none", "binary", "soft")) -> None:
    """What the GPU tier's folder must hold: ``variants`` (Eq. 1 / binary / soft) with ``min_seeds``
    seeds each and the three baselines, every one with the fast probe, kNN and the standard probe;
    records filed under the variant they carry; the supervised bound recorded as such; a README
    generated from the records."""
    runs: dict[str, set[tuple[int, str]]] = {}
    for path in sorted((folder / "records").glob("*.jsonl")):
        variant, _, seed = path.stem.rpartition("_s")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert record["dataset"] == "fashion-mnist"
            assert record["backbone"] == ("raw-pixels" if variant == "raw-pixels" else "resnet18_cifar"), path
            expected_method = {"supervised": "supervised", "random": "random-init", "raw-pixels": "raw-pixels"}
            assert record["method"] == expected_method.get(variant, "SNCLR"), path
            if variant in ("none", "binary", "soft"):
                assert record["pretrain_config"]["neighbors"] == variant, path
            if full_data:
                settings = ast.literal_eval(record["settings"]) if isinstance(record["settings"], str) else record["settings"]
                assert settings["limit_train"] is None and settings["limit_val"] is None, path
            runs.setdefault(variant, set()).add((int(seed), record["protocol"]))
    assert {*variants, "supervised", "random", "raw-pixels"} <= set(runs), sorted(runs)
    for name, seen in runs.items():
        seeds = {seed for seed, _ in seen}
        if name in variants:
            assert len(seeds) >= min_seeds, f"{name}: seeds {sorted(seeds)}"
        for seed in seeds:
            assert {p for s, p in seen if s == seed} == GPU_PROTOCOLS, f"{name} seed {seed}"
    for config_path in sorted((folder / "pretrain_logs").glob("*.config.yaml")):
        config = yaml.safe_load(config_path.read_text())
        assert config["backbone"] == "resnet18_cifar", config_path
        assert config["method"] == ("supervised" if config_path.name.startswith("supervised") else "SNCLR")
        if full_data:
            assert config["train_limit"] is None, config_path
    readme = (folder / "README.md").read_text(encoding="utf-8")
    rivals = [f"soft minus {rival}" for rival in variants if rival != "soft"]
    for needed in (*rivals, "Spearman of the fast probe", "neighbour label agreement", "gap to the supervised bound"):
        assert needed in readme, needed
    assert (folder / "curves.png").is_file() and (folder / "summary.json").is_file()


def regenerated_readme(folder: Path, tmp_path: Path) -> str:
    """The README study_report.py writes from ``folder``'s records, with the shipped title and command."""
    import study_report

    shipped = (folder / "README.md").read_text(encoding="utf-8").splitlines()
    title = shipped[0].removeprefix("# Fashion-MNIST Table 4 study: ")
    command = next(line for line in shipped if line.startswith("Command: `"))[len("Command: `"):-2]
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    (copy / "README.md").unlink()
    assert study_report.main([str(copy), "--readme", title, "--command", command]) == 0
    return (copy / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpu_study() -> Path:
    if not GPU_STUDY.is_dir():
        pytest.skip(f"{GPU_STUDY.relative_to(ROOT)} is not shipped yet: the GPU tier is prepared and dry-run "
                    "(bash scripts/gpu_study.sh --dry-run) but has not run on a CUDA machine")
    return GPU_STUDY


def test_gpu_study_holds_every_unit_on_all_the_data(gpu_study: Path) -> None:
    check_gpu_study(gpu_study, min_seeds=3, full_data=True)
    assert "GPU tier" in (gpu_study / "README.md").read_text(encoding="utf-8").splitlines()[0]


def test_gpu_study_readme_is_what_the_report_makes_of_its_records(gpu_study: Path, tmp_path: Path) -> None:
    assert regenerated_readme(gpu_study, tmp_path) == (gpu_study / "README.md").read_text(encoding="utf-8")


def test_dry_run_projects_every_unit_from_stated_arithmetic() -> None:
    """The plan names every unit, and its numbers are the docstring's arithmetic: SNCLR = 2 fwd+bwd +
    2 fwd per image, the supervised bound 2 fwd+bwd, baselines evaluation only."""
    import study_fmnist_table4 as driver

    tier = driver.TIERS["gpu"]
    plan = driver.projection(tier, [("soft", 0)], [("supervised", 0), ("random", 0)], parallel=3, tflops=100.0)
    forward, both = plan["gflop_forward"], plan["gflop_forward_backward"]
    assert forward == pytest.approx(1.111, abs=0.01) and both == pytest.approx(3.33, abs=0.01)   # resnet18_cifar, 32 px
    rows = {row["unit"]: row for row in plan["units"]}
    assert rows["soft_s0"]["train_tflop"] == pytest.approx(60_000 * tier.epochs * (2 * both + 2 * forward) / 1e3, rel=1e-3)
    assert rows["supervised_s0"]["train_tflop"] == pytest.approx(60_000 * tier.epochs * 2 * both / 1e3, rel=1e-3)
    assert rows["random_s0"]["train_tflop"] == 0
    capped = driver.projection(tier, [("soft", 0)], [], parallel=1, device_pipeline=False)
    assert capped["units"][0]["busy_s"] >= 60_000 * tier.epochs / driver.PIL_PAIRS_PER_S
    run = subprocess.run([sys.executable, "scripts/study_fmnist_table4.py", "--tier", "gpu", "--work", "w", "--ship", "s",
                          "--units", "none:0", "soft:2", "--baselines", "supervised:0", "raw-pixels:0", "--parallel", "3",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for unit in ("none_s0", "soft_s2", "supervised_s0", "raw-pixels_s0", "projected:", "assumed 100 effective TFLOP/s"):
        assert unit in run.stdout, unit
    assert not Path(ROOT / "w").exists()   # a dry run writes nothing


@pytest.mark.parametrize("spec", ["soft", "soft:x", "nope:0"])
def test_driver_refuses_a_bad_unit_in_one_line(spec: str) -> None:
    run = subprocess.run([sys.executable, "scripts/study_fmnist_table4.py", "--tier", "gpu", "--work", "w", "--ship", "s",
                          "--units", spec, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_gpu_tier_at_cpu_smoke_scale(tmp_path: Path) -> None:
    """The GPU tier's recipe, supervised bound, evaluators, report and README checks, end to end at
    CPU-smoke scale (16 px, 64 images): what `gpu_study.sh --dry-run` runs, one seed of Eq. 1, soft and
    each baseline (binary differs from soft by one flag; the CPU tier and tests/pretrain cover it)."""
    import study_fmnist_table4 as driver

    ship = tmp_path / "ship"
    assert driver.main(["--tier", "gpu_cpu_smoke", "--work", str(tmp_path / "work"), "--ship", str(ship),
                        "--units", "none:0", "soft:0", "--baselines", "supervised:0", "random:0",
                        "raw-pixels:0", "--parallel", "2"]) == 0
    import study_report
    assert study_report.main([str(ship), "--readme", "CPU smoke tier", "--command", "pytest"]) == 0
    check_gpu_study(ship, min_seeds=1, full_data=False, variants=("none", "soft"))
    summary = json.loads((ship / "summary.json").read_text())
    assert set(summary["targets"]["soft_vs_none"]) == {"linear_fast", "knn", "linear"}
    assert "soft" in summary["neighbor_agreement_by_epoch"]
    assert regenerated_readme(ship, tmp_path / "again") == (ship / "README.md").read_text(encoding="utf-8")
    # The checks can fail: a supervised record that claims SNCLR, and a unit missing the standard probe.
    records = ship / "records" / "supervised_s0.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(line.replace('"method": "supervised"', '"method": "SNCLR"') for line in lines) + "\n")
    with pytest.raises(AssertionError):
        check_gpu_study(ship, min_seeds=1, full_data=False, variants=("none", "soft"))
    records.write_text("\n".join(line for line in lines if '"protocol": "linear"' not in line) + "\n")
    with pytest.raises(AssertionError, match="supervised seed 0"):
        check_gpu_study(ship, min_seeds=1, full_data=False, variants=("none", "soft"))
