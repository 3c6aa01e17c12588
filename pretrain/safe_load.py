"""The trust boundary: checkpoint, state and weight files are read as data, never run as code.

A pickle names the functions it calls while loading, so a downloaded checkpoint can run anything.
Every ``.pth``/``.pt``/``.ckpt`` file is therefore read with ``torch.load(weights_only=True)``, which
only rebuilds tensors, plain containers and the types allow-listed below by name; ``.pkl`` weight files
(detectron2's format) go through :class:`ArrayUnpickler`, which rebuilds numpy arrays of plain numeric,
bool and fixed-width string dtypes itself and allows nothing that runs code. A full unpickle happens only
when the user passes ``--trust-checkpoint``.

A refusal names every global the file pickles outside the allow-list (found by reading its opcodes, not
by running them), with non-printable characters escaped, so that no crafted name can rewrite the line.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import logging
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.errors import UserError

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


class UntrustedFileError(UserError, ValueError):
    """A file that would run code (or rebuild a type outside the allow-list) to load; not loaded.

    ``offending`` names what was refused: every offending global, comma-separated and escaped.
    """

    def __init__(self, message: str, offending: str) -> None:
        super().__init__(message)
        self.offending = offending


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``, ...): a name read from a
    file can then neither move the terminal's cursor nor start a line of its own."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def pickle_globals(data: bytes) -> list[str]:
    """Every global (``module.name``) a pickle names, read from its opcodes without running any.

    GLOBAL and INST carry the name; protocol >= 4's STACK_GLOBAL takes the two strings pushed before
    it, which may come back from the memo. A stream that ends early yields the names read so far.
    """
    names: list[str] = []
    strings: list[Any] = []   # the last values pushed, as far as STACK_GLOBAL needs them
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(".".join(str(arg).split(" ", 1)))
            elif opcode.name == "STACK_GLOBAL":
                if len(strings) >= 2 and all(isinstance(s, str) for s in strings[-2:]):
                    names.append(f"{strings[-2]}.{strings[-1]}")
                strings.clear()
            elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if opcode.name == "MEMOIZE" else arg] = strings[-1] if strings else None
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                strings.append(memo.get(arg))
            elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                strings.append(arg)
            elif opcode.stack_after:   # pushes something that is not a name (FRAME, PROTO push nothing)
                strings.append(None)
    except ValueError:   # genops' word for a truncated or malformed stream
        pass
    return sorted(set(names))


def _legacy_unsafe_globals(data: bytes) -> list[str]:
    """What ``get_unsafe_globals_in_checkpoint`` lists, for torch's legacy (non-zip) format, which it
    does not read: the globals of the pickle that holds the object (the file's fourth, after the magic
    number, the protocol and the system info) that torch's and our allow-lists lack. Must be called
    inside ``safe_globals(SAFE_GLOBALS)``."""
    stream = io.BytesIO(data)
    for _ in range(3):
        for _ in pickletools.genops(stream):   # stops after the pickle's STOP
            pass
    from torch import _weights_only_unpickler as weights_only   # private; torch is pinned (requirements.txt)
    allowed = set(weights_only._get_allowed_globals()) | set(weights_only._get_user_allowed_globals())
    return sorted(set(pickle_globals(data[stream.tell():])) - allowed)


def _torch_refusal(error: Exception, data: bytes) -> tuple[list[str], str]:
    """(every refused global of a torch file, torch's one-line reason). The globals come from the
    file's opcodes; torch's message (whose wording is not an API) is only the fallback."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    after = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")), "")
    reason = after or next((line.split("WeightsUnpickler error:")[1].strip() for line in lines
                            if "WeightsUnpickler error:" in line), lines[0] if lines else type(error).__name__)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            if zipfile.is_zipfile(io.BytesIO(data)):
                offending = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
            else:
                offending = _legacy_unsafe_globals(data)
    # ValueError: a stream pickletools or torch cannot list; AttributeError / ImportError: a torch
    # without the private allow-list helpers (torch's message then names the first global).
    except (ValueError, pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ImportError):
        offending = []
    if not offending:
        match = re.search(r"GLOBAL (\S+) was not an allowed global", text) or re.search(r"GLOBAL (\S+)", text)
        offending = [match.group(1)] if match else []
    return offending, reason


def _refused(path: Path, offending: list[str], what: str) -> UntrustedFileError:
    names = ", ".join(printable(name) for name in offending)
    return UntrustedFileError(
        f"{path}: refused to load: it pickles {names}, which {'is' if len(offending) == 1 else 'are'} not {what} "
        f"and could run code; pass {TRUST_FLAG} only if you trust where the file came from", names)


def _read(path: Path, data: bytes | None) -> bytes:
    return path.read_bytes() if data is None else data


def torch_load(path: str | os.PathLike, *, trust: bool = False, data: bytes | None = None) -> Any:
    """``torch.load`` a file on CPU as data only; with ``trust`` a refused file is fully unpickled.

    ``data``, when given, are the bytes of ``path`` already read (so that what a caller hashed is what
    is loaded); otherwise the file is read once here. Raises :class:`UntrustedFileError` naming every
    offending type and ``--trust-checkpoint``, and ``pickle.UnpicklingError`` for a file that is no
    pickle the data-only reader understands; other read errors (truncated file, not a torch file)
    propagate unchanged for the caller to word.
    """
    path = Path(path)
    data = _read(path, data)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        offending, reason = _torch_refusal(error, data)
        if not trust:
            if not offending:
                raise pickle.UnpicklingError(f"{printable(reason)}; if it is a checkpoint that needs more than the "
                                             f"data-only reader, {TRUST_FLAG} reads it as a full pickle") from None
            raise _refused(path, offending, "a tensor or an allow-listed type") from None
    log.warning("%s: %s given, fully unpickling a file the data-only reader refused (%s)", path, TRUST_FLAG,
                printable(", ".join(offending) or reason))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class _UnsafeArray(pickle.UnpicklingError):
    """An array or dtype the data-only reader does not rebuild; the message says which and why."""


# numpy dtype kinds the reader rebuilds: bool, signed / unsigned int, float, complex, bytes, unicode.
# No object, void (structured), datetime or other kinds: their bytes can stand for pointers or need
# metadata that a file could forge.
_PLAIN_KINDS = "biufcSU"


class _DTypeSpec:
    """What a pickled ``numpy.dtype(typestr, align, copy)`` plus its BUILD state asked for.

    No real dtype exists until :meth:`dtype` checks the request: ``numpy.dtype.__setstate__`` trusts
    its state (fields, flags) and would let the file's bytes be read as object pointers.
    """

    def __init__(self, typestr: Any, align: Any = False, copy: Any = False) -> None:
        self.typestr, self.state = typestr, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def dtype(self) -> np.dtype:
        if not isinstance(self.typestr, str) or not re.fullmatch(r"[a-zA-Z]\d*", self.typestr):
            raise _UnsafeArray(f"numpy dtype {printable(repr(self.typestr))} is not a plain numeric, bool or string dtype")
        try:
            dtype = np.dtype(self.typestr)
        except TypeError:
            raise _UnsafeArray(f"numpy dtype {self.typestr!r} is not a dtype numpy knows") from None
        if dtype.kind not in _PLAIN_KINDS:
            raise _UnsafeArray(f"numpy dtype {self.typestr!r} (kind {dtype.kind!r}) is not a plain numeric, bool or "
                               "fixed-width string dtype")
        if self.state is None:
            return dtype
        state = self.state
        # numpy writes (3, byteorder, subarray, names, fields, elsize, alignment, flags) for these kinds.
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None) and isinstance(state[7], int)
                and state[7] & ~8 == 0):  # 8 = NPY_NEEDS_INIT, set for unicode; no object/pointer flag
            raise _UnsafeArray(f"numpy dtype {self.typestr!r} carries a state with fields, a subarray or object "
                               "flags, which a plain dtype never has")
        if state[1] in "<>" and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(state[1])
        if state[5] not in (-1, dtype.itemsize):
            raise _UnsafeArray(f"numpy dtype {self.typestr!r} claims an item size of {state[5]}, not {dtype.itemsize}")
        return dtype


def _as_buffer(raw: Any, what: str) -> bytes:
    if isinstance(raw, str):   # Python 2 pickles read with encoding="latin1" (detectron2's model zoo)
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    raise _UnsafeArray(f"{what} data is a {type(raw).__name__}, not bytes (an object array?)")


def _array(raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    """A new ndarray from raw bytes, checked: plain dtype, a shape of non-negative ints, the exact size."""
    if not isinstance(dtype, _DTypeSpec):
        raise _UnsafeArray(f"array dtype is a {type(dtype).__name__}, not a pickled numpy.dtype")
    dtype = dtype.dtype()
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise _UnsafeArray(f"array shape (a {type(shape).__name__}) is not a tuple of non-negative ints")
    buffer = _as_buffer(raw, "array")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buffer) != expected:
        raise _UnsafeArray(f"array of shape {shape} and dtype {dtype} needs {expected} bytes, the file has {len(buffer)}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy(order="K")


class _ArraySpec:
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` followed by BUILD: the array is made by
    :func:`_array` from the BUILD state, never by ``ndarray.__setstate__``."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:   # (version, shape, dtype, is_fortran, raw)
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _UnsafeArray("array state is not (shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        self.array = _array(raw, dtype, shape, bool(fortran))


_NDARRAY = object()   # numpy.ndarray: only ever the first argument of _reconstruct


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArraySpec:
    if subtype is not _NDARRAY:
        raise _UnsafeArray("_reconstruct of something other than numpy.ndarray")
    return _ArraySpec()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if order not in ("C", "F"):
        raise _UnsafeArray(f"array order {printable(repr(order))} is not 'C' or 'F'")
    return _array(buffer, dtype, shape, order == "F")


def _scalar(dtype: Any, raw: Any) -> Any:
    if not isinstance(dtype, _DTypeSpec):
        raise _UnsafeArray(f"numpy scalar dtype is a {type(dtype).__name__}, not a pickled numpy.dtype")
    dtype = dtype.dtype()
    buffer = _as_buffer(raw, "numpy scalar")
    if len(buffer) != dtype.itemsize:
        raise _UnsafeArray(f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes, the file has {len(buffer)}")
    return np.frombuffer(buffer, dtype=dtype)[0]


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for an array's bytes: latin-1 only, no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _UnsafeArray(f"_codecs.encode with {printable(repr(encoding))[:40]} (only latin1 of a str holds array data)")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, which protocol-2 pickles write for an empty buffer (an array with a zero dimension)."""
    if args:
        raise _UnsafeArray("bytes() with arguments (only the empty buffer of an empty array is pickled so)")
    return b""


_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1,
    **{(module, "bytes"): _empty_bytes for module in ("__builtin__", "builtins")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTypeSpec,
    **{(module, name): function for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, function in (("_reconstruct", _reconstruct), ("scalar", _scalar))},
    # protocol >= 5 pickles (what detectron2-format writers use today) rebuild arrays from a buffer
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler for weight ``.pkl`` files: numpy arrays, scalars and plain containers only.

    The numpy globals resolve to stand-ins that record what the file asks for; arrays are built from
    (dtype string, shape, bytes) after checks, so BUILD never reaches a numpy ``__setstate__``.
    Use :func:`load_array_pickle`, which also swaps the stand-ins for the arrays they describe.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _materialize(obj: Any, seen: set[int]) -> Any:
    """``obj`` with every stand-in replaced by its array or dtype (dicts and lists in place)."""
    if isinstance(obj, _ArraySpec):
        if obj.array is None:
            raise _UnsafeArray("an array without its data (no BUILD state)")
        return obj.array
    if isinstance(obj, _DTypeSpec):
        return obj.dtype()
    if isinstance(obj, (dict, list)):
        if id(obj) in seen:
            return obj
        seen.add(id(obj))
        for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            obj[key] = _materialize(value, seen)
        return obj
    if isinstance(obj, tuple):
        return tuple(_materialize(value, seen) for value in obj)
    return obj


def load_array_pickle(path: str | os.PathLike, *, trust: bool = False, data: bytes | None = None) -> Any:
    """Read a ``.pkl`` weight file (detectron2 / Caffe2 layout) without running code from it.

    ``data``, when given, are the bytes of ``path`` already read. ``latin1`` decodes the Python 2
    pickles of detectron2's model zoo, as detectron2 itself does. Raises :class:`UntrustedFileError`
    naming every offending global, or the array that is not plain data.
    """
    path = Path(path)
    data = _read(path, data)
    try:
        return _materialize(ArrayUnpickler(io.BytesIO(data), encoding="latin1").load(), set())
    except _RefusedGlobal as error:
        if not trust:
            offending = sorted(set(pickle_globals(data)) - {f"{m}.{n}" for m, n in _PICKLE_ALLOWED} | {str(error)})
            raise _refused(path, offending, "a numpy array or plain container") from None
    except _UnsafeArray as error:
        if not trust:
            raise UntrustedFileError(f"{path}: refused to load: {error}; pass {TRUST_FLAG} only if you trust where "
                                     "the file came from", "numpy array") from None
    log.warning("%s: %s given, fully unpickling it", path, TRUST_FLAG)
    return pickle.loads(data, encoding="latin1")


def read_weight_file(path: str | os.PathLike, *, trust: bool = False) -> tuple[Any, str]:
    """(the object in ``path``, sha256 of the bytes it was read from): one read, one parse.

    ``.pkl`` goes through :func:`load_array_pickle`, anything else through :func:`torch_load`. The
    caller hands the object on (to detectron2, say) instead of the path, so the bytes hashed and
    checked are the bytes used, even if the file changes afterwards.
    """
    path = Path(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".pkl":
        return load_array_pickle(path, trust=trust, data=data), digest
    return torch_load(path, trust=trust, data=data), digest
