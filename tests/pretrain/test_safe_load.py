"""The trust boundary: data-only reading with an allow-list, and the restricted .pkl reader."""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.checkpoint import CheckpointError, load_pretrain_checkpoint
from pretrain.safe_load import UntrustedFileError, load_array_pickle, torch_load
from untrusted_pickles import OFFENDING, WritesMarker, global_named, hidden_in, pointer_dtype_pickle

REPO = Path(__file__).resolve().parents[2]
_np_core = getattr(np, "_core", None) or np.core


def _rewrite_pickle_in(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes inside a torch.save file's data.pkl (protocol 2 names globals as plain text)."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            target.writestr(info, data)


def _as_numpy1_writes_it(path: Path) -> None:
    """Rewrite a torch.save file as numpy 1.x writes it: numpy.core where numpy 2 names numpy._core."""
    _rewrite_pickle_in(path, b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_numpy_values_load_as_data_under_both_numpy_names(tmp_path):
    values = {"metric": np.float64(72.5), "seed": np.int64(3), "weights": np.arange(4, dtype=np.float32),
              "dtype": np.dtype("float16"), "args": argparse.Namespace(arch="vit_small", lr=0.1)}
    path = tmp_path / "c.pth"
    torch.save(values, path)
    for rename in (False, True):
        if rename:
            _as_numpy1_writes_it(path)
        loaded = torch_load(path)
        assert loaded["metric"] == 72.5 and loaded["seed"] == 3 and loaded["dtype"] == np.float16
        assert np.array_equal(loaded["weights"], np.arange(4)) and loaded["args"].arch == "vit_small"


def test_pretrain_checkpoint_reader_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save(hidden_in({"format": "snclr-bench/pretrain/v1", "model": {}, "optimizer": {}, "epoch": 1,
                          "config": {}}, marker), tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match=rf"checkpoint.pth: refused to load: it {OFFENDING}.*--trust-checkpoint"):
        load_pretrain_checkpoint(tmp_path / "checkpoint.pth")
    assert not marker.exists()


def test_array_pickle_reader_takes_numpy_of_every_protocol_and_nothing_else(tmp_path):
    payload = {"model": {"w": np.ones((2, 3), dtype=np.float32)}, "__author__": "x", "step": np.int64(5)}
    for protocol in (2, 4, 5):
        (tmp_path / "w.pkl").write_bytes(pickle.dumps(payload, protocol=protocol))
        loaded = load_array_pickle(tmp_path / "w.pkl")
        assert np.array_equal(loaded["model"]["w"], payload["model"]["w"]) and loaded["step"] == 5
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(UntrustedFileError, match=OFFENDING):
        load_array_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


class _PosixPath:
    def __reduce__(self):
        return pathlib.PosixPath, ("/tmp",)


class _System:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.mark.parametrize("kind", ["pkl2", "pkl5", "torch"])
def test_a_refusal_names_every_offending_global(tmp_path, kind):
    """Before issue 15 only the first offender was named: pathlib.PosixPath alone (harmless-looking, an
    invitation to --trust-checkpoint), while the same file also called os.system."""
    payload = {"model": {"w": np.ones(2, dtype=np.float32)}, "path": _PosixPath(), "run": _System()}
    path = tmp_path / ("w.pth" if kind == "torch" else "w.pkl")
    if kind == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    with pytest.raises(UntrustedFileError) as refused:
        (torch_load if kind == "torch" else load_array_pickle)(path)
    message = str(refused.value)
    assert f"pickles pathlib.PosixPath, {os.system.__module__}.system, which are not" in message, message
    assert message.endswith("pass --trust-checkpoint only if you trust where the file came from")


def test_a_crafted_global_name_cannot_rewrite_the_line(tmp_path):
    """A global name with terminal escapes (clear the line, carriage return) printed raw would replace the
    refusal with a fake message; it is shown escaped, on one line."""
    name = "system\x1b[2K\rOK: checkpoint verified"
    (tmp_path / "w.pkl").write_bytes(global_named("os", name))
    torch.save({"run": _System()}, tmp_path / "w.pth")
    _rewrite_pickle_in(tmp_path / "w.pth", b"\nsystem\n", f"\n{name}\n".encode())
    for path, reader in ((tmp_path / "w.pkl", load_array_pickle), (tmp_path / "w.pth", torch_load)):
        with pytest.raises(UntrustedFileError) as refused:
            reader(path)
        message = str(refused.value)
        assert "\x1b" not in message and "\r" not in message and "\n" not in message, repr(message)
        assert "system\\x1b[2K\\rOK: checkpoint verified" in message, message


def test_a_pointer_dtype_is_refused_in_one_line_and_the_process_lives(tmp_path):
    """Before issue 15 this file, made only of allow-listed numpy globals, passed the reader and the
    process died of SIGSEGV (exit 139, no output) as soon as the array was read."""
    path = pointer_dtype_pickle(tmp_path / "w.pkl")
    script = ("import sys\n"
              "from pretrain.safe_load import UntrustedFileError, load_array_pickle\n"
              "try:\n"
              "    weights = load_array_pickle(sys.argv[1])\n"
              "except UntrustedFileError as error:\n"
              "    sys.exit(f'error: {error}')\n"
              "print(repr(weights['model']['res2.0.conv1.weight']['a']))\n")
    run = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, (run.returncode, run.stderr[-500:])
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: refused to load: numpy dtype 'V8'"), line


def _dtype_pickle(typestr: str, state: tuple, raw: bytes) -> bytes:
    class DType:
        def __reduce__(self):
            return np.dtype, (typestr, False, True), state

    class Array:
        def __reduce__(self):
            return _np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), DType(), False, raw)

    return pickle.dumps({"model": {"w": Array()}}, protocol=2)


@pytest.mark.parametrize("typestr,state,refusal", [
    ("O8", (3, "|", None, None, None, -1, -1, 63), "kind 'O'"),
    ("f8", (3, "<", None, None, None, -1, -1, 63), "fields, a subarray or object flags"),
    ("f8", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 0), "fields, a subarray or object flags"),
    ("f8", (3, "<", (np.dtype("f4"), (2,)), None, None, 8, 4, 0), "fields, a subarray or object flags"),
    ("M8", (4, "<", None, None, None, -1, -1, 0, (None, (b"s", 1, 1, 1))), "kind 'M'"),
    ("f8", (3, "<", None, None, None, 16, -1, 0), "item size of 16"),
])
def test_only_plain_dtypes_are_rebuilt(tmp_path, typestr, state, refusal):
    (tmp_path / "w.pkl").write_bytes(_dtype_pickle(typestr, state, b"\x00" * 8))
    with pytest.raises(UntrustedFileError, match=refusal):
        load_array_pickle(tmp_path / "w.pkl")


def test_array_size_must_match_its_bytes(tmp_path):
    (tmp_path / "w.pkl").write_bytes(_dtype_pickle("f8", (3, "<", None, None, None, -1, -1, 0), b"\x00" * 4))
    with pytest.raises(UntrustedFileError, match="needs 8 bytes, the file has 4"):
        load_array_pickle(tmp_path / "w.pkl")


class _Python2Array:
    """How a Python 2 pickle (detectron2's model zoo) reaches the reader with encoding="latin1": the
    array's bytes arrive as a str."""

    def __init__(self, array: np.ndarray, versioned: bool = True) -> None:
        self.array, self.versioned = array, versioned

    def __reduce__(self):
        state = (self.array.shape, self.array.dtype, False, self.array.tobytes().decode("latin1"))
        # Old numpy wrote the state without its leading version number; numpy still reads both.
        return _np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, *state) if self.versioned else state


def test_python2_byte_strings_are_read_as_latin1(tmp_path):
    """Python 2 wrote ``str`` as raw bytes (BINSTRING), array data included; detectron2 reads such
    files with encoding="latin1", and so do we. Mutations tried (found by mutmut in
    ``load_array_pickle``), each failing this test: the encoding dropped (ASCII) or misspelt."""
    import struct
    array = np.arange(-2.0, 2.0, dtype=np.float32)   # bytes >= 0x80 in its data
    data = pickle.dumps({"blobs": {"conv1_w": _Python2Array(array)}}, protocol=2)
    text = array.tobytes().decode("latin1").encode("utf-8")
    as_python3 = b"X" + struct.pack("<I", len(text)) + text
    assert data.count(as_python3) == 1
    raw = array.tobytes()
    (tmp_path / "py2.pkl").write_bytes(data.replace(as_python3, b"T" + struct.pack("<I", len(raw)) + raw)
                                       .replace(b"X\x07\x00\x00\x00conv1_w", b"U\x08conv1_w\xe9"))
    loaded = load_array_pickle(tmp_path / "py2.pkl")
    assert np.array_equal(loaded["blobs"]["conv1_w\xe9"], array)


def test_a_refused_weight_pickle_names_file_global_and_what_it_may_hold(tmp_path):
    """Mutations tried (found by mutmut in ``load_array_pickle``), each failing this test: the path,
    or the description of what the file may hold, left out of the message."""
    path = tmp_path / "w.pkl"
    path.write_bytes(global_named("os", "system"))
    with pytest.raises(UntrustedFileError, match=rf"^{path}: refused to load: it pickles os\.system, which is not a "
                                                 r"numpy array or plain container and could run code; pass "):
        load_array_pickle(path)


def test_real_weight_pickles_load_with_every_dtype_layout_and_protocol(tmp_path):
    """Our converter's layout and the MSRA / torchvision-converted one: {"model": {name: ndarray},
    "__author__": ..., "matching_heuristics": True}, and Caffe2's {"blobs": ...}."""
    from evaluate.detection.convert import write_detectron2_weights
    from pretrain.safe_load import read_weight_file

    rng = np.random.default_rng(0)
    arrays = {"conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "fortran": np.asfortranarray(rng.standard_normal((3, 5))),
              "big_endian": np.arange(6, dtype=">f8").reshape(2, 3), "half": np.ones(3, dtype=np.float16),
              "ints": np.arange(-3, 3, dtype=np.int64), "bytes": np.array([b"ab", b"c"]),
              "text": np.array(["xy", "z"]), "flags": np.array([True, False]), "empty": np.zeros((0, 3), np.uint8)}
    scalars = {"step": np.int64(5), "lr": np.float64(0.02)}
    for protocol in (2, 4, 5):
        (tmp_path / "w.pkl").write_bytes(pickle.dumps({"model": arrays, "__author__": "torchvision",
                                                       "matching_heuristics": True, **scalars}, protocol=protocol))
        loaded = load_array_pickle(tmp_path / "w.pkl")
        assert loaded["__author__"] == "torchvision" and loaded["matching_heuristics"] is True
        for name, array in arrays.items():
            got = loaded["model"][name]
            assert type(got) is np.ndarray and got.dtype == array.dtype and np.array_equal(got, array), name
            assert got.flags.writeable   # detectron2 turns them into tensors with torch.from_numpy
        assert loaded["step"] == 5 and loaded["lr"] == 0.02 and type(loaded["lr"]) is np.float64
    for versioned in (True, False):
        blobs = {"conv1_w": _Python2Array(arrays["conv"], versioned)}
        (tmp_path / "py2.pkl").write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
        assert np.array_equal(pickle.loads((tmp_path / "py2.pkl").read_bytes())["blobs"]["conv1_w"], arrays["conv"])
        assert np.array_equal(load_array_pickle(tmp_path / "py2.pkl")["blobs"]["conv1_w"], arrays["conv"])
    write_detectron2_weights(tmp_path / "ours.pkl", {"stem.conv1.weight": arrays["conv"]})
    loaded, digest = read_weight_file(tmp_path / "ours.pkl")
    assert np.array_equal(loaded["model"]["stem.conv1.weight"], arrays["conv"]) and loaded["__author__"] == "snclr-bench"
    assert digest == hashlib.sha256((tmp_path / "ours.pkl").read_bytes()).hexdigest()


# --- the pieces of the readers, each with a crafted input ----------------------------------------

def test_trust_unpickles_a_refused_file_once_and_says_so(tmp_path, caplog):
    torch.save({"w": torch.ones(2), "path": _PosixPath()}, tmp_path / "w.pth")
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"w": np.ones(2), "path": _PosixPath()}, protocol=2))
    with caplog.at_level("WARNING", logger="pretrain.safe_load"):
        assert torch_load(tmp_path / "w.pth", trust=True)["path"] == pathlib.PosixPath("/tmp")
        assert load_array_pickle(tmp_path / "w.pkl", trust=True)["path"] == pathlib.PosixPath("/tmp")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings[0] == (f"{tmp_path / 'w.pth'}: --trust-checkpoint given, fully unpickling a file the data-only "
                           f"reader refused ({pathlib.PosixPath.__module__}.PosixPath)")
    assert warnings[1] == f"{tmp_path / 'w.pkl'}: --trust-checkpoint given, fully unpickling it" and len(warnings) == 2


def test_a_file_refused_for_no_named_global_points_to_the_flag(tmp_path):
    """torch's reader refuses some files without naming a global (here an opcode it does not take)."""
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pth")
    _rewrite_pickle_in(tmp_path / "w.pth", b"\x80\x02", b"\x80\x02N0")   # NONE then POP: legal pickle, not for torch
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch_load(tmp_path / "w.pth")
    message = str(refused.value)
    assert "\n" not in message and message.endswith(
        "; if it is a checkpoint that needs more than the data-only reader, --trust-checkpoint reads it as a full pickle")
    assert torch.equal(torch_load(tmp_path / "w.pth", trust=True)["w"], torch.ones(2))


def test_the_bytes_given_are_the_bytes_read(tmp_path):
    """``data=`` and read_weight_file: what was hashed is what is parsed, whatever the file holds later."""
    from pretrain.safe_load import read_weight_file

    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pth")
    torch.save({"w": torch.ones(2)}, tmp_path / "b.pth")
    assert torch.equal(torch_load(tmp_path / "a.pth", data=(tmp_path / "b.pth").read_bytes())["w"], torch.ones(2))
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"w": np.zeros(2)}))
    got = load_array_pickle(tmp_path / "a.pkl", data=pickle.dumps({"w": np.ones(2)}))
    assert np.array_equal(got["w"], np.ones(2))
    loaded, digest = read_weight_file(tmp_path / "b.pth")
    assert torch.equal(loaded["w"], torch.ones(2))
    assert digest == hashlib.sha256((tmp_path / "b.pth").read_bytes()).hexdigest()


def test_pickle_globals_reads_every_form_a_name_takes():
    from pretrain.safe_load import pickle_globals

    payload = {"a": os.system, "b": os.getcwd, "c": pathlib.PosixPath}
    expected = sorted(f"{f.__module__}.{f.__name__}" for f in payload.values())
    for protocol in (0, 2, 4, 5):   # GLOBAL / INST, and STACK_GLOBAL with module names from the memo
        assert pickle_globals(pickle.dumps(payload, protocol=protocol)) == expected, protocol
    data = pickle.dumps(payload, protocol=4)
    cut = pickle_globals(data[:len(data) // 2])   # a cut stream: the names before the cut
    assert cut and set(cut) < set(expected)
    assert pickle_globals(b"\x80\x02" + b"\x8c\x02os\x94\x8c\x06system\x94\x93.") == ["os.system"]
    assert pickle_globals(b"\x80\x04\x8c\x02os\x94\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x06system\x93.") == [
        "os.system"]   # a FRAME between the two strings pushes nothing


@pytest.mark.parametrize("data,names", [
    (b"(S'ls'\nios\nsystem\n.", ["os.system"]),                                   # INST
    (b"S'os'\np7\nS'system'\np9\ng7\ng9\n\x93.", ["os.system"]),                  # PUT / GET, memo keys 7 and 9
    (b"\x8c\x02osq\x05\x8c\x06systemq\x06h\x05h\x06\x93.", ["os.system"]),          # BINPUT / BINGET
    (b"\x8c\x02osr\x00\x01\x00\x00\x8c\x06systemr\x01\x01\x00\x00j\x00\x01\x00\x00j\x01\x01\x00\x00\x93.",
     ["os.system"]),                                                                # LONG_BINPUT / LONG_BINGET
    (b"N\x8c\x02os\x8c\x06system\x93.", ["os.system"]),                          # only the last two pushes count
    (b"\x8c\x06system\x93.", []),                                                  # one string: no name
    (b"\x8c\x02osPfoo\n\x93.", []),                                                # a persistent id is not a string
])
def test_pickle_globals_follows_a_crafted_stream(data, names):
    """Names built from memo slots and every push opcode a crafted file can use, read without running
    anything. Mutations tried (found by mutmut in ``pickle_globals``), each failing a row: INST, PUT,
    BINPUT, LONG_BINPUT, GET or LONG_BINGET not recognised; memo keys taken as the memo's length
    for PUT; protocol 0's STRING not read as a string; any opcode with a str argument taken as a
    string push; ``and`` made ``or`` before STACK_GLOBAL (an IndexError on one string); three pushes
    checked instead of two."""
    from pretrain.safe_load import pickle_globals
    assert pickle_globals(data) == names


def test_refusals_of_other_torch_files_say_why(tmp_path):
    """A legacy (non-zip) torch file is refused naming every offending global (torch lists them only
    for zip files; torch's own message names the first); a zip whose pickle uses an opcode the
    data-only reader lacks is refused with torch's reason. Mutations tried (found by mutmut in
    ``_torch_refusal``), each failing this test: the reason taken from the wrong line, another marker
    or none. Break tried: ``_legacy_unsafe_globals`` dropped -> only posix.system is named; the
    allow-list not subtracted -> torch.FloatStorage and OrderedDict are named too."""
    import io
    import shutil
    legacy = tmp_path / "legacy.pth"
    buffer = io.BytesIO()
    torch.save({"a": os.system, "b": shutil.rmtree, "w": torch.ones(2), "p": torch.nn.Parameter(torch.ones(1))},
               buffer, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buffer.getvalue())
    with pytest.raises(UntrustedFileError, match=rf"^{legacy}: refused to load: it pickles posix\.system, "
                                                 r"shutil\.rmtree, which are not a tensor"):
        torch_load(legacy)
    buffer = io.BytesIO()
    torch.save({"a": os.system}, buffer, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buffer.getvalue())
    with pytest.raises(UntrustedFileError, match=rf"^{legacy}: refused to load: it pickles posix\.system, which is not"):
        torch_load(legacy)
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    crafted = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(crafted, "w") as target:
        for item in source.infolist():
            payload = source.read(item.filename)
            target.writestr(item, b"\x80\x02(X\x01\x00\x00\x00xi__builtin__\nset\n." if item.filename.endswith(
                "data.pkl") else payload)
    (tmp_path / "inst.pth").write_bytes(crafted.getvalue())
    with pytest.raises(pickle.UnpicklingError, match=r"^Unsupported operand 105; if it is a checkpoint that needs more"):
        torch_load(tmp_path / "inst.pth")


def _reduce_pickle(function: str, args: bytes) -> bytes:
    """Protocol 2: call the global ``function`` ("module name") on the pickled argument tuple ``args``."""
    module, name = function.split(" ")
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + args + b"R."


@pytest.mark.parametrize("data,refusal", [
    (_reduce_pickle("_codecs encode", pickle.dumps(("x", "rot13"), protocol=2)[2:-1]), "_codecs.encode with 'rot13'"),
    (_reduce_pickle("__builtin__ bytes", pickle.dumps((10 ** 9,), protocol=2)[2:-1]), r"bytes\(\) with arguments"),
    (_reduce_pickle("numpy.core.multiarray _reconstruct", b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85RK\x00\x85C\x01b\x87"),
     "_reconstruct of something other than numpy.ndarray"),
    (_reduce_pickle("numpy.core.multiarray scalar", b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85RC\x04abcd\x86"),
     "numpy scalar of dtype float64 needs 8 bytes, the file has 4"),
    (_reduce_pickle("numpy.core.multiarray scalar", b"X\x02\x00\x00\x00f8C\x08abcdabcd\x86"),
     "numpy scalar dtype is a str, not a pickled numpy.dtype"),
    (_reduce_pickle("numpy.core.numeric _frombuffer", b"(C\x08abcdabcdcnumpy\ndtype\nX\x02\x00\x00\x00f8\x85RK\x01\x85X\x01\x00\x00\x00Kt"),
     "array order 'K' is not 'C' or 'F'"),
    (_reduce_pickle("numpy.core.numeric _frombuffer", b"(C\x08abcdabcdX\x02\x00\x00\x00f8K\x01\x85X\x01\x00\x00\x00Ct"),
     "array dtype is a str, not a pickled numpy.dtype"),
    (_reduce_pickle("numpy.core.numeric _frombuffer", b"(C\x08abcdabcdcnumpy\ndtype\nX\x02\x00\x00\x00f8\x85RJ\xff\xff\xff\xff\x85X\x01\x00\x00\x00Ct"),
     "array shape \\(a tuple\\) is not a tuple of non-negative ints"),
    (_reduce_pickle("numpy.core.numeric _frombuffer", b"(]cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85RK\x01\x85X\x01\x00\x00\x00Ct"),
     "array data is a list, not bytes"),
    (_reduce_pickle("numpy.core.multiarray _reconstruct", b"cnumpy\nndarray\nK\x00\x85C\x01b\x87"),
     "an array without its data"),
    (_reduce_pickle("numpy.core.multiarray _reconstruct", b"cnumpy\nndarray\nK\x00\x85C\x01b\x87")[:-1] + b"K\x01b.",
     "array state is not \\(shape, dtype, is_fortran, data\\)"),
    (_reduce_pickle("numpy dtype", b"X\x06\x00\x00\x00float8\x85"), "numpy dtype 'float8' is not a plain"),
    (_reduce_pickle("numpy dtype", b"X\x02\x00\x00\x00q9\x85"), "numpy dtype 'q9' is not a dtype numpy knows"),
])
def test_each_stand_in_refuses_what_numpy_never_writes(tmp_path, data, refusal):
    with pytest.raises(UntrustedFileError, match=refusal):
        load_array_pickle(tmp_path / "w.pkl", data=data)


def test_materialize_keeps_shared_arrays_shared_and_survives_cycles(tmp_path):
    array = np.arange(3.0)
    cycle: list = [array]
    cycle.append(cycle)
    payload = {"a": array, "b": (array, [array]), "cycle": cycle, "dtype": np.dtype("<i2")}
    got = load_array_pickle(tmp_path / "w.pkl", data=pickle.dumps(payload, protocol=2))
    assert got["a"] is got["b"][0] is got["b"][1][0] is got["cycle"][0] and np.array_equal(got["a"], array)
    assert got["cycle"][1] is got["cycle"] and isinstance(got["b"], tuple)
    assert got["dtype"] == np.dtype("<i2") and type(got["dtype"]) is type(np.dtype("<i2"))
