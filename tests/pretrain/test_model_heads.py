"""The projection heads' layout and the step's monitors, against the papers and a reference.

Layouts: BYOL's ResNet projector and predictor (Grill et al., 2020, Sec. 3.3: Linear, BN, ReLU,
Linear), MoCo v3's ViT ones (Chen et al., 2021, Sec. 4: 3-layer projector and 2-layer predictor,
BN after every layer, the last one without affine parameters). A hidden Linear has no bias (the BN
after it subtracts any), as in MoCo v3's code.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import SNCLR
from test_reference_maths import (K, _batch, _seed_own_image_entries, _tiny_model, after_ema,
                                  reference_neighbours, reference_slots)


def layout(head: torch.nn.Sequential) -> list[tuple]:
    rows = []
    for module in head:
        if isinstance(module, torch.nn.Linear):
            rows.append(("Linear", module.in_features, module.out_features, module.bias is not None))
        elif isinstance(module, torch.nn.BatchNorm1d):
            rows.append(("BN", module.num_features, module.affine))
        else:
            rows.append((type(module).__name__,))
    return rows


def test_resnet_heads_are_byols():
    """Mutations tried (found by mutmut in ``mlp``), each failing this test: one hidden block more or
    fewer; the blocks replaced instead of appended; a bias on the hidden Linear; the final Linear
    without its bias."""
    model = SNCLR("resnet18", image_size=16, proj_hidden_dim=16, dim=8, candidate_set_size=8, k=2)
    block = [("Linear", 512, 16, False), ("BN", 16, True), ("ReLU",)]
    assert layout(model.projector) == [*block, ("Linear", 16, 8, True)]
    assert layout(model.predictor) == [("Linear", 8, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    assert layout(model.momentum_projector) == layout(model.projector)


def test_vit_heads_are_moco_v3s():
    """Mutations tried (found by mutmut in ``mlp``), each failing this test: the final BN dropped,
    made affine, or the final Linear given a bias."""
    model = SNCLR("vit_small", image_size=32, proj_hidden_dim=16, dim=8, candidate_set_size=8, k=2)
    block = [("BN", 16, True), ("ReLU",)]
    assert layout(model.projector) == [("Linear", 384, 16, False), *block, ("Linear", 16, 16, False), *block,
                                       ("Linear", 16, 8, False), ("BN", 8, False)]
    assert layout(model.predictor) == [("Linear", 8, 16, False), *block, ("Linear", 16, 8, False), ("BN", 8, False)]


@pytest.mark.parametrize("tau_w", [1.0, 0.05])
def test_monitors_match_a_reference_and_are_skipped_on_request(tau_w):
    """neighbor_agreement (share of view-2 keys' neighbours with the key's label), neighbor_rows,
    positiveness_max and _entropy equal a reference computed here; ``monitor=False`` gives the same
    loss and no monitors. Mutations tried, each failing this test (the first four found by mutmut in
    ``forward``): monitors off by default; the ``monitor`` test inverted; the loss dropped without
    monitors; the monitors dropped; the label match in ``_monitor`` inverted."""
    model = _tiny_model("soft", tau_w=tau_w)
    x1, x2, ids, _ = _batch()
    labels = torch.tensor([2, 1, 2, 0])   # agreement 0.25 here: not 0.5, which an inverted match would also give
    _seed_own_image_entries(model, x1, x2, ids)
    quiet = copy.deepcopy(model)
    probe = after_ema(model)
    with torch.no_grad():
        k2 = probe.momentum_projector(probe.momentum_backbone(x2))
        y1 = probe.projector(probe.backbone(x1))
    memory = probe.candidate_set
    neighbours, valid = reference_neighbours(k2, ids, memory.features, memory.image_ids, K)
    assert all(valid)
    found_labels = torch.stack([memory.labels[slots[:K]] for slots in
                                reference_slots(k2, ids, memory.features, memory.image_ids)])
    agreement = (found_labels == labels[:, None]).double().mean()
    weights = torch.softmax(torch.einsum("bd,bkd->bk", F.normalize(y1.double(), dim=-1), neighbours) / tau_w, dim=1)
    entropy = -(weights * weights.log()).sum(dim=1).mean()

    stats = model(x1, x2, ids, labels, momentum=0.9)
    assert stats.neighbor_agreement.item() == pytest.approx(agreement.item(), abs=1e-9)
    assert stats.neighbor_rows.item() == 1.0
    assert stats.positiveness_max.item() == pytest.approx(weights.max(dim=1).values.mean().item(), rel=1e-4)
    assert stats.positiveness_entropy.item() == pytest.approx(entropy.item(), rel=1e-4)
    silent = quiet(x1, x2, ids, labels, momentum=0.9, monitor=False)
    assert torch.equal(silent.loss, stats.loss)
    assert (silent.positiveness_max, silent.neighbor_agreement, silent.neighbor_rows) == (None, None, None)


def test_defaults_are_the_papers_and_bad_settings_are_named():
    """A model built without settings is the paper's ResNet one (SNCLR Sec. 4: T = 0.2, a 128k
    candidate set, K = 30, soft weights with tau_w = 1; BYOL's 4096 / 256 heads). Mutations tried
    (found by mutmut in ``__init__``), each failing this test: any of those defaults changed; the
    two refusals' messages dropped; K equal to the set size refused."""
    import inspect
    defaults = {name: p.default for name, p in inspect.signature(SNCLR).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == dict(image_size=224, proj_hidden_dim=4096, dim=256, temperature=0.2,
                            candidate_set_size=128_000, k=30, neighbors="soft", loss_form="paper",
                            positiveness_temperature=1.0, detach_weights=False)
    built = SNCLR("resnet18")   # what the defaults give, not only what the signature says
    assert (built.temperature, built.candidate_set.size, built.k, built.neighbors, built.loss_form,
            built.positiveness_temperature, built.detach_weights) == (0.2, 128_000, 30, "soft", "paper", 1.0, False)
    assert layout(built.projector)[-1] == ("Linear", 4096, 256, True) and built.candidate_set.dim == 256
    with pytest.raises(ValueError, match=r"neighbors='hard'; expected one of \('soft', 'binary', 'none'\)"):
        SNCLR("resnet18", image_size=16, proj_hidden_dim=8, dim=4, candidate_set_size=8, k=2, neighbors="hard")
    with pytest.raises(ValueError, match="k=9 is larger than the candidate set size 8"):
        SNCLR("resnet18", image_size=16, proj_hidden_dim=8, dim=4, candidate_set_size=8, k=9)
    assert SNCLR("resnet18", image_size=16, proj_hidden_dim=8, dim=4, candidate_set_size=8, k=8).k == 8


def test_a_vit_is_built_for_the_image_size_asked():
    """Mutation tried (found by mutmut), failing this test: ``image_size`` not passed to the backbone
    (a ViT then expects 224 px and refuses a 32 px batch)."""
    model = SNCLR("vit_small", image_size=32, proj_hidden_dim=16, dim=8, candidate_set_size=8, k=2)
    with torch.no_grad():
        assert model.backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 384)


def test_a_supervised_step_without_monitors_still_has_its_loss():
    """Mutation tried (found by mutmut in ``Supervised.forward``), failing this test: the loss dropped
    when ``monitor=False``."""
    from pretrain.model import Supervised
    torch.manual_seed(0)
    model = Supervised("resnet18", 3, image_size=16)
    x = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0])
    quiet = model(x, x, torch.arange(4), labels, momentum=0.9, monitor=False)
    loud = model(x, x, torch.arange(4), labels, momentum=0.9)
    assert quiet.loss is not None and torch.allclose(quiet.loss, loud.loss)
