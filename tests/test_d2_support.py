"""The detectron2 skip rule, tried in a fresh interpreter on a hidden and on a broken detectron2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HIDE = '''
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "detectron2":
            raise ModuleNotFoundError("No module named 'detectron2'", name="detectron2")
sys.meta_path.insert(0, _Hide())
'''


def _outcome(tmp_path: Path, *, hide: bool, ci: str, extra_path: Path | None = None) -> str:
    test = tmp_path / "test_needs_d2.py"
    test.write_text("import sys\n" + (HIDE if hide else "") + f"sys.path.insert(0, {str(TESTS)!r})\n"
                    "from d2_support import require_detectron2\n\n"
                    "def test_it():\n    require_detectron2()\n")
    paths = [str(p) for p in (extra_path, TESTS.parent) if p is not None]
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          str(test)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return run.stdout.strip().splitlines()[-1]


def test_missing_detectron2_skips_outside_ci_and_fails_under_ci(tmp_path):
    """Mutation tried: the CI check dropped from require_detectron2 (always skip); the CI=true
    case then reports '1 skipped' and this test fails."""
    assert "1 skipped" in _outcome(tmp_path, hide=True, ci="")
    assert "1 failed" in _outcome(tmp_path, hide=True, ci="true")


def test_installed_but_broken_detectron2_is_a_failure_not_a_skip(tmp_path):
    """A detectron2 package whose import raises RuntimeError (as a build for another torch does).

    Mutation tried: every import error counted as 'missing' (the d2_compat rule before); this test
    then sees '1 skipped' and fails."""
    fake = tmp_path / "site" / "detectron2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('detectron2 was built for another torch')\n")
    assert "1 failed" in _outcome(tmp_path, hide=False, ci="", extra_path=tmp_path / "site")
