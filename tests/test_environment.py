"""The conda environment and the pip requirement files pin the same packages."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
            assert match, f"not an exact pin: {line!r}"
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_yml_matches_requirement_files():
    pip_reqs = _pins((ROOT / "requirements.txt").read_text().splitlines()
                     + (ROOT / "requirements-detectron2.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == pip_reqs
    assert "python=3.11" in env["dependencies"]


def test_torch_pins_are_the_local_releases():
    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
