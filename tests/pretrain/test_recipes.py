"""The small-image GPU recipe resolves to what its comments say (issue 19)."""
from __future__ import annotations

from pretrain.config import load_recipe, resolve


def test_gpu_recipe_is_the_small_image_setting():
    config = resolve("fmnist_resnet18_gpu", {})
    assert (config.backbone, config.dataset, config.train_limit, config.image_size) == (
        "resnet18_cifar", "fashion-mnist", None, 32)   # all 60,000 images
    assert (config.blur_p1, config.blur_p2) == (0.0, 0.0)   # BYOL's sigma at 32 px is under 0.3 px
    assert (config.solarize_p1, config.solarize_p2) == (0.0, 0.2)
    assert config.min_scale == 0.4                            # measured against 0.2 (the recipe's comments)
    assert config.amp == "auto" and config.method == "SNCLR" and config.neighbors == "soft"


def test_gpu_recipe_augments_on_the_device():
    assert load_recipe("fmnist_resnet18_gpu").get("data_pipeline") == "device"
