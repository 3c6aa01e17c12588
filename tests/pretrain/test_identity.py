"""Model identity (pretrain/identity.py): which configuration keys make two checkpoints two models."""
from __future__ import annotations

import argparse

import pytest

from pretrain.checkpoint import RESUME_FREE_KEYS
from pretrain.config import PretrainConfig
from pretrain.identity import RUN_ONLY_KEYS, checkpoint_identity, identity_of, model_id, pretrain_dataset


def test_one_list_of_run_only_keys_for_resume_and_identity():
    assert RESUME_FREE_KEYS is RUN_ONLY_KEYS


def test_run_only_keys_and_the_seed_do_not_change_identity():
    base = PretrainConfig().to_dict()
    for key, value in (("seed", 7), ("output_dir", "elsewhere"), ("data_dir", "/moved"), ("device", "cpu"),
                       ("workers", 0), ("log_every", 1), ("save_every", 5)):
        assert model_id({**base, key: value}) == model_id(base), key


@pytest.mark.parametrize("key, value", [("temperature", 0.1), ("detach_weights", True), ("train_limit", 300),
                                        ("max_steps_per_epoch", 2), ("epochs", 1), ("positiveness_temperature", 0.05)])
def test_every_other_key_changes_identity(key, value):
    """The old four-knob key (neighbors, k, loss_form, tau_w) merged runs that differ in any of these."""
    base = PretrainConfig().to_dict()
    assert model_id({**base, key: value}) != model_id(base)


def test_a_key_nobody_listed_counts_as_result_changing():
    """A field added later (e.g. data_pipeline) splits models apart, it never merges two."""
    base = PretrainConfig().to_dict()
    assert model_id({**base, "data_pipeline": "pil"}) != model_id({**base, "data_pipeline": "dali"}) != model_id(base)


def test_identity_does_not_depend_on_key_order():
    base = PretrainConfig().to_dict()
    assert model_id(dict(reversed(list(base.items())))) == model_id(base)


def test_foreign_configuration_or_the_file():
    args = argparse.Namespace(arch="vit_small", out_dim=65536, seed=3, data_path="/data", patch_size=(16, 16))
    identity = checkpoint_identity({"teacher": {}, "args": args}, "f" * 64, "dino")
    assert identity.model_id.startswith("dino:") and identity.seed == 3
    assert identity.config["patch_size"] == [16, 16]  # plain JSON, as a record stores it
    assert identity_of(identity.config, "0" * 64, "dino").model_id == identity.model_id
    bare = checkpoint_identity({"state_dict": {}}, "ab" * 32, "mocov3")
    assert (bare.model_id, bare.seed, bare.config) == ("sha256:" + "ab" * 8, None, {})


def test_pretrain_dataset_names_an_image_folder_by_its_directory():
    assert pretrain_dataset({"dataset": "fashion-mnist"}) == "fashion-mnist"
    assert pretrain_dataset({"dataset": "imagefolder", "data_dir": "/data/imagenet/"}) == "imagefolder:imagenet"
    assert pretrain_dataset({}) == ""
