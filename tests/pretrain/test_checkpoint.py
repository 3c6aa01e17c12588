"""Resume identity and the finite check, on small dicts a reader can verify by hand."""
import pytest
import torch

from pretrain.checkpoint import (CheckpointError, NonFiniteError, RESUME_FREE_KEYS, check_finite,
                                 check_resume_identity, optimizer_tensors)
from pretrain.config import FIELDS, PretrainConfig

DEFAULTS = {name: field.default for name, field in FIELDS.items()}


def test_every_result_affecting_key_is_compared():
    """The keys a resume may change are only paths, speed and verbosity; each other key is refused."""
    assert RESUME_FREE_KEYS == {"data_dir", "output_dir", "device", "workers", "log_every", "save_every"}
    saved = PretrainConfig().to_dict()
    for key, value in saved.items():
        changed = dict(saved, **{key: "other" if isinstance(value, str) or value is None else value + 1})
        if key in RESUME_FREE_KEYS:
            check_resume_identity("c.pth", saved, changed, DEFAULTS)
        else:
            with pytest.raises(CheckpointError, match=f"\\({key} "):
                check_resume_identity("c.pth", saved, changed, DEFAULTS)


def test_message_lists_old_and_new_values_on_one_line():
    saved = PretrainConfig(k=30, base_lr=0.3).to_dict()
    current = PretrainConfig(k=10, base_lr=0.6, workers=2).to_dict()
    with pytest.raises(CheckpointError) as info:
        check_resume_identity("runs/x/checkpoint.pth", saved, current, DEFAULTS)
    assert str(info.value) == ("runs/x/checkpoint.pth: resuming would change the run's result (base_lr 0.3 -> 0.6, "
                               "k 30 -> 10); use the checkpoint's values or another --output-dir")


def test_epochs_grow_only_with_extend_schedule():
    saved = PretrainConfig(epochs=100).to_dict()
    longer, shorter = PretrainConfig(epochs=200).to_dict(), PretrainConfig(epochs=50).to_dict()
    check_resume_identity("c.pth", saved, longer, DEFAULTS, extend_schedule=True)
    with pytest.raises(CheckpointError, match=r"\(epochs 100 -> 200\); --epochs may only grow, and only with "
                                              r"--extend-schedule"):
        check_resume_identity("c.pth", saved, longer, DEFAULTS)
    with pytest.raises(CheckpointError, match=r"\(epochs 100 -> 50\)"):
        check_resume_identity("c.pth", saved, shorter, DEFAULTS, extend_schedule=True)


def test_keys_missing_from_an_older_checkpoint_compare_with_their_defaults():
    saved = PretrainConfig().to_dict()
    del saved["detach_weights"]
    check_resume_identity("c.pth", saved, PretrainConfig().to_dict(), DEFAULTS)
    with pytest.raises(CheckpointError, match=r"detach_weights False -> True"):
        check_resume_identity("c.pth", saved, PretrainConfig(detach_weights=True).to_dict(), DEFAULTS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finite_check_names_the_first_bad_tensor(bad):
    tensors = {"a.weight": torch.ones(3), "b.running_var": torch.tensor([1.0, bad]), "c.count": torch.tensor(3),
               "d.weight": torch.tensor([bad])}
    with pytest.raises(NonFiniteError, match=r"^epoch 2 step 5: 2 tensor\(s\) hold NaN or inf \(first: b.running_var\)"):
        check_finite(tensors, "epoch 2 step 5")
    check_finite({"a": torch.ones(2), "ids": torch.tensor([-1, 7])}, "fine")


def test_optimizer_state_tensors_are_checked_too():
    param = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.full((2, 2), float("nan"))
    optimizer.step()
    tensors = optimizer_tensors(optimizer.state_dict())
    assert list(tensors) == ["optimizer.state.0.momentum_buffer"]
    with pytest.raises(NonFiniteError, match="first: optimizer.state.0.momentum_buffer"):
        check_finite(tensors, "save")
