"""Step-level options of the training loop: refused neighbour settings and logging-only monitors."""
import copy

import torch

from pretrain.__main__ import main
from pretrain.model import SNCLR


def test_k0_with_neighbours_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--recipe", "fmnist_resnet18_cpu", "--k", "0", "--neighbors", "binary", "--output-dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: k=0 with neighbors='binary' trains Eq. 1 without neighbours; "
                       "use --neighbors none, or k >= 1")
    assert not out.exists()


def test_monitors_only_when_asked_and_the_step_is_unchanged():
    torch.manual_seed(0)
    model = SNCLR("resnet18", image_size=32, proj_hidden_dim=32, dim=16, candidate_set_size=64, k=4)
    model.candidate_set.push(torch.randn(40, 16), torch.arange(100, 140), torch.randint(0, 3, (40,)))
    twin = copy.deepcopy(model)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    ids, labels = torch.arange(8), torch.zeros(8, dtype=torch.long)
    quiet = model(x1, x2, ids, labels, momentum=0.9, monitor=False)
    logged = twin(x1, x2, ids, labels, momentum=0.9, monitor=True)
    assert quiet.positiveness_max is None and quiet.neighbor_rows is None
    assert logged.neighbor_rows.item() == 1.0 and 0 < logged.positiveness_max.item() <= 1
    assert torch.equal(quiet.loss, logged.loss)
    assert torch.equal(model.candidate_set.image_ids, twin.candidate_set.image_ids)
