"""A run forked from another run's Eq. 1 warm-up equals the run that trained its warm-up itself."""
import json

import pytest
import torch

from pretrain.__main__ import main
from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError
from pretrain.fork import fork_warmup
from pretrain.provenance import file_sha256
from pretrain.train import StopRequest
from test_train import TINY, assert_same_training_state


def run(tree, out, *extra, stop=None):
    return main([*TINY, "--data-dir", str(tree), "--output-dir", str(out), "--epochs", "2", *extra], stop=stop)


@pytest.fixture(scope="module")
def eq1_warmup(image_tree, tmp_path_factory):
    """An Eq. 1 run (``--neighbors none``) stopped as planned after its 1-epoch neighbour warm-up."""
    out = tmp_path_factory.mktemp("eq1")
    assert run(image_tree, out, "--neighbors", "none", stop=StopRequest(after_epoch=1)) == 0
    return out


def test_planned_stop_saves_at_the_epoch_boundary(eq1_warmup, capsys):
    state = torch.load(eq1_warmup / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)
    assert not (eq1_warmup / "snclr_resnet18_ep2.pth").exists()


def test_forked_soft_run_equals_the_straight_soft_run_bit_for_bit(image_tree, eq1_warmup, tmp_path):
    """Eq. 1 warm-up, forked to soft neighbours and resumed == soft neighbours for 2 epochs straight.
    Breaks tried: forking with ``temperature`` changed is refused (below); forking after the warm-up
    is refused (below); a fork of a soft run's *binary* twin differs (the neighbour epoch differs)."""
    straight = tmp_path / "straight"
    assert run(image_tree, straight) == 0
    forked = tmp_path / "forked"
    fork_warmup(eq1_warmup / "checkpoint.pth", forked, neighbors="soft")
    assert run(image_tree, forked) == 0
    assert_same_training_state(forked / "snclr_resnet18_ep2.pth", straight / "snclr_resnet18_ep2.pth")
    final = torch.load(forked / "snclr_resnet18_ep2.pth", weights_only=True)
    assert final["config"]["neighbors"] == "soft"
    assert final["warmup_from"] == {"checkpoint": str(eq1_warmup / "checkpoint.pth"), "epoch": 1, "step_in_epoch": 0,
                                    "sha256": file_sha256(eq1_warmup / "checkpoint.pth"), "neighbors": "none"}
    rows = [json.loads(line) for line in (forked / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["neighbors_on"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    binary = tmp_path / "binary"
    fork_warmup(eq1_warmup / "checkpoint.pth", binary, neighbors="binary")
    assert run(image_tree, binary, "--neighbors", "binary") == 0
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_training_state(binary / "snclr_resnet18_ep2.pth", straight / "snclr_resnet18_ep2.pth")


def test_fork_refuses_a_change_of_the_warmup_itself(eq1_warmup, tmp_path):
    with pytest.raises(ConfigError, match="temperature change"):
        fork_warmup(eq1_warmup / "checkpoint.pth", tmp_path / "t", neighbors="soft", temperature=0.1)
    assert not (tmp_path / "t").exists()


def test_fork_refuses_a_checkpoint_past_the_warmup(image_tree, tmp_path):
    done = tmp_path / "done"
    assert run(image_tree, done, "--neighbors", "none") == 0
    with pytest.raises(CheckpointError, match="at epoch 2 step 0, after the 1-epoch neighbour warm-up"):
        fork_warmup(done / "checkpoint.pth", tmp_path / "late", neighbors="soft")
    assert not (tmp_path / "late").exists()


def test_fork_refuses_an_occupied_folder(eq1_warmup, tmp_path):
    fork_warmup(eq1_warmup / "checkpoint.pth", tmp_path, neighbors="soft")
    with pytest.raises(CheckpointError, match="exists; fork into an empty output folder"):
        fork_warmup(eq1_warmup / "checkpoint.pth", tmp_path, neighbors="binary")
