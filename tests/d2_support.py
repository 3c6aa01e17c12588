"""When a detectron2 test may skip: only when detectron2 is not installed, and never under CI=true.

A detectron2 that is installed but fails to import (a build for another torch, a missing
dependency) is a broken environment, and its tests fail instead of quietly turning into skips.
CI installs detectron2 (Makefile `setup`), so there a missing one is a failure too.
"""
from __future__ import annotations

import functools
import importlib
import os

import pytest

from evaluate.detection.d2_compat import INSTALL_HINT, Detectron2Unavailable, import_detectron2

# The fixture is defined in tests/conftest.py; tests opt in with @needs_detectron2.
needs_detectron2 = pytest.mark.usefixtures("detectron2_installed")


@functools.lru_cache(maxsize=1)
def detectron2_status() -> tuple[str, str]:
    """("ok", ""), ("missing", reason) or ("broken", reason)."""
    try:
        importlib.import_module("detectron2")
    except ModuleNotFoundError as error:
        if error.name == "detectron2":
            return "missing", f"detectron2 is not installed; {INSTALL_HINT}"
        return "broken", f"detectron2 is installed but does not import: {error}"
    except Exception as error:  # noqa: BLE001 - whatever breaks the import is the failure to report
        return "broken", f"detectron2 is installed but does not import: {type(error).__name__}: {error}"
    try:
        import_detectron2()
    except Detectron2Unavailable as error:
        return "broken", f"detectron2 is installed but does not import: {error}"
    return "ok", ""


def require_detectron2() -> None:
    """Skip (not installed, outside CI), fail (broken, or missing under CI=true), or return."""
    state, reason = detectron2_status()
    if state == "ok":
        return
    if state == "missing" and os.environ.get("CI", "").lower() != "true":
        pytest.skip(reason)
    pytest.fail(reason + (" (CI=true: CI installs detectron2, so a missing one is a failure)"
                          if state == "missing" else ""), pytrace=False)
