"""The trust boundary: data-only reading with an allow-list, and the restricted .pkl reader."""
from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.checkpoint import CheckpointError, load_pretrain_checkpoint
from pretrain.safe_load import UntrustedFileError, load_array_pickle, torch_load
from untrusted_pickles import OFFENDING, WritesMarker, hidden_in


def _as_numpy1_writes_it(path: Path) -> None:
    """Rewrite a torch.save file as numpy 1.x writes it: numpy.core where numpy 2 names numpy._core
    (protocol 2 names globals as plain text, so the rename is a byte substitution)."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(info, data)


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
    with pytest.raises(CheckpointError, match=r"corrupt or unreadable checkpoint \(UntrustedFileError"):
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
