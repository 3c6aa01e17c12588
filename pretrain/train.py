"""The SNCLR pre-training loop: data, model, LARS/AdamW, AMP, DDP, logging, atomic checkpoints, resume."""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain import distributed as dist
from pretrain.config import ConfigError, PretrainConfig, dump
from pretrain.backbones import is_vit
from pretrain.data import SeededAugmentation, TwoViews, build_dataset
from pretrain.model import SNCLR
from pretrain.metrics_log import MetricsLog
from pretrain.provenance import code_version
from pretrain.optim import build_optimizer, momentum_at, warmup_cosine_lr

log = logging.getLogger(__name__)

# Keys that fix the shapes in a checkpoint: resuming with another value would fail or mislead.
SHAPE_KEYS = ("backbone", "image_size", "proj_hidden_dim", "dim", "candidate_set_size", "optimizer")


class EpochSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (seeded shuffle per epoch, drop_last) that can start mid-epoch on resume."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def local_batch_size(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ConfigError(f"batch_size={batch_size} is not divisible by the world size {world}; "
                          f"use a multiple of {world}")
    return batch_size // world


def model_from_config(config: PretrainConfig) -> SNCLR:
    return SNCLR(config.backbone, image_size=config.image_size, proj_hidden_dim=config.proj_hidden_dim,
                 dim=config.dim, temperature=config.temperature, candidate_set_size=config.candidate_set_size,
                 k=config.k, neighbors=config.neighbors, loss_form=config.loss_form,
                 positiveness_temperature=config.positiveness_temperature, detach_weights=config.detach_weights)


def check_neighbor_settings(config: PretrainConfig) -> None:
    """K = 0 trains Eq. 1, so a run recorded as soft/binary neighbours would mislabel Table 4."""
    if config.k == 0 and config.neighbors != "none":
        raise ConfigError(f"k=0 with neighbors={config.neighbors!r} trains Eq. 1 without neighbours; "
                          f"use --neighbors none, or k >= 1")


def seed_rank_streams(seed: int, rank: int) -> None:
    """After the model is built from the shared seed: a torch/random/numpy stream of this rank's own."""
    stream = seed + 1_000_003 * (rank + 1)
    random.seed(stream)
    np.random.seed(stream % 2**32)
    torch.manual_seed(stream)


def autocast_dtype(config: PretrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if config.amp == "fp16" else torch.bfloat16


def train(config: PretrainConfig, resume: str | None = None) -> Path:
    """Pre-train SNCLR with ``config``; returns the path of the final checkpoint."""
    check_neighbor_settings(config)
    device = dist.init_distributed(config.device)
    world, rank = dist.world_size(), dist.rank()
    local_batch = local_batch_size(config.batch_size, world)
    out_dir = Path(config.output_dir)
    latest = out_dir / ckpt.LATEST
    expect = {key: getattr(config, key) for key in SHAPE_KEYS}
    state = None
    if resume or latest.exists():   # validate before anything is written: a bad file loses nothing
        state = ckpt.load_pretrain_checkpoint(resume or latest, expect)
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        dump(config, out_dir / "config.yaml")

    torch.manual_seed(config.seed)   # same init on every rank (DDP also broadcasts it)

    # Augmentations draw from a stream per (seed, epoch, image), not from the ranks' shared generator.
    dataset = SeededAugmentation(build_dataset(config.dataset, config.data_dir, "train", None, config.train_limit),
                                 TwoViews(config.image_size, config.min_scale), config.seed)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the {len(dataset)} training images")
    sampler = EpochSampler(dataset, world, rank, config.seed)
    loader_kwargs = dict(batch_size=local_batch, sampler=sampler, num_workers=config.workers, drop_last=True,
                         pin_memory=device.type == "cuda", persistent_workers=False)
    steps_per_epoch = len(sampler) // local_batch
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

    model = model_from_config(config)
    if world > 1:
        model = dist.convert_sync_batchnorm(model, device)
    model = model.to(device)
    # NHWC convolutions for ResNets on GPUs (tensor cores); cudnn tunes its kernels for the fixed shape.
    memory_format = torch.channels_last if device.type == "cuda" and not is_vit(config.backbone) \
        else torch.contiguous_format
    if device.type == "cuda":
        model = model.to(memory_format=memory_format)
        torch.backends.cudnn.benchmark = True
    seed_rank_streams(config.seed, rank)
    snclr = model
    if world > 1:
        model = dist.wrap_ddp(model, device)
    peak_lr = config.base_lr * config.batch_size / 256
    optimizer = build_optimizer(config.optimizer, [p for p in snclr.parameters() if p.requires_grad],
                                lr=peak_lr, weight_decay=config.weight_decay)
    amp_dtype = autocast_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, skip_steps, global_step = 0, 0, 0
    if state is not None:
        snclr.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, skip_steps, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        ckpt.set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        log.info("resumed from %s at epoch %d step %d", resume or latest, start_epoch, skip_steps)

    metrics = MetricsLog(out_dir, "metrics", step_key="step", tb_dir="tensorboard", tag_prefix="pretrain/", csv=True)
    metrics.truncate_after(global_step)

    def save(epoch: int, step_in_epoch: int, final_name: str | None = None, gather: bool = True) -> Path:
        rng = [ckpt.rng_state()]
        if world > 1 and gather:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if not dist.is_main():
            return latest
        payload = {"format": ckpt.FORMAT, "model": snclr.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                   "global_step": global_step, "config": config.to_dict(), "rng": rng,
                   "code_version": code_version(), "world_size": world}
        ckpt.save_atomic(payload, latest)
        if final_name:
            ckpt.save_atomic(payload, out_dir / final_name)
        return latest

    epoch, position = start_epoch, skip_steps
    started = interval_start = time.time()
    interval_steps = 0
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            sampler.skip = skip_steps * local_batch if epoch == start_epoch else 0
            use_neighbors = epoch >= config.neighbor_warmup_epochs
            first_step = position = skip_steps if epoch == start_epoch else 0
            loader = torch.utils.data.DataLoader(dataset, **loader_kwargs)
            bar = tqdm(total=steps_per_epoch, initial=first_step, disable=not dist.is_main(),
                       desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True)
            for step, ((x1, x2), labels, ids) in enumerate(loader, start=first_step):
                if step >= steps_per_epoch:
                    break
                progress = epoch + step / steps_per_epoch
                lr = warmup_cosine_lr(progress, peak_lr=peak_lr, warmup_epochs=config.warmup_epochs,
                                      total_epochs=config.epochs, start_lr=config.warmup_start_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                momentum = momentum_at(progress, base=config.momentum, total_epochs=config.epochs,
                                       cosine=config.momentum_cosine)
                x1 = x1.to(device, non_blocking=True, memory_format=memory_format)
                x2 = x2.to(device, non_blocking=True, memory_format=memory_format)
                labels, ids = labels.to(device, non_blocking=True), ids.to(device, non_blocking=True)
                log_now = (global_step + 1) % config.log_every == 0 or step == steps_per_epoch - 1
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    stats = model(x1, x2, ids, labels, momentum, use_neighbors, log_now)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(stats.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                position = step + 1
                bar.update(1)
                interval_steps += 1
                if log_now:
                    loss = float(dist.all_reduce_mean(stats.loss.detach()))
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss} at epoch {epoch} step {step}; stopping")
                    row = {"step": global_step, "epoch": round(progress, 4), "loss": round(loss, 5),
                           "lr": lr, "momentum": momentum, "neighbors_on": int(use_neighbors),
                           **{k: round(float(getattr(stats, k)), 5) for k in
                              ("positiveness_max", "positiveness_entropy", "neighbor_agreement", "neighbor_rows")},
                           "images_per_s": round(interval_steps * config.batch_size / (time.time() - interval_start), 1)}
                    interval_start, interval_steps = time.time(), 0
                    metrics.write(row)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
            bar.close()
            skip_steps = 0
            last = epoch + 1 == config.epochs
            if last or (epoch + 1) % config.save_every == 0:
                save(epoch + 1, 0, final_name=f"snclr_{config.backbone}_ep{epoch + 1}.pth" if last else None)
    except KeyboardInterrupt:
        # Ctrl-C: keep the work done; resuming continues from this exact step.
        # Under DDP the ranks may be stopped inside different collectives, so nothing is gathered:
        # rank 0 writes its own state and every rank resumes from rank 0's RNG.
        log.warning("interrupted at epoch %d step %d; saving a resumable checkpoint", epoch, position)
        save(epoch, position, gather=False)
        raise
    finally:
        metrics.close()
    dist.barrier()
    log.info("finished %d epochs in %.1f s; checkpoint %s", config.epochs, time.time() - started, latest)
    return out_dir / f"snclr_{config.backbone}_ep{config.epochs}.pth"
