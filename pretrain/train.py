"""The SNCLR pre-training loop: data, model, LARS/AdamW, AMP, DDP, logging, atomic checkpoints, resume.

A run stops the way clusters stop jobs: SIGTERM or SIGINT sets a flag, and the loop saves at the next
step boundary (after the optimizer step, before the next batch) and returns. Each sample's
augmentations are seeded from (seed, epoch, image id) in every input pipeline (pretrain/pipelines.py),
so a run resumed mid-epoch sees exactly the views the uninterrupted run would have, whatever the
number of DataLoader workers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain import distributed as dist
from pretrain.config import FIELDS, ConfigError, PretrainConfig, dump
from pretrain.backbones import is_vit
from pretrain.augment import AugmentSpec, byol_spec
from pretrain.data import build_dataset, dataset_targets
from pretrain.fileio import OutputDirError, RunLock, check_free_space, remove_stale_temp_files
from pretrain.model import SNCLR, Supervised
from pretrain.metrics_log import MetricsLog
from pretrain.provenance import code_version
from pretrain.optim import build_optimizer, momentum_at, warmup_cosine_lr
from pretrain.pipelines import Pipeline, build_pipeline, resolve_pipeline

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)   # SIGTERM: what SLURM and Kubernetes send before a kill


def ignore_signals(signals: tuple[int, ...], worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the workers ignore the stop signals.

    SLURM, systemd and a terminal's Ctrl-C signal every process of the job, workers included. A
    worker killed by them makes the main process fail with "DataLoader worker ... is killed by
    signal" before it can save; ignoring them leaves the stop to the main process, which saves at
    the next step boundary and then shuts the workers down itself (through the loader's done event,
    not a signal). A worker whose parent dies still exits: the loader's watchdog checks for it."""
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)


class StopInsisted(KeyboardInterrupt):
    """A second stop signal while the first one's save is pending: the run ends without saving.

    The message says which checkpoint (if any) holds the run; ``signum`` gives the exit status."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


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


def model_from_config(config: PretrainConfig, num_classes: int | None = None) -> SNCLR | Supervised:
    """The model ``config.method`` trains; the supervised bound needs the data set's ``num_classes``."""
    if config.method == "supervised":
        if num_classes is None:
            raise ConfigError("method=supervised needs the number of classes of the training set")
        return Supervised(config.backbone, num_classes, image_size=config.image_size)
    return SNCLR(config.backbone, image_size=config.image_size, proj_hidden_dim=config.proj_hidden_dim,
                 dim=config.dim, temperature=config.temperature, candidate_set_size=config.candidate_set_size,
                 k=config.k, neighbors=config.neighbors, loss_form=config.loss_form,
                 positiveness_temperature=config.positiveness_temperature, detach_weights=config.detach_weights)


def final_checkpoint_name(config: PretrainConfig) -> str:
    """``snclr_resnet18_ep8.pth``, or ``supervised_...`` for the supervised bound."""
    return f"{'supervised' if config.method == 'supervised' else 'snclr'}_{config.backbone}_ep{config.epochs}.pth"


def augment_spec(config: PretrainConfig) -> AugmentSpec:
    """The two-view augmentation every config field of it describes (recorded in config.yaml); every
    pipeline (pil, device, dali) applies this one spec."""
    return byol_spec(config.image_size, config.min_scale, jitter_strength=config.jitter_strength,
                     jitter_p=config.jitter_p, grayscale_p=config.grayscale_p,
                     blur_p=(config.blur_p1, config.blur_p2), solarize_p=(config.solarize_p1, config.solarize_p2))


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


class StopRequest:
    """A flag set by stop signals; checked by the loop at step boundaries.

    The handler only records the signal, so a signal that arrives mid-step or mid-save interrupts
    neither. A second signal while a stop is pending raises :class:`StopInsisted`: the user insists.
    The same signal again within ``DUPLICATE_S`` is the same request delivered twice, not insistence:
    a launcher that forwards signals to its tasks (srun, submitit's local controller) repeats a
    process-group signal within milliseconds. Under DDP every rank must stop at the same step, so
    :meth:`requested` takes the maximum over ranks on a gloo group of its own (CPU only: no GPU sync)."""

    DUPLICATE_S = 1.0

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, after_epoch: int | None = None) -> None:
        self.signals, self.received, self.stopping = tuple(signals), None, False
        # A stop planned in advance: at the end of this many epochs (a shared warm-up, pretrain.fork).
        self.after_epoch = after_epoch
        self._received_at = 0.0
        self._previous: dict[int, object] = {}
        self._group = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():   # Python allows handlers only there
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        if dist.is_distributed():
            self._group = torch.distributed.new_group(backend="gloo")

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if name == self.received and time.monotonic() - self._received_at < self.DUPLICATE_S:
                return
            raise StopInsisted(f"second {name}: stopped without saving", signum)
        self.received, self._received_at = name, time.monotonic()
        log.warning("%s received: saving at the end of this step, then stopping", self.received)

    def requested(self, epochs_done: int | None = None) -> bool:
        """Whether any rank received a stop signal (collective under DDP: call it on every rank).
        At an epoch boundary, ``epochs_done`` also triggers the planned stop ``after_epoch``."""
        if epochs_done is not None and epochs_done == self.after_epoch and self.received is None:
            self.received = f"after_epoch={self.after_epoch}"
        flag = self.received is not None
        if self._group is not None:
            tensor = torch.tensor([int(flag)])
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX, group=self._group)
            flag = bool(tensor.item())
        self.stopping = self.stopping or flag
        return self.stopping


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` ends with: the final checkpoint, or where a stopped run can resume."""
    checkpoint: Path
    finished: bool
    epoch: int
    step_in_epoch: int
    global_step: int
    stop_signal: str | None = None


def _shared_check(check, world: int) -> None:
    """Run ``check`` on rank 0 and raise its OutputDirError on every rank, so no rank waits forever
    in a collective for a rank that already gave up."""
    message = None
    if dist.is_main():
        try:
            check()
        except OutputDirError as error:
            message = str(error)
    if world > 1:
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise OutputDirError(message)


def _checkpoint_bytes(model: torch.nn.Module, optimizer_name: str) -> int:
    """An upper estimate of one checkpoint: the model's tensors plus the optimizer's per-parameter
    state (one momentum buffer for LARS/SGD, two moments for AdamW), plus 1% for the rest (RNG
    states, config, the zip container: 0.09% for the test suite's ResNet-18)."""
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return int(1.01 * (tensors + params * (2 if optimizer_name == "adamw" else 1)))


def train(config: PretrainConfig, resume: str | None = None, *, extend_schedule: bool = False,
          stop: StopRequest | None = None, trust_checkpoint: bool = False) -> TrainResult:
    """Pre-train SNCLR with ``config``.

    Every check (config, data, checkpoint identity, output folder) runs before anything is written.
    ``extend_schedule`` lets a resumed run grow ``epochs`` (recorded in the checkpoint's
    ``epochs_history``). ``stop`` chooses the signals that stop the run at a step boundary
    (SIGTERM and SIGINT by default); a stopped run returns ``finished=False``. ``trust_checkpoint``
    (``--trust-checkpoint``) allows the checkpoint resumed from to be fully unpickled."""
    if config.method == "SNCLR":
        check_neighbor_settings(config)
    device = dist.init_distributed(config.device)
    world, rank = dist.world_size(), dist.rank()
    local_batch = local_batch_size(config.batch_size, world)
    out_dir = Path(config.output_dir)
    latest = out_dir / ckpt.LATEST

    torch.manual_seed(config.seed)   # same init on every rank (DDP also broadcasts it)

    dataset = build_dataset(config.dataset, config.data_dir, "train", None, config.train_limit)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the {len(dataset)} training images")
    state = None
    epochs_history = [config.epochs]
    if resume or latest.exists():   # validate before anything is written: a bad file loses nothing
        state = ckpt.load_pretrain_checkpoint(resume or latest, trust=trust_checkpoint)
    config = dataclasses.replace(config, data_pipeline=_pipeline_for(config, state, device))
    if state is not None:
        source = resume or latest
        # Checkpoints from before --data-pipeline were all made by the PIL path.
        defaults = {**{name: field.default for name, field in FIELDS.items()}, "data_pipeline": "pil"}
        ckpt.check_resume_identity(source, state["config"], config.to_dict(), defaults, extend_schedule)
        epochs_history = [int(e) for e in state.get("epochs_history", [state["config"]["epochs"]])]
        if config.epochs != epochs_history[-1]:
            log.warning("schedule extended from %d to %d epochs (recorded in the checkpoint)",
                        epochs_history[-1], config.epochs)
            epochs_history.append(config.epochs)

    model = model_from_config(config, int(dataset_targets(dataset).max()) + 1)
    # Augmentations draw from a stream per (seed, epoch, image), not from the ranks' shared generator.
    stop = stop or StopRequest()
    pipeline = build_pipeline(config.data_pipeline, dataset, spec=augment_spec(config), seed=config.seed,
                              batch_size=local_batch, workers=config.workers, device=device,
                              worker_init_fn=functools.partial(ignore_signals, stop.signals))
    lock = RunLock(out_dir)

    def prepare_output_dir() -> None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputDirError(f"{out_dir}: cannot create the output folder ({error.strerror})") from None
        lock.acquire()
        # An atomic save writes the new file beside the old one, so at most two checkpoints exist at
        # once (the old and the new checkpoint.pth, or checkpoint.pth and the final file). One already
        # on disk counts towards them: a resumed run needs one new file's worth.
        held = latest.stat().st_size if latest.is_file() else 0
        one = held or _checkpoint_bytes(model, config.optimizer)
        check_free_space(out_dir, 2 * one - held, "saving checkpoints")
        for path in remove_stale_temp_files(out_dir):
            log.warning("removed %s, left by a save that was killed", path)

    _shared_check(prepare_output_dir, world)
    try:
        if dist.is_main():
            dump(config, out_dir / "config.yaml")
        return _train(config, state, resume or latest, model, pipeline, device, world, rank, local_batch,
                      epochs_history, stop)
    finally:
        lock.release()


def _pipeline_for(config: PretrainConfig, state: dict | None, device: torch.device) -> str:
    """The pipeline this run uses: ``auto`` on a resume keeps the checkpoint's (the PIL path before
    the flag existed), so only an explicit, different flag is refused as a change of result."""
    if config.data_pipeline == "auto" and state is not None:
        return state["config"].get("data_pipeline", "pil")
    return resolve_pipeline(config.data_pipeline, config.dataset, device)


def _train(config: PretrainConfig, state: dict | None, source: Path, model: SNCLR | Supervised, pipeline: Pipeline,
           device: torch.device, world: int, rank: int, local_batch: int, epochs_history: list[int],
           stop: StopRequest) -> TrainResult:
    out_dir = Path(config.output_dir)
    latest = out_dir / ckpt.LATEST
    final_name = final_checkpoint_name(config)
    sampler = EpochSampler(pipeline, world, rank, config.seed)
    steps_per_epoch = len(sampler) // local_batch
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

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
        log.info("resumed from %s at epoch %d step %d", source, start_epoch, skip_steps)

    metrics = MetricsLog(out_dir, "metrics", step_key="step", tb_dir="tensorboard", tag_prefix="pretrain/", csv=True)
    metrics.truncate_after(global_step)
    # (epoch, step) that OUTPUT_DIR/checkpoint.pth holds, for the messages of a run that ends unsaved.
    on_disk = [start_epoch, skip_steps] if state is not None and Path(source) == latest else []

    def save(epoch: int, step_in_epoch: int, final: bool = False) -> None:
        rng = [ckpt.rng_state()]
        if world > 1:   # every rank reaches a save at the same step boundary, so gathering is safe
            # As bytes: all_gather_object cannot unpickle tensors inside objects in this torch.
            buffer = io.BytesIO()
            torch.save(rng[0], buffer)
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, buffer.getvalue())
            rng = [torch.load(io.BytesIO(blob), weights_only=True) for blob in gathered]
        if not dist.is_main():
            return
        model_state, optimizer_state = snclr.state_dict(), optimizer.state_dict()
        ckpt.check_finite({**model_state, **ckpt.optimizer_tensors(optimizer_state)},
                          f"epoch {epoch} step {step_in_epoch}")
        payload = {"format": ckpt.FORMAT, "model": model_state, "optimizer": optimizer_state,
                   "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                   "global_step": global_step, "config": config.to_dict(), "rng": rng,
                   "epochs_history": epochs_history, "code_version": code_version(), "world_size": world}
        if state is not None and "warmup_from" in state:   # a run forked from another's warm-up keeps saying so
            payload["warmup_from"] = state["warmup_from"]
        try:
            ckpt.save_atomic(payload, latest)
            on_disk[:] = [epoch, step_in_epoch]
            if final:
                ckpt.save_atomic(payload, out_dir / final_name)
        except OSError as error:   # a full disk included: atomic_write names it whatever torch made of it
            kept = (f"{latest.name} holds epoch {on_disk[0]} step {on_disk[1]}" if on_disk
                    else f"no {latest.name} was written")
            raise OutputDirError(f"{out_dir}: cannot write the checkpoint ({error.strerror or error}); "
                                 f"{kept}") from None

    def stopped(epoch: int, step_in_epoch: int) -> TrainResult:
        log.warning("stopped by %s at epoch %d step %d; resume by rerunning the same command",
                    stop.received or "a signal on another rank", epoch, step_in_epoch)
        return TrainResult(latest, False, epoch, step_in_epoch, global_step, stop.received or "remote")

    started = interval_start = time.time()
    interval_steps = 0
    stop.install()
    try:
        if start_epoch >= config.epochs and not (out_dir / final_name).exists():
            # Killed between writing checkpoint.pth and the final file: write the final file now.
            save(config.epochs, 0, final=True)
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            first_step = skip_steps if epoch == start_epoch else 0
            sampler.skip = first_step * local_batch
            use_neighbors = epoch >= config.neighbor_warmup_epochs
            position = first_step
            # this rank's images, from `first_step` on; closed however the epoch ends (PIL workers stop then)
            with contextlib.closing(pipeline.epoch(epoch, sampler)) as batches, \
                    tqdm(total=steps_per_epoch, initial=first_step, disable=not dist.is_main(),
                         desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True) as bar:
                for step, ((x1, x2), labels, ids) in enumerate(batches, start=first_step):
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
                            raise ckpt.NonFiniteError(f"loss is {loss} at epoch {epoch} step {step}; stopping "
                                                        f"(the last good checkpoint is {latest})")
                        row = {"step": global_step, "epoch": round(progress, 4), "loss": round(loss, 5),
                               "lr": lr, "momentum": momentum, "neighbors_on": int(use_neighbors and config.method == "SNCLR"),
                               **{k: round(float(getattr(stats, k)), 5) for k in stats.MONITORS
                                  if getattr(stats, k) is not None},
                               "images_per_s": round(interval_steps * config.batch_size / (time.time() - interval_start), 1)}
                        interval_start, interval_steps = time.time(), 0
                        metrics.write(row)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
                    if stop.requested():   # a step boundary: the optimizer step, EMA and push are complete
                        break
            skip_steps = 0
            if position < steps_per_epoch:
                save(epoch, position)
                return stopped(epoch, position)
            last = epoch + 1 == config.epochs
            saved = last or (epoch + 1) % config.save_every == 0
            if saved:
                save(epoch + 1, 0, final=last)
            if not last and stop.requested(epoch + 1):   # asked during the last step or the save, or planned
                if not saved:
                    save(epoch + 1, 0)
                return stopped(epoch + 1, 0)
    except StopInsisted as error:
        kept = (f"{latest} holds epoch {on_disk[0]} step {on_disk[1]}; rerun the same command to resume from it"
                if on_disk else f"no checkpoint was written to {out_dir}")
        raise StopInsisted(f"{error} since the last save; {kept}", error.signum) from None
    finally:
        stop.uninstall()
        metrics.close()
    dist.barrier()
    log.info("finished %d epochs in %.1f s; checkpoint %s", config.epochs, time.time() - started, latest)
    return TrainResult(out_dir / final_name, True, config.epochs, 0, global_step)
