"""The trust boundary: checkpoint, state and weight files are read as data, never run as code.

A pickle names the functions it calls while loading, so a downloaded checkpoint can run anything.
Every ``.pth``/``.pt``/``.ckpt`` file is therefore read with ``torch.load(weights_only=True)``, which
only rebuilds tensors, plain containers and the types allow-listed below by name; ``.pkl`` weight files
(detectron2's format) go through :class:`ArrayUnpickler`, which allows numpy arrays and nothing that
runs code. A full unpickle happens only when the user passes ``--trust-checkpoint``.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

TRUST_FLAG = "--trust-checkpoint"

_np_core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
_NUMPY_DTYPE_CLASSES = [getattr(np.dtypes, name) for name in dir(np.dtypes)
                        if name.endswith("DType") and name not in ("ObjectDType", "VoidDType")]

# The non-tensor types that real self-supervised checkpoints carry, by the name they are pickled under:
# - DINO's main_dino.py and timm's train.py save their argparse.Namespace as "args";
# - numpy scalars and dtypes appear in Lightning (solo-learn) callback states, mmselfsup/mmcv "meta"
#   and timm's "metric"; files written under numpy 1.x name numpy.core, under 2.x numpy._core.
# MoCo v1/v2/v3 and torchvision files hold tensors, plain containers and numbers only.
SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    np.ndarray,
    *_NUMPY_DTYPE_CLASSES,
    (_np_core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (_np_core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (_np_core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_np_core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
]


class UntrustedFileError(ValueError):
    """A file that would run code (or rebuild a type outside the allow-list) to load; not loaded."""

    def __init__(self, message: str, offending: str) -> None:
        super().__init__(message)
        self.offending = offending


def _refusal(error: Exception) -> tuple[str | None, str]:
    """(the global a refused pickle names, or None; torch's one-line reason), parsed from torch's
    message, whose wording is not an API: a change there degrades the message, not the refusal."""
    text = str(error)
    match = re.search(r"GLOBAL ([\w.]+) was not an allowed global", text) or re.search(r"GLOBAL ([\w.]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    after = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")), "")
    reason = after or next((line.split("WeightsUnpickler error:")[1].strip() for line in lines
                            if "WeightsUnpickler error:" in line), lines[0] if lines else type(error).__name__)
    return (match.group(1) if match else None), reason[:160]


def torch_load(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """``torch.load`` a file on CPU as data only; with ``trust`` a refused file is fully unpickled.

    Raises :class:`UntrustedFileError` naming the offending type and ``--trust-checkpoint``, and
    ``pickle.UnpicklingError`` for a file that is no pickle the data-only reader understands; other
    read errors (truncated file, not a torch file) propagate unchanged for the caller to word.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        offending, reason = _refusal(error)
        if not trust:
            if offending is None:
                raise pickle.UnpicklingError(f"{reason}; if it is a checkpoint that needs more than the data-only "
                                             f"reader, {TRUST_FLAG} reads it as a full pickle") from None
            raise UntrustedFileError(
                f"{path}: refused to load: it pickles {offending}, which is not a tensor or an allow-listed "
                f"type and could run code; pass {TRUST_FLAG} only if you trust where the file came from",
                offending) from None
    log.warning("%s: %s given, fully unpickling a file the data-only reader refused (%s)", path, TRUST_FLAG,
                offending or reason)
    return torch.load(path, map_location="cpu", weights_only=False)


_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # protocol-2 pickles store bytes (an array's buffer) as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, name): getattr(_np_core.multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    # protocol >= 5 pickles (what detectron2-format writers use today) rebuild arrays from a buffer
    **{(module, "_frombuffer"): _np_core.numeric._frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    **{("numpy.dtypes", cls.__name__): cls for cls in _NUMPY_DTYPE_CLASSES},
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler for weight ``.pkl`` files: numpy arrays, scalars, dtypes and plain containers only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def load_array_pickle(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """Read a ``.pkl`` weight file (detectron2 / Caffe2 layout) without running code from it.

    ``latin1`` decodes the Python 2 pickles of detectron2's model zoo, as detectron2 itself does.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            return ArrayUnpickler(handle, encoding="latin1").load()
        except _RefusedGlobal as error:
            if not trust:
                raise UntrustedFileError(
                    f"{path}: refused to load: it pickles {error}, which is not a numpy array or plain container "
                    f"and could run code; pass {TRUST_FLAG} only if you trust where the file came from",
                    str(error)) from None
        log.warning("%s: %s given, fully unpickling it", path, TRUST_FLAG)
        handle.seek(0)
        return pickle.load(handle, encoding="latin1")
