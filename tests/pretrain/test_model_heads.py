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
from test_reference_maths import (K, _batch, _online, _seed_own_image_entries, _target, _tiny_model,
                                  reference_neighbours)


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
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for target, online in zip(_target(probe), _online(probe)):
            target.copy_(0.9 * target + 0.1 * online)
        k2 = probe.momentum_projector(probe.momentum_backbone(x2))
        y1 = probe.projector(probe.backbone(x1))
    memory = probe.candidate_set
    neighbours, valid = reference_neighbours(k2, ids, memory.features, memory.image_ids, K)
    assert all(valid)
    found_labels = []
    for key, image in zip(F.normalize(k2.double(), dim=-1), ids.tolist()):
        allowed = [j for j in range(memory.size) if memory.image_ids[j] >= 0 and memory.image_ids[j] != image]
        allowed.sort(key=lambda j: -float(F.normalize(memory.features[j].double(), dim=-1) @ key))
        found_labels.append(memory.labels[allowed[:K]])
    agreement = (torch.stack(found_labels) == labels[:, None]).double().mean()
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
