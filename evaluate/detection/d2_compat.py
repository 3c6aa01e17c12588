"""Import detectron2 or say in one line why it cannot be used.

detectron2 is an optional extra. On our CPU machines it is the pure-Python part of the PyPI wheel
``sal-detectron2==0.7.2`` (a repackaging of upstream detectron2, code of April 2024) unpacked by
``scripts/install_detectron2.sh``; its compiled ``detectron2._C`` targets Python 3.10 / CUDA 12 and
never loads here. Everything Mask R-CNN R50-FPN needs works without it: ROIAlign and NMS come from
torchvision, and COCOEvaluator falls back to the official pycocotools COCOeval. On GPU clusters,
install detectron2 from source as its documentation says (docs/detection.md).
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from pretrain.errors import UserError

INSTALL_HINT = ("install it with `bash scripts/install_detectron2.sh .venv/bin/python` (CPU machines) or "
                "from source on a GPU cluster, see docs/detection.md")


class Detectron2Unavailable(UserError, ImportError):
    """detectron2 is missing or broken; the message is one line naming the cause and the fix."""


def detectron2_missing_reason() -> str | None:
    """None when detectron2 imports, else a one-line reason (used by tests to skip)."""
    try:
        import_detectron2()
    except Detectron2Unavailable as error:
        return str(error)
    return None


def import_detectron2() -> ModuleType:
    """Import detectron2 (and the submodules our code uses) or raise Detectron2Unavailable."""
    try:
        with warnings.catch_warnings():
            # detectron2 scripts a few helpers with torch.jit.script, which recent torch marks deprecated;
            # the warning is about detectron2's code, not ours, and would repeat in every run.
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            module = importlib.import_module("detectron2")
            for name in ("config", "checkpoint", "modeling", "engine", "evaluation", "data"):
                importlib.import_module(f"detectron2.{name}")
    # Not only ImportError: a detectron2 built for another torch can fail with these while importing.
    except (ImportError, AttributeError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Detectron2Unavailable(f"detectron2 is not importable ({reason}); {INSTALL_HINT}") from None
    return module
