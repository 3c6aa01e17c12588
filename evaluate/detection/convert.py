"""Convert a pre-trained ResNet checkpoint into detectron2's weight format.

Usage: python -m evaluate.detection.convert INPUT OUTPUT [--arch resnet50] [--verify]

INPUT is any checkpoint ``evaluate.loading`` reads (ours, MoCo v1/v2/v3, DINO, solo-learn,
plain torchvision); its format is detected. OUTPUT is a pickle in the layout detectron2's own
converters write (MoCo's ``detection/convert-pretrain-to-detectron2.py``):
``{"model": {name: numpy array}, "__author__": "snclr-bench", "matching_heuristics": True}`` with
detectron2's ResNet names (stem.conv1, stem.conv1.norm, res2..res5, convN.norm, shortcut,
shortcut.norm). ``matching_heuristics`` tells detectron2's checkpointer to match these names by suffix
to ``backbone.bottom_up.*``. A sidecar ``OUTPUT.json`` records the source sha256, format, arch,
tensor count and every dropped key; ``evaluate.detection.launcher`` reads it to fill the result record.

detectron2 only logs names it could not match, so a wrong prefix silently gives a randomly
initialised backbone. ``--verify`` guards against that: it builds the Mask R-CNN of our config,
loads OUTPUT through detectron2's own checkpointer, and fails unless every ``backbone.bottom_up``
parameter and buffer was loaded, and unless that backbone computes what the *source* checkpoint's
tensors compute in torchvision's ResNet (so a renaming bug in this file cannot check itself). With
``--verify`` nothing is written under OUTPUT's name until the check passed.

INPUT is read as data only; ``--trust-checkpoint`` allows a full unpickle (see pretrain.safe_load).
"""
from __future__ import annotations

import sys
import dataclasses
import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import yaml

from evaluate.loading import load_backbone_state_dict
from pretrain.backbones import SMALL_IMAGE_RESNETS
from pretrain.provenance import file_sha256
from pretrain.fileio import atomic_write_bytes, file_problem
from pretrain.safe_load import TRUST_FLAG, UntrustedFileError, load_array_pickle
from evaluate.errors import ConversionError
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)

AUTHOR = "snclr-bench"
SIDECAR_FORMAT = "snclr-bench/detectron2-weights/v1"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_VERIFY_CONFIG = REPO / "detectron2_configs" / "mask_rcnn_R_50_FPN_1x_ssl.yaml"

# Backbone tensors per architecture (torchvision ResNet minus fc and num_batches_tracked). Counting
# them catches a checkpoint that lost or gained layers before detectron2 gets a chance to ignore it.
EXPECTED_TENSORS = {"resnet18": 100, "resnet34": 180, "resnet50": 265, "resnet101": 520}
# detectron2's RESNETS settings for each architecture: R18/R34 use BasicBlock, whose res2 has 64 channels.
DETECTRON2_RESNETS = {"resnet18": {"DEPTH": 18, "RES2_OUT_CHANNELS": 64},
                      "resnet34": {"DEPTH": 34, "RES2_OUT_CHANNELS": 64},
                      "resnet50": {"DEPTH": 50, "RES2_OUT_CHANNELS": 256},
                      "resnet101": {"DEPTH": 101, "RES2_OUT_CHANNELS": 256}}

_STEM = {"conv1.weight": "stem.conv1.weight"}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")


def _detectron2_name(key: str) -> str:
    """detectron2 name of one torchvision ResNet tensor name; raises ConversionError for any other name."""
    if key in _STEM:
        return _STEM[key]
    if key.startswith("bn1.") and key[4:] in _BN_FIELDS:
        return f"stem.conv1.norm.{key[4:]}"
    match = _BLOCK_KEY.match(key)
    if match is None:
        raise ConversionError(f"tensor {key!r} is not part of a torchvision ResNet backbone")
    stage, block, layer, field = match.groups()
    # torchvision's layer1..layer4 are detectron2's res2..res5 (the stem is "stage 1" in both papers).
    prefix = f"res{int(stage) + 1}.{block}"
    if layer.startswith("conv"):
        return f"{prefix}.{layer}.{field}"
    if layer.startswith("bn"):
        return f"{prefix}.conv{layer[2]}.norm.{field}"
    return f"{prefix}.shortcut.{field}" if layer == "downsample.0" else f"{prefix}.shortcut.norm.{field}"


def torchvision_resnet_to_detectron2(state_dict: Mapping[str, torch.Tensor], arch: str
                                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename a torchvision ``arch`` ResNet state dict to detectron2's names, as float32 numpy arrays.

    Drops ``fc.*`` (the classifier is replaced by detection heads) and ``num_batches_tracked`` (detectron2's
    norms do not use it). Returns the converted dict and the sorted list of dropped keys; any other
    name that is not a ResNet tensor raises ConversionError, so nothing is silently left behind, and
    so does a tensor count other than ``EXPECTED_TENSORS[arch]`` (a lost tensor, or two names mapped
    onto one).
    """
    converted: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            dropped.append(key)
            continue
        converted[_detectron2_name(key)] = value.detach().to("cpu", torch.float32).numpy().copy()
    if len(converted) != EXPECTED_TENSORS.get(arch):
        raise ConversionError(f"{len(converted)} backbone tensors after conversion, expected exactly "
                              f"{EXPECTED_TENSORS.get(arch)} for {arch}")
    return converted, sorted(dropped)


@dataclasses.dataclass
class ConversionSummary:
    output_path: Path
    sidecar_path: Path
    arch: str
    source_format: str
    source_sha256: str
    tensor_count: int
    dropped_keys: list[str]
    meta: dict[str, Any]


def sidecar_path_for(output_path: str | os.PathLike) -> Path:
    """``weights.pkl`` -> ``weights.pkl.json`` (next to the weights, impossible to confuse with them)."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".json")



def write_detectron2_weights(path: str | os.PathLike, model: Mapping[str, np.ndarray]) -> Path:
    """Write ``model`` as a detectron2 weight pickle (the layout of detectron2's and MoCo's converters)."""
    payload = {"model": dict(model), "__author__": AUTHOR, "matching_heuristics": True}
    path = Path(path)
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)   # hard links too


def check_output_paths(input_path: Path, output_path: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write OUTPUT or its sidecar over INPUT (through any link), or over
    an existing file unless ``overwrite``."""
    for path in (output_path, sidecar_path_for(output_path)):
        if _same_file(path, input_path):
            raise ConversionError(f"OUTPUT {path} is INPUT {input_path}; a conversion never writes over its "
                                  "source: choose another output path")
        if path.is_dir():
            raise ConversionError(f"OUTPUT {path} is a directory; expected a file path such as out/model.pkl")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise ConversionError(f"{path} exists; pass --overwrite to replace it, or choose another output path")


def convert_checkpoint(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                       arch: str | None = None, trust: bool = False, verify: bool = False,
                       config_path: str | os.PathLike = DEFAULT_VERIFY_CONFIG, overwrite: bool = False
                       ) -> tuple[ConversionSummary, dict[str, np.ndarray]]:
    """Convert one checkpoint; writes OUTPUT and OUTPUT.json and returns the summary and converted arrays.

    OUTPUT may not be INPUT, and an existing OUTPUT is replaced only with ``overwrite``. The weights
    are staged under a temporary name and, with ``verify``, checked through detectron2
    (:func:`verify_with_detectron2`) against the source tensors; only then do they and their sidecar
    take OUTPUT's names. A failed conversion or check removes only its own staged file: an existing
    OUTPUT and its sidecar (which still describe each other) are left as they were.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    check_output_paths(input_path, output_path, overwrite)
    if verify:
        problem = file_problem(config_path)
        if problem:
            raise ConversionError(f"--config-file {config_path} {problem}")
    loaded = load_backbone_state_dict(input_path, arch, trust=trust)
    if loaded.arch in SMALL_IMAGE_RESNETS:
        # detectron2's ResNet stem is 7x7 stride 2 + max-pool, and FPN's strides (4..32) assume it.
        raise ConversionError(f"{input_path}: backbone {loaded.arch!r} cannot go to detectron2: its small-image "
                              "stem (3x3 stride-1 conv1, no max-pool) has no R-FPN counterpart; "
                              f"expected one of {sorted(EXPECTED_TENSORS)}")
    if loaded.arch not in EXPECTED_TENSORS:
        raise ConversionError(f"{input_path}: backbone {loaded.arch!r} cannot go to detectron2; "
                              f"expected one of {sorted(EXPECTED_TENSORS)}")
    try:
        model, dropped_here = torchvision_resnet_to_detectron2(loaded.state_dict, loaded.arch)
    except ConversionError as error:
        raise ConversionError(f"{input_path}: {error}") from None
    sidecar_path = sidecar_path_for(output_path)
    # detectron2 reads a file as a pickle only if its name ends in ".pkl".
    staged = output_path.with_name(f".unverified.{output_path.name}")
    try:
        write_detectron2_weights(staged, model)
        if verify:
            verify_with_detectron2(staged, loaded.state_dict, loaded.arch, config_path)
        summary = ConversionSummary(
            output_path=output_path, sidecar_path=sidecar_path, arch=loaded.arch,
            source_format=loaded.source_format, source_sha256=loaded.sha256, tensor_count=len(model),
            dropped_keys=sorted(set(loaded.dropped_keys) | set(dropped_here)), meta=dict(loaded.meta))
        sidecar = {"format": SIDECAR_FORMAT, "source_path": str(Path(input_path).resolve()),
                   "source_sha256": summary.source_sha256, "source_format": summary.source_format,
                   "weights_sha256": file_sha256(staged), "arch": summary.arch,
                   "detectron2_resnets": DETECTRON2_RESNETS[summary.arch], "tensor_count": summary.tensor_count,
                   "dropped_keys": summary.dropped_keys, "meta": summary.meta, "verified": verify}
        text = json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n"
        # Sidecar first: a crash between the two renames leaves a sidecar without weights, never
        # weights that look converted and are not described.
        atomic_write_bytes(sidecar_path, text.encode("utf-8"))
        os.replace(staged, output_path)
    finally:
        staged.unlink(missing_ok=True)
    log.info("wrote %s (%d tensors, %s from %s) and %s", output_path, summary.tensor_count, summary.arch,
             summary.source_format, summary.sidecar_path)
    return summary, model


def verify_with_detectron2(weights_path: str | os.PathLike, source: Mapping[str, torch.Tensor], arch: str,
                           config_path: str | os.PathLike = DEFAULT_VERIFY_CONFIG) -> int:
    """Load ``weights_path`` into the Mask R-CNN of ``config_path`` through detectron2's checkpointer,
    and check the backbone detectron2 ends up with against ``source``: the torchvision-named backbone
    tensors of the source checkpoint (``load_backbone_state_dict``'s output, not this module's).

    Two checks. (1) Every ``backbone.bottom_up`` parameter and buffer is first set to NaN, so one that
    detectron2 did not load (it only logs such names) stays NaN; each must equal the weight file.
    (2) The names cannot be compared with the source without this module's renaming, which is what is
    under test, so the comparison is by function: torchvision's ResNet holding ``source`` and
    detectron2's backbone must give the same res2..res5 features on a fixed input (a swapped block, a
    swapped BN statistic or a stride moved into the 1x1 conv all change them). Returns the number of
    tensors checked; raises ConversionError otherwise.
    """
    from evaluate.detection.d2_compat import import_detectron2
    import_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    if arch not in DETECTRON2_RESNETS:
        raise ConversionError(f"--arch {arch!r} has no detectron2 ResNet; expected one of {sorted(DETECTRON2_RESNETS)}")
    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(config_path), allow_unsafe=False)
    except yaml.YAMLError as error:
        raise ConversionError(f"{config_path}: not a plain YAML config ({str(error).splitlines()[0]})") from None
    cfg.MODEL.DEVICE = "cpu"
    # Names are identical for BN, SyncBN and FrozenBN; plain BN builds without a process group.
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.NORM = "BN"
    for key, value in DETECTRON2_RESNETS[arch].items():
        setattr(cfg.MODEL.RESNETS, key, value)
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    with torch.no_grad():
        for tensor in bottom_up.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(math.nan)
    # detectron2 lists at WARNING every model tensor the file lacks (here: all of FPN and the heads, as
    # intended); check_bottom_up below reports what matters in one line, so that list is held back.
    quiet = [logging.getLogger(name) for name in ("fvcore", "detectron2")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    # The staged file is read once, by our data-only reader; detectron2's checkpointer gets the arrays,
    # in the layout its _load_file gives a .pkl, so it never unpickles the path itself.
    weights = read_detectron2_weights(weights_path)
    try:
        DetectionCheckpointer(model)._load_model(
            {"model": dict(weights), "__author__": AUTHOR, "matching_heuristics": True})
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    checked = check_bottom_up(bottom_up.state_dict(), weights, str(weights_path))
    check_same_function(bottom_up, source, arch, str(weights_path))
    log.info("verified through detectron2: all %d backbone.bottom_up tensors loaded, and the backbone computes "
             "what the source checkpoint's tensors compute", checked)
    return checked


# Largest |detectron2 - torchvision| / max |torchvision| accepted per stage: float32 rounding of the
# same convolutions is ~1e-6; any wrong tensor gives O(1).
_FUNCTION_TOLERANCE = 1e-4


def check_same_function(bottom_up: torch.nn.Module, source: Mapping[str, torch.Tensor], arch: str,
                        where: str) -> None:
    """Require detectron2's ResNet ``bottom_up`` to compute torchvision's ``arch`` holding ``source``.

    Both run in eval mode (BN from its running statistics) on one fixed random batch; the outputs
    of torchvision's layer1..layer4 must match detectron2's res2..res5.
    """
    reference = getattr(torchvision.models, arch)(weights=None)
    result = reference.load_state_dict(dict(source), strict=False)
    if set(result.missing_keys) - {"fc.weight", "fc.bias"} or result.unexpected_keys:
        raise ConversionError(f"{where}: source tensors do not form a torchvision {arch} (missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    was_training = bottom_up.training
    bottom_up.eval()
    reference.eval()
    with torch.no_grad():
        features = bottom_up(images)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        differing = []
        for stage in range(1, 5):
            x = getattr(reference, f"layer{stage}")(x)
            name = f"res{stage + 1}"
            if name not in features:
                raise ConversionError(f"{where}: detectron2's backbone gives no {name} output to compare")
            error = ((features[name] - x).abs().max() / x.abs().max().clamp_min(1e-12)).item()
            if not error <= _FUNCTION_TOLERANCE:  # NaN fails too
                differing.append(f"{name} vs layer{stage}: relative difference {error:.3g}")
    bottom_up.train(was_training)
    if differing:
        raise ConversionError(f"{where}: detectron2's backbone does not compute the source checkpoint's ResNet: "
                              + "; ".join(differing))


def check_bottom_up(state: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray], where: str) -> int:
    """Require every tensor of a detectron2 ``backbone.bottom_up`` state to equal ``expected`` exactly.

    NaN counts as not loaded (verify_with_detectron2 fills the model with NaN before loading).
    ``num_batches_tracked`` is skipped: the conversion drops it on purpose. Returns the number of
    tensors checked; raises ConversionError naming the first offender of each kind.
    """
    not_loaded, different, checked = [], [], 0
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        checked += 1
        value = tensor.detach().cpu().numpy()
        source = expected.get(name)
        if source is None or np.isnan(value).any():
            not_loaded.append(name)
        elif source.shape != value.shape or not np.array_equal(source, value):
            different.append(name)
    unused = sorted(set(expected) - set(state))
    if not_loaded or different or unused:
        parts = []
        if not_loaded:
            parts.append(f"{len(not_loaded)} of {checked} backbone.bottom_up tensors not loaded (e.g. {not_loaded[0]})")
        if different:
            parts.append(f"{len(different)} differ from the source (e.g. {different[0]})")
        if unused:
            parts.append(f"{len(unused)} converted tensors unused by detectron2 (e.g. {unused[0]})")
        raise ConversionError(f"{where}: detectron2 backbone check failed: " + "; ".join(parts))
    return checked


def read_detectron2_weights(path: str | os.PathLike, *, trust: bool = False) -> dict[str, np.ndarray]:
    """The ``model`` dict of a weight pickle written by write_detectron2_weights, read as data only."""
    try:
        payload = load_array_pickle(path, trust=trust)
    except UntrustedFileError as error:
        raise ConversionError(str(error)) from None
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ConversionError(f"{path}: not a readable weight pickle ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise ConversionError(f"{path}: not a detectron2 weight pickle (no 'model' dict)")
    return payload["model"]


@cli_main
def main(argv: list[str] | None = None) -> int | None:
    parser = ArgumentParser(
        prog="python -m evaluate.detection.convert",
        description="Convert a pre-trained ResNet checkpoint (ours, MoCo v1/v2/v3, DINO, solo-learn, torchvision; "
                    "format detected) into a detectron2 weight pickle plus a sidecar OUTPUT.json.")
    parser.add_argument("input", help="pre-training checkpoint (.pth/.pth.tar/.ckpt)")
    parser.add_argument("output", help="detectron2 weights to write, e.g. out/snclr_r50.pkl")
    parser.add_argument("--arch", choices=sorted(EXPECTED_TENSORS), default=None,
                        help="backbone architecture (default: detected from the checkpoint)")
    parser.add_argument("--verify", action="store_true",
                        help="load OUTPUT through detectron2's checkpointer and fail unless every backbone tensor "
                             "was loaded and equals the source (needs detectron2)")
    parser.add_argument("--config-file", default=str(DEFAULT_VERIFY_CONFIG),
                        help="detectron2 config that --verify builds (default: %(default)s)")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow INPUT to be fully unpickled if it holds more than tensors and allow-listed "
                             "types; unpickling can run code from the file, so only for files you trust")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUTPUT and OUTPUT.json (default: refused); they are replaced "
                             "only once the new conversion (and --verify) succeeded. OUTPUT may never be INPUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary, _ = convert_checkpoint(args.input, args.output, arch=args.arch, trust=args.trust_checkpoint,
                                    verify=args.verify, config_path=args.config_file, overwrite=args.overwrite)
    verified = ", verified through detectron2" if args.verify else ""
    print(f"wrote {summary.output_path} ({summary.tensor_count} tensors, {summary.arch}, "
          f"{summary.source_format}{verified}) and {summary.sidecar_path}")


if __name__ == "__main__":
    sys.exit(main())
