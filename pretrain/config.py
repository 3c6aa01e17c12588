"""Pre-training configuration: one dataclass, recipes as YAML files, CLI overrides, resolved dump."""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from pretrain.errors import UserError
from pretrain.fileio import atomic_write_text

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class ConfigError(UserError, ValueError):
    """A recipe or override that cannot be used; the message names the file / key / flag."""


@dataclasses.dataclass
class PretrainConfig:
    """Every setting of a run. Defaults are the paper's ResNet-50 setting (SNCLR Sec. 4.1, App. A);
    recipes in ``pretrain/recipes`` fix the rest per backbone and schedule."""
    method: str = "SNCLR"                  # or "supervised": the same backbone, views and schedule with labels
    backbone: str = "resnet50"
    dataset: str = "imagefolder"           # "imagefolder" (ImageNet layout: DIR/train/<class>/...) or "fashion-mnist"
    data_dir: str | None = None
    train_limit: int | None = None         # class-balanced subset of the training set (CPU recipes, tests)
    image_size: int = 224
    min_scale: float = 0.08                # RandomResizedCrop lower scale (BYOL / MoCo v3)
    data_pipeline: str = "auto"            # pil | device | dali; auto is resolved at train time and recorded
    # Two-view augmentation (BYOL Table 6, as MoCo v3 uses it); the per-view probabilities are view 1, view 2.
    jitter_strength: float = 1.0           # scales BYOL's ColorJitter(0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p1: float = 1.0
    blur_p2: float = 0.1
    solarize_p1: float = 0.0
    solarize_p2: float = 0.2
    epochs: int = 100
    batch_size: int = 4096                 # global batch, split over all ranks
    optimizer: str = "lars"                # LARS for ResNet, AdamW for ViT (MoCo v3 main_moco.py)
    base_lr: float = 0.3                   # lr = base_lr * batch_size / 256
    weight_decay: float = 1e-6             # MoCo v3 ResNet-50; ViT recipes use 0.1
    warmup_epochs: float = 10.0
    warmup_start_lr: float = 1e-6
    momentum: float = 0.99                 # EMA of the momentum branch
    momentum_cosine: bool = False          # MoCo v3's cosine increase of the EMA coefficient to 1
    temperature: float = 0.2               # T of Eq. 1/2
    proj_hidden_dim: int = 4096            # BYOL (Grill et al., 2020, Sec. 3.3): FC(4096)-BN-ReLU-FC(256)
    dim: int = 256
    candidate_set_size: int = 128_000      # Table 6: 128,000 x 256 (131.07 MB)
    k: int = 30                            # neighbours per key (Eq. 3)
    neighbors: str = "soft"                # "soft" (Eq. 4), "binary" (w = 1), "none" (Eq. 1): Table 4
    loss_form: str = "paper"               # "paper" (Eq. 2) or "official" (ChongjianGE/SNCLR code)
    positiveness_temperature: float = 1.0  # tau_w of Eq. 4 (1 in the official code)
    detach_weights: bool = False
    neighbor_warmup_epochs: int = 10       # first m epochs use Eq. 1 (App. A); see recipes/README.md
    amp: str = "auto"                      # auto (bf16 on CUDA, off on CPU), bf16, fp16, off
    device: str = "auto"
    workers: int = 8
    seed: int = 0
    output_dir: str = "runs/pretrain"
    save_every: int = 1                    # epochs between checkpoints (the last epoch is always saved)
    log_every: int = 20                    # steps between metric log lines
    max_steps_per_epoch: int | None = None  # cap for smoke runs and benchmarks

    def validate(self) -> None:
        from pretrain.backbones import BACKBONES
        from pretrain.data import DATASETS
        from pretrain.model import METHODS, NEIGHBOR_MODES
        from pretrain.losses import LOSS_FORMS
        from pretrain.pipelines import PIPELINES
        checks = [
            (self.method in METHODS, "method", f"one of {', '.join(METHODS)} (the supervised upper bound)"),
            (self.backbone in BACKBONES, "backbone", f"one of {', '.join(BACKBONES)}"),
            (self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}"),
            (self.neighbors in NEIGHBOR_MODES, "neighbors", f"one of {', '.join(NEIGHBOR_MODES)}"),
            (self.loss_form in LOSS_FORMS, "loss_form", f"one of {', '.join(LOSS_FORMS)}"),
            (self.data_pipeline in PIPELINES, "data_pipeline", f"one of {', '.join(PIPELINES)}"),
            (self.optimizer in ("lars", "adamw", "sgd"), "optimizer", "lars, adamw or sgd"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "amp", "auto, bf16, fp16 or off"),
            (self.k >= 0, "k", "a non-negative integer"),
            (self.k <= self.candidate_set_size, "k", f"at most candidate_set_size ({self.candidate_set_size})"),
            (self.epochs > 0, "epochs", "a positive integer"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (self.image_size > 0, "image_size", "a positive integer (pixels)"),
            (self.train_limit is None or self.train_limit > 0, "train_limit",
             "a positive number of images, or none for the whole training set"),
            (self.max_steps_per_epoch is None or self.max_steps_per_epoch > 0, "max_steps_per_epoch",
             "a positive integer, or none"),
            (self.workers >= 0, "workers", "a non-negative integer (0 loads data in the main process)"),
            (self.save_every > 0, "save_every", "a positive number of epochs"),
            (self.log_every > 0, "log_every", "a positive number of steps"),
            (self.candidate_set_size > 0, "candidate_set_size", "a positive integer"),
            (self.dim > 0 and self.proj_hidden_dim > 0, "dim" if self.dim <= 0 else "proj_hidden_dim",
             "a positive integer"),
            (self.base_lr > 0, "base_lr", "a positive number"),
            (self.temperature > 0, "temperature", "a positive number"),
            (self.positiveness_temperature > 0, "positiveness_temperature", "a positive number"),
            (self.warmup_epochs >= 0, "warmup_epochs", "a non-negative number of epochs"),
            (self.neighbor_warmup_epochs >= 0, "neighbor_warmup_epochs", "a non-negative number of epochs"),
            (0 < self.min_scale <= 1, "min_scale", "a crop scale in (0, 1]"),
            (self.jitter_strength >= 0, "jitter_strength", "a non-negative factor of BYOL's colour jitter"),
            *((0 <= getattr(self, key) <= 1, key, "a probability in [0, 1]")
              for key in ("jitter_p", "grayscale_p", "blur_p1", "blur_p2", "solarize_p1", "solarize_p2")),
            (0 <= self.momentum <= 1, "momentum", "an EMA coefficient in [0, 1]"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: expected {expected}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(PretrainConfig)}
UNSET_TO_NONE = "<none>"   # what a flag parses "none" to for an optional field (None = flag not given)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def yaml_error_line(path: str | os.PathLike, error: yaml.YAMLError) -> str:
    """``PATH:LINE:COLUMN: not valid YAML (problem)``: PyYAML's own text spans several lines and
    ends with a caret under the column, which is meaningless once the lines are joined."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: not valid YAML ({f'{context}: ' if context else ''}{problem})"


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at ``path`` merged over its ``base:`` recipes; ``chain`` holds the files that
    include this one, so that a loop of ``base:`` keys is refused instead of recursing forever."""
    if path.resolve() in chain:
        loop = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{chain[-1]}: base: {path} makes a loop ({loop}); a recipe cannot include itself")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise ConfigError(f"{chain[-1]}: base: {path} is {what}, expected a recipe file" if chain
                          else f"{path} is {what}, expected a recipe YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error)) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a recipe file name, got {base!r}")
        data = {**_read_yaml(path.parent / base, (*chain, path.resolve())), **data}
    return data


def load_recipe(name_or_path: str) -> dict:
    """Recipe by name (``pretrain/recipes/NAME.yaml``) or by path; returns the merged key/values."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"--recipe {name_or_path} is a folder, expected a recipe YAML file or name")
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; expected a file or one of {', '.join(recipe_names())}")
    data = _read_yaml(path)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    return data


def _field_type(name: str) -> tuple[type, bool]:
    """(value type, whether None is allowed) of a config field."""
    hint = typing.get_type_hints(PretrainConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_flag(kind: type, optional: bool):
    # "none" means None only where the field allows it: --neighbors none is the string "none".
    def parse(text: str):
        if optional and text.lower() == "none":
            return UNSET_TO_NONE
        return _parse_bool(text) if kind is bool else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_override_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag-name`` per config field; unset flags (None) keep the recipe's value. A flag that
    sets an optional field back to None (``--train-limit none``) is recorded as ``UNSET_TO_NONE``."""
    group = parser.add_argument_group("config overrides (any field of the recipe)")
    for name, field in FIELDS.items():
        kind, optional = _field_type(name)
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=_parse_flag(kind, optional),
                           default=None, metavar=kind.__name__.upper(),
                           help=f"(default: {field.default!r})")


def resolve(recipe: str, overrides: dict) -> PretrainConfig:
    values = load_recipe(recipe)
    values.update({k: None if v == UNSET_TO_NONE else v for k, v in overrides.items()
                   if v is not None and k in FIELDS})
    try:
        config = PretrainConfig(**values)
    except TypeError as error:
        raise ConfigError(f"recipe {recipe!r}: {error}") from None
    for name in FIELDS:
        value, (kind, _) = getattr(config, name), _field_type(name)
        if value is not None and kind is float and isinstance(value, int):
            setattr(config, name, float(value))
        elif value is not None and not isinstance(value, kind):
            raise ConfigError(f"recipe {recipe!r}: {name}={value!r} should be {kind.__name__}")
    config.validate()
    return config


def dump(config: PretrainConfig, path: str | os.PathLike) -> None:
    """Write the fully resolved config beside the outputs (atomically)."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
