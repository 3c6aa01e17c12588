"""Any-source checkpoint -> backbone state dict, with the source format detected and strict checks.

Supported sources and how their backbone is named inside the file:

============  ===============================================  =========================
format        layout                                           backbone prefix
============  ===============================================  =========================
snclr         ours: {"format": "snclr-bench/pretrain/v1", ...}  model["backbone."]
mocov3        {"state_dict": ...} (MoCo v3 main_moco.py)        "module.base_encoder."
mocov2        {"state_dict": ...} (MoCo v1/v2 main_moco.py)     "module.encoder_q."
dino          {"teacher": ..., "student": ...}                  "[module.]backbone." (teacher)
solo-learn    {"state_dict": ...} (Lightning)                   "backbone."
mmselfsup     {"meta": ..., "state_dict": ...} (ResNets)        "backbone."
torchvision   plain state dict                                  none ("fc." dropped)
timm          plain state dict                                  none ("head." dropped)
============  ===============================================  =========================

The result is *strict*: every tensor of the target backbone must be present with the right shape,
and nothing but known non-backbone keys may be left over, otherwise :class:`BackboneLoadError` lists
the missing / unexpected keys. A wrong prefix can therefore never yield a random backbone.

Files are read as data (:mod:`pretrain.safe_load`): a checkpoint that pickles anything beyond tensors
and the allow-listed types is refused unless ``trust=True`` (``--trust-checkpoint``). "Strict" also
covers what no tensor shape shows: a ViT gets its source's attention head count (:func:`vit_heads_for`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from pretrain.backbones import RESNETS, SMALL_IMAGE_RESNETS, VITS, build_backbone, build_mocov3_vit
from pretrain.identity import checkpoint_identity
from pretrain.fileio import file_problem
from pretrain.safe_load import UntrustedFileError, printable, torch_load
from evaluate.errors import BackboneLoadError

log = logging.getLogger(__name__)

SNCLR_FORMAT = "snclr-bench/pretrain/v1"
# Classifier heads, or MoCo v3's projector which it keeps in base_encoder.fc / .head.
_HEAD_PREFIXES = ("fc.", "head.", "head_dist.")
_RESNET_DEPTHS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34",
                  (3, 4, 6, 3, True): "resnet50", (3, 4, 23, 3, True): "resnet101"}
# The small-image stem by the depth it is built on (conv1 is 3x3 instead of 7x7).
_SMALL_IMAGE_BY_DEPTH = {depth: name for name, depth in SMALL_IMAGE_RESNETS.items()}


@dataclass
class LoadedBackbone:
    state_dict: dict[str, torch.Tensor]
    arch: str
    source_format: str
    sha256: str
    path: str
    image_size: int = 224
    dropped_keys: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # ViTs only: the attention head count of the source's model and where it came from. It changes no
    # tensor shape, so it cannot be read from the tensors (see vit_heads_for).
    vit_heads: int | None = None
    vit_heads_source: str | None = None


def _torch_load(path: Path, trust: bool) -> tuple[object, str]:
    """(the checkpoint's contents, sha256 of the bytes they were read from): one read, so the hash a
    record carries is that of what was loaded."""
    try:
        data = path.read_bytes()
        return torch_load(path, trust=trust, data=data), hashlib.sha256(data).hexdigest()
    except UntrustedFileError as error:
        raise BackboneLoadError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a non-checkpoint file fails in many ways (e.g. KeyError)
        detail = printable(str(error).splitlines()[0]) if str(error) else ""
        raise BackboneLoadError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {detail})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _take_prefix(state: dict, prefix: str) -> tuple[dict, list[str]]:
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = [k for k in state if not k.startswith(prefix)]
    return kept, dropped


def pretrain_schedule(obj: dict) -> dict:
    """Planned epochs, whether they all ran, and the pre-training code version of one of our checkpoints.

    A checkpoint written on interrupt holds the epochs finished plus a step position inside the next
    one (``step_in_epoch`` > 0); a periodic one can stop short of ``config["epochs"]``. Either is a
    snapshot of a longer schedule, not a finished run of its own length.
    """
    planned = obj.get("config", {}).get("epochs")
    epoch, step = obj.get("epoch"), obj.get("step_in_epoch", 0)
    complete = None if planned is None or epoch is None else bool(epoch >= planned and not step)
    return {"pretrain_epochs_planned": planned, "pretrain_complete": complete,
            "pretrain_step_in_epoch": step, "pretrain_code_version": obj.get("code_version")}


def split_source(obj, path: Path) -> tuple[dict, str, list[str], dict]:
    """Detect the format of a loaded checkpoint; return (backbone dict, format, dropped keys, meta)."""
    if isinstance(obj, dict) and obj.get("format") == SNCLR_FORMAT:
        config = obj.get("config", {})
        backbone, dropped = _take_prefix(obj["model"], "backbone.")
        meta = {"method": config.get("method", "SNCLR"), "pretrain_epochs": obj.get("epoch"),
                "arch": config.get("backbone"), "image_size": config.get("image_size"), **pretrain_schedule(obj)}
        return backbone, "snclr", dropped, meta
    if isinstance(obj, dict) and ("teacher" in obj or "student" in obj):
        key = "teacher" if "teacher" in obj else "student"
        state = obj[key]
        prefix = "module.backbone." if any(k.startswith("module.backbone.") for k in state) else "backbone."
        backbone, dropped = _take_prefix(state, prefix)
        meta = {"method": "DINO", "pretrain_epochs": obj.get("epoch")}
        if isinstance(obj.get("args"), argparse.Namespace) and isinstance(getattr(obj["args"], "arch", None), str):
            meta["dino_arch"] = obj["args"].arch
        return backbone, "dino", [f"{key}.{k}" for k in dropped], meta
    inner = None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            inner = obj[key]
            break
    epochs = obj.get("epoch") if isinstance(obj, dict) and inner is not None else None
    state = inner if inner is not None else obj
    if not _is_state_dict(state):
        top = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise BackboneLoadError(f"{path}: no state dict found (top-level keys: {top}); expected one of "
                                "ours, MoCo v1/v2/v3, DINO, solo-learn, torchvision or timm")
    for prefix, fmt, method in (("module.base_encoder.", "mocov3", "MoCo v3"),
                                ("module.encoder_q.", "mocov2", "MoCo v2"),
                                ("backbone.", "solo-learn", None)):
        if any(k.startswith(prefix) for k in state):
            backbone, dropped = _take_prefix(state, prefix)
            if fmt == "solo-learn" and isinstance(obj.get("meta"), dict):  # mmcv / mmengine runners save "meta"
                fmt, epochs = "mmselfsup", obj["meta"].get("epoch", epochs)
            return backbone, fmt, dropped, {"method": method, "pretrain_epochs": epochs}
    if all(k.startswith("module.") for k in state):  # a DDP-wrapped plain model
        state = {k[len("module."):]: v for k, v in state.items()}
    fmt = "timm" if "cls_token" in state else "torchvision"
    return dict(state), fmt, [], {"method": None, "pretrain_epochs": epochs}


def detect_arch(state: dict) -> tuple[str, int]:
    """Infer (backbone name, input image size) from tensor names and shapes."""
    if "conv1.weight" in state:
        blocks = tuple(len({m.group(1) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                       for i in range(1, 5))
        key = (*blocks, "layer1.0.conv3.weight" in state)
        if key not in _RESNET_DEPTHS:
            raise BackboneLoadError(f"ResNet with blocks {blocks} is not one of {', '.join(RESNETS)}")
        kernel = tuple(state["conv1.weight"].shape[-2:])
        if kernel == (7, 7):
            return _RESNET_DEPTHS[key], 224
        if kernel == (3, 3) and _RESNET_DEPTHS[key] in _SMALL_IMAGE_BY_DEPTH:
            return _SMALL_IMAGE_BY_DEPTH[_RESNET_DEPTHS[key]], 32
        raise BackboneLoadError(f"{_RESNET_DEPTHS[key]} with a {kernel[0]}x{kernel[1]} first convolution matches "
                                f"none of {', '.join(RESNETS)} (7x7) or {', '.join(SMALL_IMAGE_RESNETS)} (3x3)")
    if "cls_token" in state and "patch_embed.proj.weight" in state:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        for name, spec in VITS.items():
            if (spec.embed_dim, spec.patch_size, spec.depth) == (dim, patch, depth):
                grid = int(math.isqrt(state["pos_embed"].shape[1] - 1)) if "pos_embed" in state else 224 // patch
                return name, grid * patch
        raise BackboneLoadError(f"ViT with embed dim {dim}, patch {patch}, depth {depth} matches none of "
                                f"{', '.join(VITS)}")
    raise BackboneLoadError("cannot tell the architecture: neither ResNet ('conv1.weight') nor ViT "
                            "('cls_token') tensors are present")


def _strict_match(state: dict, reference: dict, path: Path) -> tuple[dict, list[str]]:
    extra = [k for k in state if k not in reference]
    dropped = [k for k in extra if k.startswith(_HEAD_PREFIXES)]
    unexpected = [k for k in extra if not k.startswith(_HEAD_PREFIXES)]
    # Checkpoints from older PyTorch lack num_batches_tracked; it has no effect on features.
    missing = [k for k in reference if k not in state and not k.endswith("num_batches_tracked")]
    shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in reference.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
        if shape:
            parts.append(f"{len(shape)} with wrong shape (e.g. {shape[:3]})")
        raise BackboneLoadError(f"{path}: backbone does not match: " + "; ".join(parts))
    matched = {k: state[k] if k in state else reference[k] for k in reference}
    return matched, dropped


# ViT-S is where sources disagree on the head count, which changes no tensor shape: MoCo v3 (vits.py,
# "ViT-S with 12 heads"; our own pre-training uses its builder) has 12, DeiT/timm, DINO
# (vision_transformer.py) and solo-learn (timm's models) have 6. ViT-B has 12 and ViT-Ti 3 everywhere.
_VIT_SMALL_HEADS = {"snclr": 12, "mocov3": 12, "dino": 6, "solo-learn": 6}
# DINO's vision_transformer.py builders, by the args.arch that main_dino.py stores with the checkpoint.
_DINO_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12}


def vit_heads_for(arch: str, source_format: str, meta: dict, flag: int | None, path: Path) -> tuple[int, str]:
    """(attention heads, where the count came from) for a ViT of ``arch`` read from ``source_format``.

    ``--vit-heads`` wins; then DINO's stored ``args.arch``; then the format's builder. A plain ViT-S
    state dict (timm format) is refused without the flag: 6 and 12 heads load equally "strictly"
    and give different features, so guessing would be a silent coin toss.
    """
    dim = VITS[arch].embed_dim
    if flag is not None:
        if flag < 1 or dim % flag:
            raise BackboneLoadError(f"--vit-heads {flag} does not divide the {arch} embedding width {dim}")
        return flag, "--vit-heads"
    dino_arch = meta.get("dino_arch")
    if source_format == "dino" and dino_arch in _DINO_HEADS:
        if dino_arch != arch:
            raise BackboneLoadError(f"{path}: DINO args.arch is {dino_arch!r} but the tensors are a {arch}")
        return _DINO_HEADS[dino_arch], "DINO args.arch"
    if arch != "vit_small":
        return VITS[arch].num_heads, "same in every source"
    if source_format in _VIT_SMALL_HEADS:
        return _VIT_SMALL_HEADS[source_format], f"{source_format} format"
    raise BackboneLoadError(f"{path}: a plain vit_small state dict does not say its head count; pass --vit-heads 6 "
                            "(DINO, DeiT/timm, solo-learn, mmselfsup) or --vit-heads 12 (MoCo v3)")


def load_backbone_state_dict(path: str | os.PathLike, arch: str | None = None, *, trust: bool = False,
                             vit_heads: int | None = None) -> LoadedBackbone:
    """Read ``path`` (any supported format) and return its backbone tensors under plain
    torchvision/timm names, checked strictly against a freshly built ``arch`` backbone.

    ``trust`` allows a full unpickle of a file that holds more than tensors and allow-listed types
    (``--trust-checkpoint``); ``vit_heads`` sets a ViT's head count (``--vit-heads``, see vit_heads_for).
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise BackboneLoadError(f"checkpoint {path} {problem}")
    if path.stat().st_size == 0:
        raise BackboneLoadError(f"{path}: empty file (0 bytes), not a checkpoint")
    obj, sha256 = _torch_load(path, trust)
    state, fmt, dropped, meta = split_source(obj, path)
    if not state:
        raise BackboneLoadError(f"{path}: detected format {fmt!r} but it holds no backbone tensors")
    try:
        detected, image_size = detect_arch(state)
    except BackboneLoadError as error:
        prefixes = sorted({k.split(".")[0] for k in state})[:8]
        raise BackboneLoadError(f"{path}: {error} (format {fmt!r}, key prefixes {prefixes})") from None
    if arch is not None and arch != detected:
        raise BackboneLoadError(f"{path}: holds a {detected} backbone, but --arch {arch} was requested")
    if fmt == "snclr" and meta.get("arch") not in (None, detected):
        raise BackboneLoadError(f"{path}: its config names backbone {meta['arch']!r} but the tensors are a {detected}")
    if detected in SMALL_IMAGE_RESNETS and fmt != "snclr":
        # The stem's padding changes the function, not a shape: solo-learn pads by 2, ours by 1.
        raise BackboneLoadError(f"{path}: a 3x3-stem ResNet in {fmt!r} format does not record its stem padding "
                                f"(solo-learn pads by 2, {detected} by 1); only our checkpoints, whose config "
                                "names the backbone, load as " + detected)
    heads, heads_source = None, None
    if detected in VITS:
        heads, heads_source = vit_heads_for(detected, fmt, meta, vit_heads, path)
    elif vit_heads is not None:
        raise BackboneLoadError(f"{path}: --vit-heads applies to ViT backbones, this one is a {detected}")
    reference = build_backbone(detected, image_size)[0].state_dict()
    matched, head_dropped = _strict_match(state, reference, path)
    identity = checkpoint_identity(obj, sha256, fmt)
    # In meta, so the detection converter's sidecar carries the identity on to the detection record.
    meta = {**meta, "model_id": identity.model_id, "pretrain_seed": identity.seed, "pretrain_config": identity.config}
    log.info("loaded %s backbone from %s (%s format, %d tensors, %d keys dropped%s)", detected, path, fmt,
             len(matched), len(dropped) + len(head_dropped), f", {heads} heads: {heads_source}" if heads else "")
    return LoadedBackbone(state_dict=matched, arch=detected, source_format=fmt, sha256=sha256,
                          path=str(path), image_size=image_size, dropped_keys=dropped + head_dropped,
                          meta=meta, vit_heads=heads, vit_heads_source=heads_source)


def build_model(loaded: LoadedBackbone) -> tuple[nn.Module, int]:
    """The backbone module ``loaded`` describes (a ViT with its source's head count), random weights."""
    if loaded.vit_heads is None:
        return build_backbone(loaded.arch, loaded.image_size)
    spec = dataclasses.replace(VITS[loaded.arch], num_heads=loaded.vit_heads)
    return build_mocov3_vit(spec, loaded.image_size), spec.embed_dim


def build_loaded_backbone(path: str | os.PathLike, arch: str | None = None, *, trust: bool = False,
                          vit_heads: int | None = None) -> tuple[nn.Module, int, LoadedBackbone]:
    """Build the backbone and load the checkpoint into it with ``strict=True``."""
    loaded = load_backbone_state_dict(path, arch, trust=trust, vit_heads=vit_heads)
    model, dim = build_model(loaded)
    model.load_state_dict(loaded.state_dict, strict=True)
    return model, dim, loaded
