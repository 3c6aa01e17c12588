import pytest
import yaml

from pretrain.config import ConfigError, PretrainConfig, dump, load_recipe, recipe_names, resolve


def test_paper_recipes_resolve_with_their_settings():
    assert {"resnet50_100ep", "resnet50_800ep", "vit_small_300ep", "vit_base_300ep",
            "fmnist_resnet18_cpu"} <= set(recipe_names())
    r50 = resolve("resnet50_800ep", {})
    assert (r50.epochs, r50.optimizer, r50.base_lr, r50.warmup_epochs, r50.k) == (800, "lars", 0.3, 10.0, 30)
    assert (r50.candidate_set_size, r50.dim, r50.temperature) == (128_000, 256, 1.0)   # MoCo v3's ResNet-50 T
    vit = resolve("vit_small_300ep", {})
    assert (vit.temperature, vit.momentum, vit.momentum_cosine) == (0.2, 0.99, False)  # paper: fixed 0.99
    assert (vit.backbone, vit.optimizer, vit.base_lr, vit.weight_decay, vit.warmup_epochs) == \
        ("vit_small", "adamw", 1.5e-4, 0.1, 40.0)


def test_overrides_win_and_types_are_kept():
    config = resolve("resnet50_100ep", {"k": 5, "neighbors": "binary", "epochs": None})
    assert config.k == 5 and config.neighbors == "binary" and config.epochs == 100
    assert isinstance(config.warmup_epochs, float)


@pytest.mark.parametrize("override, message", [
    ({"backbone": "resnet5"}, "backbone='resnet5': expected one of resnet18"),
    ({"k": 100, "candidate_set_size": 50}, "k=100: expected at most candidate_set_size (50)"),
    ({"neighbors": "hard"}, "neighbors='hard'"),
    ({"loss_form": "mine"}, "loss_form='mine'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve("fmnist_resnet18_cpu", override)


def test_unknown_recipe_and_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'resnet51'"):
        load_recipe("resnet51")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: resnet18\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        load_recipe(str(bad))


def test_resolved_config_round_trips(tmp_path):
    config = resolve("fmnist_resnet18_cpu", {"seed": 3})
    dump(config, tmp_path / "config.yaml")
    assert PretrainConfig(**yaml.safe_load((tmp_path / "config.yaml").read_text())) == config


def test_cli_flags_parse_none_only_for_optional_fields():
    import argparse

    from pretrain.config import add_override_flags
    parser = argparse.ArgumentParser()
    add_override_flags(parser)
    args = vars(parser.parse_args(["--neighbors", "none", "--train-limit", "none", "--k", "7"]))
    config = resolve("fmnist_resnet18_cpu", args)
    assert config.neighbors == "none"          # the Eq. 1 ablation, not "flag not given"
    assert config.train_limit is None          # the recipe's 12,000 is lifted
    assert config.k == 7 and config.epochs == 8


@pytest.mark.parametrize("override, message", [
    ({"save_every": 0}, "save_every=0: expected a positive number of epochs"),
    ({"log_every": 0}, "log_every=0: expected a positive number of steps"),
    ({"workers": -1}, "workers=-1: expected a non-negative integer"),
    ({"image_size": 0}, "image_size=0: expected a positive integer"),
    ({"train_limit": -5}, "train_limit=-5: expected a positive number of images"),
    ({"epochs": 0}, "epochs=0: expected a positive integer"),
    ({"batch_size": 0}, "batch_size=0: expected a positive integer"),
    ({"max_steps_per_epoch": 0}, "max_steps_per_epoch=0: expected a positive integer"),
    ({"temperature": 0.0}, "temperature=0.0: expected a positive number"),
    ({"min_scale": 1.5}, "min_scale=1.5: expected a crop scale in"),
    ({"blur_p2": 1.5}, "blur_p2=1.5: expected a probability in"),
    ({"jitter_strength": -0.5}, "jitter_strength=-0.5: expected a non-negative factor"),
    ({"method": "BYOL"}, "method='BYOL': expected one of SNCLR, supervised"),
    ({"momentum": 1.5}, "momentum=1.5: expected an EMA coefficient in"),
    ({"dim": 0}, "dim=0: expected a positive integer"),
])
def test_out_of_range_values_name_the_key(override, message):
    """Fails on the previous code: none of these were checked, and a bad epochs reported the batch size."""
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve("fmnist_resnet18_cpu", override)
