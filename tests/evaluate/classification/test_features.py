"""Feature extraction in dataset order, and a cache that is reused only for the exact same inputs."""
from __future__ import annotations

import dataclasses

import torch
from torchvision import transforms

from classification_fixtures import TinyBackbone, colour_blobs
from evaluate.classification.features import FeatureKey, cached_features, extract_features, transform_description
from evaluate.classification.cli_common import TransformedView

CPU = torch.device("cpu")


def counting(backbone: torch.nn.Module) -> list[int]:
    calls = []
    backbone.register_forward_hook(lambda module, args, output: calls.append(len(output)))
    return calls


def key(**overrides) -> FeatureKey:
    fields = dict(weights_sha256="ab" * 32, arch="tiny", transform="identity", dataset="blobs:train:n=37",
                  versions="code=abc torch=2")
    return FeatureKey(**{**fields, **overrides})


def test_features_come_back_in_dataset_order_in_eval_mode():
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), colour_blobs(37)
    backbone.train()
    features, labels = extract_features(backbone, data, device=CPU, batch_size=8, num_workers=0)
    assert backbone.training  # mode restored
    with torch.no_grad():
        expected = backbone.eval()(data.images)
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.equal(labels, data.targets)


def test_cache_is_reused_for_the_same_key_and_not_for_another(tmp_path):
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), colour_blobs(37)
    calls = counting(backbone)
    first = cached_features(backbone, data, key(), tmp_path, device=CPU, batch_size=16, num_workers=0)
    assert sum(calls) == 37 and len(list(tmp_path.glob("*.pt"))) == 1
    again = cached_features(backbone, data, key(), tmp_path, device=CPU, batch_size=16, num_workers=0)
    assert sum(calls) == 37  # no forward pass: read from disk
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (key(weights_sha256="cd" * 32), key(transform="other"), key(dataset="blobs:val:n=37"), key(crop=0)):
        cached_features(backbone, data, other, tmp_path, device=CPU, batch_size=16, num_workers=0)
    assert sum(calls) == 5 * 37 and len(list(tmp_path.glob("*.pt"))) == 5


def test_a_cache_file_holding_another_key_is_recomputed(tmp_path):
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), colour_blobs(10)
    calls = counting(backbone)
    cached_features(backbone, data, key(), tmp_path, device=CPU, num_workers=0)
    [path] = tmp_path.glob("*.pt")
    stored = torch.load(path, weights_only=True)
    stored["key"] = dataclasses.asdict(key(arch="something else"))  # as if two keys collided
    torch.save(stored, path)
    cached_features(backbone, data, key(), tmp_path, device=CPU, num_workers=0)
    assert sum(calls) == 20


def test_augmented_crops_are_reproducible_and_differ_between_crops(tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    base = colour_blobs(12, size=16)
    augment = transforms.Compose([transforms.RandomResizedCrop(8, scale=(0.2, 1.0)),
                                  transforms.RandomHorizontalFlip()])
    data = TransformedView(base, augment)
    crop0 = extract_features(backbone, data, device=CPU, num_workers=0, seed=10)[0]
    crop0_again = extract_features(backbone, data, device=CPU, num_workers=0, seed=10)[0]
    crop1 = extract_features(backbone, data, device=CPU, num_workers=0, seed=11)[0]
    assert torch.equal(crop0, crop0_again) and not torch.allclose(crop0, crop1)


def test_transform_description_spells_out_parameters():
    a = transform_description(transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)]))
    b = transform_description(transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32)]))
    assert a != b and "\n" not in a and "size=32" in a


def test_other_code_or_library_versions_do_not_reuse_the_cache(tmp_path):
    """Fails on the pre-issue-8 code, whose cache key had no versions: features computed by another
    torchvision (its resize) or another commit (a fixed backbone) were handed back as current."""
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), colour_blobs(12)
    calls = counting(backbone)
    cached_features(backbone, data, key(), tmp_path, device=CPU, num_workers=0)
    cached_features(backbone, data, key(versions="code=abc torch=3"), tmp_path, device=CPU, num_workers=0)
    cached_features(backbone, data, key(versions="code=def torch=2"), tmp_path, device=CPU, num_workers=0)
    assert sum(calls) == 3 * 12
